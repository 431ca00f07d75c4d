"""Shared helpers of the finetuning tests: a micro model (tiny VAE/CLIP, one-level UNet), synthetic clips, configs,
the micro setup most training test modules start from, and the one-thread fixture of the tiny-model tests.

Tests of tiny models run single-threaded (``_one_thread = one_thread_fixture()`` in the module): the models are
overhead-bound, and on a shared 2-core machine one thread is several times faster than two.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch

from comfyui_svd_lab.svd_model.media.video import write_video
from comfyui_svd_lab.svd_model.nn.model import SVDModel
from comfyui_svd_lab.svd_model.training.cache import LatentCache
from comfyui_svd_lab.svd_model.training.config import config_from_dict
from comfyui_svd_lab.svd_model.training.distributed import DistInfo
from comfyui_svd_lab.svd_model.training.run import ensure_cache
from comfyui_svd_lab.svd_model.weights.loader import SVDBundle, load_bundle, save_bundle
from comfyui_svd_lab.svd_model.weights.tiny import randomize, tiny_config

SIZE = 64  # pixels; latents 8x8
FRAMES = 3  # frames per training window


def micro_config():
    """tiny_config with a one-level UNet (2.1 M parameters): every layer kind, about half the work."""
    c = tiny_config()
    return dataclasses.replace(c, unet=dataclasses.replace(c.unet, channel_mult=(1,), attention_levels=(True,)))


def write_micro_checkpoint(path: Path, seed: int = 0) -> Path:
    model = randomize(SVDModel(micro_config()), seed)
    return save_bundle(model, path, {"svd_lab.tiny_random": "true"})


def clip_frames(index: int, frames: int = 8, size: int = SIZE, width: int | None = None) -> np.ndarray:
    """(t, H, W, 3) float in [0, 1]: a coloured square moving right over a gradient; `index` varies colours."""
    w = width or size
    y, x = np.mgrid[0:size, 0:w].astype(np.float32)
    out = np.zeros((frames, size, w, 3), np.float32)
    for t in range(frames):
        out[t, ..., 0] = 0.2 + 0.3 * x / w
        out[t, ..., 1] = 0.3 + 0.2 * y / size
        out[t, ..., 2] = 0.25 + 0.1 * index
        left = 6 + 3 * t + 4 * index
        out[t, 20:38, left:left + 16] = [0.9, 0.2 + 0.15 * index, 0.1]
    return out


def write_clips(folder: Path, count: int = 4, frames: int = 8, fps: float = 8.0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        paths.append(write_video(torch.from_numpy(clip_frames(i, frames)), folder / f"clip{i}.mp4", fps=fps,
                                 quality=95))
    return paths


def train_config(root: Path, checkpoint: Path, clips: Path | None = None, **overrides: Any):
    """A fast CPU config: 3 frames at 64x64, fp32, no checkpointing, shared cache in root/cache."""
    values: dict[str, Any] = {
        "checkpoint": str(checkpoint), "output_dir": str(root / "out"), "device": "cpu", "steps": 4,
        "batch_size": 1, "precision": "fp32", "gradient_checkpointing": False, "save_every": 0,
        "data": {"folder": str(clips) if clips else "", "num_frames": FRAMES, "fps": 8.0, "width": SIZE,
                 "height": SIZE},
        "cache": {"dir": str(root / "cache"), "dtype": "fp32"},
        "optim": {"lr": 1e-3},
        "lora": {"rank": 4},
    }
    for key, value in overrides.items():
        node = values
        *parents, leaf = key.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return config_from_dict(values)


def one_thread_fixture(scope: str = "module"):
    """An autouse fixture running the tests of a module (scope) on one intra-op thread; assign it in the module,
    e.g. ``_one_thread = one_thread_fixture()``. Module scope also covers the module's own module fixtures."""

    @pytest.fixture(autouse=True, scope=scope)
    def one_thread():
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(before)

    return one_thread


class Micro(NamedTuple):
    root: Path
    checkpoint: Path  # root/models/micro.safetensors
    bundle: SVDBundle
    cache: LatentCache | None  # built from root/clips with train_config(root, ...)'s cache settings


def micro_files(root: Path, clips: int = 0) -> Path:
    """The micro checkpoint in root/models (returned) and `clips` synthetic clips in root/clips."""
    checkpoint = write_micro_checkpoint(root / "models" / "micro.safetensors")
    if clips:
        write_clips(root / "clips", count=clips)
    return checkpoint


def micro_setup(root: Path, clips: int, *, cache: bool = True) -> Micro:
    """micro_files, the loaded micro model and (with `cache`) the latent cache of the clips in root/cache."""
    checkpoint = micro_files(root, clips)
    bundle = load_bundle(checkpoint)
    built = ensure_cache(train_config(root, checkpoint, root / "clips"), bundle, DistInfo()) if cache else None
    return Micro(root, checkpoint, bundle, built)
