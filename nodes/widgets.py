"""Widget specs the node files share, one definition each, so every node offers the same ranges and a saved
workflow's values stay valid everywhere: ``"seed": widgets.seed("Seed of the sampling noise.")``.

Each function returns an INPUT_TYPES entry ``(type, options)``; the options' keys and order are part of
``/object_info`` (tests/node_graphs/test_nodes.py compares them).
"""

from __future__ import annotations

from typing import Any

from ..svd_model.config import VARIANT_DEFAULTS
from .types import MAX_SEED, MAX_SIZE, SVDLAB_MODEL

#: Widget defaults: SVD-XT's reference settings (the most used checkpoint). The loader's `info` output
#: names the loaded variant; its own defaults are in svd_model.config.VARIANT_DEFAULTS.
XT = VARIANT_DEFAULTS["svd_xt"]

Widget = tuple[str, dict[str, Any]]


def model(tooltip: str = "From SVD Lab Checkpoint Loader.") -> Widget:
    return (SVDLAB_MODEL, {"tooltip": tooltip})


def seed(tooltip: str, *, control_after_generate: bool = True) -> Widget:
    """ComfyUI's seed range; with the frontend's randomize/increment control unless told otherwise."""
    options: dict[str, Any] = {"default": 0, "min": 0, "max": MAX_SEED}
    if control_after_generate:
        options["control_after_generate"] = True
    return ("INT", {**options, "tooltip": tooltip})


def size(default: int, tooltip: str, *, minimum: int = 16) -> Widget:
    """A video width / height / side in pixels, in steps of 64 (the official models' multiple)."""
    return ("INT", {"min": minimum, "max": MAX_SIZE, "step": 64, "default": default, "tooltip": tooltip})


def cfg(default: float, tooltip: str) -> Widget:
    """A classifier-free guidance scale (min_cfg / max_cfg)."""
    return ("FLOAT", {"min": 0.0, "max": 30.0, "step": 0.1, "default": default, "tooltip": tooltip})


def steps(default: int, tooltip: str) -> Widget:
    return ("INT", {"default": default, "min": 0, "max": 500, "tooltip": tooltip})


def fps() -> Widget:
    return ("INT", {"default": XT.fps, "min": 1, "max": 240, "tooltip": "Frame-rate conditioning."})


def motion_bucket() -> Widget:
    return ("INT", {"default": XT.motion_bucket_id, "min": 0, "max": 1023,
                    "tooltip": "Amount of motion: higher moves more."})


def cond_aug(tooltip: str) -> Widget:
    return ("FLOAT", {"default": XT.cond_aug, "min": 0.0, "max": 10.0, "step": 0.001, "tooltip": tooltip})
