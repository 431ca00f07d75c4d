"""The perceptual hash of a clip (the model-free near-duplicate signal of dedup.py), computed in the workers.

Apart from dedup.py, which works on the merged manifest in the driver and imports pyarrow: a curation worker
imports only this (numpy and OpenCV), so its first video does not pay pyarrow's import (about 0.15 s).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InputError

log = logging.getLogger(__name__)

#: The key of the hash in a row's ``extra`` JSON (16 hex digits).
HASH_KEY = "phash"
_HASH_SIDE, _DCT_SIDE = 32, 8


def perceptual_hash(frame: np.ndarray) -> str:
    """A 64-bit DCT hash of an RGB uint8 (H, W, 3) frame, as 16 hex digits.

    Grey (BT.601 weights), area-averaged down to 32x32, 2-D DCT; bit i is set when the i-th of the 8x8
    lowest-frequency coefficients (row-major) is above their median (DC excluded from the median).
    Re-encoding and resizing flip a few bits (0-4), 5 % crops ~6-12, different scenes about half.
    OpenCV, not kornia: the hash runs once per clip in every worker, and kornia's antialiased resize blurs with a
    kernel as wide as the downscale factor (~0.3 s for a 512 px frame) where a box average (INTER_AREA) is the
    exact low-pass a 32x32 hash needs (~0.1 ms), with no tensors involved.
    """
    import cv2

    if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        shape = getattr(frame, "shape", None)
        raise InputError(f"perceptual_hash needs an RGB uint8 (H, W, 3) frame, got {type(frame).__name__} {shape}")
    grey = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY).astype(np.float32)  # (H, W)
    small = cv2.resize(grey, (_HASH_SIDE, _HASH_SIDE), interpolation=cv2.INTER_AREA)  # (32, 32)
    coeffs = cv2.dct(small)[:_DCT_SIDE, :_DCT_SIDE].reshape(-1)  # (64,)
    bits = coeffs > np.median(coeffs[1:])
    return f"{int(np.packbits(bits).view('>u8')[0]):016x}"


def hamming(a: str, b: str) -> int:
    """Differing bits of two hashes from :func:`perceptual_hash` (0..64)."""
    return (int(a, 16) ^ int(b, 16)).bit_count()


def add_hashes(records: Sequence[Any], cache: Any) -> None:
    """Store the perceptual hash of each ok record's middle keyframe in its row's ``extra`` JSON (``phash``).
    ``records``: ClipRecords of one video; ``cache``: their KeyframeCache. A failure leaves the hash out and logs
    it (the clip then takes part in the dedup by its embedding only)."""
    for rec in records:
        if not rec.ok:
            continue
        try:
            frames = cache.get(rec)
            digest = perceptual_hash(frames[len(frames) // 2])
        except (ValueError, OSError, InputError, RuntimeError) as exc:
            log.info("clip %s: no perceptual hash (%s)", rec.clip_id, exc)
            continue
        extra = json.loads(rec.row.get("extra") or "{}")
        extra[HASH_KEY] = digest
        rec.row["extra"] = json.dumps(extra)
