"""The pack inside a real ComfyUI: imports without warnings, lists every node in /object_info, serves its web
extensions, and runs every example workflow (top-level and training/) through /prompt on tiny checkpoints,
checking what each one writes (video, cameras, manifest and report, LoRA, model and loss log).

Runs only when COMFYUI_PATH points at a ComfyUI checkout (0.8.x, 0.33.x); tests/comfyui_support.py starts the
server (COMFYUI_PYTHON, default COMFYUI_PATH/.venv/bin/python; 127.0.0.1, CPU only, a temporary --base-directory
with this repository linked into custom_nodes), so nothing in the checkout is read or written except its code.
"""

from __future__ import annotations

import json
from pathlib import Path

import comfyui_support as support
import pytest

from comfyui_svd_lab import NODE_CLASS_MAPPINGS
from comfyui_svd_lab.cli.jobs import TINY_RUN, tiny_name, tiny_overrides
from comfyui_svd_lab.svd_model.config import Family
from comfyui_svd_lab.svd_model.weights.tiny import write_tiny_checkpoint
from comfyui_svd_lab.workflow import apply_overrides, load_workflow
from conftest import SMALL_RUN

REPO, PACK = support.REPO, support.PACK
EXAMPLES = REPO / "example_workflows"
pytestmark = pytest.mark.skipif(not support.COMFYUI, reason=support.SKIP_REASON)
#: Every UI example, as "name" or "training/name" (the API twin next to it in api/ is what gets posted), but
#: text_to_image_to_video: it needs a core image checkpoint (tests/comfyui/test_text_to_video_comfyui.py runs it).
WORKFLOWS = sorted(p.relative_to(EXAMPLES).with_suffix("").as_posix()
                   for p in [*EXAMPLES.glob("*.json"), *EXAMPLES.glob("training/*.json")]
                   if p.stem != "text_to_image_to_video")
#: Training sizes from the CLI's tiny stand-in; generation smaller still (as in test_example_workflows).
SMALL = {**TINY_RUN, **SMALL_RUN}
#: (frames, width, height) of the saved video under SMALL where it is not (3, 64, 48) (see test_example_workflows).
EXPECTED = {"sv3d_u_orbit": (3, 64, 64), "sv3d_p_dynamic_orbit": (3, 64, 64), "svd_xt_extend_loop": (8, 64, 48),
            "flow_interpolation_x2": (5, 64, 48)}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("comfy")
    write_tiny_checkpoint(root / "models" / "checkpoints" / "tiny.safetensors", seed=7)
    for family in (Family.SV3D_U, Family.SV3D_P):  # where tiny_overrides points SV3D loaders; the pack's svd folder
        write_tiny_checkpoint(root / "models" / "svd" / tiny_name("tiny.safetensors", family), family, seed=7)
    try:
        with support.comfyui_server(root) as base:
            yield base, root
    except support.ServerError as exc:
        pytest.fail(str(exc))


def _run(base: str, prompt: dict, workflow: dict | None = None) -> dict:
    """Queue `prompt` (with the UI workflow as the frontend sends it) and return its finished history entry."""
    return support.run_prompt(base, prompt, workflow)


def _file(root: Path, item: dict) -> Path:
    """The output file a UI entry ({filename, subfolder, type}) names, as /view would find it."""
    assert item["type"] == "output"
    path = root / "output" / item["subfolder"] / item["filename"]
    assert path.is_file() and path.stat().st_size > 0, path
    return path


def test_pack_imports_without_warnings(server):
    _, root = server
    startup = (root / "server.log").read_text().split("Starting server")[0]
    marks = (PACK, str(REPO), "comfyui_svd_lab", "SVD Lab", "svd_lab")
    about_pack = [line for line in startup.splitlines() if any(m in line for m in marks)]
    import_line = next(line for line in about_pack if "seconds" in line)
    assert "IMPORT FAILED" not in import_line, startup[-4000:]
    unexpected = [line for line in about_pack if line != import_line and "register web folder" not in line]
    assert not unexpected, f"the pack logged while loading: {unexpected}"  # warnings, "nodes disabled", tracebacks


def test_object_info_lists_every_node(server):
    base, root = server
    info = support.get_json(base + "/object_info")
    missing = sorted(set(NODE_CLASS_MAPPINGS) - set(info))
    log = (root / "server.log").read_text()[-2000:]
    assert not missing, f"not registered (a module skipped for a missing dependency?): {missing}; log: {log}"
    for name in NODE_CLASS_MAPPINGS:
        assert info[name]["category"].startswith("SVD Lab")
        assert PACK in info[name]["python_module"]
    names = info["SVDLab_CheckpointLoader"]["input"]["required"]["ckpt_name"][0]
    assert {"tiny.safetensors", "tiny_sv3d_u.safetensors", "tiny_sv3d_p.safetensors"} <= set(names)
    scripts = support.get_json(base + "/extensions")
    assert {f"/extensions/{PACK}/{js.name}" for js in (REPO / "web").glob("*.js")} <= set(scripts)


