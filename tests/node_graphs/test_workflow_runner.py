"""Headless workflow runner: UI -> API conversion, validation, execution, overrides and the CLI hook.

Uses small fake V1 node classes, so it runs without the pack's nodes (and without ComfyUI).
"""

from __future__ import annotations

import io
import json

import pytest
import torch

from comfyui_svd_lab.workflow import (
    NodeExecutionError,
    Problem,
    TextProgress,
    ValidationError,
    WorkflowError,
    apply_overrides,
    execute,
    load_workflow,
    run_workflow_cli,
    runtime,
    validate,
)
from comfyui_svd_lab.workflow import progress as progress_mod

CALLS: list[str] = []
SEEN: list[dict] = []


class Number:
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 1, "min": -100, "max": 100})}}

    def run(self, value):
        CALLS.append("Number")
        return (value,)


class Add:
    RETURN_TYPES = ("INT",)
    RETURN_NAMES = ("sum",)
    FUNCTION = "add"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"a": ("INT", {"default": 0, "min": 1, "max": 50}), "b": ("INT", {"default": 0})},
                "optional": {"scale": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0})}}

    def add(self, a, b, scale=1.0):
        CALLS.append("Add")
        return (int((a + b) * scale),)


class Sampler:
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2**32}),
                             "steps": ("INT", {"default": 20, "min": 1, "max": 100}),
                             "sampler": (["euler", "heun"],),
                             "model": ("INT", {"forceInput": True})},
                "optional": {"strength": ("INT", {"default": 3, "control_after_generate": True}),
                             "flag": ("BOOLEAN", {"default": False}),
                             "tags": ("STRING", {"default": "x"})}}

    def sample(self, **kwargs):
        CALLS.append("Sampler")
        return ({"samples": kwargs},)


class Latent:
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def run(self):
        return ({"samples": None},)


class Blend:  # a union input type
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"x": ("IMAGE,LATENT",)}}

    def run(self, x):
        return (x,)


class Show:
    OUTPUT_NODE = True
    RETURN_TYPES = ()
    FUNCTION = "show"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("*",)}, "optional": {"label": ("STRING", {"default": ""})},
                "hidden": {"unique_id": "UNIQUE_ID", "prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    def show(self, value, label="", unique_id=None, prompt=None, extra_pnginfo=None):
        CALLS.append("Show")
        SEEN.append({"unique_id": unique_id, "prompt": prompt, "extra_pnginfo": extra_pnginfo,
                     "inference": torch.is_inference_mode_enabled(), "out_dir": runtime.output_directory()})
        return {"ui": {"text": [f"{label}{value}"]}, "result": ()}


class Sized:
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"width": ("INT", {"default": 64, "min": 64, "max": 1024}),
                             "height": ("INT", {"default": 64, "min": 64, "max": 1024})}}

    @classmethod
    def VALIDATE_INPUTS(cls, width):
        return True if width % 64 == 0 else f"width {width} is not a multiple of 64"

    def run(self, width, height):
        return ({"samples": (width, height)},)


class Boom:
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",)}}

    def run(self, value):
        raise ValueError("frames must be a multiple of 8")


class Steps:  # reports its own progress like nodes do through the bridge
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"steps": ("INT", {"default": 3, "min": 1})}}

    def run(self, steps):
        for i in range(1, steps + 1):
            progress_mod.report(i, steps)
        return (steps,)


class Spread:
    RETURN_TYPES = ("INT",)
    OUTPUT_IS_LIST = (True,)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def run(self):
        return ([1, 2, 3],)


class Save:
    OUTPUT_NODE = True
    RETURN_TYPES = ()
    FUNCTION = "save"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",), "prefix": ("STRING", {"default": "out"})}}

    def save(self, value, prefix):
        folder = runtime.output_directory() / "run"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{prefix}.txt").write_text(str(value))
        return {"ui": {"files": [{"filename": f"{prefix}.txt", "subfolder": "run", "type": "output"}]}}


