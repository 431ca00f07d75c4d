"""Optical-flow motion score (SVD paper, section 3.1 and appendix C) and SVD's ``motion_bucket_id``.

Flow is OpenCV's Farnebäck (the paper's choice) between luma samples taken ``fps`` times per second
(default 2, as in the paper). Pairs restart at every cut: the first sample of a shot is its first frame
after the transition, so no pair spans a cut or a transition.

**Resolution.** Farnebäck runs on the decode thumbnails (an integer stride of the Y plane) area-scaled
to a short side of ``short_side`` px (48 by default, e.g. 85x48 for 16:9; the paper stores 16-px maps).
Thumbnails keep the coded geometry; the flow is converted to display pixels per axis (pixel aspect and
stride included) before its length is taken. The flow starts from the dominant translation found by phase
correlation, so fast pans (large displacements between samples 0.5 s apart) are measured rather than
lost by Farnebäck's pyramid. Flat, textureless regions report little flow: like the paper's score, ours
is the mean over the whole frame and reads low on flat content.

**Unit: short sides per second** (``"ss/s"``): the mean flow length over the frame, in units of the
display's short side, divided by the time between the two samples. It does not depend on resolution,
pixel aspect or frame rate. A camera panning across one frame height per second (landscape) scores 1.0;
a locked-off shot with small subject motion scores about 0.005-0.03. To compare with the paper's numbers
(pixels of a 16-px-short-side map per 2-fps pair): ``paper = 8 * ss_per_s`` (:func:`to_paper_units`).

**motion_bucket_id.** SVD conditions on an integer 0..255 (127 in the released pipelines' defaults) derived
from this kind of score; Stability AI never published the mapping. Ours is logarithmic around a
calibration point: ``bucket = 127 + slope * log2(score / reference)``, clipped to 0..255, with defaults
``reference = 0.08 ss/s`` (a steady slow pan or walking subject: 127) and ``slope = 32`` (each doubling of
motion adds 32; 0.32 ss/s -> 191, 1.28 ss/s -> 255, 0.02 ss/s -> 63, static ~0.003 -> 0).
:meth:`MotionCalibration.from_scores` refits it to a dataset: its median maps to 127 and its
``high_percentile`` to 239, so conditioning covers the real range of the data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from ..errors import ConfigError, InputError

UNIT = "ss/s"


@dataclass(frozen=True)
class MotionConfig:
    """Sampling rate, flow resolution and Farnebäck parameters (OpenCV's argument names)."""

    fps: float = 2.0
    short_side: int = 48
    pyr_scale: float = 0.5
    levels: int = 3
    winsize: int = 9
    iterations: int = 3
    poly_n: int = 5
    poly_sigma: float = 1.1

    def __post_init__(self) -> None:
        if not self.fps > 0 or self.short_side < 8:
            raise ConfigError(f"MotionConfig needs fps > 0 and short_side >= 8, got {self.fps}, {self.short_side}")


def to_paper_units(score: float) -> float:
    """Short sides per second -> pixels of a 16-px short side per 0.5 s (the paper's 2-fps, 16-px maps)."""
    return score * 16 * 0.5


def flow_size(luma_shape: tuple[int, int], short_side: int) -> tuple[int, int]:
    """(width, height) of the flow images: decode thumbnails (h, w) scaled so the short side is ``short_side``
    (never enlarged)."""
    h, w = luma_shape
    s = min(1.0, short_side / max(1, min(h, w)))
    return max(8, round(w * s)), max(8, round(h * s))


def flow_thumb(luma: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 (h, w) -> uint8 flow image of ``size`` (width, height), area-averaged."""
    if (luma.shape[1], luma.shape[0]) == size:
        return np.ascontiguousarray(luma)
    return cv2.resize(luma, size, interpolation=cv2.INTER_AREA)


_WINDOWS: dict[tuple[int, int], np.ndarray] = {}


def _global_shift(prev: np.ndarray, cur: np.ndarray) -> tuple[float, float]:
    """Dominant translation from ``prev`` to ``cur`` (px) by phase correlation (Hanning window)."""
    key = prev.shape
    if key not in _WINDOWS:
        _WINDOWS[key] = cv2.createHanningWindow((prev.shape[1], prev.shape[0]), cv2.CV_32F)
    (dx, dy), _ = cv2.phaseCorrelate(prev.astype(np.float32), cur.astype(np.float32), _WINDOWS[key])
    return dx, dy


def flow_magnitude(
    prev: np.ndarray, cur: np.ndarray, dt: float, scale: tuple[float, float], short: float, cfg: MotionConfig
) -> float:
    """Mean Farnebäck flow length between two uint8 luma images, in display short sides per second.

    The flow starts from the dominant translation (phase correlation), so pans faster than Farnebäck's
    pyramid can follow are still measured. ``scale``: display pixels per image pixel along (x, y);
    ``short``: display short side (px); ``dt``: seconds between the images.
    """
    if dt <= 0:
        raise InputError(f"flow needs samples in time order, got dt={dt}")
    dx, dy = _global_shift(prev, cur)
    init = np.empty((*prev.shape, 2), np.float32)  # (h w 2) px
    init[..., 0], init[..., 1] = dx, dy
    flow = cv2.calcOpticalFlowFarneback(prev, cur, init, cfg.pyr_scale, cfg.levels, cfg.winsize, cfg.iterations,
                                        cfg.poly_n, cfg.poly_sigma, cv2.OPTFLOW_USE_INITIAL_FLOW)  # fmt: skip
    fx = flow[..., 0] * scale[0]
    fy = flow[..., 1] * scale[1]
    return float(np.sqrt(fx * fx + fy * fy).mean()) / short / dt


@dataclass
class MotionTrack:
    """Streaming 2-fps sampler: :meth:`process` frames whose cut status is final; pairs never cross events.

    ``get_luma(i)`` returns the decode thumbnail of frame ``i`` (it must still be available).
    """

    cfg: MotionConfig
    scale: tuple[float, float]  # display px per flow-image px (x, y)
    short: float  # display short side, px
    size: tuple[int, int]  # flow image (width, height)
    pairs: list[tuple[int, int, float, float, float]] = field(default_factory=list)  # i0, i1, t0, t1, magnitude

    def __post_init__(self) -> None:
        self.pos = 0  # next frame that may be sampled
        self.last: tuple[int, float, np.ndarray] | None = None
        self.grid: tuple[float, int] = (0.0, 0)  # (time of the shot's first sample, samples since)

    def process(
        self,
        upto: int,
        times: np.ndarray,
        events: Sequence[tuple[int, int, bool]],
        get_luma: Callable[[int], np.ndarray],
    ) -> None:
        """Sample frames in [pos, upto); ``events``: sorted ``(start, end inclusive, is_hard)`` transitions."""
        step = 1.0 / self.cfg.fps
        while self.pos < upto:
            if self.last is None:
                j = self.pos
            else:  # the frame nearest to the next point of the shot's sampling grid
                target = self.grid[0] + (self.grid[1] + 1) * step
                j = max(self.pos, int(np.searchsorted(times[:upto], target)))
                if j >= upto:
                    if upto < len(times):  # the next frame may be nearer: wait for it
                        return
                    j = upto - 1
                    if j < self.pos or times[j] - self.last[1] < 0.75 * step:
                        self.pos = upto  # the video ends before the next sample is due
                        return
                if j - 1 >= self.pos and abs(times[j - 1] - target) <= abs(times[j] - target):
                    j -= 1
            restart = self._restart(events, self.last[0] if self.last else None, j)
            if restart is not None:
                self.last, self.pos = None, restart
                continue
            thumb = flow_thumb(get_luma(j), self.size)
            t = float(times[j])
            if self.last is not None:
                i0, t0, prev = self.last
                mag = flow_magnitude(prev, thumb, t - t0, self.scale, self.short, self.cfg)
                self.pairs.append((i0, j, t0, t, mag))
                self.grid = (self.grid[0], self.grid[1] + 1)
            else:
                self.grid = (t, 0)
            self.last = (j, t, thumb)
            self.pos = j + 1

    @staticmethod
    def _restart(events: Sequence[tuple[int, int, bool]], i0: int | None, i1: int) -> int | None:
        """Where sampling must restart if a transition lies between i0 and i1 (or covers i1 when i0 is
        None); None when the pair (or the fresh sample) is clean."""
        for start, end, hard in events:
            if start > i1:
                break
            if hard:
                if i0 is not None and i0 < start:
                    return start  # the new shot begins at the cut frame
            elif end >= (i1 if i0 is None else i0 + 1):
                return end + 1  # after the fade / dissolve
        return None


# ----------------------------------------------------------------------------------------------- buckets


@dataclass(frozen=True)
class MotionCalibration:
    """``bucket = 127 + slope * log2(score / reference)`` clipped to 0..255 (score in ss/s)."""

    reference: float = 0.08
    slope: float = 32.0

    def __post_init__(self) -> None:
        if not self.reference > 0 or not self.slope > 0:
            raise ConfigError(f"MotionCalibration needs reference > 0 and slope > 0, got {self}")

    @classmethod
    def from_scores(cls, scores: Sequence[float] | np.ndarray, *, high_percentile: float = 95.0) -> MotionCalibration:
        """Fit to a dataset: median -> 127, ``high_percentile`` -> 239 (NaN and non-positive scores ignored)."""
        values = np.asarray(scores, np.float64)
        values = values[np.isfinite(values) & (values > 0)]
        if values.size < 2:
            raise InputError(f"need at least 2 positive motion scores to calibrate, got {values.size}")
        ref = float(np.median(values))
        high = float(np.percentile(values, high_percentile))
        ratio = math.log2(high / ref) if high > ref else 0.0
        return cls(reference=ref, slope=112.0 / ratio if ratio > 1e-6 else cls.slope)


def motion_bucket_id(score: float, calibration: MotionCalibration | None = None) -> int:
    """SVD ``motion_bucket_id`` (0..255) for a motion score in short sides per second (NaN -> 127)."""
    cal = calibration or MotionCalibration()
    if not math.isfinite(score):
        return 127
    if score <= 0:
        return 0
    return int(min(255, max(0, round(127 + cal.slope * math.log2(score / cal.reference)))))
