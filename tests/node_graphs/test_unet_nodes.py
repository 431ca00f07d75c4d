"""SVDLab_UNetLoader: files listed from the UNet folders, confined, a new model with the file's UNet whose defaults
follow a few-step file, and the Sampler's auto sampler / schedule picking them up."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from safetensors.torch import save_file

from comfyui_svd_lab.nodes import NODE_CLASS_MAPPINGS, bridge
from comfyui_svd_lab.svd_model.config import FEW_STEP_VARIANT
from comfyui_svd_lab.svd_model.errors import CheckpointError
from comfyui_svd_lab.svd_model.weights.diffusers_keys import unet_sgm_to_diffusers
from comfyui_svd_lab.svd_model.weights.tiny import make_tiny_model, write_tiny_checkpoint
from comfyui_svd_lab.workflow import validate

T, H, W = 2, 32, 32


@pytest.fixture(scope="module")
def unet_state() -> dict[str, torch.Tensor]:
    return {k: v.contiguous() for k, v in make_tiny_model(seed=2).unet.state_dict().items()}


@pytest.fixture
def unet_folders(tmp_path, unet_state):
    """A headless model folder: a tiny checkpoint and, under unet/, the diffusers-named UNet of another tiny model."""
    models = tmp_path / "models"
    (models / "unet").mkdir(parents=True)
    write_tiny_checkpoint(models / "svd_xt.safetensors", seed=0)
    save_file(unet_sgm_to_diffusers(unet_state), str(models / "unet" / "AnimateLCM-SVD-xt.safetensors"))
    (tmp_path / "outside.safetensors").write_bytes(b"")
    bridge.configure(models_dirs=[models], output_dir=tmp_path / "out", temp_dir=tmp_path / "temp")
    yield models
    bridge.reset()


def test_unet_loader_node(unet_folders, unet_state):
    loader = NODE_CLASS_MAPPINGS["SVDLab_UNetLoader"]
    spec = loader.INPUT_TYPES()["required"]
    assert spec["unet_name"][0] == ["svd_xt.safetensors", "unet/AnimateLCM-SVD-xt.safetensors"]
    assert spec["variant"][0][0] == "auto" and FEW_STEP_VARIANT in spec["variant"][0]
    assert loader.VALIDATE_INPUTS("unet/AnimateLCM-SVD-xt.safetensors") is True
    assert "UNet 'gone.safetensors' not found; looked in" in loader.VALIDATE_INPUTS("gone.safetensors")
    assert bridge.find_unet("../outside.safetensors") is None  # names stay inside their model folder
    base, _ = NODE_CLASS_MAPPINGS["SVDLab_CheckpointLoader"]().load("svd_xt.safetensors", "fp32", "auto", "none")
    model, info = loader().load(base, "unet/AnimateLCM-SVD-xt.safetensors", "auto")
    assert model is not base and base.variant == "svd_xt" and model.variant == FEW_STEP_VARIANT
    assert "diffusers" in info and "4 steps, lcm sampler, animatelcm schedule, cfg 1-1.2" in info
    state = model.model.unet.state_dict()
    assert all(torch.equal(state[k], v) for k, v in unet_state.items())
    assert model.model.first_stage is base.model.first_stage
    declared, info = loader().load(base, "unet/AnimateLCM-SVD-xt.safetensors", "svd_xt_1_1")
    assert declared.variant == "svd_xt_1_1" and "(declared)" in info
    with pytest.raises(CheckpointError, match="UNet 'gone.safetensors' not found"):
        loader().load(base, "gone.safetensors", "auto")
    prompt = {"1": {"class_type": "SVDLab_CheckpointLoader", "inputs": {
        "ckpt_name": "svd_xt.safetensors", "dtype": "fp32", "variant": "auto", "offload": "none"}},
        "2": {"class_type": "SVDLab_UNetLoader", "inputs": {"model": ["1", 0], "unet_name": "gone.safetensors",
                                                             "variant": "auto"}}}
    problems = [str(p) for p in validate(prompt, NODE_CLASS_MAPPINGS) if p.node_id == "2"]
    missing = bridge.missing_unet_message("gone.safetensors")
    assert problems == [f"node 2 (SVDLab_UNetLoader) input 'unet_name': {missing}"]



def test_sampler_auto_takes_the_models_recommendation(unet_folders, monkeypatch):
    """Sampler: steps 0, sampler auto and schedule auto resolve to the loaded variant's settings."""
    from comfyui_svd_lab.nodes import video_nodes

    base, _ = NODE_CLASS_MAPPINGS["SVDLab_CheckpointLoader"]().load("svd_xt.safetensors", "fp32", "auto", "none")
    few_step, _ = NODE_CLASS_MAPPINGS["SVDLab_UNetLoader"]().load(base, "unet/AnimateLCM-SVD-xt.safetensors", "auto")
    image = torch.rand(1, 40, 60, 3, generator=torch.Generator().manual_seed(0))
    cond, _, _ = NODE_CLASS_MAPPINGS["SVDLab_ImageToVideoConditioning"]().encode(
        few_step, image, W, H, T, 7, 80, 0.02, 1)
    seen = []

    def fake_sample_video(bundle, c, u, params, **kw):
        seen.append((params.steps, params.sampler, params.schedule))
        raise RuntimeError("stop here")

    monkeypatch.setattr(video_nodes, "sample_video", fake_sample_video)
    args = {"steps": 0, "min_cfg": 1.0, "max_cfg": 1.2, "guidance": "auto", "seed": 3, "denoise": 1.0}
    for model, sampler, schedule in ((few_step, "auto", "auto"), (base, "auto", "auto"), (few_step, "heun", "ays")):
        with pytest.raises(RuntimeError, match="stop here"):
            NODE_CLASS_MAPPINGS["SVDLab_Sampler"]().sample(model, cond, sampler, schedule, **args)
    assert seen == [(4, "lcm", "animatelcm"), (30, "euler", "karras"), (4, "heun", "ays")]


def test_unet_list_inside_comfyui_puts_the_unet_folders_first(unet_folders, tmp_path, monkeypatch):
    comfy_unet = tmp_path / "comfy_unet"
    comfy_unet.mkdir()
    (comfy_unet / "animatelcm.safetensors").write_bytes(b"")
    fp = types.ModuleType("folder_paths")
    fp.folder_names_and_paths = {"diffusion_models": ([str(comfy_unet)], {".safetensors"})}
    fp.get_folder_paths = lambda key: [str(unet_folders)] if key == "svd" else fp.folder_names_and_paths[key][0]
    monkeypatch.setitem(sys.modules, "folder_paths", fp)
    assert bridge.models.list_unets() == ["animatelcm.safetensors", "svd_xt.safetensors",
                                          "unet/AnimateLCM-SVD-xt.safetensors"]
    assert bridge.models.find_unet("animatelcm.safetensors") == comfy_unet / "animatelcm.safetensors"
    assert bridge.models.find_unet(str(comfy_unet / "animatelcm.safetensors")) is None  # no absolute paths
    assert "models/diffusion_models" in bridge.models.missing_unet_message("x.safetensors")
