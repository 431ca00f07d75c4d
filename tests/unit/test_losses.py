"""EDM training loss, weighting and sigma sampling (svd_model.training.losses)."""

from __future__ import annotations

import math

import pytest
import torch

from comfyui_svd_lab.svd_model.diffusion.scalings import append_dims
from comfyui_svd_lab.svd_model.errors import ConfigError, ShapeError
from comfyui_svd_lab.svd_model.training.losses import diffusion_loss, edm_loss, edm_weighting, lognormal_sigmas
from conftest import assert_golden


def test_loss_matches_golden(golden: dict[str, torch.Tensor]) -> None:
    """sgm StandardDiffusionLoss (l2, VWeighting): one sigma per (b t) row."""
    weight = edm_weighting(golden["loss.sigma"])
    per_row = diffusion_loss(golden["loss.denoised"], golden["loss.x0"], weight)
    assert_golden(per_row, golden["loss.per_row"], "loss.per_row")
    assert_golden(per_row.mean().reshape(1), golden["loss.mean"], "loss.mean")


def test_edm_weighting_formula() -> None:
    sigma = torch.rand(100, generator=torch.Generator().manual_seed(0)) * 50 + 1e-3
    assert torch.allclose(edm_weighting(sigma), (sigma**2 + 1) / sigma**2, rtol=1e-6)
    assert torch.allclose(edm_weighting(sigma, 0.5), (sigma**2 + 0.25) / (sigma * 0.5) ** 2, rtol=1e-6)


def test_diffusion_loss_random_data() -> None:
    g = torch.Generator().manual_seed(1)
    d, x0 = torch.randn(4, 3, 5, 6, generator=g), torch.randn(4, 3, 5, 6, generator=g)
    sigma = torch.rand(4, generator=g) * 10 + 0.1
    w = (sigma**2 + 1) / sigma**2
    expected = torch.stack([(w[i] * (d[i] - x0[i]) ** 2).mean() for i in range(4)])
    assert torch.allclose(diffusion_loss(d, x0, edm_weighting(sigma)), expected, rtol=1e-5)
    assert torch.allclose(diffusion_loss(d, x0, 1.0, loss_type="l1"), (d - x0).abs().flatten(1).mean(1))
    assert torch.allclose(diffusion_loss(d, x0, torch.tensor(2.0)), 2 * ((d - x0) ** 2).flatten(1).mean(1))
    with pytest.raises(ConfigError, match="loss type"):
        diffusion_loss(d, x0, 1.0, loss_type="lpips")
    with pytest.raises(ShapeError):
        diffusion_loss(d, x0[:2], 1.0)
    with pytest.raises(ShapeError):
        diffusion_loss(d, x0, torch.ones(3))


def test_per_frame_sigma_two_layouts_agree() -> None:
    """Reference layout (b t, c, h, w) with (b t,) sigmas == package layout (b, t, c, h, w) with (b, t) sigmas."""
    g = torch.Generator().manual_seed(2)
    b, t = 2, 3
    d, x0 = torch.randn(b, t, 4, 2, 2, generator=g), torch.randn(b, t, 4, 2, 2, generator=g)
    sigma = torch.rand(b, t, generator=g) * 5 + 0.1
    rows = diffusion_loss(d.flatten(0, 1), x0.flatten(0, 1), edm_weighting(sigma.flatten()))  # (b t,)
    clips = diffusion_loss(d, x0, edm_weighting(sigma))  # (b,): per-frame weights, mean over (t, c, h, w)
    assert clips.shape == (b,)
    assert torch.allclose(clips, rows.reshape(b, t).mean(1), rtol=1e-5)
    assert torch.allclose(clips.mean(), rows.mean(), rtol=1e-5)


def test_edm_loss_calls_model_on_noised_input() -> None:
    g = torch.Generator().manual_seed(3)
    x0, noise = torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 4, generator=g)
    sigma = torch.tensor([0.5, 4.0])
    seen: dict[str, object] = {}

    def perfect(x: torch.Tensor, s: torch.Tensor, cond: object) -> torch.Tensor:
        seen.update(x=x, sigma=s, cond=cond)
        return x0

    loss = edm_loss(perfect, x0, sigma, noise, "c")
    assert loss.shape == (2,) and torch.all(loss == 0)
    assert torch.allclose(seen["x"], x0 + append_dims(sigma, 3) * noise)  # type: ignore[arg-type]
    assert seen["sigma"] is sigma and seen["cond"] == "c"

    # the identity "denoiser" D = x_noisy has loss w sigma^2 mean(noise^2) = (sigma^2 + 1) mean(noise^2)
    identity = edm_loss(lambda x, s, c: x, x0, sigma, noise, None)
    assert torch.allclose(identity, (sigma**2 + 1) * (noise**2).flatten(1).mean(1), rtol=1e-5)
    loss_2, denoised = edm_loss(perfect, x0, sigma, noise, None, return_denoised=True)
    assert torch.equal(loss_2, loss) and denoised is x0
    per_frame = edm_loss(lambda x, s, c: x, x0, sigma[:, None].expand(2, 3), noise, None)  # (b, t) sigma
    assert per_frame.shape == (2,)
    assert torch.allclose(per_frame, identity, rtol=1e-5)
    with pytest.raises(ShapeError):
        edm_loss(perfect, x0, sigma, noise[:1], None)
    with pytest.raises(ShapeError):
        edm_loss(perfect, x0, torch.ones(3), noise, None)


def test_lognormal_sigmas_seeded() -> None:
    a = lognormal_sigmas(8, 0.7, 1.6, generator=torch.Generator().manual_seed(0))
    b = lognormal_sigmas(8, 0.7, 1.6, generator=torch.Generator().manual_seed(0))
    c = lognormal_sigmas(8, 0.7, 1.6, generator=torch.Generator().manual_seed(1))
    assert a.shape == (8,) and a.dtype == torch.float32 and torch.all(a > 0)
    assert torch.equal(a, b) and not torch.equal(a, c)
    z = torch.randn((8,), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(a, torch.exp(0.7 + 1.6 * z))


def test_lognormal_sigmas_distribution() -> None:
    state = torch.get_rng_state()
    log_sigma = lognormal_sigmas(20000, -1.2, 1.2, generator=torch.Generator().manual_seed(0)).log()
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched
    assert log_sigma.mean().item() == pytest.approx(-1.2, abs=0.05)
    assert log_sigma.std().item() == pytest.approx(1.2, rel=0.03)
    assert math.isfinite(log_sigma.max().item())
    with pytest.raises(ConfigError):
        lognormal_sigmas(0, 0.0, 1.0, generator=torch.Generator())
