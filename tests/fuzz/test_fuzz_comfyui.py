"""Path escapes and program injection through a real ComfyUI server's /prompt, next to what core nodes allow.

Runs only when COMFYUI_PATH points at a ComfyUI checkout (one server per module, see tests/comfyui_support.py).
The server's base directory is a fresh temporary folder: input/ holds a small image, video and folder, plus
symbolic links that lead to a sibling folder ``outside/`` (a secret image and video in a colour nothing else
has); output/ holds links to ``outside/`` as well. Every case sends one prompt with the pack node under test
(node id "10") and, for path cases, the same value to a core node on the same server: LoadImage (+ PreviewImage)
for reads, SaveImage for writes. Program cases name a ``command:`` captioner whose shell line would create a
marker file.

Each case asserts the end state of issue 10: the pack node refuses the value when the prompt is queued (HTTP 400,
node_errors of node "10" naming the input, a message that does not print the server's folders), whatever core
answers; nothing appears outside the allowed folders; no marker program ran. What both answered is attached to
each test as user properties ("core", "pack"; see ``--junitxml``), so a run documents the server's behaviour.
When a prompt is accepted, it is run to its end (bounded) to record what it read, wrote or started.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import comfyui_support as support
import numpy as np
import pytest
from PIL import Image

from .comfyui_graphs import (
    RUN_TIMEOUT,
    SECRET_RGB,
    TARGET,
    TOKEN,
    Comfy,
    Graph,
    Tripwire,
    _node,
    g_cache,
    g_captions,
    g_clip_scores,
    g_curate,
    g_dataset,
    g_load_image,
    g_load_video,
    g_save_finetuned,
    g_save_video,
    g_train,
    g_video_folder,
    g_write_manifest,
)

pytestmark = pytest.mark.skipif(not support.COMFYUI, reason=support.SKIP_REASON)

# --- the cases ------------------------------------------------------------------------------------------------

#: Values that name something to read. "{outside}" is the absolute path of the outside folder; "{file}" the
#: secret file's name (secret.png or secret.mp4).
READS = {
    "abs_etc_passwd": "/etc/passwd",
    "abs_outside_file": "{outside}/{file}",
    "dotdot": "../outside/{file}",
    "dotdot_deep": "../../../../../../../../etc/passwd",
    "dotdot_through_subfolder": "adir/../../outside/{file}",
    "symlink_file": "{link}",
    "symlink_dir": "linkdir/{file}",
    "fullwidth_dots": "\uff0e\uff0e/outside/{file}",
    "fullwidth_solidus": "..\uff0foutside\uff0f{file}",
    "nul_byte": "ok.png\x00/../../outside/{file}",
    "empty": "",
    "dot": ".",
    "directory": "adir",
}
#: Values that name a folder to read (video folders, datasets).
FOLDERS = {
    "abs_etc": "/etc",
    "abs_outside": "{outside}",
    "dotdot": "../outside",
    "dotdot_deep": "../../../../../../../../etc",
    "symlink_dir": "linkdir",
    "fullwidth_dots": "\uff0e\uff0e/outside",
    "nul_byte": "clips\x00/../../outside",
    "list_file_naming_outside": "list.txt",
}
#: Values that name something to write (file prefixes, run / cache / output names).
WRITES = {
    "dotdot": "../{token}",
    "dotdot_deep": "../../../{token}",
    "abs_outside": "{outside}/{token}",
    "empty": "",
    "dot": ".",
    "dotdot_only": "..",
    "hidden": ".{token}",
    "symlink_subfolder": "linkdir/{token}",
    "symlink_name": "linkdir",
    "fullwidth_solidus": "..\uff0f{token}",
    "fullwidth_dots": "\uff0e\uff0e/{token}",
    "backslash": "..\\{token}",
    "nul_byte": "{token}\x00/../../x",
}
#: Values that name a program (or a model folder outside the model folders) where a captioner is chosen.
MARKER = "{outside}/" + TOKEN + "_marker_{case}"
PROGRAMS = {
    "command": f"command:/bin/sh -c 'touch {MARKER}; echo caption'",
    "command_video": f"command-video:/bin/sh -c 'touch {MARKER}; echo caption'",
    "command_summary": f"command-summary:/bin/sh -c 'touch {MARKER}; echo caption'",
    "local_model_outside": "local-image:{outside}",
}


@dataclass(frozen=True)
class Case:
    id: str
    graph: Graph
    input: str
    value: str
    core: str | None  # "read", "write" or None (core has no such input)
    file: str = "secret.png"
    link: str = "link.png"


def _cases() -> list[Case]:
    cases: list[Case] = []
    reads = [("load_image", g_load_image, "image", "secret.png", "link.png"),
             ("load_image", g_load_image, "path", "secret.png", "link.png"),
             ("load_video", g_load_video, "video", "secret.mp4", "linkvid.mp4"),
             ("load_video", g_load_video, "path", "secret.mp4", "linkvid.mp4")]
    for prefix, graph, name, file, link in reads:
        for key, value in READS.items():
            if name == "path" and key == "empty":
                continue  # an empty path means "use the list": not a case
            cases.append(Case(f"{prefix}.{name}-{key}", graph, name, value, "read", file, link))
    for prefix, graph, name in [("video_folder", g_video_folder, "folder"),
                                ("dataset_folder", g_dataset("SVDLab_DatasetFromFolder"), "folder"),
                                ("dataset_manifest", g_dataset("SVDLab_DatasetFromManifest"), "manifest")]:
        cases += [Case(f"{prefix}.{name}-{key}", graph, name, value, "read") for key, value in FOLDERS.items()]
    for key in ("abs_etc_passwd", "abs_outside_file", "dotdot", "symlink_dir"):
        value = READS[key].replace("{file}", "head.safetensors")
        cases.append(Case(f"clip_scores.aesthetic_head-{key}", g_clip_scores, "aesthetic_head", value, "read"))
    # a file prefix equal to a link's name makes a new file next to the link ("linkdir_00001_.webp"): no case
    writes = [("save_video", g_save_video, "filename_prefix", {"symlink_name"}),
              ("save_finetuned", g_save_finetuned, "filename_prefix", {"symlink_name"}),
              ("train", g_train, "run_name", {"symlink_subfolder"}),
              ("latent_cache", g_cache, "cache_name", {"empty", "symlink_subfolder"}),  # '' = an automatic name
              ("curate_folder", g_curate, "output_name", set()),
              ("write_manifest", g_write_manifest, "output_name", set())]
    for prefix, graph, name, skip in writes:
        cases += [Case(f"{prefix}.{name}-{key}", graph, name, value, "write")
                  for key, value in WRITES.items() if key not in skip]
    for key, value in PROGRAMS.items():
        cases.append(Case(f"captions.captioners-{key}", g_captions, "captioners", value, None))
        settings = json.dumps({"captioners": [value]})
        cases.append(Case(f"curate_folder.settings-{key}", g_curate, "settings", settings, None))
    return cases


CASES = _cases()


def _fill(case: Case, comfy: Comfy, value: str | None = None) -> str:
    text = case.value if value is None else value
    return (text.replace("{outside}", str(comfy.outside)).replace("{file}", case.file).replace("{link}", case.link)
            .replace("{token}", f"{TOKEN}_{re.sub(r'[^a-z0-9]+', '_', case.id.lower())}")
            .replace("{case}", re.sub(r"[^a-z0-9]+", "_", case.id.lower())))


# --- running and describing a prompt --------------------------------------------------------------------------


def _describe_outputs(comfy: Comfy, outputs: dict[str, Any]) -> str:
    """What the run's UI outputs show: files written (folder/name), short texts, and flags for outside data."""
    files = [f"{i.get('type')}/{i.get('subfolder')}/{i.get('filename')}".replace("//", "/")
             for out in outputs.values() for i in out.get("images", []) if isinstance(i, dict)]
    texts = [str(t)[:60] for out in outputs.values() for t in out.get("text", [])]
    text = f", files: {', '.join(files[:2])}" if files else ""
    text += f", shows: {' / '.join(texts[:2])}" if texts else ""
    if _shows_secret(comfy, outputs):
        text += " | READ OUTSIDE (a preview has the outside image's pixels)"
    if any(str(comfy.outside) in json.dumps(v) for out in outputs.values() for k, v in out.items()):
        text += " | OUTSIDE PATH IN UI"
    return text