class Pick:  # an upload combo and a combo with control_after_generate (the frontend adds a filter text too)
    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": (["a.png", "b.png"], {"image_upload": True}),
                             "mode": ("COMBO", {"options": ["x", "y"], "control_after_generate": True}),
                             "count": ("INT", {"default": 1})}}

    def run(self, image, mode, count):
        return (f"{image}{mode}{count}",)


class Strength:  # VALIDATE_INPUTS takes the FLOAT (so ComfyUI skips its range check) and the required text
    RETURN_TYPES = ("FLOAT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"name": ("STRING", {"default": ""}),
                             "strength": ("FLOAT", {"default": 1.0, "min": -5.0, "max": 5.0})}}

    @classmethod
    def VALIDATE_INPUTS(cls, name, strength):
        if strength is not None and not -5 <= strength <= 5:
            return f"strength {strength} is outside -5..5"
        return True

    def run(self, name, strength):
        return (strength,)


REGISTRY = {c.__name__: c for c in (Number, Add, Sampler, Latent, Blend, Show, Sized, Boom, Steps, Spread, Save,
                                    Pick, Strength)}


@pytest.fixture(autouse=True)
def _reset():
    CALLS.clear()
    SEEN.clear()


def n(class_type: str, **inputs) -> dict:
    return {"class_type": class_type, "inputs": inputs}


def base_prompt() -> dict:
    """1 Number -> 3 Add <- 2 Number; 4 Show(3); 9 Number unused."""
    return {"1": n("Number", value=2), "2": n("Number", value=5), "3": n("Add", a=["1", 0], b=["2", 0]),
            "4": n("Show", value=["3", 0]), "9": n("Number", value=7)}


def only(problems: list[Problem]) -> Problem:
    assert len(problems) == 1, [str(p) for p in problems]
    return problems[0]


# ---------------------------------------------------------------- validation: one test per rule


def test_valid_prompt_has_no_problems():
    assert validate(base_prompt(), REGISTRY) == []


def test_unknown_node_type():
    prompt = base_prompt() | {"5": n("Nummber", value=1)}
    p = only(validate(prompt, REGISTRY))
    assert (p.node_id, p.input, p.kind) == ("5", None, "unknown_node_type")
    assert "Nummber" in p.message and "did you mean Number" in p.message


def test_missing_required_input():
    prompt = base_prompt()
    del prompt["3"]["inputs"]["b"]
    p = only(validate(prompt, REGISTRY))
    assert (p.node_id, p.input, p.kind) == ("3", "b", "missing_input")


def test_missing_optional_input_is_fine_but_undeclared_input_is_not():
    prompt = base_prompt()
    prompt["3"]["inputs"]["bogus"] = 1
    p = only(validate(prompt, REGISTRY))
    assert (p.node_id, p.input, p.kind) == ("3", "bogus", "extra_input") and "a, b, scale" in p.message


def test_dangling_link():
    prompt = base_prompt()
    prompt["3"]["inputs"]["b"] = ["42", 0]
    p = only(validate(prompt, REGISTRY))
    assert (p.node_id, p.input, p.kind) == ("3", "b", "dangling_link") and "node 42" in p.message


def test_wrong_output_index():
    prompt = base_prompt()
    prompt["3"]["inputs"]["b"] = ["2", 1]
    p = only(validate(prompt, REGISTRY))
    assert (p.node_id, p.input, p.kind) == ("3", "b", "bad_output_index") and "1 output(s)" in p.message


def test_type_mismatch():
    prompt = base_prompt() | {"5": n("Latent")}
    prompt["3"]["inputs"]["b"] = ["5", 0]
    p = only(validate(prompt, REGISTRY))
    assert (p.node_id, p.input, p.kind) == ("3", "b", "type_mismatch")
    assert "expects INT" in p.message and "LATENT" in p.message


def test_any_type_and_unions_match():
    prompt = {"1": n("Latent"), "2": n("Blend", x=["1", 0]), "3": n("Show", value=["2", 0])}
    assert validate(prompt, REGISTRY) == []


