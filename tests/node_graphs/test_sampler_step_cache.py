"""SVD Lab Sampler's step cache inputs: optional, off by default, validated, passed through to sampling, and what
the cache did carried in the LATENT output (for the saved video's metadata)."""

from __future__ import annotations

import math

import pytest
import torch

from comfyui_svd_lab.nodes import NODE_CLASS_MAPPINGS, bridge
from comfyui_svd_lab.nodes.video_nodes import LATENT_STEP_CACHE
from comfyui_svd_lab.svd_model.errors import ConfigError
from comfyui_svd_lab.svd_model.weights.loader import load_bundle
from comfyui_svd_lab.svd_model.weights.tiny import write_tiny_checkpoint

W, H, T, STEPS = 64, 48, 3, 8
SAMPLER = NODE_CLASS_MAPPINGS["SVDLab_Sampler"]


@pytest.fixture(scope="module")
def conditioning(tmp_path_factory):
    model = load_bundle(write_tiny_checkpoint(tmp_path_factory.mktemp("m") / "tiny.safetensors", seed=3))
    image = torch.rand(1, 40, 70, 3, generator=torch.Generator().manual_seed(1))
    cond = NODE_CLASS_MAPPINGS["SVDLab_ImageToVideoConditioning"]().encode(
        model, image, width=W, height=H, frames=T, fps=7, motion_bucket_id=127, cond_aug=0.02, seed=1)[0]
    return model, cond


def _sample(model, cond, **kw):
    args = {"sampler": "euler", "schedule": "karras", "steps": STEPS, "min_cfg": 1.0, "max_cfg": 2.5,
            "guidance": "linear", "seed": 5, "denoise": 1.0}
    with bridge.headless_run(reporter=lambda *_: None):
        return SAMPLER().sample(model, cond, **{**args, **kw})[0]


def test_inputs_are_optional_off_by_default_with_tooltips():
    optional = SAMPLER.INPUT_TYPES()["optional"]
    modes, opts = optional["step_cache"]
    assert modes == ["off", "deepcache", "teacache"] and opts["default"] == "off"
    assert "exact" in opts["tooltip"] and "faster" in opts["tooltip"]
    kind, opts = optional["cache_threshold"]
    assert kind == "FLOAT" and opts["min"] == 0.0 and "0 skips nothing" in opts["tooltip"]


@pytest.mark.parametrize("value", [-0.5, 4.0, math.nan, math.inf])
def test_bad_thresholds_are_refused_at_validation(value):
    problem = SAMPLER.VALIDATE_INPUTS(cache_threshold=value)
    assert isinstance(problem, str) and "cache_threshold" in problem
    assert SAMPLER.VALIDATE_INPUTS(cache_threshold=0.2) is True


def test_cache_off_by_default_and_on_when_asked(conditioning):
    model, cond = conditioning
    plain = _sample(model, cond)
    assert plain[LATENT_STEP_CACHE] == {"step_cache": "off"}
    assert torch.equal(_sample(model, cond, step_cache="off", cache_threshold=2.0)["samples"], plain["samples"])
    cached = _sample(model, cond, step_cache="deepcache", cache_threshold=0.5)
    meta = cached[LATENT_STEP_CACHE]
    assert meta["step_cache"] == "deepcache" and meta["step_cache_threshold"] == "0.5"
    reused, calls = map(int, meta["step_cache_reused"].split("/"))
    assert calls == STEPS and reused >= 2
    assert not torch.equal(cached["samples"], plain["samples"])
    rel = float((cached["samples"] - plain["samples"]).norm() / plain["samples"].norm())
    assert rel < 0.05


def test_unknown_mode_is_a_config_error(conditioning):
    model, cond = conditioning
    with pytest.raises(ConfigError, match="unknown step cache mode"):
        _sample(model, cond, step_cache="fastest")


def test_cli_image_to_video_takes_the_step_cache(tmp_path, capsys, caplog):
    from comfyui_svd_lab.cli import main

    argv = ["image-to-video", "--frames", "3", "--steps", "6", "--width", "64", "--height", "48", "--device", "cpu"]
    with caplog.at_level("INFO", logger="comfyui_svd_lab.svd_model.diffusion.step_cache"):
        assert main([*argv, "--output-dir", str(tmp_path / "c"), "--step-cache", "teacache",
                     "--cache-threshold", "3"]) == 0
    assert len(list((tmp_path / "c").glob("frame_*.png"))) == 3
    assert "step cache teacache (threshold 3): reused" in caplog.text
    assert main([*argv, "--output-dir", str(tmp_path / "x"), "--step-cache", "fast"]) == 2
    assert "unknown step cache mode 'fast'" in capsys.readouterr().err
