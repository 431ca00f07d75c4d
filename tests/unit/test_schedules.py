"""Noise schedules (svd_model.schedules) and the v-scaling preconditioning (svd_model.scalings)."""

from __future__ import annotations

import math

import pytest
import torch

from comfyui_svd_lab.svd_model.diffusion.scalings import append_dims, v_scalings_edm_cnoise
from comfyui_svd_lab.svd_model.diffusion.schedules import (
    SCHEDULES,
    get_schedule,
    karras_sigmas,
    sigmas_for_denoise,
)
from comfyui_svd_lab.svd_model.errors import ConfigError, InputError, ShapeError
from conftest import assert_golden

#: Schedules whose last level before 0 is not sigma_min (svd_model.diffusion.schedules; tests/unit/test_few_step.py).
SHORT_OF_SIGMA_MIN = {"ays", "animatelcm"}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("n", [1, 4, 25])
def test_schedule_shape_monotone_endpoints(name: str, n: int) -> None:
    sigmas = get_schedule(name)(n, 0.002, 700.0)
    assert sigmas.shape == (n + 1,)
    assert sigmas.dtype == torch.float32
    assert sigmas[-1].item() == 0.0
    assert torch.all(sigmas[1:] < sigmas[:-1])
    assert sigmas[0].item() == pytest.approx(700.0, rel=1e-5)
    if n > 1 and name not in SHORT_OF_SIGMA_MIN:
        assert sigmas[-2].item() == pytest.approx(0.002, rel=1e-4)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedule_defaults_are_svd(name: str) -> None:
    sigmas = get_schedule(name)(10)
    assert sigmas[0].item() == pytest.approx(700.0, rel=1e-5)
    if name not in SHORT_OF_SIGMA_MIN:
        assert sigmas[-2].item() == pytest.approx(0.002, rel=1e-4)


def test_karras_matches_golden(golden: dict[str, torch.Tensor]) -> None:
    expected = golden["sample.sigmas"]
    actual = karras_sigmas(4, sigma_min=0.002, sigma_max=700.0, rho=7.0)
    assert_golden(actual, expected, "sample.sigmas")
    assert torch.equal(actual, expected)  # same float32 operations as sgm EDMDiscretization


def test_karras_25_steps_reference_values() -> None:
    sigmas = karras_sigmas(25)
    head = [700.0, 545.73, 421.57, 322.45]
    tail = [0.0248, 0.0079, 0.0020, 0.0]
    assert sigmas[:4].tolist() == pytest.approx(head, abs=5e-3)
    assert sigmas[-4:].tolist() == pytest.approx(tail, abs=5e-5)


def test_karras_rho_one_is_linear() -> None:
    sigmas = karras_sigmas(5, 1.0, 5.0, rho=1.0)
    assert sigmas.tolist() == pytest.approx([5.0, 4.0, 3.0, 2.0, 1.0, 0.0], abs=1e-5)


def test_exponential_is_log_uniform() -> None:
    log_steps = torch.diff(get_schedule("exponential")(6, 0.01, 100.0)[:-1].log())
    assert torch.allclose(log_steps, log_steps[0].expand_as(log_steps), atol=1e-5)


def test_polyexponential_rho_one_is_exponential() -> None:
    a = get_schedule("polyexponential")(8, 0.002, 700.0, rho=1.0)
    b = get_schedule("exponential")(8, 0.002, 700.0)
    assert torch.allclose(a, b, rtol=1e-5)


def test_get_schedule_unknown_lists_choices() -> None:
    with pytest.raises(ConfigError, match="unknown schedule 'nope'.*karras"):
        get_schedule("nope")


@pytest.mark.parametrize(("n", "lo", "hi"), [(0, 0.002, 700.0), (2.5, 0.002, 700.0), (4, 0.0, 700.0), (4, 5.0, 1.0)])
def test_schedule_rejects_bad_parameters(n: object, lo: float, hi: float) -> None:
    with pytest.raises(ConfigError):
        karras_sigmas(n, lo, hi)  # type: ignore[arg-type]


def test_sigmas_for_denoise() -> None:
    sigmas = karras_sigmas(10)
    assert torch.equal(sigmas_for_denoise(sigmas, 1.0), sigmas)
    half = sigmas_for_denoise(sigmas, 0.5)
    assert torch.equal(half, sigmas[5:]) and half.shape == (6,) and half[-1] == 0
    assert torch.equal(sigmas_for_denoise(sigmas, 0.25), sigmas[7:])  # round(2.5) -> 3 (half up)
    assert torch.equal(sigmas_for_denoise(sigmas, 0.01), sigmas[9:])  # never fewer than 1 step
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ConfigError, match="denoise"):
            sigmas_for_denoise(sigmas, bad)
    with pytest.raises(InputError):
        sigmas_for_denoise(sigmas[:1], 0.5)


# ---------------------------------------------------------------------------------------------- scalings


def test_v_scalings_formulas() -> None:
    sigma = torch.tensor([0.002, 0.3, 1.0, 2.5, 700.0])
    c_skip, c_out, c_in, c_noise = v_scalings_edm_cnoise(sigma)
    s = sigma.double()
    assert torch.allclose(c_skip.double(), 1 / (s**2 + 1), rtol=1e-6)
    assert torch.allclose(c_out.double(), -s / torch.sqrt(s**2 + 1), rtol=1e-6)
    assert torch.allclose(c_in.double(), 1 / torch.sqrt(s**2 + 1), rtol=1e-6)
    assert torch.allclose(c_noise.double(), 0.25 * torch.log(s), rtol=1e-6)
    assert all(c.shape == sigma.shape and c.dtype == torch.float32 for c in (c_skip, c_out, c_in, c_noise))
    # Perfect-model identity: D = c_skip x + c_out F with F the v-target gives x0 back.
    x0, eps = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    v = (eps - s * x0) / torch.sqrt(1 + s**2)
    x = x0 + s * eps
    assert torch.allclose(c_skip.double() * x + c_out.double() * v, x0, atol=1e-4)


def test_c_noise_matches_golden_timesteps(golden: dict[str, torch.Tensor]) -> None:
    sigma = torch.tensor([2.5] * 6 + [0.3] * 6)
    assert_golden(v_scalings_edm_cnoise(sigma)[3], golden["unet.timesteps"], "unet.timesteps")


def test_append_dims() -> None:
    sigma = torch.arange(3.0)
    out = append_dims(sigma, 5)
    assert out.shape == (3, 1, 1, 1, 1)
    assert out.data_ptr() == sigma.data_ptr()
    assert append_dims(sigma, 1).shape == (3,)
    with pytest.raises(ShapeError):
        append_dims(torch.zeros(2, 2), 1)


def test_c_noise_range_over_svd_schedule() -> None:
    c_noise = v_scalings_edm_cnoise(karras_sigmas(25)[:-1])[3]
    assert c_noise[0].item() == pytest.approx(0.25 * math.log(700.0), abs=1e-5)
    assert c_noise[-1].item() == pytest.approx(0.25 * math.log(0.002), abs=1e-4)
