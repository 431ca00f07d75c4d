"""A checkpoint whose VAE is partial (any sub-tree of its keys missing) is refused with a CheckpointError that names
the VAE, never a KeyError / IndexError from deep inside detection or model building; and the key knowledge that
detection owns (prefixes, CLIP head widths) is what the converters use."""

from __future__ import annotations

import functools

import pytest
import torch

from comfyui_svd_lab.svd_model.config import Family
from comfyui_svd_lab.svd_model.errors import CheckpointError
from comfyui_svd_lab.svd_model.nn.model import SVDModel, check_keys
from comfyui_svd_lab.svd_model.weights import detect, diffusers_keys
from comfyui_svd_lab.svd_model.weights.detect import FIRST_STAGE_PREFIX, cond_vae_prefix, infer_config
from comfyui_svd_lab.svd_model.weights.tiny import tiny_config


@functools.cache
def _official_shapes(family: Family) -> tuple[tuple[str, tuple[int, ...]], ...]:
    with torch.device("meta"):
        return tuple(SVDModel(tiny_config(family)).official_shapes().items())


def _shapes(family: Family) -> dict[str, tuple[int, ...]]:
    return dict(_official_shapes(family))


def _subtrees(shapes: dict[str, tuple[int, ...]], prefix: str) -> list[str]:
    """Every dotted sub-tree below ``prefix`` down to three levels (``encoder``, ``encoder.down``, ...)."""
    rests = [k[len(prefix):].split(".") for k in shapes if k.startswith(prefix)]
    return sorted({prefix + ".".join(parts[:n]) for parts in rests for n in range(1, min(4, len(parts)))})


CASES = [pytest.param(family, tree, id=f"{family.value}-{tree}")
         for family in (Family.SVD, Family.SV3D_P)
         for prefix in (FIRST_STAGE_PREFIX, cond_vae_prefix(family))
         for tree in _subtrees(_shapes(family), prefix)]


def _load_architecture(shapes: dict[str, tuple[int, ...]]) -> None:
    """What the loader does before reading a weight: infer, build on meta, compare keys and shapes."""
    config = infer_config(shapes)
    with torch.device("meta"):
        model = SVDModel(config)
    check_keys(model.official_shapes(), shapes)


@pytest.mark.parametrize(("family", "tree"), CASES)
def test_a_partial_vae_is_refused_or_a_consistent_smaller_one(family, tree):
    """Without a sub-tree the file either still describes a complete VAE (e.g. one level fewer, or no optional
    post_quant_conv), which then loads strictly, or it is a CheckpointError naming the VAE part: nothing else."""
    shapes = {k: v for k, v in _shapes(family).items() if not k.startswith(tree + ".") and k != tree}
    try:
        _load_architecture(shapes)
    except CheckpointError as exc:
        vae = FIRST_STAGE_PREFIX if tree.startswith(FIRST_STAGE_PREFIX) else cond_vae_prefix(family)
        message = str(exc)
        assert "VAE" in message or vae in message, message  # names the VAE or its keys


def _required(family: Family, tree: str, expect: str) -> object:
    return pytest.param(family, tree, expect, id=f"{family.value}-{tree}")


@pytest.mark.parametrize(("family", "tree", "expect"), [
    _required(Family.SVD, "first_stage_model.encoder.down",
              r"the VAE under 'first_stage_model\.' is incomplete.*encoder\.down"),
    _required(Family.SVD, "first_stage_model.decoder",
              r"first-stage VAE is incomplete: no 'first_stage_model\.decoder'"),
    _required(Family.SV3D_P, "first_stage_model.decoder",  # its only part
              r"missing the first-stage VAE \(no 'first_stage_model\.' keys\)"),
    _required(Family.SVD, "conditioner.embedders.3.encoder.encoder",
              r"conditioning VAE encoder is incomplete: no 'conditioner\.embedders\.3\.encoder\.encoder'"),
    _required(Family.SVD, "conditioner.embedders.3.encoder.quant_conv",
              r"no 'conditioner\.embedders\.3\.encoder\.quant_conv'"),
    _required(Family.SV3D_P, "conditioner.embedders.1.encoder.quant_conv",
              r"no 'conditioner\.embedders\.1\.encoder\.quant_conv'"),
])
def test_required_vae_parts(family, tree, expect):
    shapes = {k: v for k, v in _shapes(family).items() if not k.startswith(tree + ".")}
    with pytest.raises(CheckpointError, match=expect):
        _load_architecture(shapes)


def test_converters_use_the_detected_prefixes_and_head_width_table():
    assert diffusers_keys.SGM_UNET_PREFIX == detect.UNET_PREFIX
    assert diffusers_keys.SGM_FIRST_STAGE_PREFIX == detect.FIRST_STAGE_PREFIX
    assert diffusers_keys.SGM_VISUAL_PREFIX == detect.IMAGE_ENCODER_PREFIX
    assert detect.cond_vae_prefix(Family.SVD) == detect.cond_vae_prefix_at(3) == "conditioner.embedders.3.encoder."
    shapes = _shapes(Family.SVD)
    for width, heads in ((1280, 80), (1024, 64), (64, 64)):
        wide = {**shapes, detect.IMAGE_ENCODER_PREFIX + "conv1.weight": (width, 3, 14, 14)}
        assert detect.infer_image_encoder_config(wide).head_width == heads
