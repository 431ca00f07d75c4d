"""Every example workflow: the UI file converts to its API twin, and both run headless on a tiny checkpoint.

text_to_image_to_video makes its first frame with ComfyUI core nodes, so it runs in ComfyUI only
(tests/comfyui/test_text_to_video_comfyui.py); here it is refused headless with one message, its pack part runs, and
both files are what scripts/build_examples.py writes.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from comfyui_svd_lab import NODE_CLASS_MAPPINGS
from comfyui_svd_lab.cli import main
from comfyui_svd_lab.cli.jobs import tiny_overrides, write_tiny_stand_ins
from comfyui_svd_lab.nodes import bridge
from comfyui_svd_lab.svd_model.config import Family
from comfyui_svd_lab.svd_model.media.video import probe_video, read_video_metadata
from comfyui_svd_lab.workflow import CoreNodesError, apply_overrides, execute, load_workflow, validate
from conftest import SMALL_RUN as SMALL

EXAMPLES = Path(__file__).resolve().parents[2] / "example_workflows"
#: Examples with ComfyUI core nodes: ComfyUI runs them, the headless runner refuses them (tests at the end).
COMFYUI_ONLY = ("text_to_image_to_video",)
UI_FILES = sorted(p for p in EXAMPLES.glob("*.json") if p.stem not in COMFYUI_ONLY)
CURATION_FILES = [p for p in UI_FILES if p.stem.startswith("curate")]  # no model; checked by their own test
VIDEO_FILES = [p for p in UI_FILES if p not in CURATION_FILES]
#: (frames, width, height) of the saved video under SMALL where it is not (3, 64, 48). Extend: 3 frames + 2
#: segments x (3 - 1 overlap) + a loop transition of 3 frames without its 2 keyframes.
#: Flow x2: 3 loaded frames -> 5.
EXPECTED = {"sv3d_u_orbit": (3, 64, 64), "sv3d_p_dynamic_orbit": (3, 64, 64), "svd_xt_extend_loop": (8, 64, 48),
            "flow_interpolation_x2": (5, 64, 48)}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    write_tiny_stand_ins(folder, "tiny.safetensors", Family, seed=4)
    return folder


@pytest.fixture
def configured(models, tmp_path):
    bridge.configure(models_dirs=[models], output_dir=tmp_path / "out", temp_dir=tmp_path / "temp")
    yield tmp_path / "out"
    bridge.reset()


def test_there_are_image_and_video_examples():
    names = {p.stem for p in UI_FILES}
    assert {"svd_image_to_video", "svd_xt_image_to_video", "svd_xt_video_to_video"} <= names
    assert all((EXAMPLES / "api" / p.name).is_file() for p in UI_FILES)


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_ui_file_converts_to_its_api_twin(path):
    ui_prompt, ui_workflow = load_workflow(path, NODE_CLASS_MAPPINGS)
    api_prompt, _ = load_workflow(EXAMPLES / "api" / path.name, NODE_CLASS_MAPPINGS)
    assert ui_workflow is not None and "nodes" in json.loads(path.read_text())
    assert ui_prompt == api_prompt
    assert {n["class_type"] for n in api_prompt.values()} <= set(NODE_CLASS_MAPPINGS)  # this pack's nodes only


@pytest.mark.parametrize("path", VIDEO_FILES, ids=lambda p: p.stem)
def test_example_runs_headless_on_tiny_checkpoint(path, configured):
    prompt, ui_workflow = load_workflow(path, NODE_CLASS_MAPPINGS)
    prompt = apply_overrides(prompt, tiny_overrides(prompt, "tiny.safetensors", SMALL), NODE_CLASS_MAPPINGS)
    assert validate(prompt, NODE_CLASS_MAPPINGS) == []
    results = execute(prompt, NODE_CLASS_MAPPINGS, ui_workflow=ui_workflow)
    saved = [item for r in results.values() for item in r.ui.get("images", [])]
    assert len(saved) == 1
    video = configured / saved[0]["subfolder"] / saved[0]["filename"]
    info = probe_video(video, count_frames=True)
    assert (info.frame_count, info.width, info.height) == EXPECTED.get(path.stem, (3, 64, 48))
    fps = next(n["inputs"]["fps"] for n in prompt.values() if n["class_type"] == "SVDLab_SaveVideo")
    assert float(info.fps) == pytest.approx(fps)
    # the video says what generated it: each upstream sampler's and loader's speed / exactness choices
    modes = json.loads(read_video_metadata(video).get("svd_lab_modes", "{}"))  # none: no sampler or loader
    for node_id, node in prompt.items():
        if node["class_type"] in ("SVDLab_Sampler", "SVDLab_CheckpointLoader"):
            recorded = modes[f"{node_id} {node['class_type']}"]
            assert recorded and all(recorded[k] == node["inputs"][k] for k in recorded if k in node["inputs"]
                                    and not isinstance(node["inputs"][k], list))


@pytest.mark.parametrize("path", CURATION_FILES, ids=lambda p: p.stem)
def test_curation_example_runs_headless(path, configured):
    from comfyui_svd_lab.svd_model.curation.manifest import read_manifest

    prompt, ui_workflow = load_workflow(path, NODE_CLASS_MAPPINGS)
    assert validate(prompt, NODE_CLASS_MAPPINGS) == []
    results = execute(prompt, NODE_CLASS_MAPPINGS, ui_workflow=ui_workflow)
    reports = [item for r in results.values() for item in r.ui.get("svdlab_report", [])]
    assert len(reports) == 1 and reports[0]["filename"] == "report.html"
    out = configured / reports[0]["subfolder"]
    rows = read_manifest(out).to_pylist()
    assert rows and any(r["status"] == "ok" for r in rows)
    assert all(r["status"] == "ok" or r["error"].startswith("transition: fade") for r in rows)  # the fade's own frames
    assert {Path(r["source"]).parent.name for r in rows} == {"svd_lab_curation_example"}


def test_cli_run_reports_every_problem_and_runs_nothing(tmp_path, capsys):
    bad = json.loads((EXAMPLES / "api" / "svd_image_to_video.json").read_text())
    bad["4"]["inputs"]["steps"] = -1
    bad["5"]["inputs"]["latent"] = ["9", 0]
    bad["3"]["class_type"] = "SVDLab_NoSuchNode"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    assert main(["run", str(path), "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "node 4 (SVDLab_Sampler) input 'steps'" in err
    assert "node 5 (SVDLab_Decode) input 'latent': linked to node 9" in err
    assert "SVDLab_NoSuchNode" in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.mp4"))


def test_cli_run_with_overrides(models, tmp_path, capsys):
    path = EXAMPLES / "svd_image_to_video.json"
    prompt, _ = load_workflow(path, NODE_CLASS_MAPPINGS)
    sets = tiny_overrides(prompt, "tiny.safetensors", SMALL)
    argv = ["run", str(path), "--models-dir", str(models), "--output-dir", str(tmp_path / "out")]
    for s in sets:
        argv += ["--set", s]
    try:
        assert main(argv) == 0
    finally:
        bridge.reset()
    assert "svd_00001_.mp4" in capsys.readouterr().out


# ------------------------------------------------------------------------------------ text_to_image_to_video

T2V = EXAMPLES / "text_to_image_to_video.json"
T2V_API = EXAMPLES / "api" / T2V.name
CORE_TYPES = ["CheckpointLoaderSimple", "CLIPTextEncode", "EmptyLatentImage", "KSampler", "VAEDecode"]
REFUSAL = ("this workflow uses ComfyUI core nodes the headless runner cannot run: CheckpointLoaderSimple, "
           "CLIPTextEncode, EmptyLatentImage, KSampler, VAEDecode; run it in ComfyUI: open it in the editor, queue it "
           "on a server (POST /prompt), or `comfy run --workflow FILE` (comfy-cli)")


def _build_examples():
    """scripts/build_examples.py as a module (scripts/ is not a package)."""
    path = Path(__file__).resolve().parents[2] / "scripts" / "build_examples.py"
    spec = importlib.util.spec_from_file_location("build_examples_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_text_to_video_library_refuses_it_with_one_problem():
    with pytest.raises(CoreNodesError) as refused:  # UI format: refused before the conversion
        load_workflow(T2V, NODE_CLASS_MAPPINGS)
    assert refused.value.class_types == CORE_TYPES and str(refused.value) == REFUSAL
    prompt, ui = load_workflow(T2V_API, NODE_CLASS_MAPPINGS)  # API format: loads, one validation problem
    assert ui is None
    (problem,) = validate(prompt, NODE_CLASS_MAPPINGS)
    assert problem.kind == "core_nodes" and problem.node_id is None and str(problem) == f"workflow: {REFUSAL}"


@pytest.mark.parametrize("extra", [[], ["--tiny-if-missing"]], ids=["plain", "tiny_if_missing"])
@pytest.mark.parametrize("path", [T2V, T2V_API], ids=["ui", "api"])
def test_cli_refuses_text_to_video_with_one_message(path, extra, tmp_path, capsys):
    out_dir = tmp_path / "out"
    try:
        assert main(["run", str(path), "--output-dir", str(out_dir), *extra]) == 2
    finally:
        bridge.reset()
    out, err = capsys.readouterr()
    assert err == f"svd-lab: error: {REFUSAL}\n"  # one line: no per-node problems, no traceback
    assert "comfy run --workflow" in err and out == ""  # no --tiny-if-missing note: nothing would run
    assert not out_dir.exists()


def test_text_to_video_pack_part_is_the_svd_xt_example_and_runs(configured):
    prompt, _ = load_workflow(T2V_API, NODE_CLASS_MAPPINGS)
    core = {nid for nid, n in prompt.items() if n["class_type"] not in NODE_CLASS_MAPPINGS}
    assert sorted({prompt[nid]["class_type"] for nid in core}) == sorted(CORE_TYPES)
    pack = {nid: n for nid, n in prompt.items() if nid not in core}
    (cond,) = [nid for nid, n in pack.items() if n["class_type"] == "SVDLab_ImageToVideoConditioning"]
    decode = next(nid for nid in core if prompt[nid]["class_type"] == "VAEDecode")
    assert pack[cond]["inputs"]["image"] == [decode, 0]  # the only link from the core part into the pack's
    assert all(v[0] not in core for nid, n in pack.items() for name, v in n["inputs"].items()
               if isinstance(v, list) and (nid, name) != (cond, "image"))
    # the same nodes and values as svd_xt_image_to_video, whose LoadImage stands in for the generated frame
    reference, _ = load_workflow(EXAMPLES / "api" / "svd_xt_image_to_video.json", NODE_CLASS_MAPPINGS)

    def shape(p: dict) -> list:
        order = list(p)
        return [(n["class_type"], {k: ["link", order.index(v[0]), v[1]] if isinstance(v, list) else v
                                   for k, v in n["inputs"].items() if k not in ("image", "filename_prefix")})
                for n in p.values()]
    assert shape(pack) == shape({k: v for k, v in reference.items() if v["class_type"] != "SVDLab_LoadImage"})
    # it validates and runs headless with a loaded image in place of the core part
    pack["0"] = {"class_type": "SVDLab_LoadImage", "inputs": {"image": "svd_lab_example.png", "path": ""}}
    pack[cond]["inputs"]["image"] = ["0", 0]
    pack = apply_overrides(pack, tiny_overrides(pack, "tiny.safetensors", SMALL), NODE_CLASS_MAPPINGS)
    assert validate(pack, NODE_CLASS_MAPPINGS) == []
    results = execute(pack, NODE_CLASS_MAPPINGS)
    (saved,) = [item for r in results.values() for item in r.ui.get("images", [])]
    info = probe_video(configured / saved["subfolder"] / saved["filename"], count_frames=True)
    assert (info.frame_count, info.width, info.height) == (3, 64, 48)


def test_text_to_video_files_are_what_build_examples_writes(tmp_path, monkeypatch):
    build = _build_examples()
    monkeypatch.setattr(build, "ROOT", tmp_path)
    build.main(["text_to_image_to_video"])
    assert (tmp_path / "api" / T2V.name).read_text() == T2V_API.read_text()
    assert (tmp_path / T2V.name).read_text() == T2V.read_text()
    # the UI file converts to its API twin with the core nodes' declared inputs (build_examples.CORE_NODES)
    ui_prompt, _ = load_workflow(T2V, {**NODE_CLASS_MAPPINGS, **build.CORE_NODES})
    api_prompt, _ = load_workflow(T2V_API, NODE_CLASS_MAPPINGS)
    assert ui_prompt == api_prompt
    ksampler = next(n for n in json.loads(T2V.read_text())["nodes"] if n["type"] == "KSampler")
    assert ksampler["widgets_values"] == [23, "fixed", 25, 7.0, "euler", "normal", 1.0]
