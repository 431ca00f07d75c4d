"""Samplers as pure functions over a denoiser callable (k-diffusion style).

Vocabulary: ``x`` is the noisy latent in VE form (x0 + sigma * noise), ``sigma``/``sigmas`` the noise
levels, ``denoised`` the denoiser's estimate of x0, ``d = (x - denoised) / sigma`` the derivative of the
probability-flow ODE dx/dsigma (Karras et al. 2022, Eq. 3 with sigma(t) = t).

Every sampler has the signature ``sample_X(denoiser, x, sigmas, *, generator=None, callback=None,
**options) -> Tensor``:

- ``denoiser(x, sigma) -> denoised``: x any shape (b, ...), e.g. (b, t, c, h, w); sigma (b,) with one
  noise level per row (all equal here); returns a tensor shaped like x. Guidance (CFG) is a denoiser
  wrapper (:mod:`.guidance`); samplers know nothing about frames or conditioning.
- ``x``: the starting latent at noise level ``sigmas[0]`` (see :func:`.noise.initial_noise`,
  :func:`.noise.noise_latents`). It is never modified in place.
- ``sigmas``: (n + 1,) decreasing, ending in 0 (:mod:`.schedules`); n steps, n callback calls.
- ``generator``: the only source of randomness; stochastic options (``s_churn``, ``eta``) and the stochastic
  ``lcm`` sampler require it.
  Noise is drawn by :func:`.noise.randn_like` (float32 on the generator's device, then moved to x's
  device and dtype), so a seed gives the same noise on CPU and GPU runs that share a CPU generator.
- ``callback(StepInfo)``: called once per step after the denoiser; raising inside it stops sampling
  (the exception propagates), which is how a host application interrupts a run.

Returns the final sample, shaped like x.

The single steps are public pure functions too (:func:`euler_step`, :func:`heun_step`), for samplers built
elsewhere (keyframe interpolation's re-noised and bidirectional steps) to step exactly as these do.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import Tensor

from ..errors import ConfigError, InputError, ShapeError, choose
from .noise import randn_like, require_generator

__all__ = [
    "SAMPLERS",
    "Callback",
    "Denoiser",
    "SamplerFn",
    "StepInfo",
    "euler_step",
    "get_sampler",
    "heun_step",
    "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde",
    "sample_dpmpp_2s_ancestral",
    "sample_euler",
    "sample_euler_ancestral",
    "sample_heun",
    "sample_lcm",
]

Denoiser = Callable[[Tensor, Tensor], Tensor]  # (x: (b, ...), sigma: (b,)) -> denoised, shaped like x


@dataclass(frozen=True)
class StepInfo:
    """What a sampler reports after evaluating the denoiser in step ``index`` (0-based) of ``total``.

    x: the latent the denoiser saw, at noise level ``sigma`` (after churn noise, if any);
    sigma_next: the level this step moves to (0 on the last step); denoised: the x0 estimate at x.
    """

    index: int
    total: int
    x: Tensor
    sigma: float
    sigma_next: float
    denoised: Tensor


Callback = Callable[[StepInfo], None]
SamplerFn = Callable[..., Tensor]


# ---------------------------------------------------------------------------------------------- helpers


def _prepare(x: Tensor, sigmas: Tensor) -> tuple[Tensor, list[float]]:
    """Validate the schedule; return it on x's device plus its values as Python floats (for control flow)."""
    if sigmas.ndim != 1 or sigmas.shape[0] < 2:
        raise ShapeError(f"sigmas must have shape (n + 1,) with n >= 1 steps, got {tuple(sigmas.shape)}")
    if x.ndim < 1:
        raise ShapeError("x must have a batch axis, got a 0-d tensor")
    values = [float(v) for v in sigmas.tolist()]
    if any(b >= a for a, b in pairwise(values)) or values[-1] < 0:
        raise InputError(
            f"sigmas must be strictly decreasing and non-negative, got {values[:4]}...{values[-2:]} "
            "(build them with svd_model.schedules)"
        )
    return sigmas.to(x.device), values


def _sigma_rows(sigma: Tensor, x: Tensor) -> Tensor:
    """0-d sigma -> (b,), one entry per row of x, as the denoiser expects."""
    return sigma.reshape(1).repeat(x.shape[0])


def _to_d(x: Tensor, sigma: Tensor | float, denoised: Tensor) -> Tensor:
    """ODE derivative dx/dsigma = (x - denoised) / sigma (Karras et al. 2022, Eq. 3)."""
    return (x - denoised) / sigma


