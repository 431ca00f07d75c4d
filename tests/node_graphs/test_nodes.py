"""Node contracts (ComfyUI absent), import boundaries, end-to-end runs on a tiny checkpoint, error messages,
and the bridge against faked ComfyUI modules."""

from __future__ import annotations

import ast
import inspect
import logging
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from PIL import Image

from comfyui_svd_lab.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, bridge
from comfyui_svd_lab.svd_model.config import Family
from comfyui_svd_lab.svd_model.errors import CheckpointError, InputError
from comfyui_svd_lab.svd_model.media.video import probe_video, read_video, read_video_metadata
from comfyui_svd_lab.svd_model.weights.tiny import write_tiny_checkpoint

REPO = Path(__file__).resolve().parents[2]
W, H, T = 64, 48, 3
FORBIDDEN_IN_PACKAGE = {"comfy", "comfy_api", "comfy_extras", "folder_paths", "server", "nodes", "execution",
                        "latent_preview", "diffusers"}
COMFY_MODULES = {"comfy", "comfy_api", "comfy_extras", "folder_paths", "server", "execution", "latent_preview"}


def node(node_id: str):
    return NODE_CLASS_MAPPINGS[node_id]()


# ------------------------------------------------------------------------------------------- contracts


def test_mappings_ids_prefixed_and_named():
    expected = {"SVDLab_CheckpointLoader", "SVDLab_ImageToVideoConditioning", "SVDLab_Sampler", "SVDLab_Decode",
                "SVDLab_EncodeFrames", "SVDLab_LoadImage", "SVDLab_LoadVideo", "SVDLab_SaveVideo",
                "SVDLab_PreviewVideo"}
    assert expected <= set(NODE_CLASS_MAPPINGS)
    assert set(NODE_DISPLAY_NAME_MAPPINGS) == set(NODE_CLASS_MAPPINGS)
    assert len(set(NODE_DISPLAY_NAME_MAPPINGS.values())) == len(NODE_DISPLAY_NAME_MAPPINGS)
    for node_id in NODE_CLASS_MAPPINGS:
        assert node_id.startswith("SVDLab_")


def _check_widget(where: str, spec: tuple) -> None:
    assert isinstance(spec, tuple) and 1 <= len(spec) <= 2, where
    kind, opts = spec[0], (spec[1] if len(spec) == 2 else {})
    assert isinstance(opts, dict) and opts.get("tooltip"), f"{where}: needs a tooltip"
    if isinstance(kind, list):
        assert all(isinstance(c, str) for c in kind), where
        if "default" in opts:
            assert opts["default"] in kind, f"{where}: default {opts['default']!r} not in choices"
        return
    assert isinstance(kind, str) and kind == kind.upper(), where
    if kind in ("INT", "FLOAT"):
        assert "default" in opts, where
        assert opts.get("min", float("-inf")) <= opts["default"] <= opts.get("max", float("inf")), where
        assert isinstance(opts["default"], int if kind == "INT" else (int, float)), where
    if kind == "STRING":
        assert isinstance(opts.get("default", ""), str), where


@pytest.mark.parametrize("node_id", sorted(NODE_CLASS_MAPPINGS))
def test_node_class_is_well_formed(node_id):
    cls = NODE_CLASS_MAPPINGS[node_id]
    assert cls.CATEGORY.startswith("SVD Lab/") and cls.DESCRIPTION
    assert callable(getattr(cls, cls.FUNCTION))
    assert isinstance(cls.RETURN_TYPES, tuple)
    if cls.RETURN_TYPES:
        assert len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES) == len(cls.OUTPUT_TOOLTIPS)
    else:
        assert getattr(cls, "OUTPUT_NODE", False)
    spec = cls.INPUT_TYPES()
    assert set(spec) <= {"required", "optional", "hidden"}
    for section in ("required", "optional"):
        for name, widget in spec.get(section, {}).items():
            _check_widget(f"{node_id}.{name}", widget)
    names = set(spec.get("required", {})) | set(spec.get("optional", {})) | set(spec.get("hidden", {}))
    params = inspect.signature(getattr(cls, cls.FUNCTION)).parameters
    assert names == set(params) - {"self"}, f"{node_id}: inputs and {cls.FUNCTION}() parameters differ"
    omissible = set(spec.get("optional", {})) | set(spec.get("hidden", {}))  # ComfyUI leaves these out when unset
    assert all(params[n].default is not inspect.Parameter.empty for n in omissible), node_id
    if hasattr(cls, "VALIDATE_INPUTS"):
        vparams = inspect.signature(cls.VALIDATE_INPUTS).parameters
        assert all(p.kind is not p.VAR_KEYWORD for p in vparams.values()), f"{node_id}: VALIDATE_INPUTS has **kwargs"
        assert set(vparams) <= names
        assert all(vparams[n].default is not inspect.Parameter.empty for n in omissible & set(vparams)), node_id


