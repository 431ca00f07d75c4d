"""sRGB <-> CIE Lab (D65) against textbook values, round trip, and drift correction on synthetic drifts."""

from __future__ import annotations

import math

import pytest
import torch

from comfyui_svd_lab.svd_model.errors import InputError, ShapeError
from comfyui_svd_lab.svd_model.media.colour import (
    correct_drift,
    crossfade,
    lab_stats,
    lab_to_srgb,
    srgb_to_lab,
)


def _pixel(*rgb: float) -> torch.Tensor:
    return torch.tensor(rgb, dtype=torch.float32).reshape(3, 1, 1)


@pytest.mark.parametrize(("rgb", "lab"), [
    ((1.0, 1.0, 1.0), (100.0, 0.0, 0.0)),
    ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
    ((1.0, 0.0, 0.0), (53.2408, 80.0925, 67.2032)),  # published sRGB primaries in Lab (D65)
    ((0.0, 1.0, 0.0), (87.7347, -86.1827, 83.1793)),
    ((0.0, 0.0, 1.0), (32.2970, 79.1875, -107.8602)),
])
def test_lab_of_known_colours(rgb, lab):
    got = srgb_to_lab(_pixel(*rgb)).flatten()
    assert torch.allclose(got, torch.tensor(lab), atol=2e-3), got


def test_mid_grey_from_the_formulas():
    v = 0.5
    linear = ((v + 0.055) / 1.055) ** 2.4  # Y of a grey equals its linear value
    expected_l = 116 * linear ** (1 / 3) - 16
    got = srgb_to_lab(_pixel(v, v, v)).flatten()
    assert got[0].item() == pytest.approx(expected_l, abs=1e-4)
    assert got[1:].abs().max() < 1e-4  # neutral


def test_round_trip_accuracy_and_layout():
    gen = torch.Generator().manual_seed(0)
    rgb = torch.rand(2, 5, 3, 16, 16, generator=gen)  # (b, t, 3, H, W)
    rgb[0, 0, :, 0, :3] = torch.tensor([0.0, 0.002, 1.0])[:, None]  # the linear segment near black and the extremes
    back = lab_to_srgb(srgb_to_lab(rgb))
    assert back.shape == rgb.shape and back.dtype == torch.float32
    assert (back - rgb).abs().max() < 1e-4
    channels_last = rgb.movedim(2, -1)
    assert torch.allclose(srgb_to_lab(channels_last, dim=-1).movedim(-1, 2), srgb_to_lab(rgb), atol=1e-5)


def test_bad_colour_inputs():
    with pytest.raises(ShapeError, match="3 channels"):
        srgb_to_lab(torch.rand(4, 16, 16))
    with pytest.raises(InputError, match="float"):
        srgb_to_lab(torch.zeros(3, 2, 2, dtype=torch.uint8))
    with pytest.raises(InputError, match="strength"):
        correct_drift(torch.rand(2, 3, 4, 4), lab_stats(torch.rand(2, 3, 4, 4)), 1.5)


def _pattern(t: int, size: int = 32) -> torch.Tensor:
    """(t, 3, H, W) frames: one mid-range texture rolled sideways over time (identical colour statistics)."""
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    base = torch.stack([0.45 + 0.2 * torch.sin(6 * x + 2 * y), 0.5 + 0.15 * torch.cos(5 * y), 0.4 + 0.2 * x * y])
    return torch.stack([base.roll(3 * i, dims=-1) for i in range(t)])


def _drift(frames: torch.Tensor) -> torch.Tensor:
    """Add a linear-in-time Lab drift: brighter, redder, bluer and flatter frame by frame."""
    lab = srgb_to_lab(frames)
    k = torch.arange(frames.shape[0], dtype=torch.float32)[:, None, None]
    mean = lab.mean((-2, -1), keepdim=True)
    lab = mean + (lab - mean) * (1 - 0.02 * k[..., None])  # contrast fades
    lab = lab + torch.stack([1.2 * k, 0.9 * k, -0.7 * k], 1)  # (t, 3, 1, 1) shift grows
    return lab_to_srgb(lab).clamp(0, 1)


def _error(frames: torch.Tensor, reference) -> float:
    """Mean distance in Lab between each frame's channel means / stds and the reference's."""
    lab = srgb_to_lab(frames)
    mean_err = (lab.mean((-2, -1)) - reference.mean).norm(dim=1).mean()
    std_err = (lab.std((-2, -1), correction=0) - reference.std).norm(dim=1).mean()
    return float(mean_err + std_err)


def test_drift_correction_removes_a_synthetic_drift():
    first = _pattern(6)
    reference = lab_stats(first)
    clean = _pattern(14)[6:]  # a later segment of the same clip, no drift
    drifted = _drift(clean)
    before, after = _error(drifted, reference), _error(correct_drift(drifted, reference), reference)
    assert before > 3.0  # ~10 Lab units of drift by the last frame
    assert after < before / 50, (before, after)  # the stated factor: at least 50x less drift (measured ~300x)
    assert (correct_drift(drifted, reference) - clean).abs().mean() < 0.01  # the content comes back
    half = correct_drift(drifted, reference, strength=0.5)
    assert after < _error(half, reference) < before


def test_drift_free_video_is_left_unchanged():
    reference = lab_stats(_pattern(6))
    later = _pattern(20)[9:]
    assert (correct_drift(later, reference) - later).abs().max() < 1e-4
    assert correct_drift(later, reference, strength=0.0) is later


def test_a_flat_channel_is_not_blown_up():
    grey = torch.full((4, 3, 8, 8), 0.5)
    reference = lab_stats(_pattern(3))  # a, b spread > 0 in the reference, none in the grey frames
    out = correct_drift(grey, reference)
    assert torch.isfinite(out).all() and 0 <= out.min() and out.max() <= 1


def test_crossfade_weights():
    old, new = torch.zeros(3, 2), torch.ones(3, 2)
    out = crossfade(old, new)
    assert torch.allclose(out[:, 0], torch.tensor([0.25, 0.5, 0.75]))
    assert crossfade(torch.zeros(1, 4), torch.ones(1, 4)).flatten().tolist() == [0.5] * 4
    with pytest.raises(ShapeError):
        crossfade(torch.zeros(2, 3), torch.zeros(3, 3))
    assert math.isclose(float(crossfade(torch.full((2,), 2.0), torch.full((2,), 2.0)).sum()), 4.0)
