"""Fuzz: malformed workflow files, made at run time, each refused with its own specific error.

Every case is a file (bytes, a UI-format or an API-format workflow derived from the pack's example, or a
special path: a directory, a FIFO, a sparse oversized file) and a distinctive part of the one error it must
produce (with the JSON path where the problem has one). Each case runs twice:
- through the library entry point (``load_workflow`` + ``apply_overrides`` + ``validate``): the text of the
  WorkflowError or of the validation problems must contain it;
- through ``svd-lab run`` (``cli.main``) in-process: exit code 2, the text on stderr, no traceback, a short
  stderr (values are never echoed whole), nothing written.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from comfyui_svd_lab import NODE_CLASS_MAPPINGS as REGISTRY
from comfyui_svd_lab.cli import main
from comfyui_svd_lab.nodes import bridge
from comfyui_svd_lab.workflow import WorkflowError, apply_overrides, load_workflow, validate

EXAMPLES = Path(__file__).resolve().parents[2] / "example_workflows"
UI_BASE = json.loads((EXAMPLES / "svd_image_to_video.json").read_text(encoding="utf-8"))
API_BASE = json.loads((EXAMPLES / "api" / "svd_image_to_video.json").read_text(encoding="utf-8"))
MAX_STDERR = 6000  # a refusal is a few lines; a workflow value must never come back whole
BIG = 1 << 20  # a 1 MiB string


def test_bases_have_the_layout_the_cases_assume():
    types = [n["type"] for n in UI_BASE["nodes"]]
    assert types[:4] == ["SVDLab_CheckpointLoader", "SVDLab_LoadImage", "SVDLab_ImageToVideoConditioning",
                         "SVDLab_Sampler"]
    assert [n["id"] for n in UI_BASE["nodes"][:3]] == [1, 2, 3]
    assert UI_BASE["nodes"][2]["inputs"][0]["link"] == 1 and UI_BASE["links"][0] == [1, 1, 0, 3, 0, "SVDLAB_MODEL"]
    assert UI_BASE["nodes"][2]["widgets_values"][5] == 0.02  # cond_aug
    assert API_BASE["3"]["inputs"]["model"] == ["1", 0] and API_BASE["4"]["class_type"] == "SVDLab_Sampler"


# ------------------------------------------------------------------------------------------------ case makers


@dataclass(frozen=True)
class Case:
    id: str
    write: Callable[[Path], Path]  # writes the case under the given folder, returns the path to pass
    expect: str  # a distinctive part of the error (with the JSON path where there is one)
    sets: tuple[str, ...] = ()


def _file(name: str, data: bytes) -> Callable[[Path], Path]:
    def write(folder: Path) -> Path:
        path = folder / name
        path.write_bytes(data)
        return path
    return write


def raw(case_id: str, data: bytes, expect: str) -> Case:
    return Case(case_id, _file(f"{case_id}.json", data), expect)


def ui(case_id: str, mutate: Callable[[dict], Any], expect: str) -> Case:
    data = copy.deepcopy(UI_BASE)
    mutate(data)
    return Case(case_id, _file(f"{case_id}.json", json.dumps(data).encode()), expect)


def api(case_id: str, mutate: Callable[[dict], Any], expect: str, sets: tuple[str, ...] = ()) -> Case:
    data = copy.deepcopy(API_BASE)
    mutate(data)
    return Case(case_id, _file(f"{case_id}.json", json.dumps(data).encode()), expect, sets)


def api_text(case_id: str, text: str, expect: str, encoding: str = "utf-8", bom: bytes = b"") -> Case:
    return raw(case_id, bom + text.encode(encoding), expect)


def setitem(path: tuple, value: Any) -> Callable[[dict], None]:
    """A mutation that sets ``data[path[0]][path[1]]... = value``."""
    def mutate(data: dict) -> None:
        node = data
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return mutate


def _with_nan_cond_aug() -> str:
    """The API example with cond_aug written as the JSON literal NaN (which Python's json accepts)."""
    data = copy.deepcopy(API_BASE)
    data["3"]["inputs"]["cond_aug"] = "@@"
    return json.dumps(data).replace('"@@"', "NaN")


NAN_COND_AUG = "node 3 (SVDLab_ImageToVideoConditioning) input 'cond_aug': value nan is not a finite number"


def _directory(folder: Path) -> Path:
    (folder / "a_folder.json").mkdir()
    return folder / "a_folder.json"


def _fifo(folder: Path) -> Path:
    os.mkfifo(folder / "pipe.json")
    return folder / "pipe.json"


def _sparse_huge(folder: Path) -> Path:
    path = folder / "huge.json"
    with open(path, "wb") as handle:
        handle.truncate(65 * 2**20)  # sparse: nothing is written, the size alone must refuse it
    return path


def _symlink_loop(folder: Path) -> Path:
    (folder / "loop.json").symlink_to(folder / "loop.json")
    return folder / "loop.json"


def _reroute_loop(data: dict) -> None:
    data["nodes"] += [
        {"id": 10, "type": "Reroute", "mode": 0, "inputs": [{"name": "", "type": "*", "link": 100}],
         "outputs": [{"name": "", "type": "*", "links": [101, 102]}]},
        {"id": 11, "type": "Reroute", "mode": 0, "inputs": [{"name": "", "type": "*", "link": 101}],
         "outputs": [{"name": "", "type": "*", "links": [100]}]}]
    data["links"] += [[100, 11, 0, 10, 0, "*"], [101, 10, 0, 11, 0, "*"], [102, 10, 0, 3, 0, "SVDLAB_MODEL"]]
    data["nodes"][2]["inputs"][0]["link"] = 102


def _renumber_first_node(new_id: str) -> Callable[[dict], None]:
    def mutate(data: dict) -> None:
        data["nodes"][0]["id"] = new_id
        for link in data["links"]:
            if link[1] == 1:
                link[1] = new_id
    return mutate


def _many_bad_links(data: dict) -> None:
    data["links"] = [[i, 1, "zero", 3, 0, "X"] for i in range(1000, 1300)]


def _mute_all(data: dict) -> None:
    for node in data["nodes"]:
        node["mode"] = 2


BYTES_CASES = [
    api_text("utf16le_bom_decoded", _with_nan_cond_aug(), NAN_COND_AUG, "utf-16-le", b"\xff\xfe"),
    api_text("utf16be_bom_decoded", _with_nan_cond_aug(), NAN_COND_AUG, "utf-16-be", b"\xfe\xff"),
    api_text("utf16le_no_bom_decoded", _with_nan_cond_aug(), NAN_COND_AUG, "utf-16-le"),
    api_text("utf8_bom_accepted", _with_nan_cond_aug(), NAN_COND_AUG, "utf-8", b"\xef\xbb\xbf"),
    api_text("utf32le_bom_decoded", _with_nan_cond_aug(), NAN_COND_AUG, "utf-32-le", b"\xff\xfe\x00\x00"),
    raw("utf16_truncated", b"\xff\xfe" + '{"1": 2}'.encode("utf-16-le") + b"{",
        "looks like UTF-16 little-endian text but is not valid"),
    raw("utf16_lone_surrogate", b"\xff\xfe" + '{"a": "'.encode("utf-16-le") + b"\x00\xd8" + '"}'.encode("utf-16-le"),
        "is not valid UTF-16 little-endian"),
    raw("latin1_bytes", '{"1": {"class_type": "café"}}'.encode("latin-1"),
        "is not UTF-8 text (byte 0xe9 at offset 25 cannot be decoded)"),
    raw("png_given_as_workflow", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "is not UTF-8 text (byte 0x89 at offset 0"),
    raw("empty_file", b"", "is not valid JSON: Expecting value at line 1 column 1"),
    raw("truncated_json", json.dumps(API_BASE).encode()[:200], "is not valid JSON: "),
    raw("trailing_garbage", json.dumps(API_BASE).encode() + b" }", "is not valid JSON: Extra data"),
    raw("deep_arrays", b"[" * 100_000 + b"]" * 100_000, "nests objects/arrays more than 64 levels deep (at line 1 "
        "column 65)"),
    raw("deep_objects_in_an_input", ('{"1": {"class_type": "SVDLab_Decode", "inputs": {"x": ' + '{"a": ' * 5000
                                     + "1" + "}" * 5000 + "}}}").encode(), "more than 64 levels deep"),
    raw("brackets_inside_strings_are_not_depth", json.dumps({"1": {"class_type": "[" * 5000, "inputs": {}}}).encode(),
        "unknown node type '[[[["),
    raw("integer_of_5000_digits", b'{"1": {"class_type": "SVDLab_Decode", "inputs": {"overlap": ' + b"9" * 5000
        + b"}}}", "is not usable JSON: Exceeds the limit"),
    raw("prompt_body_with_extra_pnginfo_a_list", json.dumps(
        {"prompt": json.loads(_with_nan_cond_aug()), "extra_data": {"extra_pnginfo": [1]}}).encode(), NAN_COND_AUG),
    raw("top_level_array", b"[1, 2, 3]", "a workflow must be a JSON object, got list"),
    raw("top_level_string", b'"hello"', "a workflow must be a JSON object, got str"),
    raw("top_level_null", b"null", "a workflow must be a JSON object, got NoneType"),
    raw("empty_object", b"{}", "not a ComfyUI workflow"),
    api_text("nan_literal_cond_aug", _with_nan_cond_aug(), NAN_COND_AUG),
    api_text("infinity_literal_min_cfg", json.dumps(API_BASE).replace('"min_cfg": 1.0', '"min_cfg": Infinity'),
             "node 4 (SVDLab_Sampler) input 'min_cfg': value inf is not a finite number"),
    api_text("minus_infinity_literal_max_cfg", json.dumps(API_BASE).replace('"max_cfg": 2.5', '"max_cfg": -Infinity'),
             "node 4 (SVDLab_Sampler) input 'max_cfg': value -inf is not a finite number"),
    api_text("overflowing_exponent_denoise", json.dumps(API_BASE).replace('"denoise": 1.0', '"denoise": 1e999'),
             "node 4 (SVDLab_Sampler) input 'denoise': value inf is not a finite number"),
]

SPECIAL_CASES = [
    Case("a_directory", _directory, "workflow {path} is a folder, not a file"),
    Case("a_fifo", _fifo, "workflow {path} is not a regular file: it is a named pipe (FIFO)"),
    Case("missing_file", lambda folder: folder / "nope.json", "workflow not found: {path}"),
    Case("missing_parent", lambda folder: folder / "nope" / "w.json", "workflow not found: {path}"),
    Case("parent_is_a_file", lambda folder: _file("f.json", b"{}")(folder) / "w.json",
         "workflow not found: {path} (a parent of it is not a folder)"),
    Case("sparse_65_mib", _sparse_huge, "workflow {path} is 65.0 MiB; the limit is 64 MiB"),
    Case("symlink_loop", _symlink_loop, "cannot read workflow {path}: Too many levels of symbolic links"),
]

UI_CASES = [
    ui("nodes_is_an_object", setitem(("nodes",), {"1": {}}), "UI workflow: \"nodes\" must be a list, got dict"),
    ui("links_missing", lambda d: d.pop("links"), "UI workflow: \"links\" must be a list, got NoneType None"),
    ui("node_is_a_string", setitem(("nodes", 2), "node"), "UI workflow: nodes[2] must be an object, got str 'node'"),
    ui("node_id_float", setitem(("nodes", 0, "id"), 1.5),
       "nodes[0].id must be an integer or a non-empty string, got float 1.5"),
    ui("node_id_bool", setitem(("nodes", 0, "id"), True), "nodes[0].id must be an integer or a non-empty string, "
       "got bool True"),
    ui("node_id_list", setitem(("nodes", 0, "id"), [1]), "nodes[0].id must be an integer or a non-empty string"),
    ui("node_id_missing", lambda d: d["nodes"][1].pop("id"), "nodes[1] has no \"id\""),
    ui("node_id_superscript_digit", _renumber_first_node("³"),
       "node ³ (SVDLab_CheckpointLoader) input 'ckpt_name'"),
    ui("node_id_arabic_indic_digit", _renumber_first_node("٣"),
       "node ٣ (SVDLab_CheckpointLoader) input 'ckpt_name'"),
    ui("duplicate_node_id", setitem(("nodes", 1, "id"), 1), "nodes[1].id 1 is used by nodes[0] too"),
    ui("type_missing", lambda d: d["nodes"][0].pop("type"), "nodes[0].type must be a non-empty string"),
    ui("type_a_number", setitem(("nodes", 3, "type"), 7), "nodes[3].type must be a non-empty string (the node class), "
       "got int 7"),
    ui("mode_a_string", setitem(("nodes", 0, "mode"), "always"), "nodes[0].mode must be an integer"),
    ui("title_a_list", setitem(("nodes", 0, "title"), ["x"]), "nodes[0].title must be a string, got list"),
    ui("inputs_an_object", setitem(("nodes", 2, "inputs"), {"model": 1}), "nodes[2].inputs must be a list, got dict"),
    ui("input_entry_a_number", setitem(("nodes", 2, "inputs", 0), 5),
       "nodes[2].inputs[0] must be an object, got int 5"),
    ui("input_link_a_list", setitem(("nodes", 2, "inputs", 0, "link"), [1, 2]),
       "UI workflow: nodes[2].inputs[0].link must be an integer link id or null, got list [1, 2]"),
    ui("input_link_a_string", setitem(("nodes", 2, "inputs", 1, "link"), "2"),
       "nodes[2].inputs[1].link must be an integer link id or null, got str '2'"),
    ui("input_link_a_float", setitem(("nodes", 2, "inputs", 1, "link"), 2.0),
       "nodes[2].inputs[1].link must be an integer link id or null, got float 2.0"),
    ui("input_name_a_number", setitem(("nodes", 2, "inputs", 0, "name"), 3),
       "nodes[2].inputs[0].name must be a string"),
    ui("input_widget_a_string", setitem(("nodes", 2, "inputs", 0, "widget"), "seed"),
       "nodes[2].inputs[0].widget must be an object with a string \"name\""),
    ui("outputs_a_string", setitem(("nodes", 0, "outputs"), "model"), "nodes[0].outputs must be a list, got str"),
    ui("output_links_with_a_string", setitem(("nodes", 0, "outputs", 0, "links"), [1, "3"]),
       "nodes[0].outputs[0].links[1] must be an integer link id, got str '3'"),
    ui("widgets_values_a_number", setitem(("nodes", 0, "widgets_values"), 7),
       "nodes[0].widgets_values must be a list (or an object by widget name), got int 7"),
    ui("widget_value_wrong_type", setitem(("nodes", 2, "widgets_values", 0), "wide"),
       "node 3 (SVDLab_ImageToVideoConditioning) input 'width': expects INT, got str 'wide'"),
    ui("widget_value_bool_for_int", setitem(("nodes", 2, "widgets_values", 2), True),
       "node 3 (SVDLab_ImageToVideoConditioning) input 'frames': expects INT, got bool True"),
    ui("widget_value_nan", setitem(("nodes", 2, "widgets_values", 5), float("nan")), NAN_COND_AUG),
    ui("widget_value_huge_string", setitem(("nodes", 5, "widgets_values", 3), "p" * BIG),
       "input 'filename_prefix': a text of 1048576 characters is longer than the limit of 65536"),
    ui("link_with_three_entries", setitem(("links", 0), [1, 1, 0]),
       "links[0] must be [id, origin_id, origin_slot, target_id, target_slot, type] (6 entries), got 3 entries"),
    ui("link_id_a_list", setitem(("links", 0, 0), [1]), "links[0][0] (the link id) must be an integer, got list [1]"),
    ui("link_origin_slot_negative", setitem(("links", 1, 2), -1), "links[1][2] (origin_slot) must be an integer >= 0, "
       "got int -1"),
    ui("link_origin_slot_a_string", setitem(("links", 1, 2), "0"), "links[1][2] (origin_slot) must be an integer >= 0, "
       "got str '0'"),
    ui("link_origin_id_an_object", setitem(("links", 1, 1), {"id": 2}),
       "links[1][1] (origin_id) must be a node id (integer or string), got dict"),
    ui("link_a_string", setitem(("links", 0), "1,1,0,3,0"), "links[0] must be a list [id, origin_id, origin_slot, "
       "target_id, target_slot, type] or an object, got str"),
    ui("link_object_without_origin", setitem(("links", 0), {"id": 1, "target_id": 3}),
       "links[0] (an object) needs origin_id, origin_slot"),
    ui("duplicate_link_id", setitem(("links", 1, 0), 1), "links[1] has the id 1 of links[0] too"),
    ui("many_bad_links_listed_briefly", _many_bad_links, "UI workflow: 300 problems:\n  links[0][2] (origin_slot)"),
    ui("definitions_a_list", setitem(("definitions",), []), "UI workflow: definitions must be an object, got list"),
    ui("subgraphs_a_number", setitem(("definitions",), {"subgraphs": 5}),
       "UI workflow: definitions.subgraphs must be a list, got int 5"),
    ui("subgraph_without_id", setitem(("definitions",), {"subgraphs": [{"name": "x"}]}),
       "definitions.subgraphs[0] must be an object with a string \"id\""),
    ui("subgraph_node", lambda d: (d.__setitem__("definitions", {"subgraphs": [{"id": "abc-123"}]}),
                                   d["nodes"][3].__setitem__("type", "abc-123")),
       "node 4 is a subgraph or group node (abc-123)"),
    ui("reroute_loop", _reroute_loop, "node 3: a link loops through reroutes or bypassed nodes"),
    ui("all_nodes_muted", _mute_all, "the workflow has no nodes that run (all are muted, bypassed or notes)"),
    ui("unknown_node_type", setitem(("nodes", 4, "type"), "SVDLab_Decoder"),
       "node 5 (SVDLab_Decoder): unknown node type 'SVDLab_Decoder' (did you mean SVDLab_Decode"),
]

API_CASES = [
    api("class_type_a_number", setitem(("1", "class_type"), 5),
        "API workflow: 1.class_type must be a non-empty string (the node's class), got int 5"),
    api("class_type_empty", setitem(("1", "class_type"), ""), "1.class_type must be a non-empty string"),
    api("class_type_huge", setitem(("5", "class_type"), "X" * BIG), ": unknown node type 'XXXX"),
    api("node_a_list", setitem(("2",), [1, 2]),
        "API workflow: 2 must be an object {\"class_type\", \"inputs\"}, got list"),
    api("inputs_a_list", setitem(("3", "inputs"), [1]), "3.inputs must be an object {input name: value}, got list [1]"),
    api("link_one_entry", setitem(("3", "inputs", "model"), ["1"]), "3.inputs.model: a link must be [node_id, "
        "output_index] (a string or integer id and an integer >= 0), got ['1']"),
    api("link_three_entries", setitem(("3", "inputs", "model"), ["1", 0, 0]), "3.inputs.model: a link must be"),
    api("link_index_a_string", setitem(("4", "inputs", "model"), ["1", "0"]), "4.inputs.model: a link must be"),
    api("link_node_id_a_list", setitem(("4", "inputs", "conditioning"), [["3"], 0]),
        "4.inputs.conditioning: a link must be"),
    api("link_index_negative", setitem(("5", "inputs", "latent"), ["4", -1]), "5.inputs.latent: a link must be"),
    api("link_index_bool", setitem(("5", "inputs", "latent"), ["4", True]), "5.inputs.latent: a link must be"),
    api("link_to_missing_node", setitem(("5", "inputs", "latent"), ["99", 0]),
        "node 5 (SVDLab_Decode) input 'latent': linked to node 99, which is not in the workflow"),
    api("link_to_missing_output", setitem(("5", "inputs", "latent"), ["4", 5]),
        "node 5 (SVDLab_Decode) input 'latent': linked to output 5 of node 4 (SVDLab_Sampler), which has 1 output(s)"),
    api("link_of_wrong_type", setitem(("5", "inputs", "latent"), ["2", 0]),
        "node 5 (SVDLab_Decode) input 'latent': expects LATENT but is linked to output 0 of node 2"),
    api("empty_node_id", lambda d: d.__setitem__("", d.pop("1")), "a node has the empty id \"\""),
    api("huge_node_id", lambda d: d.__setitem__("7" * BIG, {"class_type": "SVDLab_Nope", "inputs": {}}),
        "unknown node type 'SVDLab_Nope'"),
    api("node_without_class_type", lambda d: d.update({"1": {"x": 1}}),
        "API workflow: 1.class_type must be a non-empty string"),
    api("unknown_input", setitem(("5", "inputs", "chunk"), 4), "node 5 (SVDLab_Decode) input 'chunk': SVDLab_Decode "
        "has no input 'chunk'"),
    api("missing_required_input", lambda d: d["5"]["inputs"].pop("overlap"),
        "node 5 (SVDLab_Decode) input 'overlap': required input is missing"),
    api("float_for_int", setitem(("4", "inputs", "steps"), 2.5), "node 4 (SVDLab_Sampler) input 'steps': expects INT, "
        "got float 2.5"),
    api("bool_for_float", setitem(("4", "inputs", "denoise"), False), "input 'denoise': expects FLOAT, got bool False"),
    api("string_for_float", setitem(("4", "inputs", "min_cfg"), "1.0"),
        "input 'min_cfg': expects FLOAT, got str '1.0'"),
    api("int_too_large_for_float", setitem(("4", "inputs", "max_cfg"), 10**400),
        "input 'max_cfg': value 1000000000"),
    api("negative_steps", setitem(("4", "inputs", "steps"), -5),
        "node 4 (SVDLab_Sampler) input 'steps': value -5 is below the minimum 0"),
    api("huge_steps", setitem(("4", "inputs", "steps"), 10**30),
        "node 4 (SVDLab_Sampler) input 'steps': value 1000000000000000000000000000000 is above the maximum 500"),
    api("combo_huge_string", setitem(("4", "inputs", "sampler"), "e" * BIG),
        "node 4 (SVDLab_Sampler) input 'sampler': value 'eeee"),
    api("combo_a_dict", setitem(("4", "inputs", "sampler"), {"a": 1}),
        "node 4 (SVDLab_Sampler) input 'sampler': value {'a': 1} is not one of the choices"),
    api("set_nan", lambda d: None, NAN_COND_AUG, ("3.cond_aug=nan",)),
    api("set_inf", lambda d: None, "node 4 (SVDLab_Sampler) input 'min_cfg': value inf is not a finite number",
        ("4.min_cfg=inf",)),
    api("set_minus_inf", lambda d: None, "node 4 (SVDLab_Sampler) input 'max_cfg': value -inf is not a finite number",
        ("4.max_cfg=-Infinity",)),
    api("set_exponent_for_int", lambda d: None, "input 'width' expects INT, got '1e5'", ("3.width=1e5",)),
    api("set_unknown_node", lambda d: None, "--set 42.seed=1: no node 42 in the workflow", ("42.seed=1",)),
    api("set_huge_value", lambda d: None, "input 'steps' expects INT, got '9999", ("4.steps=" + "9" * 5000,)),
]

CASES = [*BYTES_CASES, *SPECIAL_CASES, *UI_CASES, *API_CASES]


def test_case_ids_are_unique_and_enough():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 40


# ------------------------------------------------------------------------------------------------ running


@pytest.fixture
def folders(sandbox):
    """The sandbox's folders configured in the bridge (as `svd-lab run` does), reset afterwards."""
    bridge.configure(models_dirs=[sandbox.folder("models")], output_dir=sandbox.folder("output"),
                     input_dir=sandbox.folder("input"), temp_dir=sandbox.folder("temp"))
    yield sandbox
    bridge.reset()


def _library_text(path: Path, sets: tuple[str, ...]) -> str:
    try:
        prompt, _ = load_workflow(path, REGISTRY)
        prompt = apply_overrides(prompt, sets, REGISTRY)
    except WorkflowError as exc:
        return str(exc)
    return "\n".join(str(p) for p in validate(prompt, REGISTRY))


def _expected(case: Case, path: Path) -> str:
    return case.expect.replace("{path}", str(path))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_library_refuses(case, folders, no_process):
    path = case.write(folders.folder("temp"))
    folders.mark()
    text = _library_text(path, case.sets)
    assert text, "accepted silently"
    assert _expected(case, path) in text
    assert len(text) < MAX_STDERR, text[:300]
    assert not any(folders.folder("output").iterdir())


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_cli_refuses(case, folders, no_process, capsys):
    path = case.write(folders.folder("temp"))
    folders.mark()
    argv = ["run", str(path), "--output-dir", str(folders.folder("output")),
            "--input-dir", str(folders.folder("input")), "--models-dir", str(folders.folder("models"))]
    for text in case.sets:
        argv += ["--set", text]
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, err[-2000:]
    assert "Traceback" not in err and "Traceback" not in out
    assert _expected(case, path) in err
    assert len(err) < MAX_STDERR, err[:300]
    assert not any(folders.folder("output").iterdir())
