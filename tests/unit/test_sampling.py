"""Samplers (svd_model.sampling) against an analytic denoiser, plus the reference Euler loop and initial noise.

Analytic denoiser: for data x0 ~ N(0, s^2) per element, the exact MMSE denoiser of x = x0 + sigma * n is
D(x, sigma) = x s^2 / (s^2 + sigma^2). Every sampler started from pure noise at sigma_max must end with
samples of std ~ s; the deterministic ones must follow the exact probability-flow ODE solution
x(0) = x(sigma_max) s / sqrt(s^2 + sigma_max^2).
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from comfyui_svd_lab.svd_model.diffusion.noise import (
    initial_noise,
    initial_noise_scale,
    noise_latents,
    randn,
    randn_like,
)
from comfyui_svd_lab.svd_model.diffusion.sampling import (
    SAMPLERS,
    StepInfo,
    euler_step,
    get_sampler,
    heun_step,
    sample_euler,
    sample_heun,
)
from comfyui_svd_lab.svd_model.diffusion.scalings import append_dims
from comfyui_svd_lab.svd_model.diffusion.schedules import karras_sigmas
from comfyui_svd_lab.svd_model.errors import ConfigError, InputError
from conftest import assert_golden

DATA_STD = 0.5
SIGMA_MAX = 80.0
STEPS = 200  # first-order samplers (Euler, ancestral Euler) need many steps to come within a few % of s
SHAPE = (2, 3, 4, 16, 16)  # b t c h w

#: Max abs deviation from the exact ODE solution after STEPS steps, by order of the ODE solver.
ODE_ATOL = {1: 0.05, 2: 0.005}

#: (options, ODE order or None when stochastic) per sampler; a new sampler needs a row here (checked below).
SAMPLER_CASES: dict[str, tuple[dict[str, object], int | None]] = {
    "euler": ({}, 1),
    "euler_ancestral": ({}, None),
    "heun": ({}, 2),
    "dpmpp_2s_ancestral": ({}, None),
    "dpmpp_2m": ({}, 2),
    "dpmpp_2m_sde": ({}, None),
    "lcm": ({}, None),
}
#: Samplers for consistency models: they recover the data only with the consistency function (the ODE's endpoint,
#: :func:`consistency_denoiser`), not with the posterior mean (tests/unit/test_few_step.py).
CONSISTENCY_SAMPLERS = {"lcm"}

#: extra option rows: stochastic churn, the other SDE solver, eta = 0 (deterministic) variants
OPTION_CASES: list[tuple[str, dict[str, object], int | None]] = [
    ("euler", {"s_churn": 1.0}, None),
    ("heun", {"s_churn": 1.0, "s_tmin": 0.05, "s_tmax": 50.0}, None),
    ("dpmpp_2m_sde", {"solver_type": "heun"}, None),
    ("dpmpp_2m_sde", {"eta": 0.0}, 2),
    ("euler_ancestral", {"eta": 0.0}, 1),
    ("dpmpp_2s_ancestral", {"eta": 0.0}, 2),
]


def gaussian_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    assert sigma.shape == (x.shape[0],)
    s2 = DATA_STD**2
    return x * (s2 / (s2 + append_dims(sigma, x.ndim) ** 2))


def consistency_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The exact consistency function for Gaussian data: the probability-flow ODE solution at 0 from (x, sigma)."""
    assert sigma.shape == (x.shape[0],)
    return x * (DATA_STD / torch.sqrt(DATA_STD**2 + append_dims(sigma, x.ndim) ** 2))


def denoiser_for(name: str):
    return consistency_denoiser if name in CONSISTENCY_SAMPLERS else gaussian_denoiser


