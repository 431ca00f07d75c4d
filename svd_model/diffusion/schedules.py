"""Noise schedules: decreasing sigma sequences for the samplers, as pure functions.

Every schedule returns a float32 tensor of shape (n + 1,): ``n`` decreasing noise levels from
``sigma_max`` to ``sigma_min`` followed by a trailing 0 (k-diffusion ``append_zero``), so a sampler
over it takes ``n`` steps and its last step lands on the clean sample. All share the signature
``schedule(n, sigma_min=0.002, sigma_max=700.0, *, device="cpu", **options)``; the defaults are
SVD's (every SVD/SV3D config uses sigma_min 0.002, sigma_max 700). The fourth parameter, ``rho``, is
the curvature of the Karras, polyexponential and AnimateLCM ramps; the other schedules accept and ignore it,
so ``get_schedule(name)(n, sigma_min, sigma_max, rho)`` works for every name.

Two schedules stop short of ``sigma_min`` before the trailing 0, as the schedules they reproduce do:
``ays`` (its last step goes from the second-smallest published level to 0, as ComfyUI's AlignYourSteps node)
and ``animatelcm`` (a stride through a 40-level grid that ends where the stride ends).
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
    "AYS_SVD_SIGMAS",
    "LCM_GRID_LEVELS",
    "animatelcm_sigmas",
    "append_zero",
    "ays_sigmas",
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
    return append_zero(_karras(torch.linspace(0, 1, n, device=device), sigma_min, sigma_max, rho))  # float32


def _karras(ramp: Tensor, sigma_min: float, sigma_max: float, rho: float) -> Tensor:
    """Eq. 5 at the positions ``ramp`` in [0, 1] (0: sigma_max, 1: sigma_min), in ramp's dtype."""
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


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


#: NVIDIA's 10-step Align Your Steps noise levels for Stable Video Diffusion (Sabour et al. 2024, "Align Your Steps:
#: Optimizing Sampling Schedules in Diffusion Models"; the values of the project's how-to page, also those of
#: ComfyUI's AlignYourStepsScheduler "SVD"): 11 levels for 10 steps, from SVD's sigma_max to its sigma_min.
AYS_SVD_SIGMAS = (700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.002)


def _loglinear(levels: Tensor, count: int) -> Tensor:
    """Resample a decreasing (k,) sequence to (count,) points, linear in log sigma over an even grid in [0, 1]
    (both ends kept). float64 in, float64 out."""
    k = levels.shape[0]
    pos = torch.linspace(0, k - 1, count, dtype=torch.float64, device=levels.device)  # fractional indices
    low = pos.floor().clamp(max=k - 2).long()  # (count,) left knot of each point
    frac = pos - low
    logs = levels.log()
    return torch.exp(logs[low] * (1 - frac) + logs[low + 1] * frac)


def ays_sigmas(
    n: int,
    sigma_min: float = SIGMA_MIN,
    sigma_max: float = SIGMA_MAX,
    rho: float = 7.0,
    *,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Align Your Steps for SVD (:data:`AYS_SVD_SIGMAS`) at any step count. (n + 1,) float32, trailing 0.

    At n = 10 the published levels are used as they are; other counts resample the 11 levels log-linearly
    (evenly in log sigma between neighbouring levels, the interpolation the AYS authors give for other step
    counts and ComfyUI uses). As in ComfyUI's AlignYourStepsScheduler, the last level (sigma_min) is replaced
    by 0: n steps take n + 1 levels, the last step goes from the second-smallest level to the clean sample.

    sigma_min / sigma_max: the list was optimised for SVD's range (0.002, 700), the defaults, which leave it
    untouched. Any other range maps the list affinely in log sigma so that it spans [sigma_min, sigma_max]
    (the shape of the schedule is kept; whether it is still near-optimal for that model is not known).
    ``rho`` is accepted for a uniform signature and ignored.
    """
    _check(n, sigma_min, sigma_max)
    levels = torch.tensor(AYS_SVD_SIGMAS, dtype=torch.float64, device=device)  # (11,)
    if (sigma_min, sigma_max) != (AYS_SVD_SIGMAS[-1], AYS_SVD_SIGMAS[0]):
        lo, hi = math.log(AYS_SVD_SIGMAS[-1]), math.log(AYS_SVD_SIGMAS[0])
        unit = (levels.log() - lo) / (hi - lo)  # 0 at the published sigma_min, 1 at its sigma_max
        levels = torch.exp(math.log(sigma_min) + unit * (math.log(sigma_max) - math.log(sigma_min)))
    if n + 1 != levels.shape[0]:
        levels = _loglinear(levels, n + 1)
    return append_zero(levels[:-1].to(torch.float32))


#: The discretization AnimateLCM-SVD was distilled on: a Karras grid of this many levels (its scheduler's
#: ``num_train_timesteps``), of which a run visits every (LCM_GRID_LEVELS // n)-th.
LCM_GRID_LEVELS = 40


def animatelcm_sigmas(
    n: int,
    sigma_min: float = SIGMA_MIN,
    sigma_max: float = SIGMA_MAX,
    rho: float = 7.0,
    *,
    device: torch.device | str = "cpu",
) -> Tensor:
    """The schedule of AnimateLCM-SVD-xt's sampler (its ``AnimateLCMSVDStochasticIterativeScheduler``, built with
    sigma_min 0.002, sigma_max 700, rho 7: this function's defaults). (n + 1,) float32, trailing 0; 1 <= n <= 40.

    A Karras ramp (:func:`karras_sigmas`' formula) of :data:`LCM_GRID_LEVELS` levels from sigma_max to sigma_min;
    step i uses level i * (40 // n), so the run starts at sigma_max and its last level before 0 is the one the
    stride reaches (4 steps: levels 0, 10, 20, 30 = 700, 128.6, 13.68, 0.497), not sigma_min: a consistency
    model's last step jumps to the clean sample from there. Evaluated in float64, returned as float32.
    """
    _check(n, sigma_min, sigma_max)
    if rho <= 0:
        raise ConfigError(f"rho must be > 0, got {rho!r} (AnimateLCM uses 7)")
    if n > LCM_GRID_LEVELS:
        raise ConfigError(f"the AnimateLCM schedule has {LCM_GRID_LEVELS} levels, so at most {LCM_GRID_LEVELS} "
                          f"steps, got {n} (few-step models use 2-8)")
    stride = LCM_GRID_LEVELS // n
    ramp = torch.arange(n, dtype=torch.float64, device=device) * stride / (LCM_GRID_LEVELS - 1)  # (n,) in [0, 1)
    return append_zero(_karras(ramp, sigma_min, sigma_max, rho).to(torch.float32))


SCHEDULES: dict[str, ScheduleFn] = {
    "karras": karras_sigmas,
    "exponential": exponential_sigmas,
    "polyexponential": polyexponential_sigmas,
    "kl_optimal": kl_optimal_sigmas,
    "ays": ays_sigmas,
    "animatelcm": animatelcm_sigmas,
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
