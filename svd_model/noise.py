"""Starting latents: the reference's initial-noise scaling and the noising of a given latent (denoise < 1)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .errors import InputError, ShapeError
from .scalings import append_dims


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
        if generator is None:
            raise InputError("initial_noise needs a generator to draw noise (or pass an N(0, 1) tensor as shape)")
        noise = torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=torch.float32)
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
