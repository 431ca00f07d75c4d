"""VAE: official key layouts, golden parity with sgm, chunked decoding, unit behaviour on tiny random configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from comfyui_svd_lab.svd_model.config import SCALE_FACTOR, VAEConfig
from comfyui_svd_lab.svd_model.errors import CheckpointError, InputError, ShapeError
from comfyui_svd_lab.svd_model.nn.vae import AutoencoderKL, Decoder, VideoDecoder, chunk_ranges, decode_chunked
from comfyui_svd_lab.svd_model.nn.vae_blocks import GroupNorm32
from conftest import assert_golden, max_error

COND_VAE = {"has_quant_conv": True, "has_post_quant_conv": True, "temporal_decoder": False}
GOLDEN_TINY = {"ch": 32, "ch_mult": (1, 1, 1, 1), "num_res_blocks": 1, "z_channels": 4}
# Unit-test size: downsample factor 2, widths 32 / 64 (nin_shortcut present), 16x16 pixels -> 8x8 latents.
UNIT = {"ch": 32, "ch_mult": (1, 2), "num_res_blocks": 1}


def random_vae(seed: int = 0, **overrides: object) -> AutoencoderKL:
    """A tiny VAE with O(1) random weights (mix_factor drawn too, so the blend direction matters)."""
    vae = AutoencoderKL(VAEConfig(**{**UNIT, **overrides}))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in vae.named_parameters():
            r = torch.randn(param.shape, generator=generator)
            if param.ndim >= 2:
                param.copy_(r / (param[0].numel() ** 0.5))
            elif name.endswith("mix_factor"):
                param.copy_(r)
            elif "norm" in name or "in_layers.0" in name or "out_layers.0" in name:
                param.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * r)
            else:
                param.copy_(0.1 * r)
    return vae.eval()


def images(n: int, size: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.rand((n, 3, size, size), generator=torch.Generator().manual_seed(seed)) * 2 - 1


def latents(n: int, size: int = 8, seed: int = 2) -> torch.Tensor:
    return torch.randn((n, 4, size, size), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------- official key layouts

LAYOUTS = [
    ("svd_keys.json", "first_stage_model.", {}),
    ("svd_keys.json", "conditioner.embedders.3.encoder.", COND_VAE),
    ("svd_image_decoder_keys.json", "first_stage_model.", COND_VAE),
    ("svd_image_decoder_keys.json", "conditioner.embedders.3.encoder.", COND_VAE),
    ("sv3d_u_keys.json", "first_stage_model.", {"has_encoder": False, "temporal_decoder": False}),
    ("sv3d_u_keys.json", "conditioner.embedders.1.encoder.", COND_VAE),
]


@pytest.mark.parametrize(("file", "prefix", "flags"), LAYOUTS)
def test_full_size_layout_matches_official_keys(reference_dir: Path, file: str, prefix: str, flags: dict) -> None:
    reference = json.loads((reference_dir / file).read_text())
    expected = {key[len(prefix) :]: shape for key, shape in reference.items() if key.startswith(prefix)}
    with torch.device("meta"):
        vae = AutoencoderKL(VAEConfig(**flags))
    actual = {key: list(value.shape) for key, value in vae.state_dict().items()}
    assert sorted(actual.keys() - expected.keys()) == []
    assert sorted(expected.keys() - actual.keys()) == []
    assert actual == expected


# ------------------------------------------------------------------------------------- golden parity with sgm


@pytest.fixture(scope="module")
def golden_vaes(golden_dir: Path) -> dict[str, AutoencoderKL]:
    from safetensors.torch import load_file

    checkpoint = load_file(str(golden_dir / "checkpoint.safetensors"))
    first_stage = AutoencoderKL(VAEConfig(**GOLDEN_TINY))
    first_stage.load_weights(checkpoint, "first_stage_model.")
    cond = AutoencoderKL(VAEConfig(**GOLDEN_TINY, **COND_VAE))
    cond.load_weights(checkpoint, "conditioner.embedders.3.encoder.")
    return {"first_stage": first_stage.eval(), "cond": cond.eval()}


@torch.inference_mode()
def test_golden_encoders(golden_vaes: dict[str, AutoencoderKL], golden: dict[str, torch.Tensor]) -> None:
    x = golden["vae.encode_in"]  # (3, 3, 64, 96)
    first_stage, cond = golden_vaes["first_stage"], golden_vaes["cond"]
    assert_golden(cond.encode_mode(x), golden["vae.cond_encoder_mode"], "vae.cond_encoder_mode")
    assert_golden(first_stage.encode_moments(x), golden["vae.first_stage_moments"], "vae.first_stage_moments")
    mode = first_stage.encode_mode(x)
    assert_golden(mode, golden["vae.first_stage_mode"], "vae.first_stage_mode")
    assert_golden(mode * SCALE_FACTOR, golden["vae.first_stage_mode_scaled"], "vae.first_stage_mode_scaled")


@torch.inference_mode()
def test_golden_decode_chunked(golden_vaes: dict[str, AutoencoderKL], golden: dict[str, torch.Tensor]) -> None:
    vae = golden_vaes["first_stage"]
    z = golden["vae.decode_in"] * (1.0 / SCALE_FACTOR)  # (6, 4, 8, 12), as sgm's decode_first_stage scales
    decoding_t = int(golden["vae.decoding_t"].item())
    chunked = decode_chunked(vae, z, decoding_t)
    unchunked = decode_chunked(vae, z, z.shape[0])
    assert_golden(chunked, golden["vae.decode_out"], "vae.decode_out")
    assert_golden(unchunked, golden["vae.decode_out_unchunked"], "vae.decode_out_unchunked")
    assert_golden(vae.decode(z, z.shape[0]), golden["vae.decode_out_unchunked"], "vae.decode (one chunk)")
    # The chunk seam is real: chunked and unchunked differ far beyond the tolerance.
    assert max_error(chunked, unchunked)[1] > 1e-2


# ------------------------------------------------------------------------------------- chunked decoding


def test_chunk_ranges() -> None:
    assert chunk_ranges(25, 14) == [(0, 14), (14, 25)]
    assert chunk_ranges(6, 4) == [(0, 4), (4, 6)]
    assert chunk_ranges(6, 10) == [(0, 6)]
    assert chunk_ranges(8, 3) == [(0, 3), (3, 6), (6, 8)]  # sgm: chunks may straddle videos
    assert chunk_ranges(8, 3, num_frames_per_video=4) == [(0, 3), (3, 4), (4, 7), (7, 8)]
    assert chunk_ranges(8, 4, num_frames_per_video=4) == chunk_ranges(8, 4)
    with pytest.raises(InputError):
        chunk_ranges(8, 0)
    with pytest.raises(InputError):
        chunk_ranges(8, 3, num_frames_per_video=3)


@torch.inference_mode()
def test_decode_chunked_matches_per_chunk_decoding() -> None:
    vae = random_vae()
    z = latents(7)
    seen: list[int] = []
    handle = vae.decoder.conv_in.register_forward_pre_hook(lambda _module, args: seen.append(args[0].shape[0]))
    progress: list[tuple[int, int]] = []
    try:
        out = decode_chunked(vae, z, 3, out_device="cpu", callback=lambda done, total: progress.append((done, total)))
    finally:
        handle.remove()
    assert seen == [3, 3, 1]  # the decoder never sees more than chunk_size frames
    assert progress == [(3, 7), (6, 7), (7, 7)]
    expected = torch.cat([vae.decode(z[a:b], b - a) for a, b in ((0, 3), (3, 6), (6, 7))])
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert out.shape == (7, 3, 16, 16) and out.device.type == "cpu"


@torch.inference_mode()
def test_decode_chunked_per_video() -> None:
    vae = random_vae()
    z = latents(8)
    out = decode_chunked(vae, z, 3, num_frames_per_video=4)
    expected = torch.cat([vae.decode(z[a:b], b - a) for a, b in ((0, 3), (3, 4), (4, 7), (7, 8))])
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    # One chunk per video decodes the two videos independently, same as decode() on a (2*4)-frame batch.
    torch.testing.assert_close(decode_chunked(vae, z, 4, num_frames_per_video=4), vae.decode(z, 4))


@pytest.mark.gpu
@torch.inference_mode()
def test_decode_chunked_peak_memory_does_not_grow_with_frames() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    vae = random_vae(ch=64, ch_mult=(1, 2, 2, 2), num_res_blocks=1).cuda()

    def peak(frames: int) -> int:
        z = latents(frames, size=32).cuda()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        decode_chunked(vae, z, 4, out_device="cpu")
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    short, long = peak(4), peak(24)
    assert long <= short * 1.1 + (1 << 20), f"peak {long} B for 24 frames vs {short} B for 4 frames"


# ------------------------------------------------------------------------------------- unit behaviour


@torch.inference_mode()
def test_shapes_and_dtypes() -> None:
    vae = random_vae(**COND_VAE)
    x = images(2)
    assert vae.encode_moments(x).shape == (2, 8, 8, 8)
    assert vae.encode_mode(x).shape == (2, 4, 8, 8)
    assert vae.encode_sample(x, torch.Generator().manual_seed(0)).shape == (2, 4, 8, 8)
    out = vae.decode(latents(2))
    assert out.shape == (2, 3, 16, 16) and out.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in vae.parameters())


@torch.inference_mode()
def test_encode_mode_and_quant_conv() -> None:
    vae = random_vae(**COND_VAE)
    x = images(2)
    moments = vae.quant_conv(vae.encoder(x))
    torch.testing.assert_close(vae.encode_moments(x), moments, rtol=0, atol=0)
    torch.testing.assert_close(vae.encode_mode(x), moments[:, :4], rtol=0, atol=0)


@torch.inference_mode()
def test_encode_sample_is_seeded_and_clamped() -> None:
    vae = random_vae()
    x = images(2)
    first = vae.encode_sample(x, torch.Generator().manual_seed(7))
    again = vae.encode_sample(x, torch.Generator().manual_seed(7))
    other = vae.encode_sample(x, torch.Generator().manual_seed(8))
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.equal(first, other)
    mean, logvar = vae.encode_moments(x).chunk(2, dim=1)
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(first, mean + torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) * eps)
    with pytest.raises(InputError):
        vae.encode_sample(x, 7)  # type: ignore[arg-type]


@torch.inference_mode()
def test_image_decoder_ignores_num_frames() -> None:
    vae = random_vae(temporal_decoder=False)
    assert type(vae.decoder) is Decoder
    z = latents(4)
    torch.testing.assert_close(vae.decode(z, 1), vae.decode(z, 4), rtol=0, atol=0)
    torch.testing.assert_close(vae.decode(z[:2], 1), vae.decode(z, 4)[:2])


@torch.inference_mode()
def test_temporal_decoder_mixes_frames() -> None:
    vae = random_vae()
    assert isinstance(vae.decoder, VideoDecoder)
    z = latents(4)
    one_video = vae.decode(z, 4)
    two_videos = vae.decode(z, 2)
    assert not torch.allclose(one_video, two_videos, atol=1e-3)
    torch.testing.assert_close(two_videos[:2], vae.decode(z[:2], 2))
    torch.testing.assert_close(vae.decode(z), one_video, rtol=0, atol=0)  # None = one video of all frames
    with pytest.raises(ShapeError):
        vae.decode(z, 3)


@torch.inference_mode()
def test_temporal_blend_direction() -> None:
    """alpha = sigmoid(mix_factor) weighs the TEMPORAL branch: alpha -> 0 gives the plain image decoder."""
    video = random_vae()
    image = AutoencoderKL(VAEConfig(**UNIT, temporal_decoder=False)).eval()
    spatial = {k: v for k, v in video.state_dict().items() if "time_stack" not in k and "mix_factor" not in k}
    spatial = {k: v for k, v in spatial.items() if "time_mix_conv" not in k}
    image.load_state_dict(spatial, strict=True)
    with torch.no_grad():
        for name, param in video.named_parameters():
            if name.endswith("mix_factor"):
                param.fill_(-200.0)  # alpha = 0 in float32
        time_mix = video.decoder.conv_out.time_mix_conv
        time_mix.weight.zero_()
        time_mix.bias.zero_()
        time_mix.weight[:, :, 1, 0, 0] = torch.eye(3)  # identity over time
    z = latents(4)
    torch.testing.assert_close(video.decode(z, 4), image.decode(z), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        for name, param in video.named_parameters():
            if name.endswith("mix_factor"):
                param.fill_(200.0)  # alpha = 1: temporal branch only
    assert not torch.allclose(video.decode(z, 4), image.decode(z), atol=1e-3)


def test_missing_parts_raise_input_error() -> None:
    sv3d_first_stage = random_vae(has_encoder=False, temporal_decoder=False)
    with pytest.raises(InputError, match="no encoder"):
        sv3d_first_stage.encode_mode(images(1))
    encoder_only = random_vae(has_decoder=False)
    with pytest.raises(InputError, match="no decoder"):
        encoder_only.decode(latents(1))


def test_bad_shapes_raise_shape_error() -> None:
    vae = random_vae()
    with pytest.raises(ShapeError):
        vae.encode_mode(torch.zeros(1, 4, 16, 16))
    with pytest.raises(ShapeError):
        vae.encode_mode(torch.zeros(1, 3, 15, 16))
    with pytest.raises(ShapeError):
        vae.decode(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ShapeError):
        decode_chunked(vae, torch.zeros(4, 8, 8), 2)


def test_load_weights_is_strict() -> None:
    source = random_vae(**COND_VAE)
    weights = {f"prefix.{k}": v for k, v in source.state_dict().items()}
    weights["other.unrelated"] = torch.zeros(1)  # keys outside the prefix are ignored
    target = AutoencoderKL(VAEConfig(**UNIT, **COND_VAE))
    target.load_weights(weights, "prefix.")
    assert all(torch.equal(target.state_dict()[k], v) for k, v in source.state_dict().items())

    missing = {k: v for k, v in weights.items() if not k.endswith("quant_conv.weight")}
    with pytest.raises(CheckpointError, match="missing"):
        target.load_weights(missing, "prefix.")
    with pytest.raises(CheckpointError, match="unexpected"):
        target.load_weights({**weights, "prefix.decoder.extra": torch.zeros(1)}, "prefix.")
    wrong_shape = {**weights, "prefix.quant_conv.bias": torch.zeros(3)}
    with pytest.raises(CheckpointError, match="shape"):
        target.load_weights(wrong_shape, "prefix.")
    # Image-decoder weights do not load into a temporal decoder (time_stack / time_mix_conv missing).
    with pytest.raises(CheckpointError, match="missing"):
        AutoencoderKL(VAEConfig(**UNIT, has_quant_conv=True, has_post_quant_conv=True)).load_weights(weights, "prefix.")


def test_group_norm_runs_in_float32() -> None:
    norm = GroupNorm32(32, 64, eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(2, 64, 4, 4) * 100 + 50
    half = norm.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert half.dtype == torch.bfloat16
    reference = torch.nn.functional.group_norm(
        x.to(torch.bfloat16).float(), 32, norm.weight.float(), norm.bias.float(), 1e-6
    )
    torch.testing.assert_close(half, reference.to(torch.bfloat16), rtol=0, atol=0)
