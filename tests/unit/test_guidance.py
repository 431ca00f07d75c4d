"""Per-frame guidance scales and the CFG denoiser combinator (svd_model.guidance)."""

from __future__ import annotations

import pytest
import torch

from comfyui_svd_lab.svd_model.diffusion.guidance import (
    FRAME_GUIDANCE,
    cfg_denoiser,
    constant_frame_scales,
    frame_scales,
    linear_frame_scales,
    triangle_frame_scales,
)
from comfyui_svd_lab.svd_model.diffusion.sampling import sample_euler
from comfyui_svd_lab.svd_model.diffusion.scalings import append_dims
from comfyui_svd_lab.svd_model.diffusion.schedules import karras_sigmas
from comfyui_svd_lab.svd_model.errors import ConfigError, ShapeError
from conftest import assert_golden


def test_linear_matches_golden(golden: dict[str, torch.Tensor]) -> None:
    scales = linear_frame_scales(1.0, 2.5, 6)
    assert_golden(scales[None], golden["sample.guider_scale"], "sample.guider_scale")
    assert torch.equal(scales[None], golden["sample.guider_scale"])


def test_linear_endpoints() -> None:
    scales = linear_frame_scales(1.5, 3.0, 25)
    assert scales.shape == (25,) and scales.dtype == torch.float32
    assert scales[0].item() == 1.5 and scales[-1].item() == 3.0
    assert torch.allclose(torch.diff(scales), torch.full((24,), 0.0625))
    assert linear_frame_scales(1.0, 2.5, 1).tolist() == [1.0]


def test_triangle_odd_frames_peaks_in_the_middle() -> None:
    scales = triangle_frame_scales(1.0, 2.5, 21)
    assert scales.shape == (21,)
    assert scales[10].item() == pytest.approx(2.5)
    assert int(scales.argmax()) == 10
    assert scales[0].item() == pytest.approx(1.0) and scales[-1].item() == pytest.approx(1.0)
    assert scales[1].item() == pytest.approx(1.15)
    assert torch.allclose(scales, scales.flip(0))


def test_triangle_even_frames_never_reach_max() -> None:
    scales = triangle_frame_scales(1.0, 2.5, 10)
    rising = [1.0, 4 / 3, 5 / 3, 2.0, 7 / 3]
    expected = rising + rising[::-1]
    assert scales.tolist() == pytest.approx(expected, abs=1e-6)
    assert scales.max().item() < 2.5


def test_constant() -> None:
    assert constant_frame_scales(3.0, 4).tolist() == [3.0] * 4
    assert frame_scales("constant", 1.0, 2.5, 3).tolist() == [2.5] * 3