def _ancestral_step(sigma: float, sigma_next: float, eta: float) -> tuple[float, float]:
    """(sigma_down, sigma_up): split the move sigma -> sigma_next into a deterministic step down to
    sigma_down and fresh noise of std sigma_up, with sigma_down^2 + sigma_up^2 = sigma_next^2.
    eta = 1 is DDPM-like ancestral sampling, eta = 0 the deterministic ODE step."""
    if eta == 0.0 or sigma_next == 0.0:
        return sigma_next, 0.0
    sigma_up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    sigma_down = math.sqrt(sigma_next**2 - sigma_up**2)
    return sigma_down, sigma_up


def _churn_gamma(sigma: float, n: int, s_churn: float, s_tmin: float, s_tmax: float) -> float:
    """Karras et al. 2022 Alg. 2 line 4: gamma = min(S_churn / N, sqrt(2) - 1) inside [S_tmin, S_tmax]."""
    return min(s_churn / n, 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0


# ------------------------------------------------------------------------------------------------ steps


def euler_step(x: Tensor, denoised: Tensor, sigma: Tensor | float, sigma_next: Tensor | float) -> Tensor:
    """One Euler step of the probability-flow ODE from noise level sigma to sigma_next (pure).

    x, denoised: (b, ...) the latent at sigma and the denoiser's x0 estimate there; sigma, sigma_next: floats
    or 0-d tensors (as every sampler here passes them). d = (x - denoised) / sigma (Karras et al. 2022, Eq. 3),
    x_next = x + (sigma_next - sigma) d, in that operation order (sgm ``EulerEDMSampler``); a step to
    sigma_next = 0 lands on denoised. :func:`sample_euler` is this step in a loop.
    """
    return x + (sigma_next - sigma) * _to_d(x, sigma, denoised)


def heun_step(denoiser: Denoiser, x: Tensor, denoised: Tensor, sigma: Tensor, sigma_next: Tensor) -> Tensor:
    """One Heun step (Karras et al. 2022, Alg. 2 lines 7-8): an Euler step to sigma_next, a second denoiser
    call there and the step with the mean of the two slopes. sigma, sigma_next: 0-d tensors, sigma_next > 0
    (the last step of a schedule, to 0, is a plain :func:`euler_step`)."""
    d = _to_d(x, sigma, denoised)
    dt = sigma_next - sigma
    x_euler = x + dt * d
    d_next = _to_d(x_euler, sigma_next, denoiser(x_euler, _sigma_rows(sigma_next, x)))
    return x + (d + d_next) / 2.0 * dt  # trapezoidal (Heun) correction


def _report(
    callback: Callback | None, index: int, total: int, x: Tensor, sigma: float, sigma_next: float, denoised: Tensor
) -> None:
    if callback is not None:
        callback(StepInfo(index, total, x, sigma, sigma_next, denoised))


# ---------------------------------------------------------------------------------------------- samplers


def _edm_sample(
    name: str,
    heun: bool,
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    generator: torch.Generator | None,
    callback: Callback | None,
    s_churn: float,
    s_tmin: float,
    s_tmax: float,
    s_noise: float,
) -> Tensor:
    """Karras et al. (2022) Algorithm 2 with optional stochastic churn; Euler (heun=False) or Heun steps."""
    sigmas, values = _prepare(x, sigmas)
    if s_churn < 0:
        raise ConfigError(f"s_churn must be >= 0, got {s_churn!r}")
    if s_churn > 0:
        require_generator(generator, f"{name} with s_churn={s_churn}")
    n = len(values) - 1
    for i in range(n):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        gamma = _churn_gamma(values[i], n, s_churn, s_tmin, s_tmax)
        sigma_hat = sigma * (gamma + 1.0)
        if gamma > 0:
            x = x + randn_like(x, generator, what=name) * s_noise * (sigma_hat**2 - sigma**2) ** 0.5
        denoised = denoiser(x, _sigma_rows(sigma_hat, x))
        _report(callback, i, n, x, values[i] * (gamma + 1.0), values[i + 1], denoised)
        if not heun or values[i + 1] == 0.0:
            x = euler_step(x, denoised, sigma_hat, sigma_next)  # the last step (to sigma 0) lands on denoised
        else:
            x = heun_step(denoiser, x, denoised, sigma_hat, sigma_next)
    return x


def sample_euler(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
) -> Tensor:
    """Euler steps of the probability-flow ODE, Karras et al. (2022) Algorithm 2 without the Heun correction.

    With the defaults (s_churn 0) this is the reference SVD sampler (sgm ``EulerEDMSampler``), operation
    for operation: d = (x - denoised) / sigma, x <- x + (sigma_next - sigma) d; the last step, to sigma 0,
    gives the denoised estimate. s_churn > 0 first raises the noise level to sigma_hat = sigma (1 + gamma)
    with gamma = min(s_churn / n, sqrt 2 - 1) for sigma in [s_tmin, s_tmax], adding noise of std
    s_noise sqrt(sigma_hat^2 - sigma^2).
    """
    return _edm_sample("euler", False, denoiser, x, sigmas, generator, callback, s_churn, s_tmin, s_tmax, s_noise)


def sample_heun(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
) -> Tensor:
    """Heun's 2nd-order method, Karras et al. (2022) Algorithm 2 (sgm ``HeunEDMSampler``).

    Each step takes an Euler step, evaluates the denoiser again at sigma_next and averages the two
    slopes; the last step (to sigma 0) stays a plain Euler step. 2n - 1 denoiser calls for n steps.
    Churn options as in :func:`sample_euler`.
    """
    return _edm_sample("heun", True, denoiser, x, sigmas, generator, callback, s_churn, s_tmin, s_tmax, s_noise)


def sample_euler_ancestral(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> Tensor:
    """Ancestral Euler sampling (k-diffusion ``sample_euler_ancestral``, sgm ``EulerAncestralSampler``).

    Each step moves deterministically to sigma_down, then adds fresh noise of std s_noise * sigma_up
    (see :func:`_ancestral_step`); eta scales the stochasticity (0 = plain Euler).
    """
    sigmas, values = _prepare(x, sigmas)
    if eta > 0:
        require_generator(generator, f"euler_ancestral with eta={eta}")
    n = len(values) - 1
    for i in range(n):
        sigma, sigma_next = values[i], values[i + 1]
        denoised = denoiser(x, _sigma_rows(sigmas[i], x))
        _report(callback, i, n, x, sigma, sigma_next, denoised)
        sigma_down, sigma_up = _ancestral_step(sigma, sigma_next, eta)
        x = euler_step(x, denoised, sigma, sigma_down)
        if sigma_up > 0:
            x = x + randn_like(x, generator, what="euler_ancestral") * (s_noise * sigma_up)
    return x


def sample_dpmpp_2s_ancestral(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> Tensor:
    """Ancestral DPM-Solver++(2S), Lu et al. (2022) single-step, r = 1/2 (sgm ``DPMPP2SAncestralSampler``).

    Works in t = -log sigma: a first-order step to the midpoint of [sigma, sigma_down] in log space, a
    second denoiser call there, then the step to sigma_down with that estimate; then ancestral noise.
    2 denoiser calls per step (1 on the last).
    """
    sigmas, values = _prepare(x, sigmas)
    if eta > 0:
        require_generator(generator, f"dpmpp_2s_ancestral with eta={eta}")
    n = len(values) - 1
    for i in range(n):
        sigma, sigma_next = values[i], values[i + 1]
        denoised = denoiser(x, _sigma_rows(sigmas[i], x))
        _report(callback, i, n, x, sigma, sigma_next, denoised)
        sigma_down, sigma_up = _ancestral_step(sigma, sigma_next, eta)
        if sigma_down == 0.0:
            x = euler_step(x, denoised, sigma, sigma_down)
        else:
            h = math.log(sigma / sigma_down)  # t_next - t with t = -log sigma
            sigma_mid = math.sqrt(sigma * sigma_down)  # exp(-(t + h/2))
            x_mid = (sigma_mid / sigma) * x - math.expm1(-0.5 * h) * denoised
            denoised_mid = denoiser(x_mid, torch.full_like(_sigma_rows(sigmas[i], x), sigma_mid))
            x = (sigma_down / sigma) * x - math.expm1(-h) * denoised_mid
        if sigma_up > 0:
            x = x + randn_like(x, generator, what="dpmpp_2s_ancestral") * (s_noise * sigma_up)
    return x


def sample_dpmpp_2m(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """DPM-Solver++(2M), the second-order multistep solver of Lu et al. (2022), Algorithm 2.

    In t = -log sigma with step h = t_next - t: x <- (sigma_next / sigma) x - expm1(-h) D, where D is the
    current denoised estimate extrapolated with the previous one, D = (1 + 1/2r) denoised - (1/2r) old,
    r = h_last / h. The first step and the last (to sigma 0) use the first-order update. One denoiser
    call per step; deterministic (``generator`` is accepted for a uniform signature and unused).
    """
    sigmas, values = _prepare(x, sigmas)
    n = len(values) - 1
    old_denoised: Tensor | None = None
    h_last = 0.0
    for i in range(n):
        sigma, sigma_next = values[i], values[i + 1]
        denoised = denoiser(x, _sigma_rows(sigmas[i], x))
        _report(callback, i, n, x, sigma, sigma_next, denoised)
        if sigma_next == 0.0:
            x = denoised  # the exact limit of the update: sigma_next / sigma = 0, -expm1(-inf) = 1
        else:
            h = math.log(sigma / sigma_next)
            estimate = denoised
            if old_denoised is not None:
                r = h_last / h
                estimate = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sigma_next / sigma) * x - math.expm1(-h) * estimate
            h_last = h
        old_denoised = denoised
    return x


def sample_dpmpp_2m_sde(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    solver_type: str = "midpoint",
) -> Tensor:
    """DPM-Solver++(2M) SDE (Lu et al. 2022, "DPM-Solver++", SDE variant; k-diffusion ``sample_dpmpp_2m_sde``).

    Per step with h = log(sigma / sigma_next) and eta_h = eta h:
    x <- (sigma_next / sigma) e^(-eta_h) x + (1 - e^(-h - eta_h)) denoised, plus a second-order
    correction from the previous estimate ("midpoint" or "heun" variant), plus fresh noise of std
    s_noise sigma_next sqrt(1 - e^(-2 eta_h)). eta = 0 gives the ODE solver. The noise is i.i.d. per
    step from ``generator`` (k-diffusion uses a Brownian tree; the distribution is the same).
    """
    if solver_type not in ("midpoint", "heun"):
        raise ConfigError(f"solver_type must be 'midpoint' or 'heun', got {solver_type!r}")
    sigmas, values = _prepare(x, sigmas)
    if eta > 0:
        require_generator(generator, f"dpmpp_2m_sde with eta={eta}")
    n = len(values) - 1
    old_denoised: Tensor | None = None
    h_last = 0.0
    for i in range(n):
        sigma, sigma_next = values[i], values[i + 1]
        denoised = denoiser(x, _sigma_rows(sigmas[i], x))
        _report(callback, i, n, x, sigma, sigma_next, denoised)
        if sigma_next == 0.0:
            x = denoised
        else:
            h = math.log(sigma / sigma_next)
            eta_h = eta * h
            one_minus = -math.expm1(-h - eta_h)  # 1 - e^(-h - eta_h)
            x = (sigma_next / sigma * math.exp(-eta_h)) * x + one_minus * denoised
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    coeff = 1 - one_minus / (h + eta_h)  # 1 - (1 - e^-z) / z with z = h + eta_h
                    x = x + (coeff / r) * (denoised - old_denoised)
                else:
                    x = x + (0.5 * one_minus / r) * (denoised - old_denoised)
            if eta > 0:
                std = s_noise * sigma_next * math.sqrt(-math.expm1(-2 * eta_h))
                x = x + randn_like(x, generator, what="dpmpp_2m_sde") * std
            h_last = h
        old_denoised = denoised
    return x


def sample_lcm(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    s_noise: float = 1.0,
) -> Tensor:
    """Multistep consistency sampling (Song et al. 2023, Alg. 1; LCM, Luo et al. 2023), for few-step distilled models
    such as AnimateLCM-SVD-xt (2-8 steps, with the ``animatelcm`` schedule).

    Each step takes the model's clean estimate and noises it afresh to the next level: x <- denoised +
    s_noise * sigma_next * z with fresh z ~ N(0, 1) (k-diffusion / ComfyUI ``sample_lcm``, and the step of
    AnimateLCM's ``AnimateLCMSVDStochasticIterativeScheduler``: denoised from the same EDM v-scalings as SVD's,
    no clipping); the last step, to sigma 0, returns denoised. Nothing of x but its estimate survives a step, so
    this is right only for a denoiser that maps x to a *sample* of the data (a consistency model: the probability
    -flow ODE's endpoint); with an ordinary denoiser (the posterior mean) the result is too smooth.

    Draws noise on every step but the last, so ``generator`` is required when the schedule has 2 or more
    steps (or does not end in 0). One denoiser call per step.
    """
    sigmas, values = _prepare(x, sigmas)
    n = len(values) - 1
    if any(v > 0 for v in values[1:]):
        require_generator(generator, "lcm")
    for i in range(n):
        sigma, sigma_next = values[i], values[i + 1]
        denoised = denoiser(x, _sigma_rows(sigmas[i], x))
        _report(callback, i, n, x, sigma, sigma_next, denoised)
        x = denoised
        if sigma_next > 0:
            x = x + randn_like(x, generator, what="lcm") * (s_noise * sigma_next)
    return x


SAMPLERS: dict[str, SamplerFn] = {
    "euler": sample_euler,
    "euler_ancestral": sample_euler_ancestral,
    "heun": sample_heun,
    "dpmpp_2s_ancestral": sample_dpmpp_2s_ancestral,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "lcm": sample_lcm,
}


def get_sampler(name: str) -> SamplerFn:
    """The sampler function registered as ``name`` in :data:`SAMPLERS`."""
    return choose(SAMPLERS, name, "sampler")
