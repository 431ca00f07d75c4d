"""Preconditioning of the SVD denoiser: v-prediction scalings with the EDM noise conditioning.

SVD's denoiser is ``D(x, sigma) = c_skip * x + c_out * F(c_in * x, c_noise, ...)`` with the formulas of
sgm ``VScalingWithEDMcNoise``. They equal EDM preconditioning (Karras et al. 2022, Table 1) with
``sigma_data = 1``, except that ``c_out`` is negated (v-prediction in variance-preserving coordinates).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ShapeError

__all__ = ["append_dims", "v_scalings_edm_cnoise"]


def append_dims(x: Tensor, ndim: int) -> Tensor:
    """Append trailing singleton axes to ``x`` until it has ``ndim`` axes (a view, no copy).

    x: (b,) per-row values such as sigma; returns (b, 1, ..., 1) with ``ndim`` axes, ready to broadcast
    against a (b, ...) tensor. Raises :class:`ShapeError` if ``x`` already has more than ``ndim`` axes.
    """
    missing = ndim - x.ndim
    if missing < 0:
        raise ShapeError(f"append_dims: input has {x.ndim} axes (shape {tuple(x.shape)}), more than the target {ndim}")
    return x[(...,) + (None,) * missing]


def v_scalings_edm_cnoise(sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(c_skip, c_out, c_in, c_noise) for noise level(s) ``sigma`` (any shape, sigma > 0).

    c_skip = 1 / (sigma^2 + 1), c_out = -sigma / sqrt(sigma^2 + 1), c_in = 1 / sqrt(sigma^2 + 1),
    c_noise = 0.25 * ln(sigma). Every output has the shape and dtype of ``sigma``; broadcast ``sigma``
    with :func:`append_dims` first when the scalings must multiply a latent.
    """
    sigma = torch.as_tensor(sigma)
    var = sigma**2 + 1.0
    c_skip = 1.0 / var
    c_out = -sigma / var**0.5
    c_in = 1.0 / var**0.5
    c_noise = 0.25 * sigma.log()
    return c_skip, c_out, c_in, c_noise
