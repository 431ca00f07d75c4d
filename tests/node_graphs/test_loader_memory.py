"""The loader node's memory modes and fp8 weight storage, headless: what each puts where, the error for two
placements at once, and a whole example workflow run in low_vram with fp8 weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from comfyui_svd_lab import NODE_CLASS_MAPPINGS
from comfyui_svd_lab.svd_model.errors import InputError
from comfyui_svd_lab.svd_model.memory import DEFAULT, LOW_VRAM
from comfyui_svd_lab.svd_model.nn import streaming
from comfyui_svd_lab.svd_model.weights.tiny import write_tiny_checkpoint

EXAMPLES = Path(__file__).resolve().parents[2] / "example_workflows"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    write_tiny_checkpoint(folder / "tiny.safetensors", seed=3)
    return folder


def _load(**kw):
    loader = NODE_CLASS_MAPPINGS["SVDLab_CheckpointLoader"]()
    return loader.load("tiny.safetensors", "fp32", "auto", kw.pop("offload", "none"), **kw)


def test_memory_widgets_are_optional_with_todays_defaults():
    optional = NODE_CLASS_MAPPINGS["SVDLab_CheckpointLoader"].INPUT_TYPES()["optional"]
    assert optional["memory"][0] == ["normal", "low_vram"] and optional["memory"][1]["default"] == "normal"
    assert optional["weight_storage"][0] == ["as dtype", "fp8_e4m3fn", "fp8_e5m2"]
    assert optional["weight_storage"][1]["default"] == "as dtype"


def test_normal_low_vram_and_fp8(folders):
    normal, info = _load()
    assert normal.memory == DEFAULT and "memory" not in info
    low, info = _load(memory="low_vram")
    assert low.memory == LOW_VRAM and "memory low_vram (computes on cpu)" in info
    assert streaming.streamer_of(low.model.unet) is None  # the CPU computes where the weights are
    fp8, info = _load(weight_storage="fp8_e4m3fn")
    assert "UNet weights in fp8_e4m3fn" in info and fp8.dtype == torch.float32
    assert fp8.model.unet.out[2].weight.dtype == torch.float8_e4m3fn
    assert fp8.model.image_encoder.dtype == torch.float32


def test_offload_and_low_vram_together_are_refused(folders):
    with pytest.raises(InputError, match="offload 'cpu between nodes' and memory 'low_vram' both decide"):
        _load(offload="cpu between nodes", memory="low_vram")


def test_low_vram_decode_uses_the_plan_tiles_unless_the_node_sets_them(folders):
    model, _ = _load(memory="low_vram")
    latent = {"samples": torch.randn(2, 4, 24, 24, generator=torch.Generator().manual_seed(0))}
    decode = NODE_CLASS_MAPPINGS["SVDLab_Decode"]()
    planned = decode.decode(model, latent, chunk_size=14, overlap=2)[0]  # the plan caps chunk and overlap
    explicit = decode.decode(_load()[0], latent, chunk_size=1, overlap=0, tile_size=64, tile_overlap=8)[0]
    assert torch.equal(planned, explicit)  # LOW_VRAM: chunk 1, 64-latent-pixel tiles (here one tile: 24x24)
    small = decode.decode(model, latent, chunk_size=14, overlap=0, tile_size=16, tile_overlap=4)[0]
    tiled = decode.decode(_load()[0], latent, chunk_size=1, overlap=0, tile_size=16, tile_overlap=4)[0]
    assert torch.equal(small, tiled) and not torch.equal(small, planned)  # the node's tile_size overrides


def test_example_workflow_runs_in_low_vram_with_fp8_weights(folders, models):
    from comfyui_svd_lab.workflow import apply_overrides, execute, load_workflow

    prompt, _ = load_workflow(EXAMPLES / "api" / "svd_xt_image_to_video.json", NODE_CLASS_MAPPINGS)
    sets = ["1.ckpt_name=tiny.safetensors", "1.memory=low_vram", "1.weight_storage=fp8_e5m2", "1.dtype=bf16",
            "3.width=128", "3.height=64", "3.frames=3", "4.steps=2"]
    prompt = apply_overrides(prompt, sets, NODE_CLASS_MAPPINGS)
    results = execute(prompt, NODE_CLASS_MAPPINGS)
    info = results["1"].values[1][0]
    assert "bfloat16, UNet weights in fp8_e5m2" in info and "memory low_vram" in info
    saved = [item for r in results.values() for item in r.ui.get("images", [])]
    assert len(saved) == 1 and (folders / "out" / saved[0]["subfolder"] / saved[0]["filename"]).is_file()
