"""Colour in a perceptual space: sRGB <-> CIE L*a*b* (D65), and colour-drift correction for long videos.

Conventions: sRGB frames are float tensors in [0, 1] with the channel axis at ``dim`` (default -3, so
(..., 3, H, W)); Lab has L in [0, 100] and a, b roughly in [-128, 127] on the same axis. The white point is
the sRGB primaries' white (the rows of the RGB -> XYZ matrix summed, = D65 to 4 digits), so sRGB white maps to
exactly L = 100, a = b = 0 and the round trip is limited only by float32 rounding (~1e-6).

Drift correction (:func:`correct_drift`): a generated segment's colours are re-anchored to reference statistics
(the per-channel mean and standard deviation of L, a and b over the first segment). The segment's own per-frame
statistics are modelled as a straight line over its frames (mean linearly, std log-linearly), so a slow drift
inside the segment is undone smoothly and content changes from frame to frame are not chased; each frame's
L, a, b are then mapped affinely from the modelled statistics to the reference ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import InputError, ShapeError

#: Linear sRGB -> CIE XYZ (D65), IEC 61966-2-1.
_RGB_TO_XYZ = (
    (0.4124564, 0.3575761, 0.1804375),
    (0.2126729, 0.7151522, 0.0721750),
    (0.0193339, 0.1191920, 0.9503041),
)
_DELTA = 6.0 / 29.0
#: Floors for the standard deviations used in drift correction (Lab units): a flat channel is not amplified.
MIN_STD = 0.5
#: Limits of the per-channel contrast gain of drift correction.
MAX_GAIN = 4.0


def _matrix(dtype: torch.dtype, device: torch.device, inverse: bool = False) -> Tensor:
    m = torch.tensor(_RGB_TO_XYZ, dtype=torch.float64)
    return (torch.linalg.inv(m) if inverse else m).to(device=device, dtype=dtype)


def _white(dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.tensor(_RGB_TO_XYZ, dtype=torch.float64).sum(1).to(device=device, dtype=dtype)  # (3,) X_n, Y_n, Z_n


def _check(x: Tensor, dim: int, what: str) -> None:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        found = x.dtype if isinstance(x, Tensor) else type(x).__name__
        raise InputError(f"{what} must be a float tensor, got {found}")
    if x.ndim == 0 or x.shape[dim] != 3:
        raise ShapeError(f"{what} needs 3 channels on axis {dim}, got shape {tuple(x.shape)}")


def _apply(m: Tensor, x: Tensor, dim: int) -> Tensor:
    """Multiply the 3-vectors along `dim` by the 3x3 matrix m."""
    moved = x.movedim(dim, -1)  # (..., 3)
    return (moved @ m.T).movedim(-1, dim)


def _shape(v: Tensor, x: Tensor, dim: int) -> Tensor:
    """(3,) -> broadcastable against x with the channel axis at `dim`."""
    shape = [1] * x.ndim
    shape[dim] = 3
    return v.reshape(shape)


def srgb_to_lab(rgb: Tensor, dim: int = -3) -> Tensor:
    """sRGB in [0, 1] (channels on `dim`) -> CIE Lab (D65), same shape and dtype. Values outside [0, 1] are
    extended symmetrically (sign-preserving transfer curve) rather than clipped."""
    _check(rgb, dim, "rgb")
    a = rgb.abs()
    linear = torch.where(a <= 0.04045, a / 12.92, ((a + 0.055) / 1.055) ** 2.4) * rgb.sign()
    xyz = _apply(_matrix(rgb.dtype, rgb.device), linear, dim) / _shape(_white(rgb.dtype, rgb.device), rgb, dim)
    f = torch.where(xyz > _DELTA**3, xyz.clamp_min(_DELTA**3) ** (1.0 / 3.0), xyz / (3 * _DELTA**2) + 4.0 / 29.0)
    fx, fy, fz = f.unbind(dim)
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim)


def lab_to_srgb(lab: Tensor, dim: int = -3) -> Tensor:
    """CIE Lab (D65) -> sRGB, NOT clipped (out-of-gamut colours leave [0, 1]; clamp for display)."""
    _check(lab, dim, "lab")
    big_l, a, b = lab.unbind(dim)
    fy = (big_l + 16.0) / 116.0
    f = torch.stack([fy + a / 500.0, fy, fy - b / 200.0], dim)
    xyz = torch.where(f > _DELTA, f**3, 3 * _DELTA**2 * (f - 4.0 / 29.0))
    xyz = xyz * _shape(_white(lab.dtype, lab.device), lab, dim)
    linear = _apply(_matrix(lab.dtype, lab.device, inverse=True), xyz, dim)
    m = linear.abs()
    return torch.where(m <= 0.0031308, 12.92 * m, 1.055 * m.clamp_min(1e-12) ** (1.0 / 2.4) - 0.055) * linear.sign()


@dataclass(frozen=True)
class LabStats:
    """Per-channel statistics of L, a, b: mean (3,) and standard deviation (3,), float32."""

    mean: Tensor
    std: Tensor


def lab_stats(frames: Tensor) -> LabStats:
    """Statistics of (t, 3, H, W) sRGB frames in [0, 1] over all frames and pixels."""
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ShapeError(f"frames must be (t, 3, H, W), got {tuple(frames.shape)}")
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    for frame in frames:  # frame by frame: bounded memory
        lab = srgb_to_lab(frame.float()).reshape(3, -1).double()  # (3, H*W)
        total += lab.sum(1).cpu()
        squares += (lab * lab).sum(1).cpu()
    n = frames.shape[0] * frames.shape[-2] * frames.shape[-1]
    mean = total / n
    return LabStats(mean.float(), (squares / n - mean * mean).clamp_min(0.0).sqrt().float())


def _linear_trend(y: Tensor) -> Tensor:
    """Least-squares straight line through the rows of y (t, c) over the frame index, evaluated at each frame."""
    t = y.shape[0]
    x = torch.arange(t, dtype=y.dtype, device=y.device) - (t - 1) / 2.0  # centred: sum(x) = 0
    denom = (x * x).sum()
    slope = (x[:, None] * y).sum(0) / denom if t > 1 else torch.zeros_like(y[0])
    return y.mean(0) + x[:, None] * slope  # (t, c)


def correct_drift(frames: Tensor, reference: LabStats, strength: float = 1.0) -> Tensor:
    """Re-anchor the colours of (t, 3, H, W) sRGB frames in [0, 1] to `reference` (see the module docstring).

    strength 0 returns the frames unchanged, 1 applies the full correction. A segment whose per-frame
    statistics already equal the reference's is returned unchanged (up to float rounding). Output is
    clamped to [0, 1].
    """
    if not 0.0 <= strength <= 1.0:
        raise InputError(f"drift correction strength must be in [0, 1], got {strength}")
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ShapeError(f"frames must be (t, 3, H, W), got {tuple(frames.shape)}")
    if strength == 0.0:
        return frames
    # frame by frame, so that memory stays at a few frames' worth of Lab whatever the clip length
    moments = [(lab.mean((-2, -1)), lab.std((-2, -1), correction=0)) for lab in map(srgb_to_lab, frames.float())]
    mean_t = torch.stack([m for m, _ in moments])  # (t, 3)
    std_t = torch.stack([s for _, s in moments]).clamp_min(MIN_STD)  # (t, 3)
    mean_hat = _linear_trend(mean_t)  # (t, 3)
    std_hat = _linear_trend(std_t.log()).exp()  # (t, 3)
    ref_mean = reference.mean.to(mean_t)
    ref_std = reference.std.to(mean_t).clamp_min(MIN_STD)
    gain = (ref_std / std_hat).clamp(1.0 / MAX_GAIN, MAX_GAIN)  # (t, 3)
    out = torch.empty_like(frames)
    for i, frame in enumerate(frames):
        lab = srgb_to_lab(frame.float())  # (3, H, W)
        anchored = (lab - mean_hat[i, :, None, None]) * gain[i, :, None, None] + ref_mean[:, None, None]
        out[i] = lab_to_srgb(lab + strength * (anchored - lab)).clamp(0.0, 1.0).to(frames.dtype)
    return out


def crossfade(old: Tensor, new: Tensor) -> Tensor:
    """Blend two aligned runs of o frames (o, ...): frame j gets weight (j + 1) / (o + 1) on `new`, so the
    result moves from `old` towards `new` along the run."""
    if old.shape != new.shape:
        raise ShapeError(f"crossfade needs equal shapes, got {tuple(old.shape)} and {tuple(new.shape)}")
    o = old.shape[0]
    w = torch.arange(1, o + 1, dtype=old.dtype, device=old.device) / (o + 1)
    w = w.reshape(o, *([1] * (old.ndim - 1)))
    return old + w * (new.to(old) - old)
