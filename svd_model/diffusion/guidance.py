"""Classifier-free guidance on the denoised prediction, with one guidance scale per frame.

SVD guides the x0 estimate frame by frame: D = D_u + s[t] * (D_c - D_u), with a (t,) scale vector
that rises linearly over the clip (sgm ``LinearPredictionGuider``, ComfyUI ``VideoLinearCFGGuidance``)
or follows a triangle (sgm ``TrianglePredictionGuider``, used by SV3D orbits). The scale functions are
pure; :func:`cfg_denoiser` turns a conditional model into a :data:`~.sampling.Denoiser`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol, TypeVar

import torch
from torch import Tensor

from ..errors import ConfigError, ShapeError, choose
from .sampling import Denoiser

__all__ = [
    "FRAME_GUIDANCE",
    "FrameScalesFn",
    "cfg_denoiser",
    "constant_frame_scales",
    "frame_scales",
    "linear_frame_scales",
    "triangle_frame_scales",
]

C = TypeVar("C")


def _check_frames(t: int) -> None:
    if isinstance(t, bool) or not isinstance(t, int) or t < 1:
        raise ConfigError(f"number of frames must be an integer >= 1, got {t!r}")


def linear_frame_scales(min_scale: float, max_scale: float, t: int) -> Tensor:
    """(t,) float32 = linspace(min_scale, max_scale, t): frame 0 gets min, the last frame max.

    sgm ``LinearPredictionGuider``; SVD uses 1.0 -> 2.5 (14 frames), SVD-XT 1.5 -> 3.0 (25 frames).
    """
    _check_frames(t)
    return torch.linspace(min_scale, max_scale, t)


def triangle_frame_scales(min_scale: float, max_scale: float, t: int) -> Tensor:
    """(t,) float32 triangle over the frames, sgm ``TrianglePredictionGuider`` (period 1):

    v = linspace(0, 1, t); tri = 2 |v - floor(v + 0.5)|; s = min + (max - min) tri.
    Weakest (min) at the first and last frame. For odd t the middle frame reaches max (t = 21:
    2.5 at frame 10); for even t the peak is never reached (t = 10 with 1.0 -> 2.5: 1.0, 1.333, ...,
    2.333, 2.333, ..., 1.0). The formula is evaluated as is, the peak is not forced.
    """
    _check_frames(t)
    v = torch.linspace(0, 1, t)
    tri = 2 * (v - torch.floor(v + 0.5)).abs()
    return tri * (max_scale - min_scale) + min_scale


def constant_frame_scales(scale: float, t: int) -> Tensor:
    """(t,) float32 filled with ``scale``: ordinary CFG with one scale for the whole clip."""
    _check_frames(t)
    return torch.full((t,), float(scale))


class FrameScalesFn(Protocol):
    def __call__(self, min_scale: float, max_scale: float, t: int) -> Tensor: ...


def _constant(min_scale: float, max_scale: float, t: int) -> Tensor:
    """``constant`` entry of :data:`FRAME_GUIDANCE`: every frame gets ``max_scale`` (``min_scale`` unused)."""
    return constant_frame_scales(max_scale, t)


FRAME_GUIDANCE: dict[str, FrameScalesFn] = {
    "linear": linear_frame_scales,
    "triangle": triangle_frame_scales,
    "constant": _constant,
}


def _finite(value: object) -> bool:
    """A real, finite number (a Python or NumPy number, or a one-element tensor); not a bool."""
    try:
        return not isinstance(value, bool) and math.isfinite(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, RuntimeError):
        return False


def frame_scales(shape_name: str, min_scale: float, max_scale: float, t: int) -> Tensor:
    """The (t,) scale vector of the named shape in :data:`FRAME_GUIDANCE` ("constant" uses ``max_scale``)."""
    for name, value in (("min_cfg", min_scale), ("max_cfg", max_scale)):
        if not _finite(value):
            raise ConfigError(f"{name} must be a finite number, got {value!r}")
    return choose(FRAME_GUIDANCE, shape_name, "frame guidance")(min_scale, max_scale, t)


def cfg_denoiser(
    model: Callable[[Tensor, Tensor, C], Tensor],
    cond: C,
    uncond: C,
    scales: Tensor | float,
    *,
    cat: Callable[[C, C], C],
) -> Denoiser:
    """Classifier-free guidance as a denoiser combinator (Ho & Salimans 2022, applied to x0 per frame).

    model(x, sigma, c) -> denoised: x (b, t, ...), sigma (b,), c a conditioning of b videos.
    scales: (t,) per-frame scales (frame axis = axis 1 of x), or one float for all frames.
    cat(uncond, cond): the conditioning of a doubled batch, uncond rows first (evaluated once, here).

    The returned denoiser makes ONE model call on the batch [uncond, cond] (x and sigma repeated,
    b -> 2b) and returns D_u + s[t] (D_c - D_u) in x's dtype. When every scale is exactly 1.0 the
    result is D_c, so it calls the model on ``cond`` alone (half the work).
    """
    scale = torch.as_tensor(scales, dtype=torch.float32)
    if not bool(torch.isfinite(scale).all()):
        raise ConfigError(f"guidance scales must be finite numbers, got {scale.tolist()}")
    if scale.ndim > 1:
        raise ShapeError(f"scales must be a float or a (t,) vector, got shape {tuple(scale.shape)}")
    if bool((scale == 1.0).all()):

        def cond_only(x: Tensor, sigma: Tensor) -> Tensor:
            return model(x, sigma, cond)

        return cond_only

    both = cat(uncond, cond)

    def guided(x: Tensor, sigma: Tensor) -> Tensor:
        if scale.ndim == 1 and (x.ndim < 2 or x.shape[1] != scale.shape[0]):
            raise ShapeError(
                f"x has shape {tuple(x.shape)} but the guidance has {scale.shape[0]} frame scales; "
                "x must be (b, t, ...) with t frames (rebuild the scales when the frame count changes)"
            )
        out = model(torch.cat([x, x]), torch.cat([sigma, sigma]), both)  # (2b, t, ...)
        d_u, d_c = out.chunk(2)  # (b, t, ...) each
        s = scale.to(out.device)
        if s.ndim == 1:
            s = s.reshape(1, -1, *([1] * (out.ndim - 2)))  # (1, t, 1, ...)
        return (d_u + s * (d_c - d_u)).to(out.dtype)

    return guided
