"""Spatially tiled temporal-VAE decoding: tile geometry, blend weights, exactness, error bound, memory plan, node."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from comfyui_svd_lab.nodes import NODE_CLASS_MAPPINGS
from comfyui_svd_lab.nodes.adapters import video_to_images
from comfyui_svd_lab.svd_model.errors import InputError
from comfyui_svd_lab.svd_model.memory import MemoryPlan
from comfyui_svd_lab.svd_model.nn.vae import decode_chunked
from comfyui_svd_lab.svd_model.nn.vae_tiling import blend_weights, chunk_ranges, tile_ranges
from comfyui_svd_lab.svd_model.pipelines.decode import decode_latents
from comfyui_svd_lab.svd_model.weights.loader import load_bundle
from comfyui_svd_lab.svd_model.weights.tiny import write_tiny_checkpoint

T, LH, LW = 2, 16, 24  # frames, latent height / width (128x192 pixels)
F = 8  # VAE factor

# Tiled vs untiled on the tiny random-weight model (tile 12 / overlap 6 on 16x24 latents, 2 frames, 2x3 tiles):
# measured over latent seeds 0..2, max |diff| 0.39-0.56 and PSNR 29.5-30.4 dB (peak-to-peak 2; outputs have
# std 0.56); hard edges (overlap 0) give 18.5-19.4 dB. Random weights make the GroupNorm statistics and the
# mid-block attention far more position-dependent than a trained VAE's. The bounds leave margin.
TILE, TILE_OVERLAP = 12, 6
TILED_MAX_ABS = 0.8
TILED_MIN_PSNR_DB = 27.0


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return load_bundle(write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "svd.safetensors", seed=11))


@pytest.fixture(scope="module")
def latents() -> torch.Tensor:
    return torch.randn(1, T, 4, LH, LW, generator=torch.Generator().manual_seed(0))  # (b, t, 4, h, w), scaled


@pytest.fixture(scope="module")
def untiled(bundle, latents) -> torch.Tensor:
    return decode_latents(bundle, latents, chunk_size=T, tile_size=0)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB for frames in [-1, 1] (peak-to-peak 2)."""
    return float(10 * torch.log10(4 / (a - b).pow(2).mean()))


# ------------------------------------------------------------------------------------------- geometry


@pytest.mark.parametrize(("length", "tile", "overlap"), [
    (72, 64, 8), (128, 64, 8), (128, 64, 16), (128, 32, 8), (72, 32, 16), (33, 16, 15), (64, 64, 8), (5, 16, 4),
])
def test_tile_ranges_cover_the_axis_with_equal_tiles_and_the_overlap(length, tile, overlap):
    ranges = tile_ranges(length, tile, overlap)
    edges = {stop - start for start, stop in ranges}
    assert ranges[0][0] == 0 and ranges[-1][1] == length
    assert len(edges) == 1 and edges.pop() <= tile  # one tile edge, never above the asked one
    shared = [a[1] - b[0] for a, b in zip(ranges, ranges[1:], strict=False)]
    assert all(overlap <= s <= overlap + len(ranges) - 1 for s in shared)
    if length <= tile:
        assert ranges == [(0, length)]
    # as few tiles as fit: one fewer could not cover the axis with tiles of edge `tile` sharing `overlap`
    assert (len(ranges) - 1) * (tile - overlap) + overlap < length or len(ranges) == 1


def test_tile_ranges_refuse_bad_settings():
    with pytest.raises(InputError, match="tile overlap"):
        tile_ranges(64, 16, 16)
    with pytest.raises(InputError, match="tile edge"):
        tile_ranges(64, 0, 0)


@pytest.mark.parametrize("ranges", [
    tile_ranges(128, 32, 8), tile_ranges(33, 16, 15), chunk_ranges(25, 14, overlap=4), [(0, 10)],
])
def test_blend_weights_ramp_over_shared_positions_and_sum_to_one(ranges):
    length = ranges[-1][1]
    weights = blend_weights(ranges, length)
    total = torch.zeros(length)
    for (start, stop), w in zip(ranges, weights, strict=True):
        total[start:stop] += w
    torch.testing.assert_close(total, torch.ones(length), rtol=0, atol=1e-6)
    first_stop, second_start = ranges[0][1], ranges[1][0] if len(ranges) > 1 else ranges[0][1]
    assert torch.all(weights[0][:second_start] == 1)  # positions only the first piece covers
    if len(ranges) > 1:  # a linear ramp down over the shared positions (two-piece overlap: k / (s + 1))
        s = first_stop - second_start
        ramp = weights[0][second_start:]
        assert torch.all(ramp.diff() < 0) and ramp[-1] < 0.5 < ramp[0]
        if len(ranges) == 2 or ranges[2][0] >= first_stop:
            torch.testing.assert_close(ramp, torch.arange(s, 0, -1) / (s + 1))


