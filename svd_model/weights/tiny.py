"""Tiny random-weight models in the official layout, for tests, demos and machines without real weights.

They have the same structure as the full-size checkpoints (every key pattern, temporal layers, both
VAEs, the CLIP tower), only narrower and shallower; their outputs are meaningless noise.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from ..config import Family, ImageEncoderConfig, ModelConfig, UNetConfig, VAEConfig, vector_width
from ..diffusion.noise import randn
from ..nn.model import SVDModel
from .loader import save_bundle

TINY_NAME_MARK = "TINY-RANDOM"


def tiny_config(family: Family = Family.SVD, *, image_decoder: bool = False) -> ModelConfig:
    """A small config of the given family: UNet 64 channels x 2 levels, VAE 32 channels, CLIP width 64."""
    sv3d = family is not Family.SVD
    return ModelConfig(
        family=family,
        unet=UNetConfig(
            model_channels=64, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(True, False),
            context_dim=64, adm_in_channels=vector_width(family),
        ),
        first_stage=VAEConfig(
            ch=32, ch_mult=(1, 1, 1, 1), num_res_blocks=1, has_encoder=not sv3d,
            has_quant_conv=image_decoder, has_post_quant_conv=image_decoder,
            temporal_decoder=not (sv3d or image_decoder),
        ),
        cond_vae=VAEConfig(
            ch=32, ch_mult=(1, 1, 1, 1), num_res_blocks=1, has_quant_conv=True, has_post_quant_conv=True,
            temporal_decoder=False,
        ),
        image_encoder=ImageEncoderConfig(width=64, layers=2, mlp_width=256, embed_dim=64, head_width=64),
    )


@torch.no_grad()
def randomize(model: SVDModel, seed: int = 0) -> SVDModel:
    """Seeded O(1)-output initialisation (like the golden set's): norms near 1, mixers random,
    matrices scaled by 1/sqrt(fan_in), so that no zero-initialised layer hides a code path."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        r = randn(p.shape, gen, what="randomize")
        leaf = name.rsplit(".", 1)[-1]
        is_norm = any(s in name for s in ("norm", "ln_")) and p.ndim == 1
        if name.endswith("mix_factor"):
            p.copy_(r)
        elif is_norm and leaf == "weight":
            p.copy_(1 + 0.1 * r)
        elif p.ndim < 2:
            p.copy_(0.1 * r)
        else:
            p.copy_(r / math.sqrt(p.numel() / p.shape[0]))
    return model


def make_tiny_model(family: Family = Family.SVD, seed: int = 0, *, image_decoder: bool = False) -> SVDModel:
    return randomize(SVDModel(tiny_config(family, image_decoder=image_decoder)), seed).eval()


def write_tiny_checkpoint(
    path: str | os.PathLike, family: Family = Family.SVD, seed: int = 0, *, image_decoder: bool = False
) -> Path:
    """Write a tiny random checkpoint in the official single-file layout; metadata marks it as such."""
    model = make_tiny_model(family, seed, image_decoder=image_decoder)
    meta = {"svd_lab.tiny_random": "true", "svd_lab.note": f"{TINY_NAME_MARK} weights: for tests and demos only"}
    return save_bundle(model, path, meta)
