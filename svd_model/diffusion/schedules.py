"""Noise schedules: decreasing sigma sequences for the samplers, as pure functions.

Every schedule returns a float32 tensor of shape (n + 1,): ``n`` decreasing noise levels from
``sigma_max`` to ``sigma_min`` followed by a trailing 0 (k-diffusion ``append_zero``), so a sampler
over it takes ``n`` steps and its last step lands on the clean sample. All share the signature
``schedule(n, sigma_min=0.002, sigma_max=700.0, *, device="cpu", **options)``; the defaults are
SVD's (every SVD/SV3D config uses sigma_min 0.002, sigma_max 700). The fourth parameter, ``rho``, is
the curvature of the Karras and polyexponential ramps; the other schedules accept and ignore it, so
``get_schedule(name)(n, sigma_min, sigma_max, rho)`` works for every name.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import Tensor

from ..errors import ConfigError, InputError, choose

__all__ = [
    "SCHEDULES",
    "ScheduleFn",
    "append_zero",
    "exponential_sigmas",
    "get_schedule",
    "karras_sigmas",
    "kl_optimal_sigmas",
    "polyexponential_sigmas",
    "sigmas_for_denoise",
]

SIGMA_MIN = 0.002
SIGMA_MAX = 700.0


class ScheduleFn(Protocol):
    def __call__(
        self,
        n: int,
        sigma_min: float = ...,
        sigma_max: float = ...,
        rho: float = ...,
        *,
        device: torch.device | str = ...,
    ) -> Tensor: ...


def append_zero(sigmas: Tensor) -> Tensor:
    """(n,) -> (n + 1,) with a final 0 of the same dtype and device."""
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def _check(n: int, sigma_min: float, sigma_max: float) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"number of steps must be an integer >= 1, got {n!r}")
    if not 0.0 < sigma_min < sigma_max:
        raise ConfigError(
            f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min!r}, sigma_max={sigma_max!r} "
            f"(SVD uses {SIGMA_MIN} and {SIGMA_MAX})"
        )


def karras_sigmas(
    n: int,
    sigma_min: float = SIGMA_MIN,
    sigma_max: float = SIGMA_MAX,
    rho: float = 7.0,
    *,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Karras et al. (2022), Eq. 5: sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho.

    The reference sampler's discretization (sgm ``EDMDiscretization``), evaluated with the same float32
    operations so results match it bit for bit. Returns (n + 1,) float32, trailing 0.
    """
    _check(n, sigma_min, sigma_max)
    if rho <= 0:
        raise ConfigError(f"rho must be > 0, got {rho!r} (Karras et al. use 7)")
    ramp = torch.linspace(0, 1, n, device=device)  # (n,) float32
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return append_zero(sigmas)


def exponential_sigmas(
    n: int,
    sigma_min: float = SIGMA_MIN,
    sigma_max: float = SIGMA_MAX,
    rho: float = 7.0,
    *,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Noise levels evenly spaced in log sigma (k-diffusion ``get_sigmas_exponential``). (n + 1,) float32.

    ``rho`` is accepted for a uniform signature and ignored.
    """
    _check(n, sigma_min, sigma_max)
    log_sigmas = torch.linspace(math.log(sigma_max), math.log(sigma_min), n, device=device)  # (n,)
    return append_zero(log_sigmas.exp())


def polyexponential_sigmas(
    n: int,
    sigma_min: float = SIGMA_MIN,
    sigma_max: float = SIGMA_MAX,
    rho: float = 1.0,
    *,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Log sigma follows a polynomial ramp (1 - i/(n-1))^rho (k-diffusion ``get_sigmas_polyexponential``).

    rho = 1 is :func:`exponential_sigmas`; rho > 1 spends more steps at low noise. (n + 1,) float32.
    """
    _check(n, sigma_min, sigma_max)
    if rho <= 0:
        raise ConfigError(f"rho must be > 0, got {rho!r}")
    ramp = torch.linspace(1, 0, n, device=device) ** rho  # (n,) from 1 to 0
    log_min, log_max = math.log(sigma_min), math.log(sigma_max)
    return append_zero(torch.exp(ramp * (log_max - log_min) + log_min))


def kl_optimal_sigmas(
    n: int,
    sigma_min: float = SIGMA_MIN,
    sigma_max: float = SIGMA_MAX,
    rho: float = 7.0,
    *,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Noise levels evenly spaced in arctan(sigma) ("Align Your Steps", Sabour et al. 2024, KL-optimal).

    Evaluated in float64 (tan is ill-conditioned near pi/2, i.e. at sigma 700), returned as (n + 1,) float32.
    ``rho`` is accepted for a uniform signature and ignored.
    """
    _check(n, sigma_min, sigma_max)
    ramp = torch.linspace(0, 1, n, dtype=torch.float64, device=device)  # (n,)
    angles = (1 - ramp) * math.atan(sigma_max) + ramp * math.atan(sigma_min)
    return append_zero(torch.tan(angles).to(torch.float32))


SCHEDULES: dict[str, ScheduleFn] = {
    "karras": karras_sigmas,
    "exponential": exponential_sigmas,
    "polyexponential": polyexponential_sigmas,
    "kl_optimal": kl_optimal_sigmas,
}


def get_schedule(name: str) -> ScheduleFn:
    """The schedule function registered as ``name`` in :data:`SCHEDULES`."""
    return choose(SCHEDULES, name, "schedule")


def sigmas_for_denoise(sigmas: Tensor, denoise: float) -> Tensor:
    """The tail of a schedule for img2img-style partial denoising ("denoise strength").

    sigmas: (n + 1,) with trailing 0; denoise in (0, 1]. Keeps the last ``k = round(n * denoise)`` steps
    (rounded half up, at least 1) and returns those (k + 1,) sigmas; denoise 1 returns the whole
    schedule. Start the sampler from ``noise_latents(x0, noise, result[0])`` (see :mod:`.sampling`).
    """
    if sigmas.ndim != 1 or sigmas.shape[0] < 2:
        raise InputError(f"sigmas must have shape (n + 1,) with n >= 1, got {tuple(sigmas.shape)}")
    if not 0.0 < denoise <= 1.0:
        raise ConfigError(f"denoise must be in (0, 1], got {denoise!r} (1 = start from pure noise)")
    n = sigmas.shape[0] - 1
    k = max(1, math.floor(n * denoise + 0.5))
    return sigmas[n - k :]