def test_cycle_names_its_nodes():
    prompt = base_prompt() | {"5": n("Add", a=["6", 0], b=1), "6": n("Add", a=["5", 0], b=1)}
    p = only(validate(prompt, REGISTRY))
    assert (p.node_id, p.kind) == ("5", "cycle") and "nodes 5, 6" in p.message


@pytest.mark.parametrize(("value", "words"), [(0, "below the minimum 1"), (51, "above the maximum 50")])
def test_value_out_of_range(value, words):
    prompt = base_prompt()
    prompt["3"]["inputs"]["a"] = value
    p = only(validate(prompt, REGISTRY))
    assert (p.node_id, p.input, p.kind) == ("3", "a", "out_of_range") and words in p.message
    if value == 0:
        assert str(p) == "node 3 (Add) input 'a': value 0 is below the minimum 1"


def test_value_not_in_choices():
    prompt = {"1": n("Number", value=1), "2": n("Sampler", seed=1, steps=2, sampler="dpm", model=["1", 0]),
              "3": n("Show", value=["2", 0])}
    p = only(validate(prompt, REGISTRY))
    assert (p.node_id, p.input, p.kind) == ("2", "sampler", "not_in_choices") and "'euler'" in p.message


@pytest.mark.parametrize("value", ["3", 2.5, True, None])
def test_wrong_primitive_type(value):
    prompt = base_prompt()
    prompt["1"]["inputs"]["value"] = value
    p = only(validate(prompt, REGISTRY))
    assert (p.node_id, p.input, p.kind) == ("1", "value", "wrong_type") and "expects INT" in p.message


def test_constant_for_a_socket_type():
    prompt = {"1": n("Blend", x=3), "2": n("Show", value=["1", 0])}
    p = only(validate(prompt, REGISTRY))
    assert (p.node_id, p.input, p.kind) == ("1", "x", "wrong_type") and "link" in p.message


def test_validate_inputs_string_is_a_problem_and_replaces_the_range_check_it_declares():
    prompt = {"1": n("Sized", width=32, height=64), "2": n("Show", value=["1", 0])}
    p = only(validate(prompt, REGISTRY))  # 32 < min 64 is not reported: VALIDATE_INPUTS takes `width`
    assert (p.node_id, p.input, p.kind, p.message) == ("1", "width", "custom_validation",
                                                       "width 32 is not a multiple of 64")
    prompt["1"]["inputs"] |= {"width": 128, "height": 32}  # `height` keeps ComfyUI's range check
    assert only(validate(prompt, REGISTRY)).kind == "out_of_range"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_floats_are_refused_also_where_validate_inputs_takes_the_input(value):
    cases = ((n("Add", a=1, b=2, scale=value), "scale"), (n("Strength", name="x", strength=value), "strength"))
    for node, name in cases:
        p = only(validate({"1": node, "2": n("Show", value=["1", 0])}, REGISTRY))
        assert (p.input, p.kind) == (name, "not_finite")
        assert f"value {value} is not a finite number" in p.message
    p = only(validate({"1": n("Number", value=value), "2": n("Show", value=["1", 0])}, REGISTRY))
    assert (p.input, p.kind) == ("value", "not_finite")  # INT too


def test_huge_numbers_and_long_texts_are_refused_and_not_echoed():
    prompt = {"1": n("Add", a=1, b=2, scale=10**400), "2": n("Show", value=["1", 0], label="y" * 100_000)}
    problems = validate(prompt, REGISTRY)
    assert [(p.input, p.kind) for p in problems] == [("scale", "out_of_range"), ("label", "too_long")]
    assert "too large for a FLOAT" in problems[0].message and "(401 characters as text)" in problems[0].message
    assert "a text of 100000 characters is longer than the limit of 65536" in problems[1].message
    assert all(len(str(p)) < 300 for p in problems)
    long_name = "Q" * 100_000
    p = only(validate({"1": n(long_name), "2": n("Show", value=1)}, REGISTRY))
    assert p.kind == "unknown_node_type" and "(100000 characters)" in str(p) and len(str(p)) < 400


