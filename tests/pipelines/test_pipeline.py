"""The public API end to end on tiny random checkpoints: seeding, samplers, denoise, SV3D, dtypes, errors."""

from __future__ import annotations

import math

import pytest
import torch

from comfyui_svd_lab.svd_model.api import (
    VideoParams,
    decode_latents,
    encode_condition,
    encode_frames,
    image_to_video,
    sample_video,
)
from comfyui_svd_lab.svd_model.config import Family
from comfyui_svd_lab.svd_model.diffusion.sampling import SAMPLERS
from comfyui_svd_lab.svd_model.errors import ConfigError, InputError
from comfyui_svd_lab.svd_model.nn.vae import chunk_ranges
from comfyui_svd_lab.svd_model.weights.loader import load_bundle
from comfyui_svd_lab.svd_model.weights.tiny import write_tiny_checkpoint

T, H, W = 3, 32, 48


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="module")
def bundle(tiny_dir):
    return load_bundle(write_tiny_checkpoint(tiny_dir / "svd.safetensors", seed=11))


def _image(seed: int = 0, b: int = 1) -> torch.Tensor:
    return torch.rand(b, 3, H, W, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _params(**kw) -> VideoParams:
    return VideoParams.for_variant("svd", **{"num_frames": T, "width": W, "height": H, "steps": 2, **kw})


def _run(bundle, seed, **kw):
    return image_to_video(bundle, _image(), _params(**kw), generator=torch.Generator().manual_seed(seed))


def test_same_seed_same_video_including_noise_augmentation(bundle):
    a, b = _run(bundle, 7), _run(bundle, 7)
    assert a.shape == (1, T, 4, H // 8, W // 8)
    assert torch.equal(a, b)
    assert not torch.allclose(a, _run(bundle, 8))
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    c1, _ = encode_condition(bundle, _image(), _params(), generator=g1)
    c2, _ = encode_condition(bundle, _image(), _params(), generator=g2)
    assert torch.equal(c1.crossattn, c2.crossattn)  # CLIP sees the clean frame
    assert not torch.equal(c1.concat, c2.concat)  # the VAE sees the noise-augmented one


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_every_sampler_runs_and_is_seeded(bundle, sampler):
    a = _run(bundle, 3, sampler=sampler)
    assert torch.isfinite(a).all()
    assert torch.equal(a, _run(bundle, 3, sampler=sampler))


@pytest.mark.parametrize("guidance", ["linear", "triangle", "constant"])
def test_guidance_shapes_run(bundle, guidance):
    assert torch.isfinite(_run(bundle, 0, guidance=guidance, min_cfg=1.0, max_cfg=2.0)).all()


def test_callback_sees_every_step_and_can_interrupt(bundle):
    seen = []
    _run_with = _params(steps=3)
    cond, uncond = encode_condition(bundle, _image(), _run_with, generator=torch.Generator().manual_seed(0))
    sample_video(bundle, cond, uncond, _run_with, generator=torch.Generator().manual_seed(0),
                 callback=lambda info: seen.append((info.index, info.total)))
    assert seen == [(0, 3), (1, 3), (2, 3)]

    class Stop(Exception):
        pass

    def stop(info):
        raise Stop

    with pytest.raises(Stop):
        sample_video(bundle, cond, uncond, _run_with, generator=torch.Generator().manual_seed(0), callback=stop)


def test_video_to_video_with_denoise(bundle):
    frames = torch.rand(1, T, 3, H, W, generator=torch.Generator().manual_seed(4)) * 2 - 1
    init = encode_frames(bundle, frames)
    params = _params(steps=4, denoise=0.5)
    cond, uncond = encode_condition(bundle, _image(), params, generator=torch.Generator().manual_seed(0))
    steps = []
    out = sample_video(bundle, cond, uncond, params, generator=torch.Generator().manual_seed(0),
                       init_latents=init, callback=steps.append)
    assert len(steps) == 2 and steps[0].sigma < 700
    assert out.shape == init.shape
    with pytest.raises(InputError, match="init_latents"):
        sample_video(bundle, cond, uncond, params, generator=torch.Generator().manual_seed(0))


def test_decode_is_chunked_per_video(bundle):
    latents = _run(bundle, 1)
    frames = decode_latents(bundle, latents, chunk_size=2)
    assert frames.shape == (1, T, 3, H, W) and frames.device.type == "cpu"
    assert not torch.allclose(frames, decode_latents(bundle, latents, chunk_size=T))  # temporal decoder


def test_bf16_close_to_fp32(tiny_dir):
    path = tiny_dir / "svd.safetensors"
    fp32 = load_bundle(path, dtype=torch.float32)
    bf16 = load_bundle(path, dtype=torch.bfloat16)
    params = _params()
    noise = torch.randn(1, T, 4, H // 8, W // 8, generator=torch.Generator().manual_seed(0))
    outs = []
    for b in (fp32, bf16):
        cond, uncond = encode_condition(b, _image(), params, aug_noise=torch.zeros(1, 3, H, W))
        outs.append(sample_video(b, cond, uncond, params, noise=noise))
    err = (outs[0] - outs[1]).abs().max() / outs[0].abs().max()
    assert err < 0.1, f"bf16 relative error {err:.3g}"


def test_sv3d_p_needs_a_camera(tiny_dir):
    bundle = load_bundle(write_tiny_checkpoint(tiny_dir / "sv3d_p.safetensors", Family.SV3D_P, seed=2))
    assert bundle.variant == "sv3d_p" and bundle.defaults.guidance == "triangle"
    params = VideoParams.for_variant("sv3d_p", num_frames=T, width=W, height=W, steps=2)
    image = torch.rand(1, 3, W, W) * 2 - 1
    with pytest.raises(InputError, match="camera"):
        encode_condition(bundle, image, params)
    camera = {"polars_rad": torch.full((T,), math.radians(80.0)), "azimuths_rad": torch.linspace(0.3, 0.0, T)}
    cond, uncond = encode_condition(bundle, image, params, generator=torch.Generator().manual_seed(0), camera=camera)
    assert cond.vector.shape == (1, T, 1280)
    out = sample_video(bundle, cond, uncond, params, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, T, 4, W // 8, W // 8)
    frames = decode_latents(bundle, out)  # SV3D: plain image decoder
    assert frames.shape == (1, T, 3, W, W)
    with pytest.raises(InputError, match="no VAE encoder|no encoder"):
        bundle.model.first_stage.encode_mode(image)


def test_bad_inputs_say_what_is_wrong(bundle):
    with pytest.raises(InputError, match="multiple of 16"):
        encode_condition(bundle, torch.zeros(1, 3, 40, 48), _params())
    with pytest.raises(InputError, match="batch is empty"):
        encode_condition(bundle, torch.zeros(0, 3, H, W), _params())
    with pytest.raises(InputError, match=r"\[-1, 1\]"):
        encode_condition(bundle, torch.full((1, 3, H, W), 200.0), _params())
    with pytest.raises(InputError, match="params ask for"):
        encode_condition(bundle, torch.zeros(1, 3, 64, 64), _params())
    with pytest.raises(InputError, match="noise augmentation .* no generator was passed"):  # no global RNG
        encode_condition(bundle, _image(), _params())
    cond, uncond = encode_condition(bundle, _image(), _params(), aug_noise=torch.zeros(1, 3, H, W))
    with pytest.raises(InputError, match="sample_video without a noise tensor draws noise but no generator"):
        sample_video(bundle, cond, uncond, _params())
    with pytest.raises(ConfigError, match="num_frames"):
        _params(num_frames=0)
    with pytest.raises(ConfigError, match="unknown sampler"):
        _params(sampler="ddim_magic")
    with pytest.raises(ConfigError, match="unknown video parameter"):
        VideoParams.for_variant("svd", frames=3)
    with pytest.raises(ConfigError, match="unknown variant"):
        VideoParams.for_variant("svd_xxl")


@pytest.mark.parametrize(("t", "chunk", "overlap"), [(14, 14, 0), (25, 14, 0), (25, 8, 2), (10, 4, 3), (5, 8, 2)])
def test_overlapped_chunks_cover_every_frame(t, chunk, overlap):
    ranges = chunk_ranges(t, chunk, overlap=overlap)
    assert ranges[0][0] == 0 and ranges[-1][1] == t
    assert all(stop - start <= chunk for start, stop in ranges)
    assert all(b[0] == a[1] - overlap for a, b in zip(ranges, ranges[1:], strict=False))


def test_overlap_decoding_blends_chunks(bundle):
    latents = _run(bundle, 2, num_frames=6)
    plain = decode_latents(bundle, latents, chunk_size=3)
    blended = decode_latents(bundle, latents, chunk_size=4, overlap=2)
    whole = decode_latents(bundle, latents, chunk_size=6)
    assert blended.shape == plain.shape
    # Frames outside any overlap equal the single chunk that decodes them (weights are exactly 1 there).
    first = decode_latents(bundle, latents[:, :4], chunk_size=4)
    assert torch.allclose(blended[:, :2], first[:, :2], atol=1e-5)
    assert not torch.allclose(blended, whole)
    with pytest.raises(InputError, match="overlap"):
        decode_latents(bundle, latents, chunk_size=2, overlap=2)
