"""A tiny random keyframe-interpolation checkpoint for the tests (a UNet with the 12-channel keyframe input)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from comfyui_svd_lab.svd_model.config import Family
from comfyui_svd_lab.svd_model.nn.model import SVDModel
from comfyui_svd_lab.svd_model.weights.loader import save_bundle
from comfyui_svd_lab.svd_model.weights.tiny import TINY_NAME_MARK, randomize, tiny_config


def make_tiny_keyframe_model(seed: int = 0) -> SVDModel:
    """A tiny random model whose UNet has the keyframe layout (every weight random, none zero)."""
    config = tiny_config(Family.SVD)
    config = replace(config, unet=replace(config.unet, in_channels=3 * config.unet.out_channels))
    return randomize(SVDModel(config), seed).eval()


def write_tiny_keyframe_checkpoint(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write :func:`make_tiny_keyframe_model` in the official single-file layout."""
    meta = {"svd_lab.tiny_random": "true", "svd_lab.note": f"{TINY_NAME_MARK} keyframe-interpolation weights"}
    return save_bundle(make_tiny_keyframe_model(seed), path, meta)