# ---------------------------------------------------------------------------------------- boundaries


def _imports(path: Path) -> set[str]:
    found = set()
    for item in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(item, ast.Import):
            found |= {alias.name.split(".")[0] for alias in item.names}
        elif isinstance(item, ast.ImportFrom) and item.level == 0 and item.module:
            found.add(item.module.split(".")[0])
    return found


def test_svd_model_never_imports_comfyui_or_diffusers():
    for path in (REPO / "svd_model").rglob("*.py"):
        bad = _imports(path) & FORBIDDEN_IN_PACKAGE
        assert not bad, f"{path.relative_to(REPO)} imports {sorted(bad)}"


def test_only_the_bridge_touches_comfyui_and_only_adapters_and_bridge_use_torch():
    """ComfyUI's modules are imported in nodes/bridge/comfy.py alone (nodes, training nodes and the headless runner
    go through the bridge); in nodes/ tensors are handled by adapters.py and the bridge's memory module only."""
    checked = 0
    for folder in ("nodes", "training_nodes", "workflow"):
        for path in (REPO / folder).rglob("*.py"):
            rel, found = path.relative_to(REPO).as_posix(), _imports(path)
            checked += 1
            if rel != "nodes/bridge/comfy.py":
                assert not found & COMFY_MODULES, f"{rel} imports {sorted(found & COMFY_MODULES)}"
            if folder == "nodes" and rel not in ("nodes/adapters.py", "nodes/bridge/memory.py"):
                assert "torch" not in found, f"{rel} imports torch (tensor code belongs in adapters.py)"
    assert checked > 20