def test_frame_scales_table() -> None:
    assert set(FRAME_GUIDANCE) >= {"linear", "triangle", "constant"}
    assert torch.equal(frame_scales("linear", 1.0, 2.5, 14), linear_frame_scales(1.0, 2.5, 14))
    assert torch.equal(frame_scales("triangle", 1.0, 2.5, 21), triangle_frame_scales(1.0, 2.5, 21))
    with pytest.raises(ConfigError, match="unknown frame guidance 'sine'.*linear"):
        frame_scales("sine", 1.0, 2.5, 14)
    for bad in (0, -1, 2.0):
        with pytest.raises(ConfigError, match="frames"):
            frame_scales("linear", 1.0, 2.5, bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- cfg


class ToyModel:
    """model(x, sigma, c) = c * x + sigma, with c one factor per video; records the batches it sees."""

    def __init__(self) -> None:
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        self.calls.append((x, sigma, c))
        return append_dims(c, x.ndim) * x + append_dims(sigma, x.ndim)


def _cat(uncond: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    return torch.cat([uncond, cond])


def test_cfg_denoiser_math_single_batched_call() -> None:
    b, t = 2, 5
    x, sigma = torch.randn(b, t, 3, 4, 4), torch.tensor([2.0, 0.5])
    cond, uncond = torch.tensor([3.0, -1.0]), torch.tensor([0.5, 0.25])
    scales = linear_frame_scales(1.0, 2.5, t)
    model = ToyModel()
    out = cfg_denoiser(model, cond, uncond, scales, cat=_cat)(x, sigma)

    assert len(model.calls) == 1
    x_in, sigma_in, c_in = model.calls[0]
    assert x_in.shape == (2 * b, t, 3, 4, 4) and torch.equal(x_in[:b], x) and torch.equal(x_in[b:], x)
    assert torch.equal(sigma_in, torch.cat([sigma, sigma]))
    assert torch.equal(c_in, torch.tensor([0.5, 0.25, 3.0, -1.0]))  # [uncond, cond]

    d_u = append_dims(uncond, 5) * x + append_dims(sigma, 5)
    d_c = append_dims(cond, 5) * x + append_dims(sigma, 5)
    expected = d_u + scales.reshape(1, t, 1, 1, 1) * (d_c - d_u)
    assert out.shape == x.shape
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.allclose(out[:, 0], d_c[:, 0], atol=1e-6)  # scale 1.0 at frame 0 -> pure cond


def test_cfg_denoiser_all_ones_skips_uncond() -> None:
    b, t = 2, 4
    x, sigma = torch.randn(b, t, 3, 2, 2), torch.tensor([1.0, 3.0])
    cond, uncond = torch.tensor([2.0, -3.0]), torch.tensor([0.0, 0.0])

    def never(u: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        raise AssertionError("cat must not be called when every scale is 1")

    model = ToyModel()
    fast = cfg_denoiser(model, cond, uncond, torch.ones(t), cat=never)(x, sigma)
    assert len(model.calls) == 1 and model.calls[0][0].shape == x.shape
    assert torch.equal(model.calls[0][2], cond)

    # the same result as the full two-branch formula with scales of exactly one
    d_u = append_dims(uncond, 5) * x + append_dims(sigma, 5)
    d_c = append_dims(cond, 5) * x + append_dims(sigma, 5)
    assert torch.allclose(fast, d_u + 1.0 * (d_c - d_u), atol=1e-6)
    assert torch.allclose(cfg_denoiser(ToyModel(), cond, uncond, 1.0, cat=never)(x, sigma), fast)


def test_cfg_denoiser_scalar_scale() -> None:
    x, sigma = torch.randn(1, 3, 2), torch.tensor([1.0])
    cond, uncond = torch.tensor([2.0]), torch.tensor([1.0])
    out = cfg_denoiser(ToyModel(), cond, uncond, 3.0, cat=_cat)(x, sigma)
    assert torch.allclose(out, (1.0 * x + 1.0) + 3.0 * (x * 2.0 - x * 1.0), atol=1e-6)


def test_cfg_denoiser_frame_mismatch() -> None:
    guided = cfg_denoiser(ToyModel(), torch.tensor([1.0]), torch.tensor([0.0]), linear_frame_scales(1, 2, 6), cat=_cat)
    with pytest.raises(ShapeError, match="6 frame scales"):
        guided(torch.randn(1, 5, 2), torch.tensor([1.0]))
    with pytest.raises(ShapeError):
        cfg_denoiser(ToyModel(), torch.tensor([1.0]), torch.tensor([0.0]), torch.ones(2, 3) * 2, cat=_cat)


def test_cfg_denoiser_keeps_model_dtype() -> None:
    def model(x: torch.Tensor, sigma: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return (x * append_dims(c, x.ndim)).to(torch.bfloat16)

    guided = cfg_denoiser(model, torch.tensor([2.0]), torch.tensor([1.0]), linear_frame_scales(1, 2, 3), cat=_cat)
    assert guided(torch.randn(1, 3, 2), torch.tensor([1.0])).dtype == torch.bfloat16


def test_cfg_denoiser_drives_a_sampler() -> None:
    model = ToyModel()
    guided = cfg_denoiser(
        lambda x, s, c: model(x, s, c) * 0.0 + append_dims(c, x.ndim) * 0.1,  # denoised = 0.1 * c
        torch.tensor([1.0]),
        torch.tensor([0.0]),
        linear_frame_scales(1.0, 2.0, 3),
        cat=_cat,
    )
    out = sample_euler(guided, torch.randn(1, 3, 2, 2), karras_sigmas(4, 0.002, 10.0))
    # last Euler step lands on the guided estimate: 0 + s[t] * (0.1 - 0)
    assert torch.allclose(out, torch.tensor([0.1, 0.15, 0.2]).reshape(1, 3, 1, 1).expand(1, 3, 2, 2), atol=1e-5)
    assert len(model.calls) == 4
