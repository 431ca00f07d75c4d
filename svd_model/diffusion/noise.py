"""Noise: the package's one N(0, 1) draw (:func:`randn`, :func:`randn_like`), the reference's initial-noise
scaling and the noising of a given latent (denoise < 1).

Every random draw of the package goes through :func:`randn` (or :func:`randn_like`) with an explicit
``torch.Generator``: a missing generator is an :class:`~.errors.InputError`, never a silent fall back to
torch's global RNG. The draw is made in float32 (unless asked otherwise) on the generator's device, so a CPU
generator gives the same numbers whatever device the model runs on.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..errors import InputError, ShapeError
from .scalings import append_dims


def require_generator(generator: torch.Generator | None, what: str) -> torch.Generator:
    """`generator` itself; InputError naming `what` when it is missing (or not a torch.Generator)."""
    if generator is None:
        raise InputError(
            f"{what} draws noise but no generator was passed; "
            "pass generator=torch.Generator().manual_seed(seed) (the global RNG is never used)"
        )
    if not isinstance(generator, torch.Generator):
        raise InputError(f"{what} needs a torch.Generator, got {type(generator).__name__}")
    return generator


def randn(
    shape: Sequence[int],
    generator: torch.Generator | None,
    *,
    what: str = "this step",
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """N(0, 1) noise of `shape` from `generator` (required): drawn in `dtype` (default float32) on the
    generator's device, then moved to `device` (default: left on the generator's device).

    what: names the caller in the error raised when `generator` is missing.
    """
    gen = require_generator(generator, what)
    noise = torch.randn(tuple(shape), generator=gen, device=gen.device, dtype=dtype)
    return noise if device is None else noise.to(device)


def randn_like(x: Tensor, generator: torch.Generator | None, *, what: str = "this step") -> Tensor:
    """N(0, 1) noise shaped like x: :func:`randn` (float32, the generator's device), then moved and cast to
    x's device and dtype."""
    return randn(x.shape, generator, what=what).to(device=x.device, dtype=x.dtype)


def initial_noise_scale(sigma0: float | Tensor) -> Tensor:
    """sqrt(1 + sigma0^2) as a 0-d float32 CPU tensor: the reference's initial-noise multiplier.

    sgm (``BaseDiffusionSampler.prepare_sampling_loop``) starts from randn * sqrt(1 + sigma_0^2), about
    700.0007 for SVD, not k-diffusion's randn * sigma_max. The variance of the pure-noise start then matches
    that of x0 + sigma_0 * noise for unit-variance data.
    """
    s = torch.as_tensor(sigma0)
    if s.numel() != 1:
        raise ShapeError(f"sigma0 must be a single value, got shape {tuple(s.shape)}")
    s = torch.tensor(float(s.reshape(())), dtype=torch.float32)
    return torch.sqrt(1.0 + s**2.0)


def initial_noise(
    shape: Sequence[int] | Tensor,
    sigma0: float | Tensor,
    generator: torch.Generator | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """The starting latent of a run from pure noise: randn(shape) * sqrt(1 + sigma0^2).

    shape: the latent shape, e.g. (b, t, 4, h, w); the N(0, 1) draw is made in float32 on the
    generator's device, scaled in float32 (as the reference), then moved to ``device`` (default: the
    generator's) and cast to ``dtype`` (default float32). Alternatively pass a ready N(0, 1) draw
    (a tensor) as ``shape``: it is scaled on its own device and dtype, and ``generator`` is not needed.
    sigma0: the schedule's first sigma (``sigmas[0]``, sigma_max). This is the one place the reference's
    initial-noise scaling lives (see :func:`initial_noise_scale`).
    """
    if isinstance(shape, Tensor):
        noise = shape
    else:
        noise = randn(shape, generator, what="initial_noise without a noise tensor")
    x = noise * initial_noise_scale(sigma0).to(noise.device)
    return x.to(device=noise.device if device is None else device, dtype=x.dtype if dtype is None else dtype)


def noise_latents(x0: Tensor, noise: Tensor, sigma: float | Tensor) -> Tensor:
    """x0 + sigma * noise: an existing latent noised to level sigma, the start of a partial (denoise < 1) run.

    x0, noise: (b, ...) same shape; sigma: a float, a 0-d tensor or (b,) per row (e.g.
    ``sigmas_for_denoise(...)[0]``). Unlike :func:`initial_noise`, no sqrt(1 + sigma^2) factor: x0 is known.
    """
    if x0.shape != noise.shape:
        raise ShapeError(f"noise shape {tuple(noise.shape)} != latent shape {tuple(x0.shape)}")
    s = torch.as_tensor(sigma, device=x0.device)
    if s.ndim == 1:
        if s.shape[0] != x0.shape[0]:
            raise ShapeError(f"sigma has {s.shape[0]} rows, the latent {x0.shape[0]}")
        s = append_dims(s, x0.ndim)
    elif s.ndim > 1:
        raise ShapeError(f"sigma must be a scalar or (b,), got shape {tuple(s.shape)}")
    return x0 + s.to(x0.dtype) * noise