def _shows_secret(comfy: Comfy, outputs: dict[str, Any]) -> bool:
    """True when a preview or saved image of the run has the outside image's colour (its pixels were read)."""
    for out in outputs.values():
        for item in out.get("images", []):
            path = comfy.root / item.get("type", "output") / item.get("subfolder", "") / item.get("filename", "")
            if path.suffix.lower() not in (".png", ".webp", ".jpg") or not path.is_file():
                continue
            with Image.open(path) as im:
                pixel = np.asarray(im.convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(0)
            if np.abs(pixel - SECRET_RGB).max() < 12:
                return True
    return False


def _error_text(reply: Any) -> str:
    if not isinstance(reply, dict):
        return str(reply)[:200]
    errs = [e for n in reply.get("node_errors", {}).values() for e in n.get("errors", [])]
    if not errs and "error" in reply:
        errs = [reply["error"]]
    return "; ".join(f"{e.get('type')}: {e.get('details') or e.get('message')}" for e in errs[:1])


def _answer(comfy: Comfy, prompt: dict[str, Any], marker: Path | None = None) -> tuple[int, Any, str]:
    """Queue `prompt`; (status, reply, a one-line description of what happened, run included when accepted)."""
    wire = Tripwire(comfy)
    status, reply = support.queue_prompt(comfy.base, prompt)
    if status != 200:
        text = f"{status} {_error_text(reply)}"
    else:
        try:
            entry = support.wait_history(comfy.base, reply["prompt_id"], RUN_TIMEOUT)
            errors = support.execution_errors(entry)
            text = "200, run " + ("ok" if not errors else f"failed: {errors[0].get('exception_message', '')}")
            text += _describe_outputs(comfy, entry.get("outputs", {}))
        except support.ServerError as exc:
            text = f"200, {exc}"
    written = wire.written()
    if written:
        text += f" | WROTE OUTSIDE: {', '.join(written[:4])}"
    if marker is not None and marker.exists():
        text += " | PROGRAM RAN (marker file created)"
    return status, reply, " ".join(text.split())[:400]


def _core_prompt(comfy: Comfy, kind: str, value: str) -> dict[str, Any]:
    if kind == "read":
        return {"1": _node(comfy, "LoadImage", image=value), "2": _node(comfy, "PreviewImage", images=["1", 0])}
    return {"1": _node(comfy, "LoadImage", image="ok.png"),
            "2": _node(comfy, "SaveImage", images=["1", 0], filename_prefix=value)}


def _core_answer(comfy: Comfy, kind: str, value: str) -> str:
    key = (kind, value)
    if key not in comfy.core_answers:
        comfy.core_answers[key] = _answer(comfy, _core_prompt(comfy, kind, value))[2]
    return comfy.core_answers[key]


#: What a refusal of the pack says, by the kind of value (lower case; one of the phrases must appear).
REFUSED = re.compile(r"outside|not a path|must be a name|separator|hidden|control|invisible|empty|no readable|"
                     r"no \w+ (given|selected)|absolute|'\.\.'|not in|unknown captioner|not allowed|not registered|"
                     r"only files inside|may not|symbolic link|leads out|names a file outside|is a \.\w+ file")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_pack_refuses_at_prompt_time(comfy: Comfy, case: Case, record_property: Callable[[str, Any], None]) -> None:
    value = _fill(case, comfy)
    marker = Path(_fill(case, comfy, MARKER)) if case.core is None else None
    prompt = case.graph(comfy, case.input, value)
    name = prompt[TARGET]["_meta"]["fuzz_input"]  # the input actually set (see g_captions)
    status, reply, pack = _answer(comfy, prompt, marker)
    core = _core_answer(comfy, case.core, value) if case.core else "n/a (no core node takes this)"
    record_property("core", core)
    record_property("pack", pack)

    assert marker is None or not marker.exists(), f"the workflow ran a program: {pack}"
    assert not any(flag in pack for flag in ("WROTE OUTSIDE", "READ OUTSIDE", "OUTSIDE PATH")), pack
    assert status == 400, f"{case.id}: accepted at /prompt ({pack}); core: {core}"
    errors = reply["node_errors"].get(TARGET, {}).get("errors", [])
    assert errors, f"{case.id}: refused, but not for node {TARGET}: {reply['node_errors']}"
    assert name in {e.get("extra_info", {}).get("input_name") for e in errors}, errors
    text = " ".join(f"{e.get('message')} {e.get('details')}" for e in errors)
    assert {e["type"] for e in errors} <= {"custom_validation_failed", "value_not_in_list"}, errors
    assert REFUSED.search(text.lower()), f"{case.id}: unclear refusal: {text}"
    for folder in ("input", "output", "temp", "models"):
        assert str(comfy.root / folder) not in text, f"the error prints a server path: {text}"
    assert str(support.REPO) not in text, f"the error prints the pack's path: {text}"


#: (case, what core answers on this server): the premise of the comparison, checked so a ComfyUI that changes
#: its own rules shows up here rather than as a silent change of meaning.
CORE_REFUSES_AT_PROMPT = ["abs_etc_passwd", "abs_outside_file", "dotdot", "dotdot_deep", "symlink_file",
                          "symlink_dir", "nul_byte"]


@pytest.mark.parametrize("key", CORE_REFUSES_AT_PROMPT)
def test_core_load_image_refuses_escapes(comfy: Comfy, key: str) -> None:
    case = Case(key, g_load_image, "image", READS[key], "read")
    status, reply = support.queue_prompt(comfy.base, _core_prompt(comfy, "read", _fill(case, comfy)))
    assert status == 400 and "Invalid image file" in json.dumps(reply["node_errors"]["1"]), reply


def test_core_save_image_refuses_escape_when_run(comfy: Comfy) -> None:
    case = Case("core_save", g_save_video, "filename_prefix", "../{token}", "write")
    answer = _answer(comfy, _core_prompt(comfy, "write", _fill(case, comfy)))[2]
    assert answer.startswith("200, run failed") and "outside the output folder" in answer, answer


def test_pack_save_names_no_server_path(comfy: Comfy) -> None:
    """A successful load + save: /history, the UI entries and the file's metadata carry names, not paths."""
    prompt = {"1": _node(comfy, "SVDLab_LoadImage", image="ok.png", path=""),
              TARGET: _node(comfy, "SVDLab_SaveVideo", images=["1", 0], format="webp",
                            filename_prefix=f"SVDLab/{TOKEN}_ok")}
    status, reply = support.queue_prompt(comfy.base, prompt, {"extra_pnginfo": {"workflow": {"nodes": []}}})
    assert status == 200, reply
    entry = support.wait_history(comfy.base, reply["prompt_id"], RUN_TIMEOUT)
    assert entry["status"]["status_str"] == "success", support.execution_errors(entry)
    (item,) = entry["outputs"][TARGET]["images"]
    assert set(item) == {"filename", "subfolder", "type"}, item  # no "fullpath"
    assert item["type"] == "output" and not Path(item["subfolder"]).is_absolute()
    saved = comfy.root / "output" / item["subfolder"] / item["filename"]
    assert saved.is_file() and saved.name.startswith(f"{TOKEN}_ok")
    history = json.dumps(support.get_json(f"{comfy.base}/history/{reply['prompt_id']}"))
    for path in (comfy.root, support.REPO):
        assert str(path) not in history, f"/history names {path}"
        assert str(path).encode() not in saved.read_bytes(), f"the saved file's metadata names {path}"