def test_a_missing_input_does_not_hide_the_nodes_own_check():
    problems = validate({"1": n("Strength", strength=9.0), "2": n("Show", value=["1", 0])}, REGISTRY)
    assert [(p.input, p.kind) for p in problems] == [("name", "missing_input"), (None, "custom_validation")]
    assert problems[1].message == "strength 9.0 is outside -5..5"


def test_node_ids_with_non_ascii_digits_sort_and_validate():
    prompt = {"³": n("Number", value=1), "٣": n("Number", value=2), "10": n("Add", a=["³", 0], b=["٣", 0]),
              "2": n("Show", value=["10", 0])}
    assert validate(prompt, REGISTRY) == []
    assert list(execute(prompt, REGISTRY)) == ["³", "٣", "10", "2"]


def test_no_output_node():
    prompt = {"1": n("Number", value=1)}
    p = only(validate(prompt, REGISTRY))
    assert (p.node_id, p.kind) == (None, "no_output") and str(p).startswith("workflow: ")


def test_every_problem_is_reported():
    prompt = base_prompt() | {"5": n("Nope"), "6": n("Add", a=0, b="x", extra=1)}
    kinds = sorted((p.node_id, p.input, p.kind) for p in validate(prompt, REGISTRY))
    assert kinds == [("5", None, "unknown_node_type"), ("6", "a", "out_of_range"), ("6", "b", "wrong_type"),
                     ("6", "extra", "extra_input")]


def test_nothing_runs_when_validation_fails():
    prompt = base_prompt()
    prompt["3"]["inputs"]["a"] = 0
    with pytest.raises(ValidationError, match="below the minimum") as info:
        execute(prompt, REGISTRY)
    assert len(info.value.problems) == 1 and CALLS == []


# ---------------------------------------------------------------- UI -> API conversion


def ui_node(node_id, kind, widgets=None, inputs=(), mode=0):
    return {"id": node_id, "type": kind, "mode": mode, "inputs": list(inputs), "outputs": [],
            "widgets_values": widgets if widgets is not None else []}


def socket(name, kind, link, widget=False):
    return {"name": name, "type": kind, "link": link} | ({"widget": {"name": name}} if widget else {})


def ui(nodes, links):
    return {"last_node_id": 99, "last_link_id": 99, "nodes": nodes, "links": links, "version": 0.4}


def test_ui_widgets_values_skip_control_after_generate_and_take_links():
    workflow = ui([ui_node(1, "Number", [7]),
                   ui_node(2, "Sampler", [42, "randomize", 20, "heun", 9, "fixed", True, ["a", "b"]],
                           [socket("model", "INT", 1), socket("steps", "INT", 2, widget=True)]),
                   ui_node(3, "Show", ["", ""], [socket("value", "LATENT", 3)])],
                  [[1, 1, 0, 2, 0, "INT"], [2, 1, 0, 2, 1, "INT"], [3, 2, 0, 3, 0, "LATENT"]])
    prompt, kept = load_workflow(workflow, REGISTRY)
    assert kept == workflow
    assert prompt["2"]["inputs"] == {"seed": 42, "steps": ["1", 0], "sampler": "heun", "model": ["1", 0],
                                     "strength": 9, "flag": True, "tags": {"__value__": ["a", "b"]}}
    assert prompt["1"] == {"class_type": "Number", "inputs": {"value": 7}, "_meta": {"title": "Number"}}
    assert validate(prompt, REGISTRY) == [Problem("2", "tags", "wrong_type", "expects STRING, got list ['a', 'b']",
                                                  "Sampler")]