def test_importing_the_pack_imports_no_top_level_nodes_or_comfy():
    code = ("import sys, comfyui_svd_lab as p; assert p.NODE_CLASS_MAPPINGS; "
            "bad = [m for m in ('nodes', 'comfy', 'folder_paths', 'server') if m in sys.modules]; "
            "assert not bad, bad; print(p.WEB_DIRECTORY)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "./web"


# -------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    write_tiny_checkpoint(folder / "tiny.safetensors", seed=3)
    write_tiny_checkpoint(folder / "tiny_sv3d.safetensors", Family.SV3D_U, seed=4)
    return folder


@pytest.fixture(scope="module")
def model(models):
    bridge.configure(models_dirs=[models])
    try:
        bundle, info = node("SVDLab_CheckpointLoader").load("tiny.safetensors", "auto", "auto", "none")
    finally:
        bridge.reset()
    assert "svd model, variant svd" in info and "multiples of 16" in info
    return bundle


def _image(b: int = 1, h: int = 40, w: int = 70) -> torch.Tensor:
    return torch.rand(b, h, w, 3, generator=torch.Generator().manual_seed(b))


def _condition(model, image=None, **kw):
    args = {"width": W, "height": H, "frames": T, "fps": 7, "motion_bucket_id": 127, "cond_aug": 0.02, "seed": 1}
    return node("SVDLab_ImageToVideoConditioning").encode(model, _image() if image is None else image, **{**args, **kw})


def _sample(model, cond, **kw):
    args = {"sampler": "euler", "schedule": "karras", "steps": 2, "min_cfg": 1.0, "max_cfg": 2.5,
            "guidance": "linear", "seed": 5, "denoise": 1.0}
    return node("SVDLab_Sampler").sample(model, cond, **{**args, **kw})[0]


# ----------------------------------------------------------------------------------------- end to end


def test_image_to_video_end_to_end_writes_a_playable_mp4(model, folders):
    cond, empty, info = _condition(model)
    assert empty["samples"].shape == (T, 4, H // 8, W // 8) and "64x48" in info
    reports: list[tuple[int, int]] = []
    with bridge.headless_run(reporter=lambda v, t: reports.append((v, t))):
        latent = _sample(model, cond)
        images = node("SVDLab_Decode").decode(model, latent, 2, 1)[0]
    assert latent["samples"].shape == (T, 4, H // 8, W // 8) and latent["samples"].device.type == "cpu"
    assert reports[:2] == [(1, 2), (2, 2)] and reports[-1] == (4, 4)  # decode: chunks [0, 2) + [1, 3)
    assert images.shape == (T, H, W, 3) and 0 <= images.min() and images.max() <= 1
    prompt, extra = {"1": {"class_type": "SVDLab_SaveVideo"}}, {"workflow": {"nodes": []}}
    out = node("SVDLab_SaveVideo").save(images, 8.0, "mp4", 90, "clips/run", prompt=prompt, extra_pnginfo=extra)
    entry = out["ui"]["images"][0]
    assert out["ui"]["animated"] == [True] and out["result"][0].get_components().images is images
    assert (entry["filename"], entry["subfolder"], entry["type"]) == ("run_00001_.mp4", "clips", "output")
    path = folders / "out" / "clips" / "run_00001_.mp4"
    frames, fps = read_video(path)
    assert frames.shape == (T, H, W, 3) and fps == pytest.approx(8.0)
    assert "workflow" in read_video_metadata(path)
    again = node("SVDLab_SaveVideo").save(images, 8.0, "webp", 80, "clips/run")
    assert again["ui"]["images"][0]["filename"] == "run_00002_.webp"
    preview = node("SVDLab_PreviewVideo").preview(images, 8.0, "gif", 50)["ui"]["images"][0]
    assert preview["type"] == "temp" and (folders / "temp" / preview["filename"]).is_file()


def test_same_seeds_same_latents_and_video_to_video(model, folders):
    cond, _, _ = _condition(model)
    first, second = _sample(model, cond), _sample(model, cond)
    assert torch.equal(first["samples"], second["samples"])
    images = node("SVDLab_Decode").decode(model, first, 14, 0)[0]
    start = node("SVDLab_EncodeFrames").encode(model, images)[0]
    assert start["samples"].shape == first["samples"].shape
    v2v = _sample(model, cond, denoise=0.5, latent=start)
    assert v2v["samples"].shape == start["samples"].shape and not torch.equal(v2v["samples"], start["samples"])
    assert _sample(model, cond, denoise=0.0, latent=start) is start
    with pytest.raises(InputError, match="needs a start video"):
        _sample(model, cond, denoise=0.5)


def test_load_image_and_load_video(model, folders):
    Image.new("RGB", (30, 20), (255, 0, 0)).save(folders / "in" / "red.png")
    spec = NODE_CLASS_MAPPINGS["SVDLab_LoadImage"].INPUT_TYPES()["required"]["image"]
    bundled = sorted(p.name for p in (REPO / "example_workflows" / "inputs").glob("*.png"))
    assert spec[0] == ["red.png", *bundled, ""] and spec[1]["image_upload"] is True  # user's, then the pack's
    by_name = node("SVDLab_LoadImage").load("red.png")[0]
    by_path = node("SVDLab_LoadImage").load("", str(folders / "in" / "red.png"))[0]
    assert by_name.shape == (1, 20, 30, 3) and torch.equal(by_name, by_path) and by_name[0, 0, 0, 0] > 0.99
    cls = NODE_CLASS_MAPPINGS["SVDLab_LoadImage"]
    assert cls.VALIDATE_INPUTS("red.png") is True and cls.IS_CHANGED("red.png")
    assert "no readable file" in cls.VALIDATE_INPUTS("", "nope.png")
    assert "no image selected" in cls.VALIDATE_INPUTS("", "")
    assert "is outside the input folder" in cls.VALIDATE_INPUTS("", str(folders / "out" / "x.png"))
    images = torch.rand(5, H, W, 3, generator=torch.Generator().manual_seed(0))
    node("SVDLab_SaveVideo").save(images, 10.0, "mp4", 80, "src")
    video = str(folders / "out" / "src_00001_.mp4")
    saved = "src_00001_.mp4 [output]"  # ComfyUI's annotation for a file of the output folder, as core LoadImage
    frames, fps, count = node("SVDLab_LoadVideo").load(saved, 3, 1, 1, 0.0, 32, 32, "cover")
    assert frames.shape == (3, 32, 32, 3) and fps == pytest.approx(10.0) and count == 3
    assert probe_video(video).width == W
    lcls = NODE_CLASS_MAPPINGS["SVDLab_LoadVideo"]
    assert "both width and height" in lcls.VALIDATE_INPUTS(saved, 32, 0)
    assert lcls.VALIDATE_INPUTS(saved, 0, 0) is True
    assert "no readable file" in lcls.VALIDATE_INPUTS("gone.mp4", 0, 0)


# ------------------------------------------------------------------------------------- error messages


def test_multi_image_batch_uses_the_first_and_says_so(model, folders, caplog):
    with caplog.at_level(logging.WARNING):
        cond, _, info = _condition(model, _image(b=3))
    assert "3 images: used the first" in info and "used the first" in caplog.text
    single, _, _ = _condition(model, _image(b=3)[:1])
    assert torch.equal(cond.cond.concat, single.cond.concat)
    with pytest.raises(InputError, match="empty"):
        _condition(model, torch.zeros(0, 40, 70, 3))


def test_resolution_messages(model, folders):
    cls = NODE_CLASS_MAPPINGS["SVDLab_ImageToVideoConditioning"]
    assert "multiple of 8" in cls.VALIDATE_INPUTS(100, 48)
    assert "below the minimum" in cls.VALIDATE_INPUTS(8, 48)
    assert cls.VALIDATE_INPUTS(W, H) is True and cls.VALIDATE_INPUTS(None, None) is True
    with pytest.raises(InputError, match="not a multiple of 16"):
        _condition(model, width=72)
    dcls = NODE_CLASS_MAPPINGS["SVDLab_Decode"]
    assert "smaller than chunk_size" in dcls.VALIDATE_INPUTS(2, 2) and dcls.VALIDATE_INPUTS(14, 2) is True


def test_missing_checkpoint_and_sv3d_model_messages(models, folders):
    loader = NODE_CLASS_MAPPINGS["SVDLab_CheckpointLoader"]
    assert loader.INPUT_TYPES()["required"]["ckpt_name"][0] == ["tiny.safetensors", "tiny_sv3d.safetensors"]
    message = loader.VALIDATE_INPUTS("svd_xt.safetensors")
    assert "not found" in message and str(models) in message
    with pytest.raises(CheckpointError, match="looked in: .*" + models.name):
        loader().load("svd_xt.safetensors", "auto", "auto", "none")
    sv3d, _ = loader().load("tiny_sv3d.safetensors", "fp32", "auto", "none")
    with pytest.raises(InputError, match="multi-view node"):
        _condition(sv3d)


def test_unwritable_output_folder(model, folders):
    blocker = folders / "not_a_folder"
    blocker.write_text("x")
    bridge.configure(output_dir=blocker / "out")
    with pytest.raises(OSError, match="cannot write to the output folder"):
        node("SVDLab_SaveVideo").save(_image(b=2), 7.0, "mp4", 80, "x")
    bridge.configure(output_dir=folders / "out")
    with pytest.raises(bridge.PathRefused, match="names may not be '.', '..'"):
        node("SVDLab_SaveVideo").save(_image(b=2), 7.0, "mp4", 80, "../escape")


def test_headless_folders_from_the_environment(monkeypatch, tmp_path):
    bridge.reset()
    monkeypatch.setenv("SVD_LAB_MODELS", f"{tmp_path / 'a'}{os.pathsep}{tmp_path / 'b'}")
    monkeypatch.setenv("SVD_LAB_OUTPUT", str(tmp_path / "renders"))
    assert bridge.model_dirs() == [tmp_path / "a", tmp_path / "b"]
    assert bridge.folder("output") == tmp_path / "renders" and bridge.folder("temp") == Path("temp")
    monkeypatch.delenv("SVD_LAB_MODELS")
    monkeypatch.delenv("SVD_LAB_OUTPUT")
    assert bridge.model_dirs() == [Path("models/svd")] and bridge.folder("output") == Path("output")


def test_offload_moves_the_model_only_while_a_node_works(model, monkeypatch):
    moves, freed = [], []
    monkeypatch.setattr(model.model, "to", lambda device: moves.append(str(device)))
    monkeypatch.setattr(bridge.memory, "free_memory", lambda n, device: freed.append((n, str(device))))
    bridge.set_offload(model, torch.device("cuda"))
    try:
        with bridge.on_device(model):
            assert moves == ["cuda"]
        assert moves == ["cuda", "cpu"] and freed == [(bridge.model_bytes(model), "cuda")]
    finally:
        bridge.memory._offloaded.pop(model.model)


# --------------------------------------------------------------------------------------- fake ComfyUI


class Interrupted(Exception):
    pass


@pytest.fixture
def comfy(models, tmp_path, monkeypatch):
    """Fake folder_paths, comfy.utils, comfy.model_management and comfy.cli_args, recording calls."""
    calls: dict[str, list] = {"bars": [], "free": [], "interrupt_checks": 0}
    state = {"interrupt_after": None}
    fp = types.ModuleType("folder_paths")
    fp.models_dir = str(tmp_path / "models")
    fp.folder_names_and_paths = {"checkpoints": ([str(tmp_path / "ckpt")], {".safetensors"})}
    fp.get_folder_paths = lambda key: [str(models)] if key == "svd" else fp.folder_names_and_paths[key][0]
    fp.get_filename_list = lambda key: sorted(p.name for d in fp.get_folder_paths(key) for p in Path(d).glob("*.s*"))
    fp.get_output_directory = lambda: str(tmp_path / "comfy_out")
    fp.get_temp_directory = lambda: str(tmp_path / "comfy_temp")
    fp.get_input_directory = lambda: str(tmp_path)
    fp.exists_annotated_filepath = lambda name: (tmp_path / name).exists()
    fp.get_annotated_filepath = lambda name: str(tmp_path / name)
    fp.filter_files_content_types = lambda names, kinds: [n for n in names if n.endswith(".png")]
    fp.get_save_image_path = lambda prefix, out, w, h: (str(Path(out) / "sub"), prefix, 7, "sub", prefix)

    class ProgressBar:
        def __init__(self, total):
            calls["bars"].append([total])

        def update_absolute(self, value, total=None, preview=None):
            calls["bars"][-1].append((value, total, preview[0] if preview else None))

    def throw_if_interrupted():
        calls["interrupt_checks"] += 1
        if state["interrupt_after"] is not None and calls["interrupt_checks"] > state["interrupt_after"]:
            raise Interrupted("Processing interrupted")

    mm = types.ModuleType("comfy.model_management")
    mm.get_torch_device = lambda: torch.device("cpu")
    mm.free_memory = lambda n, device: calls["free"].append((n, str(device)))
    mm.soft_empty_cache = lambda force=False: None
    mm.throw_exception_if_processing_interrupted = throw_if_interrupted
    utils = types.ModuleType("comfy.utils")
    utils.ProgressBar = ProgressBar
    cli_args = types.ModuleType("comfy.cli_args")
    cli_args.args = types.SimpleNamespace(preview_method=types.SimpleNamespace(value="latent2rgb"), preview_size=256,
                                          disable_metadata=True)
    pkg = types.ModuleType("comfy")
    pkg.model_management, pkg.utils, pkg.cli_args = mm, utils, cli_args
    fakes = {"folder_paths": fp, "comfy": pkg, "comfy.model_management": mm, "comfy.utils": utils,
             "comfy.cli_args": cli_args}
    for name, module in fakes.items():
        monkeypatch.setitem(sys.modules, name, module)
    return types.SimpleNamespace(calls=calls, state=state, fp=fp, dir=tmp_path)


def test_bridge_registers_the_svd_folder_and_lists_checkpoints(comfy, models):
    bridge.register_model_folder()
    paths, exts = comfy.fp.folder_names_and_paths["svd"]
    assert paths == [str(comfy.dir / "models" / "svd")] and ".safetensors" in exts
    assert bridge.list_checkpoints() == ["tiny.safetensors", "tiny_sv3d.safetensors"]
    assert bridge.find_checkpoint("tiny.safetensors") == models / "tiny.safetensors"
    (models.parent / "outside.safetensors").write_bytes(b"")
    assert bridge.find_checkpoint("../outside.safetensors") is None  # names may not leave their model folder
    assert bridge.find_checkpoint(str(models / "tiny.safetensors")) is None  # no absolute paths inside ComfyUI
    assert bridge.save_target("x", "output", "mp4") == (comfy.dir / "comfy_out" / "sub" / "x_00007_.mp4", "sub",
                                                        "x_00007_.mp4")


def test_bridge_uses_comfy_progress_previews_memory_and_interrupts(comfy):
    bundle, _ = node("SVDLab_CheckpointLoader").load("tiny.safetensors", "auto", "auto", "none")
    assert comfy.calls["free"] and comfy.calls["free"][0][1] == "cpu"
    cond, _, _ = _condition(bundle)
    latent = _sample(bundle, cond)
    assert comfy.calls["bars"][-1] == [2, (1, 2, "JPEG"), (2, 2, "JPEG")]
    node("SVDLab_Decode").decode(bundle, latent, 2, 0)
    assert comfy.calls["bars"][-1] == [T, (2, T, None), (T, T, None)]
    comfy.state["interrupt_after"] = comfy.calls["interrupt_checks"]
    with pytest.raises(Interrupted):
        _sample(bundle, cond, steps=5)
    assert len(comfy.calls["bars"][-1]) == 1  # stopped before the first step was reported
    comfy.state["interrupt_after"] = None
    images = torch.rand(2, H, W, 3)
    out = node("SVDLab_SaveVideo").save(images, 7.0, "webp", 80, "x", prompt={"1": {}})
    assert out["ui"]["images"][0]["subfolder"] == "sub" and out["ui"]["images"][0]["type"] == "output"
    written = comfy.dir / "comfy_out" / "sub" / "x_00007_.webp"
    assert written.is_file() and "prompt" not in read_video_metadata(written)  # --disable-metadata honoured


def test_zero_frames_and_steps_take_the_variant_defaults(model, folders, monkeypatch):
    cond, empty, info = _condition(model, frames=0)
    assert cond.params.num_frames == model.defaults.num_frames == empty["samples"].shape[0]
    seen = {}

    def fake_sample_video(bundle, c, u, params, **kw):
        seen["steps"] = params.steps
        raise RuntimeError("stop here")

    from comfyui_svd_lab.nodes import video_nodes

    monkeypatch.setattr(video_nodes, "sample_video", fake_sample_video)
    with pytest.raises(RuntimeError, match="stop here"):
        _sample(model, cond, steps=0)
    assert seen["steps"] == model.defaults.steps


def test_the_runner_hands_its_output_folder_and_progress_to_the_bridge(folders, tmp_path):
    """execute(host=bridge, output_dir=...) moves where the pack's nodes write, for that run only."""
    from comfyui_svd_lab.workflow import execute

    prompt = {"1": {"class_type": "SVDLab_LoadImage", "inputs": {"image": "svd_lab_example.png", "path": ""}},
              "2": {"class_type": "SVDLab_SaveVideo", "inputs": {"images": ["1", 0], "fps": 7.0, "format": "webp",
                                                                 "quality": 50, "filename_prefix": "run/x"}}}
    before = bridge.folder("output")

    class Listener:
        def __init__(self):
            self.updates = []

        def start(self, total): ...
        def node_started(self, index, nid, class_type): ...
        def node_finished(self, nid, class_type, seconds): ...
        def finish(self): ...

        def update(self, value, total):
            self.updates.append((value, total))

    results = execute(prompt, NODE_CLASS_MAPPINGS, host=bridge, output_dir=tmp_path / "elsewhere",
                      progress=Listener())
    entry = results["2"].ui["images"][0]
    assert (tmp_path / "elsewhere" / entry["subfolder"] / entry["filename"]).is_file()
    assert bridge.folder("output") == before and bridge.progress._reporter is None