def test_blend_weights_do_not_ramp_across_videos():
    ranges = chunk_ranges(8, 3, num_frames_per_video=4, overlap=1)  # [(0,3),(2,4),(4,7),(6,8)]
    weights = blend_weights(ranges, 8, group=4)
    assert weights[1][-1] == 1 and weights[2][0] == 1  # frames 3 and 4 belong to different videos


# ------------------------------------------------------------------------------------------- decoding


def test_one_tile_covering_the_latents_is_exactly_untiled(bundle, latents, untiled):
    assert torch.equal(decode_latents(bundle, latents, chunk_size=T, tile_size=max(LH, LW)), untiled)
    chunked = decode_latents(bundle, latents[:, [0, 1, 0]], chunk_size=2, overlap=1)  # frame blending unchanged
    assert torch.equal(decode_latents(bundle, latents[:, [0, 1, 0]], chunk_size=2, overlap=1, tile_size=LW), chunked)


@pytest.fixture(scope="module")
def blended(bundle, latents) -> torch.Tensor:
    return decode_latents(bundle, latents, chunk_size=T, tile_size=TILE, tile_overlap=TILE_OVERLAP)


def test_tiled_decode_stays_close_to_untiled_and_blending_beats_hard_seams(bundle, latents, untiled, blended):
    assert blended.shape == untiled.shape == (1, T, 3, F * LH, F * LW)
    err = (blended - untiled).abs()
    assert err.max() < TILED_MAX_ABS and psnr(blended, untiled) > TILED_MIN_PSNR_DB, (err.max(), psnr(blended, untiled))
    assert err.max() > 0  # the tiles really see less than the frame
    hard = decode_latents(bundle, latents, chunk_size=T, tile_size=TILE, tile_overlap=0)
    assert psnr(hard, untiled) < psnr(blended, untiled)
    # Seams: a hard tile edge is a jump that the untiled frame does not have; the blend removes it. Measured
    # by the error of the horizontal finite differences in the column where a tile starts, over the median
    # column's (measured: hard 5.3-5.9, blended 0.8-1.0).
    edge = F * tile_ranges(LW, TILE, 0)[1][0]  # first pixel column of the second hard tile

    def jump(frames: torch.Tensor) -> float:
        g = (frames.diff(dim=-1) - untiled.diff(dim=-1)).abs().mean(dim=(0, 1, 2, 3))  # (W - 1,)
        return float(g[edge - 1] / g.median())

    assert jump(hard) > 3.0 > 1.5 > jump(blended), (jump(hard), jump(blended))


def test_each_tile_is_decoded_with_all_frames_of_its_chunk(bundle, latents):
    """Where only one tile covers a pixel (weight exactly 1) the output is that tile decoded alone, with the
    frames of its chunk: the tiles line up with the frame and the temporal layers see the whole chunk."""
    z = latents[0].repeat(2, 1, 1, 1) / bundle.config.scale_factor  # (4, 4, h, w): 2 chunks of 2 frames
    vae = bundle.model.first_stage
    out = decode_chunked(vae, z, 2, tile=12, tile_overlap=4)  # (4, 3, H, W)
    rows, cols = tile_ranges(LH, 12, 4), tile_ranges(LW, 12, 4)
    (y0, y1), (x0, x1) = rows[-1], cols[0]  # the bottom-left tile
    alone = vae.decode(z[2:4, :, y0:y1, x0:x1], num_frames=2)  # of the second chunk, decoded by itself
    top, right = rows[-2][1], cols[1][0]  # pixels below the tile above and left of the next tile: this tile only
    torch.testing.assert_close(out[2:4, :, F * top : F * y1, F * x0 : F * right],
                               alone[:, :, F * (top - y0) :, : F * (right - x0)], rtol=0, atol=1e-6)


