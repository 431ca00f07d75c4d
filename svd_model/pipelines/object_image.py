"""The input SV3D expects: one object, centred on a square white canvas (reference: 576x576).

The reference script (``simple_video_sample.py``, sv3d) takes an RGBA image, finds the bounding box of the
non-transparent pixels, pastes that crop centred on a transparent square canvas whose side is
max(w, h) / image_frame_ratio (or the input's size without a ratio), resizes to 576x576 and composites on white.
:func:`prepare_object_image` does the same with these differences: the canvas side without a ratio is
max(H, W) of the input (the script uses H, which can clip a wide object), and compositing happens before the
antialiased bicubic resize (equivalent to resizing with premultiplied alpha).

Without alpha the background is estimated: the per-channel median of the border pixels; pixels that differ from
it by more than `tolerance` (any channel) are the object. The canvas is filled with that background colour (a
plain non-white background stays as it is: give an alpha mask to get white).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError, ShapeError

#: Alpha above this counts as object (the reference thresholds 8-bit alpha at > 0).
ALPHA_THRESHOLD = 0.5 / 255.0


def alpha_from_mask(mask: Tensor, marks: str = "background") -> Tensor:
    """Opacity from a mask in [0, 1]: ``marks="background"`` (ComfyUI LoadImage's MASK = 1 - alpha) or "object"."""
    if marks == "background":
        return 1.0 - mask.float()
    if marks == "object":
        return mask.float()
    raise InputError(f"mask marks {marks!r}; choose 'background' or 'object'")


def border_background(image: Tensor) -> Tensor:
    """(3,) per-channel median of the outermost pixel ring of image (3, H, W)."""
    ring = torch.cat([image[:, 0], image[:, -1], image[:, :, 0], image[:, :, -1]], dim=1)  # (3, 2H + 2W)
    return ring.median(dim=1).values


def _bbox(mask: Tensor) -> tuple[int, int, int, int] | None:
    """(top, left, height, width) of the True pixels of mask (H, W), or None when there are none."""
    rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()
    if rows.numel() == 0:
        return None
    top, left = int(rows[0]), int(cols[0])
    return top, left, int(rows[-1]) - top + 1, int(cols[-1]) - left + 1


def _one(rgb: Tensor, alpha: Tensor | None, size: int, object_ratio: float | None, tolerance: float) -> Tensor:
    """rgb (3, H, W) in [0, 1], alpha (H, W) or None -> (3, size, size) in [0, 1]."""
    h_in, w_in = rgb.shape[-2:]
    if alpha is not None:
        background = torch.ones(3, dtype=rgb.dtype, device=rgb.device)  # white
        flat = rgb * alpha + background[:, None, None] * (1.0 - alpha)  # composited on white
        box = _bbox(alpha > ALPHA_THRESHOLD)
        if box is None:
            raise InputError("the alpha mask is empty (fully transparent): no object to centre")
    else:
        background = border_background(rgb)
        flat = rgb
        box = _bbox(((rgb - background[:, None, None]).abs() > tolerance).any(0))
        if box is None:
            box = (0, 0, h_in, w_in)  # a plain image: keep it all
    top, left, h, w = box
    side = max(h, w)
    side = max(side, int(side / object_ratio)) if object_ratio else max(side, h_in, w_in)
    canvas = background[:, None, None].expand(3, side, side).clone()  # (3, side, side)
    y, x = side // 2 - h // 2, side // 2 - w // 2  # the reference's placement
    canvas[:, y : y + h, x : x + w] = flat[:, top : top + h, left : left + w]
    out = F.interpolate(canvas[None], size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return out[0].clamp(0.0, 1.0)


def prepare_object_image(
    image: Tensor,
    size: int = 576,
    object_ratio: float | None = None,
    *,
    alpha: Tensor | None = None,
    tolerance: float = 0.08,
) -> Tensor:
    """(b, 3, H, W) in [-1, 1] (+ optional opacity `alpha` (b, H, W), (1, H, W) or (H, W) in [0, 1])
    -> (b, 3, size, size) in [-1, 1]: the object cropped to its bounding box, centred on a square canvas, resized.

    object_ratio: object size / canvas side (0 < r <= 1); None keeps the input's framing (side = max(H, W)).
    With alpha the canvas is white; without, the border colour (see the module docstring).
    """
    if image.ndim != 4 or image.shape[1] != 3:
        raise ShapeError(f"image must be (b, 3, H, W), got {tuple(image.shape)}")
    if image.shape[0] == 0:
        raise InputError("image batch is empty")
    if not isinstance(size, int) or size < 8:
        raise InputError(f"size must be an integer >= 8, got {size!r}")
    if object_ratio is not None and not 0.0 < object_ratio <= 1.0:
        raise InputError(f"object_ratio must be in (0, 1] (object size / frame size), got {object_ratio}")
    b, _, h, w = image.shape
    rgb = ((image.float() + 1.0) / 2.0).clamp(0.0, 1.0)  # (b, 3, H, W) in [0, 1]
    if alpha is not None:
        alpha = alpha.float()
        alpha = alpha[None] if alpha.ndim == 2 else alpha
        alpha = alpha.expand(b, h, w) if alpha.ndim == 3 and alpha.shape == (1, h, w) else alpha
        if alpha.shape != (b, h, w):
            raise ShapeError(f"alpha must be (b, H, W) = {(b, h, w)}, (1, H, W) or (H, W), got {tuple(alpha.shape)}; "
                             "the mask must have the image's size")
        alpha = alpha.clamp(0.0, 1.0).to(rgb.device)
    frames = [_one(rgb[i], None if alpha is None else alpha[i], size, object_ratio, tolerance) for i in range(b)]
    return torch.stack(frames) * 2.0 - 1.0  # (b, 3, size, size)
