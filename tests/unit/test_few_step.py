"""Few-step sampling: the LCM sampler on the analytic Gaussian model, and the AYS / AnimateLCM schedules.

For data x0 ~ N(0, s^2) per element the consistency function (the probability-flow ODE's endpoint from (x, sigma))
is f(x, sigma) = x s / sqrt(s^2 + sigma^2). If x ~ N(0, s^2 + sigma^2), f(x) ~ N(0, s^2) exactly and
f(x) + sigma' z ~ N(0, s^2 + sigma'^2): multistep consistency sampling with the true f has the exact marginal at
every step, for any step count. With the posterior mean (the MMSE denoiser) instead it is too narrow, by a variance
recursion the test computes in closed form.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_sampling import DATA_STD, consistency_denoiser, gaussian_denoiser

from comfyui_svd_lab.svd_model.diffusion.noise import randn
from comfyui_svd_lab.svd_model.diffusion.sampling import StepInfo, get_sampler, sample_lcm
from comfyui_svd_lab.svd_model.diffusion.schedules import (
    AYS_SVD_SIGMAS,
    LCM_GRID_LEVELS,
    animatelcm_sigmas,
    ays_sigmas,
    get_schedule,
    karras_sigmas,
)
from comfyui_svd_lab.svd_model.errors import ConfigError, InputError

SHAPE = (4, 5, 4, 16, 16)  # b t c h w: 20480 values, std of the std estimate ~0.5 %


def _exact_start(sigma0: float, seed: int = 0) -> torch.Tensor:
    """x ~ N(0, s^2 + sigma0^2): the exact marginal at sigma0 (the pipeline's sqrt(1 + sigma0^2) assumes s = 1)."""
    return randn(SHAPE, torch.Generator().manual_seed(seed)) * math.sqrt(DATA_STD**2 + sigma0**2)


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
@pytest.mark.parametrize("schedule", ["animatelcm", "karras", "ays"])
def test_lcm_with_the_consistency_function_has_the_exact_marginals(steps: int, schedule: str) -> None:
    sigmas = get_schedule(schedule)(steps)
    x = _exact_start(sigmas[0].item())
    infos: list[StepInfo] = []
    out = sample_lcm(consistency_denoiser, x, sigmas, generator=torch.Generator().manual_seed(1),
                     callback=infos.append)
    assert out.std().item() == pytest.approx(DATA_STD, rel=0.03)
    assert abs(out.mean().item()) < 0.02
    for info in infos:  # every state the denoiser saw is a sample of the noised data at its level
        assert info.x.std().item() == pytest.approx(math.sqrt(DATA_STD**2 + info.sigma**2), rel=0.03)


def test_lcm_with_the_posterior_mean_is_too_narrow_by_the_closed_form() -> None:
    """D(x) = x s^2 / (s^2 + sigma^2): Var' = (s^2 / (s^2 + sigma^2))^2 Var + sigma'^2 per step."""
    sigmas = animatelcm_sigmas(4)
    x = _exact_start(sigmas[0].item())
    out = sample_lcm(gaussian_denoiser, x, sigmas, generator=torch.Generator().manual_seed(2))
    var, s2 = DATA_STD**2 + sigmas[0].item() ** 2, DATA_STD**2
    for sigma, sigma_next in zip(sigmas[:-1].tolist(), sigmas[1:].tolist(), strict=True):
        var = (s2 / (s2 + sigma**2)) ** 2 * var + sigma_next**2
    assert out.var().item() == pytest.approx(var, rel=0.05)
    assert var < 0.8 * s2  # the sampler is for consistency models: the reason is visible, not a rounding


def test_lcm_is_denoise_then_renoise_with_fresh_noise() -> None:
    """Replaying the generator's draws by hand: x <- D(x, sigma) + s_noise sigma_next z_i; the last step returns D."""
    sigmas = animatelcm_sigmas(4)
    x = _exact_start(700.0)
    out = sample_lcm(consistency_denoiser, x, sigmas, generator=torch.Generator().manual_seed(3), s_noise=0.9)
    gen, z = torch.Generator().manual_seed(3), x
    for i in range(4):
        rows = sigmas[i].reshape(1).repeat(z.shape[0])
        z = consistency_denoiser(z, rows)
        if i < 3:
            z = z + randn(z.shape, gen) * (0.9 * sigmas[i + 1].item())
    torch.testing.assert_close(out, z, rtol=0, atol=0)


def test_lcm_contract() -> None:
    sigmas = animatelcm_sigmas(4)
    x, before = _exact_start(700.0), None
    before = x.clone()
    runs = [sample_lcm(consistency_denoiser, x, sigmas, generator=torch.Generator().manual_seed(5)) for _ in "ab"]
    assert torch.equal(runs[0], runs[1]) and torch.equal(x, before)  # seeded, input untouched
    other = sample_lcm(consistency_denoiser, x, sigmas, generator=torch.Generator().manual_seed(6))
    assert not torch.equal(other, runs[0])
    with pytest.raises(InputError, match="lcm draws noise but no generator"):
        sample_lcm(consistency_denoiser, x, sigmas)
    one_step = animatelcm_sigmas(1)  # 700 -> 0: no noise is drawn, no generator needed
    torch.testing.assert_close(sample_lcm(consistency_denoiser, x, one_step),
                               consistency_denoiser(x, torch.full((x.shape[0],), 700.0)))
    assert get_sampler("lcm") is sample_lcm


# ------------------------------------------------------------------------------------------------ schedules


def test_ays_at_ten_steps_is_the_published_list_ending_in_zero() -> None:
    sigmas = ays_sigmas(10)
    expected = torch.tensor([*AYS_SVD_SIGMAS[:-1], 0.0], dtype=torch.float32)
    assert torch.equal(sigmas, expected)
    assert AYS_SVD_SIGMAS[0] == 700.0 and AYS_SVD_SIGMAS[-1] == 0.002 and len(AYS_SVD_SIGMAS) == 11
    assert get_schedule("ays")(10).tolist() == sigmas.tolist()


def _reference_loglinear(steps: int) -> np.ndarray:
    """The AYS authors' interpolation, written independently: np.interp of log sigma on evenly spaced positions."""
    levels = np.log(np.array(AYS_SVD_SIGMAS))
    return np.exp(np.interp(np.linspace(0, 1, steps + 1), np.linspace(0, 1, len(levels)), levels))


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 7, 13, 25, 50])
def test_ays_interpolates_log_linearly_monotone_ending_in_zero(steps: int) -> None:
    sigmas = ays_sigmas(steps)
    assert sigmas.shape == (steps + 1,) and sigmas.dtype == torch.float32
    assert sigmas[0].item() == 700.0 and sigmas[-1].item() == 0.0
    assert torch.all(sigmas[1:] < sigmas[:-1])
    np.testing.assert_allclose(sigmas[:-1].double().numpy(), _reference_loglinear(steps)[:-1], rtol=2e-6)
    if steps % 10 == 0 or 10 % steps == 0:  # the grid passes through published levels: they are kept exactly
        stride = 10 // steps if 10 % steps == 0 else 1
        kept = set(np.float32(AYS_SVD_SIGMAS[:-1:stride]).tolist())
        assert kept <= set(sigmas.tolist()), (kept, sigmas.tolist())