def test_ui_missing_trailing_widget_values_take_defaults_and_old_files_without_control_value():
    workflow = ui([ui_node(1, "Number", [1]), ui_node(2, "Sampler", [5, 10, "euler"], [socket("model", "INT", 1)]),
                   ui_node(3, "Show", None, [socket("value", "LATENT", 2)])],
                  [[1, 1, 0, 2, 0, "INT"], [2, 2, 0, 3, 0, "LATENT"]])
    prompt, _ = load_workflow(workflow, REGISTRY)
    assert prompt["2"]["inputs"] | {} == {"seed": 5, "steps": 10, "sampler": "euler", "model": ["1", 0],
                                          "strength": 3, "flag": False, "tags": "x"}
    assert prompt["3"]["inputs"] == {"value": ["2", 0], "label": ""}


# The editor saves the upload button's value after every other widget (seen in ComfyUI 0.8.0's frontend 1.35.9:
# a node with an upload combo and a path STRING serialises ["x.png", "", "image"]).
@pytest.mark.parametrize("values", [["b.png", "y", "increment-wrap", "", 4, "image"], ["b.png", "y", 4]])
def test_ui_upload_and_combo_control_extras(values):
    workflow = ui([ui_node(1, "Pick", values), ui_node(2, "Show", [""], [socket("value", "STRING", 1)])],
                  [[1, 1, 0, 2, 0, "STRING"]])
    prompt, _ = load_workflow(workflow, REGISTRY)
    assert prompt["1"]["inputs"] == {"image": "b.png", "mode": "y", "count": 4}
    assert validate(prompt, REGISTRY) == []


def test_ui_muted_bypassed_notes_reroutes_and_primitives():
    workflow = ui([ui_node(1, "Number", [2]),
                   ui_node(2, "Reroute", None, [socket("", "*", 1)]),
                   ui_node(3, "Add", [1, 1, 1.0], [socket("a", "INT", 2, widget=True)], mode=4),  # bypassed
                   ui_node(4, "Show", ["x"], [socket("value", "INT", 3)]),
                   ui_node(5, "Number", [3], mode=2),  # muted
                   ui_node(6, "Show", [""], [socket("value", "INT", 4)]),
                   ui_node(7, "Note", ["just a note"]), ui_node(8, "MarkdownNote", ["# hi"]),
                   ui_node(9, "PrimitiveNode", [11]),
                   ui_node(10, "Add", [11, 4, 1.0], [socket("a", "INT", 5, widget=True)]),
                   ui_node(11, "Show", [""], [socket("value", "INT", 6)])],
                  [[1, 1, 0, 2, 0, "*"], [2, 2, 0, 3, 0, "INT"], [3, 3, 0, 4, 0, "INT"], [4, 5, 0, 6, 0, "INT"],
                   [5, 9, 0, 10, 0, "INT"], [6, 10, 0, 11, 0, "INT"]])
    prompt, _ = load_workflow(workflow, REGISTRY)
    assert sorted(prompt, key=int) == ["1", "4", "6", "10", "11"]
    assert prompt["4"]["inputs"]["value"] == ["1", 0]  # through the bypassed Add and the reroute
    assert "value" not in prompt["6"]["inputs"]  # its source is muted
    assert prompt["10"]["inputs"]["a"] == 11  # the primitive's value, already in the widget
    p = only(validate(prompt, REGISTRY))
    assert (p.node_id, p.input, p.kind) == ("6", "value", "missing_input")


def test_ui_link_objects_and_prompt_body_and_api_file(tmp_path):
    workflow = ui([ui_node(1, "Number", [4]), ui_node(2, "Show", [""], [socket("value", "INT", 1)])],
                  [{"id": 1, "origin_id": 1, "origin_slot": 0, "target_id": 2, "target_slot": 0, "type": "INT"}])
    prompt, _ = load_workflow(workflow, REGISTRY)
    assert prompt["2"]["inputs"]["value"] == ["1", 0]
    body = {"prompt": prompt, "extra_data": {"extra_pnginfo": {"workflow": workflow}}}
    assert load_workflow(body) == (prompt, workflow)
    path = tmp_path / "api.json"
    path.write_text(json.dumps({3: n("Number", value=1)}))
    assert load_workflow(path) == ({"3": n("Number", value=1)}, None)


