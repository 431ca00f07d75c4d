"""UNet-only files (svd_model.weights.unet_file): every key layout loads and equals the UNet it was written from,
the bundle it joins is left unchanged, the few-step variant's defaults follow, wrong files fail with what they are,
and a tiny model samples with 4 LCM steps end to end."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from comfyui_svd_lab.svd_model.api import VideoParams, encode_condition, sample_video
from comfyui_svd_lab.svd_model.config import FEW_STEP_VARIANT, Family
from comfyui_svd_lab.svd_model.diffusion.schedules import animatelcm_sigmas
from comfyui_svd_lab.svd_model.errors import CheckpointError, ConfigError
from comfyui_svd_lab.svd_model.weights.diffusers_keys import unet_sgm_to_diffusers
from comfyui_svd_lab.svd_model.weights.loader import load_bundle, save_bundle
from comfyui_svd_lab.svd_model.weights.tiny import make_tiny_model, write_tiny_checkpoint
from comfyui_svd_lab.svd_model.weights.unet_file import load_unet, with_unet

T, H, W = 2, 32, 32
PREFIX = "model.diffusion_model."


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("unet_files")


@pytest.fixture(scope="module")
def bundle(folder):
    return load_bundle(write_tiny_checkpoint(folder / "svd_xt.safetensors", seed=0))


@pytest.fixture(scope="module")
def other_unet() -> dict[str, torch.Tensor]:
    """The UNet of another tiny model (seed 1): what the files hold, in sgm names without prefix."""
    return {k: v.clone().contiguous() for k, v in make_tiny_model(seed=1).unet.state_dict().items()}


def _write(folder, name: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None):
    path = folder / name
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata)
    return path


def _assert_same_state(unet: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    state = unet.state_dict()
    assert set(state) == set(expected)
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


@pytest.mark.parametrize("layout", ["prefixed", "sgm", "diffusers"])
def test_every_layout_loads_and_equals_the_original(folder, bundle, other_unet, layout):
    tensors = {"prefixed": {PREFIX + k: v for k, v in other_unet.items()}, "sgm": other_unet,
               "diffusers": unet_sgm_to_diffusers(other_unet)}[layout]
    path = _write(folder, f"unet_{layout}.safetensors", tensors)
    before = {k: v.clone() for k, v in bundle.model.unet.state_dict().items()}
    new, done = with_unet(bundle, path)
    assert done.layout == layout and done.ignored == 0
    _assert_same_state(new.model.unet, other_unet)
    _assert_same_state(bundle.model.unet, before)  # the bundle it joined is unchanged
    for part in ("first_stage", "cond_vae", "image_encoder"):  # shared, not copied
        assert getattr(new.model, part) is getattr(bundle.model, part)
    assert new.model.config == bundle.config and new.variant == bundle.variant == "svd_xt"
    assert done.variant_from == "kept"
    assert not torch.equal(new.model.unet.out[2].weight, bundle.model.unet.out[2].weight)


def test_a_full_checkpoint_lends_its_unet(folder, bundle, other_unet):
    path = save_bundle(make_tiny_model(seed=1), folder / "full_other.safetensors")
    new, done = with_unet(bundle, path)
    assert done.layout == "checkpoint" and done.ignored > 0
    _assert_same_state(new.model.unet, other_unet)


def test_load_unet_dtype_and_standalone_use(folder, other_unet):
    path = _write(folder, "half.safetensors", {PREFIX + k: v for k, v in other_unet.items()})
    unet, layout, ignored, _ = load_unet(path, dtype=torch.float16)
    assert layout == "prefixed" and ignored == 0 and unet.dtype == torch.float16 and not unet.training
    assert all(not p.requires_grad for p in unet.parameters())


def test_few_step_defaults_follow_the_file(folder, bundle, other_unet):
    by_name, done = with_unet(bundle, _write(folder, "AnimateLCM-SVD-xt.safetensors", other_unet))
    assert by_name.variant == FEW_STEP_VARIANT and done.variant_from == "file name"
    d = by_name.defaults
    assert (d.steps, d.sampler, d.schedule, d.min_cfg, d.max_cfg) == (4, "lcm", "animatelcm", 1.0, 1.2)
    assert "4 steps, lcm sampler, animatelcm schedule, cfg 1-1.2" in done.summary()
    noted = _write(folder, "finetune.safetensors", other_unet, {"svd_lab.variant": FEW_STEP_VARIANT})
    assert with_unet(bundle, noted)[1].variant_from == "metadata"
    declared, done = with_unet(bundle, noted, variant="svd_xt_1_1")
    assert declared.variant == "svd_xt_1_1" and done.variant_from == "declared"
    assert bundle.variant == "svd_xt"  # unchanged
    params = VideoParams.for_variant(by_name.variant)
    assert (params.steps, params.sampler, params.schedule, params.max_cfg) == (4, "lcm", "animatelcm", 1.2)
    with pytest.raises(ConfigError, match="does not fit this svd model"):
        with_unet(bundle, noted, variant="sv3d_u")
    with pytest.raises(ConfigError, match="unknown variant"):
        with_unet(bundle, noted, variant="turbo")


def test_wrong_files_are_named(folder, bundle, other_unet):
    first_stage = make_tiny_model(seed=1).first_stage.state_dict()
    cases = {
        "vae.safetensors": ({"first_stage_model." + k: v for k, v in first_stage.items()}, "VAE-only file"),
        "lora.safetensors": ({"diffusion_model.out.2.lora_up.weight": torch.zeros(4, 2),
                              "diffusion_model.out.2.lora_down.weight": torch.zeros(2, 64)}, "is a LoRA"),
        "image_unet.safetensors": ({k: v for k, v in other_unet.items() if "time_" not in k},
                                   "without temporal layers"),
        "flux.safetensors": ({"double_blocks.0.img_attn.qkv.weight": torch.zeros(3, 3)}, "Flux"),
        "partial.safetensors": ({k: v for k, v in other_unet.items() if not k.startswith("out.")},
                                "missing 'out.2.weight'"),
    }
    for name, (tensors, message) in cases.items():
        with pytest.raises(CheckpointError, match=message) as caught:
            with_unet(bundle, _write(folder, name, tensors))
        assert str(caught.value).startswith(name), str(caught.value)
    sv3d = make_tiny_model(Family.SV3D_U, seed=1).unet.state_dict()
    with pytest.raises(CheckpointError, match="another family"):
        with_unet(bundle, _write(folder, "sv3d_unet.safetensors", sv3d))
    broken = dict(other_unet)
    broken["out.2.weight"] = torch.full_like(broken["out.2.weight"], float("nan"))
    path = _write(folder, "nan.safetensors", broken)
    with pytest.raises(CheckpointError, match="NaN or Inf"):
        with_unet(bundle, path)
    assert with_unet(bundle, path, allow_non_finite=True)[0].model.unet.out[2].weight.isnan().all()


def test_tiny_model_samples_four_lcm_steps_end_to_end(folder, bundle, other_unet):
    few_step, _ = with_unet(bundle, _write(folder, "tiny_lcm.safetensors", other_unet))
    params = VideoParams.for_variant(few_step.variant, num_frames=T, width=W, height=H)
    image = torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(0)) * 2 - 1
    cond, uncond = encode_condition(few_step, image, params, generator=torch.Generator().manual_seed(0))
    seen = []
    a = sample_video(few_step, cond, uncond, params, generator=torch.Generator().manual_seed(3), callback=seen.append)
    assert a.shape == (1, T, 4, H // 8, W // 8) and torch.isfinite(a).all()
    assert [i.index for i in seen] == [0, 1, 2, 3]
    assert [i.sigma for i in seen] == pytest.approx(animatelcm_sigmas(4)[:-1].tolist())
    assert torch.equal(seen[-1].denoised, a)  # the last step returns the estimate
    # every other step re-noises its estimate to the next level: the next state is no deterministic step of it
    for before, after in zip(seen, seen[1:], strict=False):
        spread = (after.x - before.denoised).std().item()
        assert spread == pytest.approx(after.sigma, rel=0.2), (spread, after.sigma)


def test_fp8_storage_carries_over(folder, bundle, other_unet):
    base = load_bundle(folder / "svd_xt.safetensors", weight_storage="fp8_e4m3fn")
    new, _ = with_unet(base, _write(folder, "for_fp8.safetensors", other_unet))
    weight = new.model.unet.out[2].weight
    assert weight.dtype == torch.float8_e4m3fn and new.model.unet.dtype == torch.float32
    assert torch.equal(weight, other_unet["out.2.weight"].to(torch.float8_e4m3fn))
    assert base.model.unet.out[2].weight.dtype == torch.float8_e4m3fn  # the base keeps its own


@pytest.mark.gpu
def test_cuda_streamed_unet_is_replaced_by_a_streamed_one(folder, bundle, other_unet):
    """low_vram on CUDA: the new UNet stays in CPU memory and streams its blocks to the GPU like the old one."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from comfyui_svd_lab.svd_model.memory import apply_plan
    from comfyui_svd_lab.svd_model.nn import streaming

    base = apply_plan(load_bundle(folder / "svd_xt.safetensors"), "low_vram", "cuda")
    new, _ = with_unet(base, _write(folder, "for_streaming.safetensors", other_unet))
    streamer = streaming.streamer_of(new.model.unet)
    assert streamer is not None and streamer.device.type == "cuda"
    assert new.model.unet.out[2].weight.device.type == "cpu" and new.device.type == "cuda"
    params = VideoParams.for_variant(FEW_STEP_VARIANT, num_frames=T, width=W, height=H)
    image = torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(0)) * 2 - 1
    cond, uncond = encode_condition(new, image, params, generator=torch.Generator().manual_seed(0))
    out = sample_video(new, cond, uncond, params, generator=torch.Generator().manual_seed(1))
    assert out.device.type == "cuda" and torch.isfinite(out).all()
