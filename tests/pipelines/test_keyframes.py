"""SVD keyframe interpolation on tiny random checkpoints: every method end to end, exact end frames,
seeding, the 12-channel keyframe checkpoint (detection, conditioning, zero-init expansion), the node,
and bad inputs."""

from __future__ import annotations

import pytest
import torch
from keyframe_support import write_tiny_keyframe_checkpoint

from comfyui_svd_lab.nodes.interpolation_nodes import KeyframeInterpolate
from comfyui_svd_lab.svd_model.conditioning import Cond
from comfyui_svd_lab.svd_model.config import Family
from comfyui_svd_lab.svd_model.diffusion.denoiser import make_model_fn
from comfyui_svd_lab.svd_model.errors import ConfigError, InputError
from comfyui_svd_lab.svd_model.pipelines.decode import encode_frames
from comfyui_svd_lab.svd_model.pipelines.image_to_video import VideoParams, encode_condition
from comfyui_svd_lab.svd_model.pipelines.keyframes import (
    decode_keyframe_video,
    expand_to_keyframe_model,
    interpolate_keyframes,
    keyframe_condition,
    resolve_method,
)
from comfyui_svd_lab.svd_model.weights.loader import load_bundle, save_bundle
from comfyui_svd_lab.svd_model.weights.tiny import make_tiny_model, write_tiny_checkpoint

T, H, W = 4, 32, 48


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny_keyframes")


@pytest.fixture(scope="module")
def bundle(tiny_dir):
    return load_bundle(write_tiny_checkpoint(tiny_dir / "svd.safetensors", seed=5))


@pytest.fixture(scope="module")
def keyframe_bundle(tiny_dir):
    return load_bundle(write_tiny_keyframe_checkpoint(tiny_dir / "svd_keyframes.safetensors", seed=6))


def _frames(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, H, W, generator=g) * 2 - 1, torch.rand(1, 3, H, W, generator=g) * 2 - 1


def _params(**kw) -> VideoParams:
    return VideoParams.for_variant("svd", **{"num_frames": T, "width": W, "height": H, "steps": 2, **kw})


def _run(bundle, seed=0, frames=None, **kw):
    first, last = frames or _frames()
    params = _params(**{k: kw.pop(k) for k in list(kw) if k in ("num_frames", "steps", "sampler")})
    return interpolate_keyframes(bundle, first, last, params, generator=torch.Generator().manual_seed(seed), **kw)