@pytest.mark.parametrize(("data", "words"), [
    ([1, 2], "must be a JSON object"),
    ({"a": 1}, "not a ComfyUI workflow"),
    ({"1": {"class_type": "Number", "inputs": [1]}}, "API workflow: 1.inputs must be an object"),
    ({"1": n("Number", value=1), "2": {"type": "Show"}}, "2.class_type must be a non-empty string"),
    ({"nodes": {}, "links": []}, "\"nodes\" must be a list"),
    ({"nodes": [{"id": 1}], "links": []}, "UI workflow: nodes[0].type must be a non-empty string"),
    ({"nodes": [], "links": [[1, 2]]}, "links[0] must be"),
    ({"nodes": [{"id": 1, "type": "1234abcd-0000-0000-0000-000000000000"}], "links": [],
      "definitions": {"subgraphs": [{"id": "1234abcd-0000-0000-0000-000000000000"}]}}, "subgraph"),
])
def test_malformed_structure(data, words):
    with pytest.raises(WorkflowError, match=words.replace("[", r"\[").replace("]", r"\]")):
        load_workflow(data, REGISTRY)


def test_malformed_json_and_missing_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"1": {"class_type": "Number",\n "inputs": }}')
    with pytest.raises(WorkflowError, match="not valid JSON: .* line 2"):
        load_workflow(bad)
    with pytest.raises(WorkflowError, match="workflow not found: .*missing.json"):
        load_workflow(tmp_path / "missing.json")
    with pytest.raises(WorkflowError, match="needs the node registry"):
        load_workflow(ui([], []))


# ---------------------------------------------------------------- execution


def test_runs_needed_nodes_in_dependency_order_once_each():
    prompt = base_prompt() | {"5": n("Add", a=["1", 0], b=["3", 0]), "6": n("Show", value=["5", 0])}
    order: list[str] = []
    results = execute(prompt, REGISTRY, on_node=lambda out: order.append(out.node_id))
    assert order == ["1", "2", "3", "4", "5", "6"]  # node 9 is not needed by any output
    assert CALLS.count("Number") == 2 and CALLS.count("Add") == 2  # node 1 feeds two nodes, runs once
    assert results["3"].result == (7,) and results["5"].result == (9,)
    assert results["4"].ui == {"text": ["7"]} and results["6"].ui == {"text": ["9"]}


def test_hidden_inputs_inference_mode_and_output_dir(tmp_path):
    prompt, workflow = base_prompt(), {"nodes": [], "links": []}
    execute(prompt, REGISTRY, ui_workflow=workflow, output_dir=tmp_path)
    seen = SEEN[0]
    assert seen["unique_id"] == "4" and seen["prompt"] is prompt and seen["extra_pnginfo"] == {"workflow": workflow}
    assert seen["inference"] and seen["out_dir"] == tmp_path and runtime.output_directory() != tmp_path
    execute(prompt, REGISTRY, hidden={"EXTRA_PNGINFO": {"k": 1}})
    assert SEEN[1]["extra_pnginfo"] == {"k": 1}
    execute(prompt, REGISTRY)
    assert SEEN[2]["extra_pnginfo"] is None


def test_node_exception_names_the_node():
    prompt = {"1": n("Number", value=3), "7": n("Boom", value=["1", 0]), "8": n("Show", value=["7", 0])}
    with pytest.raises(NodeExecutionError) as info:
        execute(prompt, REGISTRY)
    err = info.value
    assert (err.node_id, err.class_type) == ("7", "Boom") and isinstance(err.original, ValueError)
    assert str(err) == "node 7 (Boom) failed: ValueError: frames must be a multiple of 8"
    assert err.__cause__ is err.original and "Show" not in CALLS


def test_list_outputs_call_downstream_nodes_per_element():
    prompt = {"1": n("Spread"), "2": n("Add", a=["1", 0], b=10), "3": n("Show", value=["2", 0])}
    results = execute(prompt, REGISTRY)
    assert results["2"].result == ([11, 12, 13],) and results["3"].ui == {"text": ["11", "12", "13"]}


