"""Reading still images as ComfyUI ``IMAGE`` tensors (Pillow): EXIF orientation, alpha, 16-bit greyscale.

Re-exported by :mod:`.video`; import from there.
"""

from __future__ import annotations

from os import PathLike

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import InputError
from .probe import check_file


def _open_image(path: str | PathLike[str]) -> Image.Image:
    p = check_file(path, "image")
    try:
        image = Image.open(p)
        image.load()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(f"cannot read {p} as an image: Pillow says {exc}") from exc
    return ImageOps.exif_transpose(image)


def _rgba_arrays(image: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """PIL image -> (float32 (H, W, 3) in [0, 1], float32 (H, W) opacity in [0, 1] or None)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        gray = np.clip(np.asarray(image, dtype=np.float32) / 65535.0, 0.0, 1.0)
        return np.repeat(gray[..., None], 3, axis=-1), None
    if image.mode == "F":
        gray = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
        return np.repeat(gray[..., None], 3, axis=-1), None
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        arr = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
        return arr[..., :3], arr[..., 3]
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0, None


def read_image(
    path: str | PathLike[str], *, background: tuple[float, float, float] | None = (1.0, 1.0, 1.0)
) -> torch.Tensor:
    """Read an image file as a ComfyUI ``IMAGE``: float32 ``(1, H, W, 3)`` in ``[0, 1]``.

    EXIF orientation is applied. Transparent images are composited over ``background`` (RGB in ``[0, 1]``,
    white by default); ``background=None`` drops the alpha channel and keeps the stored colours. 16-bit
    greyscale is scaled from 0..65535. For animated files this is the first frame (use :func:`read_video`).
    """
    rgb, alpha = _rgba_arrays(_open_image(path))
    if alpha is not None and background is not None:
        bg = np.asarray(background, dtype=np.float32).reshape(1, 1, 3)
        rgb = rgb * alpha[..., None] + bg * (1.0 - alpha[..., None])
    return torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32))[None]


def read_image_rgba(path: str | PathLike[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Read an image with its alpha channel: ``(rgb (1, H, W, 3), alpha (1, H, W))``, float32 in ``[0, 1]``.

    ``rgb`` is not composited; ``alpha`` is opacity (1 = opaque; all ones when the file has no alpha).
    ComfyUI's ``MASK`` from LoadImage is ``1 - alpha``.
    """
    rgb, alpha = _rgba_arrays(_open_image(path))
    if alpha is None:
        alpha = np.ones(rgb.shape[:2], dtype=np.float32)
    return (
        torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32))[None],
        torch.from_numpy(np.ascontiguousarray(alpha, dtype=np.float32))[None],
    )