def test_decoder_calls_follow_the_tile_not_the_frame(bundle, latents, monkeypatch):
    """Peak working memory follows the largest decoder call: with tiles each call is one chunk x one tile."""
    vae = bundle.model.first_stage
    seen: list[tuple[int, ...]] = []
    original = vae.decode

    def spy(z, num_frames=None, **options):
        seen.append(tuple(z.shape))
        return original(z, num_frames, **options)

    monkeypatch.setattr(vae, "decode", spy)
    decode_latents(bundle, latents, chunk_size=1, tile_size=10, tile_overlap=4)
    rows, cols = tile_ranges(LH, 10, 4), tile_ranges(LW, 10, 4)
    assert len(seen) == T * len(rows) * len(cols)
    assert all(n == 1 and h <= 10 and w <= 10 for n, _, h, w in seen), seen


def test_decode_latents_follows_the_memory_plan(bundle, latents, untiled):
    planned = replace(bundle, memory=MemoryPlan(decode_chunk=1, decode_tile=12, decode_tile_overlap=4))
    expected = decode_latents(bundle, latents, chunk_size=1, tile_size=12, tile_overlap=4)
    assert torch.equal(decode_latents(planned, latents), expected)
    assert not torch.allclose(expected, untiled)
    # 0: untiled; the plan's decode_chunk caps an explicit chunk_size (and its overlap)
    untiled_chunk_1 = decode_latents(bundle, latents, chunk_size=1, tile_size=0)
    assert torch.equal(decode_latents(planned, latents, chunk_size=T, overlap=1, tile_size=0), untiled_chunk_1)
    assert torch.equal(decode_latents(replace(planned, memory=MemoryPlan(decode_tile=12, decode_tile_overlap=4)),
                                      latents, chunk_size=T, tile_size=0), untiled)
    with pytest.raises(InputError, match="tile_size must be >= 0"):
        decode_latents(bundle, latents, tile_size=-8)
    with pytest.raises(InputError, match="tile overlap"):
        decode_latents(bundle, latents, tile_size=8, tile_overlap=8)


@pytest.mark.gpu
@torch.inference_mode()
def test_tiled_decode_peak_memory_follows_the_tile():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from comfyui_svd_lab.svd_model.config import VAEConfig
    from comfyui_svd_lab.svd_model.nn.vae import AutoencoderKL

    vae = AutoencoderKL(VAEConfig(ch=64, ch_mult=(1, 2, 2, 2), num_res_blocks=1)).cuda().eval()

    def peak(size: int) -> int:
        z = torch.randn(4, 4, size, size, device="cuda")
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        decode_chunked(vae, z, 4, tile=32, tile_overlap=8, out_device="cpu")
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    small, large = peak(56), peak(112)  # the same 32-pixel tiles either way (edges 32 and 31)
    assert large <= small * 1.1 + (1 << 20), f"peak {large} B for 112x112 latents vs {small} B for 56x56"


# ------------------------------------------------------------------------------------------- node


def test_decode_node_tiling_inputs(bundle, latents, untiled, blended):
    cls = NODE_CLASS_MAPPINGS["SVDLab_Decode"]
    optional = cls.INPUT_TYPES()["optional"]
    assert optional["tile_size"][1]["default"] == 0 and "memory" in optional["tile_size"][1]["tooltip"]
    assert "seam" in optional["tile_overlap"][1]["tooltip"]
    assert cls.VALIDATE_INPUTS(14, 2, 64, 8) is True and cls.VALIDATE_INPUTS(14, 2, 0, 8) is True
    assert cls.VALIDATE_INPUTS(14, 2, None, None) is True  # linked inputs
    assert "tile_overlap (16) must be smaller than tile_size (16)" in cls.VALIDATE_INPUTS(14, 2, 16, 16)
    assert "at least 8" in cls.VALIDATE_INPUTS(14, 2, 4, 0)
    assert "above the maximum" in cls.VALIDATE_INPUTS(14, 2, 4096, 8)
    assert "finite" in cls.VALIDATE_INPUTS(14, 2, 64, float("nan"))
    latent = {"samples": latents[0]}  # LATENT: frames in the batch
    node = cls()
    tiled = node.decode(bundle, latent, T, 0, tile_size=TILE, tile_overlap=TILE_OVERLAP)[0]  # IMAGE (t, H, W, 3)
    assert torch.equal(tiled, video_to_images(blended))
    plain = node.decode(bundle, latent, T, 0)[0]  # tile_size 0 under the default plan: untiled
    assert torch.equal(plain, video_to_images(untiled))
