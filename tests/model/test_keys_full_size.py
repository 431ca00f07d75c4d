"""Full-size compatibility: for every official variant's key list, infer the config from the shapes,
build the whole model on the meta device, and compare its state dict with the list."""

from __future__ import annotations

import json

import pytest
import torch

from comfyui_svd_lab.svd_model.config import Family, ModelConfig
from comfyui_svd_lab.svd_model.nn.model import SVDModel
from comfyui_svd_lab.svd_model.weights.detect import infer_config, is_ignored_key

VARIANTS = {
    "svd": Family.SVD,
    "svd_xt": Family.SVD,
    "svd_xt_1_1": Family.SVD,
    "svd_image_decoder": Family.SVD,
    "sv3d_u": Family.SV3D_U,
    "sv3d_p": Family.SV3D_P,
}

# The only keys in the official files that the model does not hold: open_clip's text-tower leftovers,
# unused by SVD (sgm deletes the text transformer but keeps these six). The loader ignores them.
TEXT_LEFTOVERS = {
    "conditioner.embedders.0.open_clip.model." + k
    for k in (
        "token_embedding.weight", "positional_embedding", "ln_final.weight", "ln_final.bias",
        "text_projection", "logit_scale",
    )
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_full_size_state_dict_equals_official_list(reference_dir, variant):
    official = {k: tuple(v) for k, v in json.loads((reference_dir / f"{variant}_keys.json").read_text()).items()}
    config = infer_config(official)
    assert config.family is VARIANTS[variant]
    with torch.device("meta"):
        model = SVDModel(config)
    ours = model.official_shapes()
    assert {k for k in official if k not in ours} == TEXT_LEFTOVERS
    assert all(is_ignored_key(k) for k in TEXT_LEFTOVERS)
    assert {k for k in ours if k not in official} == set()
    assert {k: v for k, v in official.items() if k not in TEXT_LEFTOVERS} == ours
    # No buffers: every tensor the model holds is a parameter stored in the official files.
    assert list(model.buffers()) == []


def test_full_size_svd_parameter_counts(reference_dir):
    summary = json.loads((reference_dir / "svd_family_param_summary.json").read_text())["svd"]["groups"]
    with torch.device("meta"):
        model = SVDModel(ModelConfig())
    assert sum(p.numel() for p in model.unet.parameters()) == summary["model.diffusion_model"]["numel"]
    assert sum(p.numel() for p in model.cond_vae.parameters()) == summary["conditioner.embedders.3"]["numel"]
    first = summary["first_stage_model.encoder"]["numel"] + summary["first_stage_model.decoder"]["numel"]
    assert sum(p.numel() for p in model.first_stage.parameters()) == first


def test_default_config_is_the_official_svd(reference_dir):
    official = json.loads((reference_dir / "svd_keys.json").read_text())
    assert infer_config(official) == ModelConfig()
