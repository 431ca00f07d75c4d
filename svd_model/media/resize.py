"""Scale-to-cover and centre-crop: the one resize of conditioning images (nodes, CLI, training validation) and
the geometry the video reader's ``resize_mode="cover"`` uses.

The resize is antialiased bilinear, as core ComfyUI's SVD_img2vid_Conditioning scales its image
(``common_upscale(..., "center")``), so a frame conditioned through the nodes, the CLI or a training run's
validation is the same frame.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..errors import ShapeError


def cover_box(width: int, height: int, target_width: int, target_height: int) -> tuple[int, int, int, int]:
    """``(scaled_width, scaled_height, left, top)``: the size that covers the target at the source's aspect ratio
    (never smaller than the target) and the offset of the centred target-sized crop inside it."""
    scale = max(target_width / width, target_height / height)
    sw, sh = max(target_width, round(width * scale)), max(target_height, round(height * scale))
    return sw, sh, (sw - target_width) // 2, (sh - target_height) // 2


def resize_cover(frames: Tensor, width: int, height: int) -> Tensor:
    """(n, c, H, W) in [-1, 1] -> (n, c, height, width): scaled to cover the target, centre-cropped, clamped to
    [-1, 1]. Returned unchanged when it already has the size."""
    if frames.ndim != 4:
        raise ShapeError(f"frames must be (n, channels, height, width), got {tuple(frames.shape)}")
    h, w = frames.shape[-2:]
    if (h, w) == (height, width):
        return frames
    sw, sh, left, top = cover_box(w, h, width, height)
    resized = F.interpolate(frames, size=(sh, sw), mode="bilinear", antialias=True, align_corners=False)
    return resized[..., top : top + height, left : left + width].clamp(-1.0, 1.0)
