"""Custom socket types of the pack and small helpers shared by the node classes.

- ``SVDLAB_MODEL``: a :class:`~..svd_model.loader.SVDBundle` (networks + sampling variant + source).
- ``SVDLAB_CONDITIONING``: a :class:`VideoConditioning` (the encoded conditioning frame, both CFG
  branches, the run's :class:`~..svd_model.pipelines.image_to_video.VideoParams` and the frame size).
- ``SVDLAB_CAMERAS``: an :class:`~..svd_model.pipelines.multiview.OrbitCameras` (SV3D camera per frame).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..svd_model.conditioning import Cond
from ..svd_model.pipelines.image_to_video import VideoParams

SVDLAB_MODEL = "SVDLAB_MODEL"
SVDLAB_CONDITIONING = "SVDLAB_CONDITIONING"
SVDLAB_CAMERAS = "SVDLAB_CAMERAS"

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


def range_problem(node: type, name: str, value: Any) -> str | None:
    """Re-apply a widget's min/max from ``node.INPUT_TYPES()``.

    ComfyUI skips its own range check for every input that VALIDATE_INPUTS declares, so a node that
    declares a numeric input must check the range itself. Returns a message, or None when in range.
    Linked inputs arrive as None at validation time and are not checked.
    """
    if value is None:
        return None
    spec = {**node.INPUT_TYPES().get("required", {}), **node.INPUT_TYPES().get("optional", {})}[name]
    opts = spec[1] if len(spec) > 1 else {}
    if "min" in opts and value < opts["min"]:
        return f"{name} = {value} is below the minimum {opts['min']}"
    if "max" in opts and value > opts["max"]:
        return f"{name} = {value} is above the maximum {opts['max']}"
    return None