def test_ays_other_sigma_range_is_mapped_in_log_space() -> None:
    sigmas = ays_sigmas(10, sigma_min=0.01, sigma_max=80.0)
    assert sigmas[0].item() == pytest.approx(80.0, rel=1e-6) and sigmas[-1].item() == 0.0
    unit = (np.log(np.array(AYS_SVD_SIGMAS[:-1])) - math.log(0.002)) / (math.log(700.0) - math.log(0.002))
    expected = np.exp(math.log(0.01) + unit * (math.log(80.0) - math.log(0.01)))
    np.testing.assert_allclose(sigmas[:-1].double().numpy(), expected, rtol=1e-6)


def test_animatelcm_schedule_is_the_distillation_grid_strided() -> None:
    """AnimateLCM-SVD's scheduler: a 40-level Karras grid (0.002..700, rho 7), levels 0, k, 2k... with k = 40 // n."""
    grid = karras_sigmas(LCM_GRID_LEVELS).double()  # (41,) the grid plus its trailing 0
    for steps in (1, 2, 3, 4, 6, 8, 40):
        stride = LCM_GRID_LEVELS // steps
        expected = torch.cat([grid[: steps * stride : stride], torch.zeros(1, dtype=torch.float64)])
        torch.testing.assert_close(animatelcm_sigmas(steps).double(), expected, rtol=1e-5, atol=0)  # grid: float32
    assert animatelcm_sigmas(4).tolist() == pytest.approx([700.0, 128.564, 13.678, 0.4969, 0.0], rel=1e-4)
    with pytest.raises(ConfigError, match="at most 40 steps"):
        animatelcm_sigmas(41)