def _start(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    sigmas = karras_sigmas(STEPS, sigma_min=0.002, sigma_max=SIGMA_MAX)
    x = initial_noise(SHAPE, sigmas[0], torch.Generator().manual_seed(seed))
    return x, sigmas


def _exact(x: torch.Tensor, sigma_from: float) -> torch.Tensor:
    """Probability-flow ODE solution at sigma 0 for Gaussian data, started from x at sigma_from."""
    return x * (DATA_STD / math.sqrt(DATA_STD**2 + sigma_from**2))


def _run(name: str, options: dict[str, object], order: int | None) -> None:
    x, sigmas = _start()
    x_before, sigmas_before = x.clone(), sigmas.clone()
    denoiser = denoiser_for(name)
    out = get_sampler(name)(denoiser, x, sigmas, generator=torch.Generator().manual_seed(1), **options)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(x, x_before) and torch.equal(sigmas, sigmas_before)  # inputs untouched
    assert out.std().item() == pytest.approx(DATA_STD, rel=0.05)
    if order is not None:
        err = (out - _exact(x, SIGMA_MAX)).abs().max().item()
        assert err < ODE_ATOL[order], err


def test_every_sampler_has_a_case() -> None:
    assert set(SAMPLER_CASES) == set(SAMPLERS)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_sampler_recovers_data_distribution(name: str) -> None:
    options, order = SAMPLER_CASES[name]
    _run(name, options, order)


@pytest.mark.parametrize(("name", "options", "order"), OPTION_CASES)
def test_sampler_options(name: str, options: dict[str, object], order: int | None) -> None:
    _run(name, options, order)


def test_euler_matches_closed_form_recursion() -> None:
    """For a linear denoiser every Euler step multiplies x by 1 + (sigma_next / sigma - 1) sigma^2 / (s^2 + sigma^2)."""
    sigmas = karras_sigmas(12, 0.002, SIGMA_MAX)
    x = initial_noise(SHAPE, sigmas[0], torch.Generator().manual_seed(0))
    factor, s2 = 1.0, DATA_STD**2
    for sigma, sigma_next in zip(sigmas[:-1].tolist(), sigmas[1:].tolist(), strict=True):
        factor *= 1 + (sigma_next / sigma - 1) * sigma**2 / (s2 + sigma**2)
    assert torch.allclose(sample_euler(gaussian_denoiser, x, sigmas), x * factor, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("name", "options", "order"),
    [(n, o, k) for n, (o, k) in SAMPLER_CASES.items() if k is not None] + [c for c in OPTION_CASES if c[2] is not None],
)
def test_ode_convergence_order(name: str, options: dict[str, object], order: int) -> None:
    """Doubling the steps divides the ODE error by ~2^order (1 for Euler, 2 for Heun / DPM-Solver++)."""
    x = initial_noise(SHAPE, SIGMA_MAX, torch.Generator().manual_seed(0)).double()
    errors = []
    for n in (30, 60):
        sigmas = karras_sigmas(n, 0.002, SIGMA_MAX).double()
        out = get_sampler(name)(gaussian_denoiser, x, sigmas, **options)
        errors.append((out - _exact(x, SIGMA_MAX)).abs().max().item())
    measured = math.log2(errors[0] / errors[1])
    assert order - 0.3 < measured < order + 0.6, (errors, measured)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_sampler_seeded_determinism(name: str) -> None:
    x, _ = _start()
    sigmas = karras_sigmas(6, 0.002, SIGMA_MAX)
    runs = [get_sampler(name)(gaussian_denoiser, x, sigmas, generator=torch.Generator().manual_seed(7)) for _ in "ab"]
    assert torch.equal(runs[0], runs[1])
    other = get_sampler(name)(gaussian_denoiser, x, sigmas, generator=torch.Generator().manual_seed(8))
    deterministic = SAMPLER_CASES[name][1] is not None
    assert torch.equal(other, runs[0]) == deterministic  # only stochastic samplers depend on the seed


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_sampler_does_not_touch_global_rng(name: str) -> None:
    x, sigmas = torch.randn(2, 3, 4), karras_sigmas(4, 0.002, SIGMA_MAX)
    state = torch.get_rng_state()
    get_sampler(name)(gaussian_denoiser, x, sigmas, generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_callback_once_per_step(name: str) -> None:
    x, sigmas = torch.randn(2, 3, 4, 4), karras_sigmas(5, 0.002, SIGMA_MAX)
    infos: list[StepInfo] = []
    get_sampler(name)(gaussian_denoiser, x, sigmas, generator=torch.Generator().manual_seed(0), callback=infos.append)
    assert [i.index for i in infos] == list(range(5))
    assert all(i.total == 5 for i in infos)
    assert [i.sigma for i in infos] == pytest.approx(sigmas[:-1].tolist())
    assert [i.sigma_next for i in infos] == pytest.approx(sigmas[1:].tolist())
    assert all(i.x.shape == x.shape and i.denoised.shape == x.shape for i in infos)
    with pytest.raises(dataclasses.FrozenInstanceError):
        infos[0].index = 3  # type: ignore[misc]


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_callback_exception_stops_sampling(name: str) -> None:
    x, sigmas = torch.randn(1, 2, 3), karras_sigmas(10, 0.002, SIGMA_MAX)
    seen: list[int] = []

    def callback(info: StepInfo) -> None:
        seen.append(info.index)
        if info.index == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        get_sampler(name)(gaussian_denoiser, x, sigmas, generator=torch.Generator().manual_seed(0), callback=callback)
    assert seen == [0, 1, 2]


@pytest.mark.parametrize(
    ("name", "options"),
    [("euler", {"s_churn": 1.0}), ("euler_ancestral", {}), ("dpmpp_2s_ancestral", {}), ("dpmpp_2m_sde", {})],
)
def test_stochastic_sampler_requires_generator(name: str, options: dict[str, object]) -> None:
    with pytest.raises(InputError, match="generator"):
        get_sampler(name)(gaussian_denoiser, torch.randn(1, 3), karras_sigmas(3), **options)


def test_deterministic_samplers_need_no_generator() -> None:
    x, sigmas = torch.randn(1, 3), karras_sigmas(3, 0.002, SIGMA_MAX)
    for name in ("euler", "heun", "dpmpp_2m"):
        assert get_sampler(name)(gaussian_denoiser, x, sigmas).shape == x.shape


@pytest.mark.parametrize(("sampler", "step"), [(sample_euler, "euler"), (sample_heun, "heun")])
def test_samplers_are_their_public_step_in_a_loop(sampler, step) -> None:
    """sample_euler / sample_heun equal a hand-written loop of euler_step / heun_step, bit for bit."""
    x, _ = _start()
    sigmas = karras_sigmas(6, 0.002, SIGMA_MAX)
    z = x
    for i in range(6):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = gaussian_denoiser(z, sigma.reshape(1).repeat(z.shape[0]))
        if step == "heun" and i < 5:
            z = heun_step(gaussian_denoiser, z, denoised, sigma, sigma_next)
        else:
            z = euler_step(z, denoised, sigma, sigma_next)
    assert torch.equal(sampler(gaussian_denoiser, x, sigmas), z)
    last = euler_step(x, x * 0.5, sigmas[-2], sigmas[-1])  # a step to sigma 0 lands on denoised
    torch.testing.assert_close(last, x * 0.5)


def test_randn_is_the_one_seeded_draw() -> None:
    a = randn((2, 3), torch.Generator().manual_seed(5))
    assert torch.equal(a, torch.randn((2, 3), generator=torch.Generator().manual_seed(5))) and a.dtype == torch.float32
    like = randn_like(torch.zeros(2, 3, dtype=torch.float64), torch.Generator().manual_seed(5))
    assert like.dtype == torch.float64 and torch.equal(like, a.double())
    with pytest.raises(InputError, match="^the test draw draws noise but no generator was passed"):
        randn((2,), None, what="the test draw")
    with pytest.raises(InputError, match="needs a torch.Generator, got int"):
        randn((2,), 5)  # a seed is not a generator


def test_get_sampler_unknown_lists_choices() -> None:
    with pytest.raises(ConfigError, match="unknown sampler 'ddim'.*dpmpp_2m"):
        get_sampler("ddim")


def test_bad_options_and_schedules() -> None:
    x = torch.randn(1, 3)
    with pytest.raises(ConfigError, match="solver_type"):
        get_sampler("dpmpp_2m_sde")(gaussian_denoiser, x, karras_sigmas(3), solver_type="rk4")
    with pytest.raises(InputError, match="decreasing"):
        sample_euler(gaussian_denoiser, x, torch.tensor([1.0, 2.0, 0.0]))
    with pytest.raises(InputError):
        sample_euler(gaussian_denoiser, x, torch.tensor([1.0]))


def test_sigma_schedule_without_trailing_zero_stops_at_last_sigma() -> None:
    x, _ = _start()
    sigmas = karras_sigmas(50, 1.0, SIGMA_MAX)[:-1]  # 80 ... 1.0, no trailing 0
    out = get_sampler("heun")(gaussian_denoiser, x, sigmas)
    expected = x * math.sqrt((DATA_STD**2 + 1.0) / (DATA_STD**2 + SIGMA_MAX**2))
    assert torch.allclose(out, expected, atol=ODE_ATOL[2])


# ------------------------------------------------------------------------------------- reference parity


def test_euler_replays_reference_trajectory(golden: dict[str, torch.Tensor]) -> None:
    """sgm EulerEDMSampler: replaying its guided denoised estimates reproduces its states and output."""
    sigmas = karras_sigmas(4)
    assert torch.equal(sigmas[:-1], golden["sample.step_sigma"])
    x = initial_noise(golden["sample.init_noise"], sigmas[0])
    assert_golden(x, golden["sample.step_x"][0], "sample.step_x[0]")
    seen: list[torch.Tensor] = []

    def replay(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        i = len(seen)
        seen.append(x)
        assert sigma.shape == (x.shape[0],) and torch.all(sigma == golden["sample.step_sigma"][i])
        return golden["sample.step_denoised"][i]

    out = sample_euler(replay, x, sigmas)
    assert len(seen) == 4
    for i, x_i in enumerate(seen):
        assert_golden(x_i, golden["sample.step_x"][i], f"sample.step_x[{i}]")
    assert_golden(out, golden["sample.final_latents"], "sample.final_latents")


def test_initial_noise_scaling() -> None:
    """The reference starts from randn * sqrt(1 + sigma_0^2), not k-diffusion's randn * sigma_max."""
    scale = initial_noise_scale(700.0)
    assert scale.dtype == torch.float32 and scale.shape == ()
    assert scale.item() == pytest.approx(math.sqrt(1 + 700.0**2), rel=1e-7)
    assert initial_noise_scale(torch.tensor([700.0])).item() == scale.item()
    x = initial_noise((2, 3), 700.0, torch.Generator().manual_seed(3))
    expected = torch.randn((2, 3), generator=torch.Generator().manual_seed(3)) * scale
    assert torch.equal(x, expected) and x.dtype == torch.float32
    half = initial_noise((2, 3), 700.0, torch.Generator().manual_seed(3), dtype=torch.float16)
    assert half.dtype == torch.float16 and torch.allclose(half.float(), expected, rtol=1e-3)
    noise = torch.randn(4)
    assert torch.equal(initial_noise(noise, 2.0), noise * math.sqrt(5.0))
    with pytest.raises(InputError, match="generator"):
        initial_noise((2, 3), 700.0)


def test_noise_latents() -> None:
    x0, noise = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    assert torch.allclose(noise_latents(x0, noise, 2.0), x0 + 2.0 * noise)
    assert torch.allclose(noise_latents(x0, noise, torch.tensor(2.0)), x0 + 2.0 * noise)
    per_row = noise_latents(x0, noise, torch.tensor([1.0, 3.0]))
    assert torch.allclose(per_row[1], x0[1] + 3.0 * noise[1])
    with pytest.raises(InputError):
        noise_latents(x0, noise[:1], 1.0)
    with pytest.raises(InputError):
        noise_latents(x0, noise, torch.ones(3))


def test_partial_denoise_from_noised_latent() -> None:
    """Start from x0 noised to a mid sigma; the exact ODE then shrinks towards the posterior mean."""
    from comfyui_svd_lab.svd_model.diffusion.schedules import sigmas_for_denoise

    sigmas = sigmas_for_denoise(karras_sigmas(100, 0.002, SIGMA_MAX), 0.5)
    assert sigmas.shape == (51,)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(SHAPE, generator=g) * DATA_STD
    x = noise_latents(x0, torch.randn(SHAPE, generator=g), sigmas[0])
    out = get_sampler("dpmpp_2m")(gaussian_denoiser, x, sigmas)
    assert torch.allclose(out, _exact(x, sigmas[0].item()), atol=ODE_ATOL[2])
