"""Loss log (JSON lines, one record per logged step) and a small loss plot drawn with PIL (no matplotlib)."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ..fsutil import replace_atomic

log = logging.getLogger(__name__)


class LossLog:
    """Appends records to a .jsonl file (when `path` is set) and keeps them in memory.

    On resume, :meth:`truncate_after` drops records past the resumed step (logged after the last checkpoint).
    """

    def __init__(self, path: str | os.PathLike | None) -> None:
        self.path = Path(path) if path is not None else None
        self.records: list[dict[str, Any]] = read_log(self.path) if self.path is not None else []

    def truncate_after(self, step: int) -> None:
        self.records = [r for r in self.records if r.get("step", 0) <= step]
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("".join(json.dumps(r) + "\n" for r in self.records), encoding="utf-8")

    def append(self, record: Mapping[str, Any]) -> None:
        record = dict(record)
        self.records.append(record)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")

    def series(self, key: str = "loss") -> tuple[list[int], list[float]]:
        pairs = [(r["step"], r[key]) for r in self.records if key in r and r[key] is not None]
        return [s for s, _ in pairs], [v for _, v in pairs]


def read_log(path: str | os.PathLike | None) -> list[dict[str, Any]]:
    """Records of a .jsonl loss log; a missing file is empty, a torn last line is skipped."""
    if path is None or not Path(path).is_file():
        return []
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            log.warning("skipping a damaged line in %s", path)
    return out


def smooth(values: Sequence[float], weight: float = 0.9) -> list[float]:
    """Bias-corrected exponential moving average (TensorBoard-style smoothing)."""
    out, acc = [], 0.0
    for n, v in enumerate(values, 1):
        acc = weight * acc + (1 - weight) * v
        out.append(acc / (1 - weight**n))
    return out


def plot_losses(steps: Sequence[int], losses: Sequence[float], *, size: tuple[int, int] = (480, 240),
                title: str = "training loss") -> Image.Image:
    """An RGB chart: raw losses (light), smoothed (dark), log-scale y when the range spans > 20x."""
    width, height = size
    img = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(img)
    left, right, top, bottom = 52, width - 10, 22, height - 24
    draw.rectangle((left, top, right, bottom), outline=(160, 160, 160))
    finite = [(s, v) for s, v in zip(steps, losses, strict=True) if math.isfinite(v)]
    if not finite:
        draw.text((left + 8, top + 8), f"{title}: no data yet", fill=(80, 80, 80))
        return img
    xs, ys = [s for s, _ in finite], [v for _, v in finite]
    use_log = min(ys) > 0 and max(ys) / min(ys) > 20
    tf = math.log10 if use_log else (lambda v: v)
    lo, hi = tf(min(ys)), tf(max(ys))
    hi = hi if hi > lo else lo + 1e-6
    x0, x1 = xs[0], xs[-1] if xs[-1] > xs[0] else xs[0] + 1

    def point(s: float, v: float) -> tuple[float, float]:
        return (left + (s - x0) / (x1 - x0) * (right - left), bottom - (tf(v) - lo) / (hi - lo) * (bottom - top))

    if len(xs) > 1:
        draw.line([point(s, v) for s, v in zip(xs, ys, strict=True)], fill=(170, 200, 235), width=1)
        draw.line([point(s, v) for s, v in zip(xs, smooth(ys), strict=True)], fill=(20, 80, 170), width=2)
    else:
        px, py = point(xs[0], ys[0])
        draw.ellipse((px - 2, py - 2, px + 2, py + 2), fill=(20, 80, 170))
    fmt = "{:.3g}".format
    draw.text((4, top - 4), fmt(max(ys)), fill=(60, 60, 60))
    draw.text((4, bottom - 10), fmt(min(ys)), fill=(60, 60, 60))
    draw.text((left, bottom + 6), f"step {xs[0]}", fill=(60, 60, 60))
    draw.text((right - 70, bottom + 6), f"step {xs[-1]}", fill=(60, 60, 60))
    scale = " (log y)" if use_log else ""
    draw.text((left, 4), f"{title}{scale}: last {fmt(ys[-1])}", fill=(20, 20, 20))
    return img


def image_array(image: Image.Image) -> np.ndarray:
    """A PIL RGB image as (1, H, W, 3) float32 in [0, 1] (ComfyUI's IMAGE layout)."""
    return (np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)[None]


def save_plot(log_: LossLog, path: str | os.PathLike) -> Path:
    return replace_atomic(path, lambda tmp: plot_losses(*log_.series()).save(tmp, format="PNG"))
