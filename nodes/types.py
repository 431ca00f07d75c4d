"""Custom socket types of the pack and small helpers shared by the node classes.

- ``SVDLAB_MODEL``: a :class:`~..svd_model.loader.SVDBundle` (networks + sampling variant + source).
- ``SVDLAB_CONDITIONING``: a :class:`VideoConditioning` (the encoded conditioning frame, both CFG
  branches, the run's :class:`~..svd_model.pipelines.image_to_video.VideoParams` and the frame size).
- ``SVDLAB_CAMERAS``: an :class:`~..svd_model.pipelines.multiview.OrbitCameras` (SV3D camera per frame).
- ``SVDLAB_TEXT``: a :class:`~..svd_model.text_conditioning.TextEncoder` (OpenCLIP text tower + tokenizer).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..svd_model.conditioning import Cond
from ..svd_model.errors import SVDError
from ..svd_model.pipelines.image_to_video import VideoParams

SVDLAB_MODEL = "SVDLAB_MODEL"
SVDLAB_CONDITIONING = "SVDLAB_CONDITIONING"
SVDLAB_CAMERAS = "SVDLAB_CAMERAS"
SVDLAB_TEXT = "SVDLAB_TEXT"

#: Upper bound of seed widgets (ComfyUI's core seed range).
MAX_SEED = 0xFFFFFFFFFFFFFFFF
#: Upper bound of pixel-size widgets.
MAX_SIZE = 4096
@dataclass(frozen=True)
class VideoConditioning:
    """What SVDLab_ImageToVideoConditioning hands to SVDLab_Sampler.

    cond / uncond: the two CFG branches (crossattn (1, 1, d), concat (1, 4, h, w), vector (1, t, adm)), on CPU.
    params: the run's settings; the sampler replaces its sampling fields (sampler, steps, cfg, denoise).
        params.guidance is the recommended per-frame guidance shape (SVD linear, SV3D triangle): the sampler
        uses it when its guidance widget is "auto".
    frame_size: (width, height) of the conditioning frame, equal to (params.width, params.height).
    variant: the sampling variant of the model that encoded it (for messages).
    input_view: SV3D orbits only: the conditioning frame (1, 3, H, W) in [-1, 1], on CPU. The reference writes it
        over the orbit's last frame (the orbit ends where it started); SVDLab_Decode does so when linked.
    """

    cond: Cond
    uncond: Cond
    params: VideoParams
    frame_size: tuple[int, int]
    variant: str
    input_view: Any = None  # torch.Tensor | None (nodes/ other than adapters and bridge import no torch)

    @property
    def num_frames(self) -> int:
        return self.params.num_frames


def _widget_options(node: type, name: str) -> dict[str, Any]:
    """The options dict of input ``name`` in ``node.INPUT_TYPES()`` (required or optional)."""
    types = node.INPUT_TYPES()
    spec = {**types.get("required", {}), **types.get("optional", {})}[name]
    return spec[1] if len(spec) > 1 else {}


def range_problem(node: type, name: str, value: Any) -> str | None:
    """Re-apply a widget's min/max from ``node.INPUT_TYPES()``, and refuse NaN and infinities.

    ComfyUI skips its own range check for every input that VALIDATE_INPUTS declares, so a node that
    declares a numeric input must check the range itself. NaN passes every comparison (and JSON's ``NaN`` /
    ``Infinity`` parse in Python), so a non-finite number is refused before the range is compared.
    Returns a message naming the input, or None when the value is fine.
    Linked inputs arrive as None at validation time and are not checked.
    """
    if value is None:
        return None
    opts = _widget_options(node, name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"input '{name}' must be a number, got {value!r:.60}"
    if not math.isfinite(value):
        return f"input '{name}' must be a finite number, got {value}"
    if "min" in opts and value < opts["min"]:
        return f"{name} = {value} is below the minimum {opts['min']}"
    if "max" in opts and value > opts["max"]:
        return f"{name} = {value} is above the maximum {opts['max']}"
    return None


def number_problem(node: type, **values: Any) -> str | None:
    """The first :func:`range_problem` of the named numeric widget values (INT or FLOAT), or None.

    For VALIDATE_INPUTS: ``number_problem(cls, cfg=cfg, denoise=denoise)`` checks each value is a finite
    number within its widget's min/max (None, a linked input, is skipped).
    """
    for name, value in values.items():
        problem = range_problem(node, name, value)
        if problem:
            return problem
    return None


def size_problem(node: type, width: int | None, height: int | None) -> str | None:
    """For VALIDATE_INPUTS of a node with width / height widgets: their range, and the VAE's factor 8 (official
    models need multiples of 64, checked against the loaded model when the node runs)."""
    for name, value in (("width", width), ("height", height)):
        problem = range_problem(node, name, value)
        if problem:
            return problem
        if value is not None and value % 8:
            return (f"{name} = {value} is not a multiple of 8 (the VAE's factor); official SVD models need "
                    "multiples of 64, checked against the loaded model at run time")
    return None


def config_problem(check: Callable[[Any], object], value: Any) -> str | None:
    """For VALIDATE_INPUTS: the message of the package error (ConfigError, InputError, ...) ``check(value)``
    raises; None when it passes or the value is not known yet (None: the input is linked)."""
    if value is None:
        return None
    try:
        check(value)
    except SVDError as exc:
        return str(exc)
    return None
