"""Denoising score-matching loss of the EDM framework (Karras et al. 2022, Sec. 5), as in sgm.

sgm ``StandardDiffusionLoss``: x_noisy = x0 + sigma * noise, D = denoiser(x_noisy, sigma, cond),
loss = mean over the non-batch axes of w(sigma) (D - x0)^2, with log sigma ~ N(p_mean, p_std^2)
(``EDMSampling``) and w = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 (``EDMWeighting``; SVD's
v-scaling corresponds to sigma_data = 1, sgm ``VWeighting``).

Sigma conventions. ``sigma``'s shape is a prefix of x0's shape and is broadcast over the remaining
axes; the loss is always one value per row of axis 0 (the mean over every other axis):

- one sigma per clip: x0 (b, t, c, h, w), sigma (b,) -> loss (b,);
- one sigma per frame, as the reference: sgm draws ``input.shape[0]`` sigmas for its (b t, c, h, w)
  batch, i.e. one per frame row. Keep x0 (b, t, c, h, w) with sigma (b, t) -> loss (b,), each the mean
  of the clip's per-frame losses (the model must accept a (b, t) sigma; the SVD denoiser does), or
  pass flattened rows x0 (b t, c, h, w) with sigma (b t,) -> loss (b t,), the reference's ``per_row``.

``loss.mean()`` is the same number in all layouts when every clip has the same frame count.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..diffusion.noise import randn
from ..diffusion.scalings import append_dims
from ..errors import ConfigError, ShapeError

__all__ = ["diffusion_loss", "edm_loss", "edm_weighting", "lognormal_sigmas"]


def lognormal_sigmas(
    n: int,
    p_mean: float,
    p_std: float,
    *,
    generator: torch.Generator,
    device: torch.device | str | None = None,
) -> Tensor:
    """(n,) float32 training noise levels sigma = exp(p_mean + p_std * z), z ~ N(0, 1) (sgm ``EDMSampling``).

    Drawn on the generator's device, then moved to ``device``. EDM images use p_mean -1.2, p_std 1.2;
    SVD's video stages shift towards higher noise (e.g. p_mean 0.7, p_std 1.6, the golden's values).
    """
    if n < 1:
        raise ConfigError(f"number of sigmas must be >= 1, got {n!r}")
    if p_std < 0:
        raise ConfigError(f"p_std must be >= 0, got {p_std!r}")
    z = randn((n,), generator, what="lognormal_sigmas")
    log_sigma = p_mean + p_std * z
    return log_sigma.exp().to(generator.device if device is None else device)


def edm_weighting(sigma: Tensor, sigma_data: float = 1.0) -> Tensor:
    """EDM loss weight lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2, shaped like sigma.

    sigma_data = 1 (the default) is sgm ``VWeighting``, (sigma^2 + 1) / sigma^2, the weight matching
    SVD's v-prediction scalings: it makes the loss the unit-weighted error of the network output.
    """
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def _broadcast_rows(values: Tensor, x: Tensor, what: str) -> Tensor:
    if values.ndim > x.ndim or tuple(values.shape) != tuple(x.shape[: values.ndim]):
        raise ShapeError(f"{what} has shape {tuple(values.shape)}, expected a prefix of {tuple(x.shape)}")
    return append_dims(values, x.ndim)


def diffusion_loss(denoised: Tensor, x0: Tensor, weight: Tensor | float, loss_type: str = "l2") -> Tensor:
    """Per-row weighted reconstruction loss: mean over all non-batch axes of w (D - x0)^2 (or w |D - x0|, "l1").

    denoised, x0: (b, ...) same shape; weight: a float or a tensor whose shape is a prefix of x0's
    ((b,), (b, t), ...), broadcast over the remaining axes. Returns (b,) (sgm ``StandardDiffusionLoss``).
    """
    if denoised.shape != x0.shape:
        raise ShapeError(f"denoised shape {tuple(denoised.shape)} != x0 shape {tuple(x0.shape)}")
    w = _broadcast_rows(weight, x0, "weight") if isinstance(weight, Tensor) else weight
    if loss_type == "l2":
        err = (denoised - x0) ** 2
    elif loss_type == "l1":
        err = (denoised - x0).abs()
    else:
        raise ConfigError(f"unknown loss type {loss_type!r}; choose from ['l1', 'l2']")
    return torch.mean((w * err).reshape(x0.shape[0], -1), 1)


def edm_loss(
    model: Callable[[Tensor, Tensor, Any], Tensor],
    x0: Tensor,
    sigma: Tensor,
    noise: Tensor,
    cond: Any,
    *,
    sigma_data: float = 1.0,
    loss_type: str = "l2",
    return_denoised: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """EDM training loss: D = model(x0 + sigma noise, sigma, cond); diffusion_loss(D, x0, w(sigma)).

    model(x, sigma, cond) -> denoised, e.g. the preconditioned SVD denoiser. x0, noise: (b, ...) clean
    latents and N(0, 1) noise; sigma: (b,) or (b, t) (a prefix of x0's shape, see the module docstring).
    Returns the per-row loss (b,) (take ``.mean()`` for the scalar the reference logs), or
    ``(loss, denoised)`` with ``return_denoised=True``.
    """
    if noise.shape != x0.shape:
        raise ShapeError(f"noise shape {tuple(noise.shape)} != x0 shape {tuple(x0.shape)}")
    x_noisy = x0 + noise * _broadcast_rows(sigma, x0, "sigma")
    denoised = model(x_noisy, sigma, cond)
    loss = diffusion_loss(denoised, x0, edm_weighting(sigma, sigma_data), loss_type)
    return (loss, denoised) if return_denoised else loss