def test_progress_counter_and_node_reports():
    stream = io.StringIO()
    prompt = {"1": n("Steps", steps=4), "2": n("Show", value=["1", 0])}
    execute(prompt, REGISTRY, progress=TextProgress(stream))
    text = stream.getvalue()
    assert "[1/2] node 1 Steps" in text and "|" + "#" * 24 + "| 4/4" in text and "[2/2] node 2 Show done" in text
    assert progress_mod.get_reporter() is None


# ---------------------------------------------------------------- overrides


def test_overrides_parse_by_declared_type():
    prompt = {"1": n("Number", value=1), "2": n("Sampler", seed=1, steps=2, sampler="euler", model=["1", 0]),
              "3": n("Show", value=["2", 0])}
    out = apply_overrides(prompt, ["2.seed=5", "2.flag=yes", "2.sampler=heun", "2.tags=a=b", "2.model=3",
                                   "3.label= x"], REGISTRY)
    assert out["2"]["inputs"] | {} == {"seed": 5, "steps": 2, "sampler": "heun", "model": 3, "flag": True,
                                       "tags": "a=b"}
    assert out["3"]["inputs"]["label"] == " x" and prompt["2"]["inputs"]["seed"] == 1  # the input is not changed
    assert apply_overrides(base_prompt(), ["3.scale=0.5"], REGISTRY)["3"]["inputs"]["scale"] == 0.5


def test_override_errors_are_all_reported():
    with pytest.raises(WorkflowError) as info:
        apply_overrides(base_prompt(), ["12.value=1", "1.nope=2", "1.value=abc", "justtext"], REGISTRY)
    message = str(info.value)
    assert "no node 12" in message and "no input 'nope'" in message and "expects INT, got 'abc'" in message
    assert "expected NODE_ID.INPUT=VALUE" in message


def test_override_out_of_range_is_left_to_validation():
    prompt = apply_overrides(base_prompt(), ["3.a=0"], REGISTRY)
    assert only(validate(prompt, REGISTRY)).kind == "out_of_range"


# ---------------------------------------------------------------- CLI hook


def test_cli_runs_and_prints_outputs(tmp_path):
    path = tmp_path / "wf.json"
    path.write_text(json.dumps({"1": n("Number", value=2), "2": n("Save", value=["1", 0], prefix="a")}))
    out, err = io.StringIO(), io.StringIO()
    assert run_workflow_cli(path, ["1.value=9"], tmp_path / "o", REGISTRY, stdout=out, stderr=err) == 0
    assert (tmp_path / "o" / "run" / "a.txt").read_text() == "9"
    assert out.getvalue().strip() == f"node 2 (Save) files: {tmp_path / 'o' / 'run' / 'a.txt'}"
    assert "[2/2] node 2 Save" in err.getvalue()


def test_cli_reports_problems_and_failures(tmp_path):
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(base_prompt()))
    err = io.StringIO()
    assert run_workflow_cli(path, ["3.a=0", "3.b=x"], tmp_path, REGISTRY, stderr=err) == 2
    assert "expects INT, got 'x'" in err.getvalue()
    err = io.StringIO()
    assert run_workflow_cli(path, ["3.a=0"], tmp_path, REGISTRY, stderr=err) == 2
    assert "  node 3 (Add) input 'a': value 0 is below the minimum 1\n" in err.getvalue() and CALLS == []
    path.write_text(json.dumps({"1": n("Number", value=3), "2": n("Boom", value=["1", 0]),
                                "3": n("Show", value=["2", 0])}))
    err = io.StringIO()
    assert run_workflow_cli(path, [], tmp_path, REGISTRY, stdout=io.StringIO(), stderr=err) == 1
    assert "node 2 (Boom) failed: ValueError: frames must be a multiple of 8" in err.getvalue()
    path.write_text("{not json")
    assert run_workflow_cli(path, [], tmp_path, REGISTRY, stderr=io.StringIO()) == 2