def _check_video(root: Path, name: str, prompt: dict, outputs: dict) -> None:
    from comfyui_svd_lab.svd_model.media.video import probe_video

    saves = {nid: n for nid, n in prompt.items() if n["class_type"] == "SVDLab_SaveVideo"}
    assert len(saves) == 1
    (nid, save), = saves.items()
    assert outputs[nid]["animated"] == [True] and len(outputs[nid]["images"]) == 1
    video = _file(root, outputs[nid]["images"][0])
    info = probe_video(video, count_frames=True)
    assert (info.frame_count, info.width, info.height) == EXPECTED.get(name, (3, 64, 48))
    assert float(info.fps) == pytest.approx(save["inputs"]["fps"])
    for nid in (nid for nid, n in prompt.items() if n["class_type"] == "SVDLab_SaveCameras"):
        cameras = json.loads((root / "output" / outputs[nid]["text"][0]).read_text())
        assert cameras["num_frames"] == len(cameras["frames"]) == info.frame_count


def _check_curation(root: Path, prompt: dict, outputs: dict) -> None:
    import pyarrow.parquet as pq

    from comfyui_svd_lab.svd_model.curation.manifest import read_manifest

    nid = next(nid for nid, n in prompt.items() if n["class_type"] == "SVDLab_CurateFolder")
    settings = prompt[nid]["inputs"]
    report = _file(root, outputs[nid]["svdlab_report"][0])
    out = root / "output" / settings["output_name"]
    assert report == out / "report.html" and "<svg" in report.read_text()
    assert "clips" in outputs[nid]["text"][0]
    rows = read_manifest(out).to_pylist()
    assert any(r["status"] == "ok" for r in rows)
    assert all(r["status"] == "ok" or (r["status"] == "dropped" and r["error"].startswith("transition: fade"))
               for r in rows)  # the example's fade has a row of its own (no span between cuts is dropped silently)
    assert {Path(r["source"]).parent.name for r in rows} == {"svd_lab_curation_example"}
    kept = [r for r in pq.read_table(out / "manifest_filtered.parquet").to_pylist() if r["keep"]]
    assert 0 < len(kept) < len(rows)  # the example's rules drop some clips
    assert any((out / "keyframes").rglob("*.jpg")) == settings["write_keyframes"]
    assert not list(out.rglob("*.mp4"))  # write_clips none: no video


def _check_training(root: Path, prompt: dict, outputs: dict) -> None:
    from comfyui_svd_lab.svd_model.lora import load_lora
    from comfyui_svd_lab.svd_model.training.report import read_log
    from comfyui_svd_lab.svd_model.weights.loader import load_bundle

    nid = next(nid for nid, n in prompt.items() if n["class_type"] == "SVDLab_Train")
    settings = prompt[nid]["inputs"]
    run = root / "output" / "SVDLab" / "train" / settings["run_name"]
    chart = outputs[nid]["svdlab_loss"][0]  # what web/training_loss.js draws
    records = read_log(run / "loss.jsonl")
    assert chart["steps"] == [r["step"] for r in records] == list(range(1, settings["steps"] + 1))
    assert chart["loss"] == pytest.approx([r["loss"] for r in records]) and all(v > 0 for v in chart["loss"])
    assert _file(root, outputs[nid]["images"][0]) == run / "loss.png"
    state, meta = load_lora(run / "lora.safetensors")
    assert state and meta["svd_lab.lora.rank"] == str(settings["lora_rank"])
    save = next(nid for nid, n in prompt.items() if n["class_type"] == "SVDLab_SaveFinetuned")
    assert load_bundle(_file(root, outputs[save]["files"][0])).variant


@pytest.mark.parametrize("name", WORKFLOWS)
def test_example_runs_through_prompt(server, name):
    base, root = server
    path = EXAMPLES / f"{name}.json"
    prompt, _ = load_workflow(path.parent / "api" / path.name, NODE_CLASS_MAPPINGS)
    prompt = apply_overrides(prompt, tiny_overrides(prompt, "tiny.safetensors", SMALL), NODE_CLASS_MAPPINGS)
    outputs = _run(base, prompt, json.loads(path.read_text()))["outputs"]
    classes = {n["class_type"] for n in prompt.values()}
    if "SVDLab_SaveVideo" in classes:
        _check_video(root, path.stem, prompt, outputs)
    if "SVDLab_CurateFolder" in classes:
        _check_curation(root, prompt, outputs)
    if "SVDLab_Train" in classes:
        _check_training(root, prompt, outputs)
    assert classes & {"SVDLab_SaveVideo", "SVDLab_CurateFolder", "SVDLab_Train"}, f"{name}: nothing checked"


def test_validation_errors_come_back_per_node(server):
    base, _ = server
    prompt, _ = load_workflow(EXAMPLES / "api" / "svd_image_to_video.json", NODE_CLASS_MAPPINGS)
    bad_size = json.loads(json.dumps(prompt))
    bad_size["1"]["inputs"]["ckpt_name"] = "tiny.safetensors"
    bad_size["3"]["inputs"]["width"] = 1001  # not a multiple of 8
    status, reply = support.queue_prompt(base, bad_size)
    assert status == 400 and set(reply["node_errors"]) == {"3"}
    assert "1001" in json.dumps(reply["node_errors"]["3"])
    prompt["1"]["inputs"]["ckpt_name"] = "missing.safetensors"
    status, reply = support.queue_prompt(base, prompt)
    assert status == 400 and "1" in reply["node_errors"]