@pytest.mark.parametrize(("method", "renoise"), [("fusion", 0), ("fusion", 1), ("bidirectional", 0)])
def test_end_to_end_ends_are_the_keyframes_and_runs_are_seeded(bundle, method, renoise):
    first, last = _frames()
    latents = _run(bundle, 3, (first, last), method=method, renoise=renoise)
    assert latents.shape == (1, T, 4, H // 8, W // 8) and torch.isfinite(latents).all()
    ends = encode_frames(bundle, torch.stack([first, last], dim=1))  # (1, 2, 4, h, w)
    torch.testing.assert_close(latents[:, 0], ends[:, 0], rtol=0, atol=1e-4)  # latent anchoring
    torch.testing.assert_close(latents[:, -1], ends[:, 1], rtol=0, atol=1e-4)
    frames = decode_keyframe_video(bundle, latents, first, last, chunk_size=2, overlap=1)
    assert frames.shape == (1, T, 3, H, W)
    assert torch.equal(frames[:, 0], first) and torch.equal(frames[:, -1], last)  # exact after decoding
    assert torch.equal(latents, _run(bundle, 3, (first, last), method=method, renoise=renoise))
    assert not torch.allclose(latents[:, 1:-1], _run(bundle, 4, (first, last), method=method, renoise=renoise)[:, 1:-1])


def test_fusion_uses_both_keyframes_and_anchoring_pins_the_ends(bundle):
    first, last = _frames()
    other_first, other_last = _frames(9)
    base = _run(bundle, 1, (first, last), method="fusion")
    assert not torch.allclose(base[:, 1:-1], _run(bundle, 1, (first, other_last), method="fusion")[:, 1:-1])
    assert not torch.allclose(base[:, 1:-1], _run(bundle, 1, (other_first, last), method="fusion")[:, 1:-1])
    free = _run(bundle, 1, (first, last), method="fusion", anchor=False)
    ends = encode_frames(bundle, torch.stack([first, last], dim=1))
    assert (free[:, 0] - ends[:, 0]).abs().max() > 1e-2  # without anchoring nothing pins them
    assert resolve_method(bundle, "auto") == "fusion"
    one_by_one = _run(bundle, 1, (first, last), method="fusion", batch_paths=False)  # same maths, less memory
    torch.testing.assert_close(one_by_one, base, rtol=1e-4, atol=1e-4)


def test_every_sampler_works_with_fusion_and_callback_can_interrupt(bundle):
    seen = []
    _run(bundle, 0, method="fusion", sampler="dpmpp_2m", steps=3, callback=lambda i: seen.append((i.index, i.total)))
    assert seen == [(0, 3), (1, 3), (2, 3)]
    seen.clear()
    _run(bundle, 0, method="bidirectional", steps=3, callback=lambda i: seen.append(i.index))
    assert seen == [0, 1, 2]

    class Stop(Exception):
        pass

    def stop(info):
        raise Stop

    with pytest.raises(Stop):
        _run(bundle, 0, method="fusion", renoise=1, callback=stop)


def test_keyframe_checkpoint_is_detected_and_conditions_on_both_keyframes(keyframe_bundle, bundle):
    unet = keyframe_bundle.config.unet
    assert unet.in_channels == 12 and unet.concat_keyframes and unet.concat_channels == 8
    assert not bundle.config.unet.concat_keyframes
    assert resolve_method(keyframe_bundle, "auto") == "concat"
    first, last = _frames()
    with pytest.raises(InputError, match="no generator was passed"):  # never torch's global RNG
        keyframe_condition(keyframe_bundle, first, last, _params())
    cond, uncond = keyframe_condition(keyframe_bundle, first, last, _params(cond_aug=0.0),
                                      generator=torch.Generator().manual_seed(0))
    single, _ = encode_condition(keyframe_bundle, last, _params(cond_aug=0.0), generator=torch.Generator())
    assert cond.concat.shape == (1, 8, H // 8, W // 8) and torch.equal(cond.concat[:, 4:], single.concat)
    assert torch.count_nonzero(uncond.concat) == 0 and torch.count_nonzero(uncond.crossattn) == 0
    latents = _run(keyframe_bundle, 2, (first, last))
    assert latents.shape == (1, T, 4, H // 8, W // 8)
    ends = encode_frames(keyframe_bundle, torch.stack([first, last], dim=1))
    torch.testing.assert_close(latents[:, -1], ends[:, 1], rtol=0, atol=1e-4)
    _, other_last = _frames(9)
    assert not torch.allclose(latents[:, 1:-1], _run(keyframe_bundle, 2, (first, other_last))[:, 1:-1])
    assert torch.equal(latents, _run(keyframe_bundle, 2, (first, last)))
    with pytest.raises(ConfigError, match="needs an image-to-video UNet"):
        _run(keyframe_bundle, method="fusion")
    with pytest.raises(ConfigError, match="needs a keyframe-interpolation checkpoint"):
        _run(bundle, method="concat")


def test_expansion_to_a_keyframe_unet_starts_equal_to_image_to_video(tmp_path):
    model = make_tiny_model(seed=8)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, T, 4, H // 8, W // 8, generator=g)
    sigma = torch.tensor([3.0])
    cond = Cond(torch.randn(1, 1, 64, generator=g), torch.randn(1, 4, H // 8, W // 8, generator=g),
                torch.randn(1, T, 768, generator=g))
    before = make_model_fn(model.unet)(x, sigma, cond)
    expand_to_keyframe_model(model)
    assert model.config.unet.in_channels == 12 and model.unet.input_blocks[0][0].weight.shape[1] == 12
    after_fn = make_model_fn(model.unet)
    for last in (torch.zeros_like(cond.concat), torch.randn(cond.concat.shape, generator=g)):
        wide = Cond(cond.crossattn, torch.cat([cond.concat, last], dim=1), cond.vector)
        torch.testing.assert_close(after_fn(x, sigma, wide), before, rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="already"):
        expand_to_keyframe_model(model)
    loaded = load_bundle(save_bundle(model, tmp_path / "expanded.safetensors"))  # official layout, detected
    assert loaded.config.unet.concat_keyframes and resolve_method(loaded, "auto") == "concat"


def test_bad_inputs_say_what_is_wrong(bundle, tiny_dir):
    first, last = _frames()
    with pytest.raises(InputError, match="keyframes differ in size"):
        interpolate_keyframes(bundle, first, torch.zeros(1, 3, H, 64), _params())
    with pytest.raises(InputError, match="no frame between the two keyframes"):
        interpolate_keyframes(bundle, first, last, _params(num_frames=2))
    with pytest.raises(InputError, match="params ask for"):
        interpolate_keyframes(bundle, first, last, _params(width=64))
    with pytest.raises(ConfigError, match="unknown keyframe method"):
        _run(bundle, method="optical")
    with pytest.raises(ConfigError, match="denoise must be 1"):
        interpolate_keyframes(bundle, first, last, _params(denoise=0.5))
    with pytest.raises(ConfigError, match="set sampler='euler'"):
        _run(bundle, method="bidirectional", sampler="heun")
    with pytest.raises(ConfigError, match="only applies to method 'fusion'"):
        _run(bundle, method="bidirectional", renoise=2)
    sv3d = load_bundle(write_tiny_checkpoint(tiny_dir / "sv3d_u.safetensors", Family.SV3D_U, seed=1))
    with pytest.raises(InputError, match="SV3D"):
        _run(sv3d)


def test_node_returns_frames_that_start_and_end_with_the_keyframes(bundle):
    g = torch.Generator().manual_seed(1)
    first, last = torch.rand(1, H, W, 3, generator=g), torch.rand(2, H, W, 3, generator=g)
    node = KeyframeInterpolate()
    args = dict(width=W, height=H, frames=T, steps=2, min_cfg=1.0, max_cfg=2.0, guidance="linear", fps=7,
                motion_bucket_id=127, cond_aug=0.02, seed=3, method="auto", renoise=0, chunk_size=3, overlap=1)
    images, latent = node.interpolate(bundle, first, last, **args)
    assert images.shape == (T, H, W, 3) and latent["samples"].shape == (T, 4, H // 8, W // 8)
    torch.testing.assert_close(images[0], first[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(images[-1], last[0], rtol=0, atol=1e-6)
    assert KeyframeInterpolate.VALIDATE_INPUTS(W, H, T, 14, 2) is True
    assert "at least 3" in KeyframeInterpolate.VALIDATE_INPUTS(W, H, 2, 14, 2)
    assert "smaller than chunk_size" in KeyframeInterpolate.VALIDATE_INPUTS(W, H, T, 2, 2)
    with pytest.raises(InputError, match="different aspect ratios"):
        node.interpolate(bundle, first, torch.rand(1, H, H, 3), **args)


def test_image_to_video_node_refuses_a_keyframe_checkpoint_with_a_pointer(keyframe_bundle):
    from comfyui_svd_lab.nodes.video_nodes import ImageToVideoConditioning

    image = torch.rand(1, 64, 64, 3)
    with pytest.raises(InputError, match="keyframe-interpolation checkpoint.*Keyframe Interpolate"):
        ImageToVideoConditioning().encode(keyframe_bundle, image, 64, 64, 3, 7, 127, 0.02, 0)
