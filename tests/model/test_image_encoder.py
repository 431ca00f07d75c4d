"""OpenCLIP image encoder: preprocessing parity with kornia / sgm, key layout, golden parity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from comfyui_svd_lab.svd_model.config import ImageEncoderConfig
from comfyui_svd_lab.svd_model.errors import InputError
from comfyui_svd_lab.svd_model.nn.image_encoder import (
    CLIP_MEAN,
    CLIP_STD,
    OpenCLIPVisionTower,
    encode_image,
    preprocess,
    resize_antialiased,
)
from conftest import assert_golden, max_error

PREFIX = "conditioner.embedders.0.open_clip.model.visual."
TINY = ImageEncoderConfig(image_size=224, patch_size=14, width=64, layers=2, mlp_width=256, embed_dim=64, head_width=32)


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.fixture(scope="module")
def tiny_tower() -> OpenCLIPVisionTower:
    torch.manual_seed(0)
    tower = OpenCLIPVisionTower(TINY).eval()
    with torch.no_grad():  # non-trivial LayerNorm affines and biases
        for name, p in tower.named_parameters():
            if p.dim() == 1 and name != "class_embedding":
                p.add_(0.1 * torch.randn_like(p))
    return tower


# --- preprocessing ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hw", [(576, 1024), (1024, 576), (576, 576), (64, 96), (224, 224), (300, 200), (100, 500), (1, 400), (225, 223)]
)
def test_resize_matches_kornia(hw: tuple[int, int]) -> None:
    kornia = pytest.importorskip("kornia")
    x = _rand(2, 3, *hw, seed=hw[0] * 7 + hw[1])
    ours = resize_antialiased(x, (224, 224))
    ref = kornia.geometry.transform.resize(x, (224, 224), interpolation="bicubic", align_corners=True, antialias=True)
    assert ours.shape == (2, 3, 224, 224)
    diff, _ = max_error(ours, ref)
    assert diff <= 1e-6, f"{hw}: max abs diff {diff:.3g} vs kornia"


def test_preprocess_matches_kornia_pipeline() -> None:
    kornia = pytest.importorskip("kornia")
    x = _rand(1, 3, 576, 1024, seed=3)
    ref = kornia.geometry.transform.resize(x, (224, 224), interpolation="bicubic", align_corners=True, antialias=True)
    ref = kornia.enhance.normalize((ref + 1.0) / 2.0, torch.tensor(CLIP_MEAN), torch.tensor(CLIP_STD))
    ours = preprocess(x)
    assert ours.shape == (1, 3, 224, 224) and ours.dtype == torch.float32
    assert max_error(ours, ref)[0] <= 1e-6


def test_preprocess_constant_image_maps_to_normalised_value() -> None:
    x = torch.full((2, 3, 40, 70), 0.5)  # (0.5 + 1) / 2 = 0.75 everywhere; resize keeps a constant image
    out = preprocess(x)
    expected = (0.75 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(out, expected.view(1, 3, 1, 1).expand_as(out), rtol=0, atol=1e-6)


def test_preprocess_half_precision_dtype() -> None:
    x = _rand(1, 3, 96, 160, seed=5)
    out = preprocess(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), preprocess(x), rtol=0, atol=0.05)


@pytest.mark.parametrize(
    "bad",
    [
        torch.zeros(3, 64, 64),  # no batch dim
        torch.zeros(1, 4, 64, 64),  # RGBA
        torch.zeros(1, 64, 64, 3),  # channels last
        torch.zeros(1, 1, 3, 64, 64),  # 5-D
        torch.zeros(1, 3, 64, 64, dtype=torch.uint8),  # integer
    ],
)
def test_preprocess_rejects_bad_input(bad: torch.Tensor) -> None:
    with pytest.raises(InputError, match=r"\(n, 3, H, W\)|RGB|floating"):
        preprocess(bad)


# --- vision tower -------------------------------------------------------------------------------------------


def test_no_normalisation_constants_in_state_dict() -> None:
    keys = set(OpenCLIPVisionTower(TINY).state_dict())
    assert not any("mean" in k or "std" in k for k in keys)


def test_tower_shapes_and_output_not_normalised(tiny_tower: OpenCLIPVisionTower) -> None:
    with torch.no_grad():
        out = encode_image(tiny_tower, _rand(3, 3, 64, 96, seed=1))
    assert out.shape == (3, TINY.embed_dim)
    norms = out.norm(dim=-1)
    assert not torch.allclose(norms, torch.ones_like(norms), atol=1e-2), "embedding must not be L2-normalised"
    assert not torch.allclose(out[0], out[1])


def test_tower_batch_independence(tiny_tower: OpenCLIPVisionTower) -> None:
    x = preprocess(_rand(2, 3, 64, 64, seed=2))
    with torch.no_grad():
        both = tiny_tower(x)
        single = tiny_tower(x[1:])
    torch.testing.assert_close(both[1:], single, rtol=1e-5, atol=1e-5)


def test_tower_bf16_close_to_fp32(tiny_tower: OpenCLIPVisionTower) -> None:
    image = _rand(2, 3, 64, 96, seed=4)
    with torch.no_grad():
        ref = encode_image(tiny_tower, image)
        tower_bf16 = OpenCLIPVisionTower(TINY).to(torch.bfloat16)
        tower_bf16.load_state_dict(tiny_tower.state_dict())
        out = encode_image(tower_bf16, image)
    assert out.dtype == torch.bfloat16
    _, rel = max_error(out.float(), ref)
    assert rel < 0.05, f"bf16 relative error {rel:.3g}"


@pytest.mark.parametrize("bad", [torch.zeros(1, 3, 64, 64), torch.zeros(3, 224, 224), torch.zeros(1, 4, 224, 224)])
def test_tower_rejects_wrong_shape(tiny_tower: OpenCLIPVisionTower, bad: torch.Tensor) -> None:
    with pytest.raises(InputError, match=r"\(n, 3, 224, 224\)"):
        tiny_tower(bad)


def test_full_size_keys_and_shapes_match_official(reference_dir: Path) -> None:
    official = json.loads((reference_dir / "svd_keys.json").read_text())
    expected = {k[len(PREFIX) :]: tuple(v) for k, v in official.items() if k.startswith(PREFIX)}
    assert expected, "no vision-tower keys in svd_keys.json"
    with torch.device("meta"):
        tower = OpenCLIPVisionTower(ImageEncoderConfig())
    ours = {k: tuple(t.shape) for k, t in tower.state_dict().items()}
    assert set(ours) == set(expected), (
        f"missing {sorted(set(expected) - set(ours))[:5]}, unexpected {sorted(set(ours) - set(expected))[:5]}"
    )
    mismatched = {k: (ours[k], expected[k]) for k in ours if ours[k] != expected[k]}
    assert not mismatched, f"shape mismatches: {list(mismatched.items())[:5]}"
    assert tower.config.heads == 16


# --- golden parity ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def golden_tower(golden_dir: Path) -> OpenCLIPVisionTower:
    from safetensors.torch import load_file

    checkpoint = load_file(str(golden_dir / "checkpoint.safetensors"))
    state = {k[len(PREFIX) :]: v for k, v in checkpoint.items() if k.startswith(PREFIX)}
    config = ImageEncoderConfig(
        image_size=224,
        patch_size=14,
        width=64,
        layers=2,
        head_width=64,
        mlp_width=state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        embed_dim=64,
    )
    tower = OpenCLIPVisionTower(config).eval()
    tower.load_state_dict(state, strict=True)
    return tower


def test_golden_preprocess(golden: dict[str, torch.Tensor]) -> None:
    assert_golden(preprocess(golden["cond.image"]), golden["cond.clip_preprocessed"], "cond.clip_preprocessed")


def test_golden_c_crossattn(golden_tower: OpenCLIPVisionTower, golden: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        out = encode_image(golden_tower, golden["cond.image"])  # (1, 64)
    assert_golden(out.reshape(1, 1, -1), golden["cond.c_crossattn"], "cond.c_crossattn")
