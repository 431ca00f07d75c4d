"""Signal helpers for :mod:`.cuts`: per-frame features, and localising a proposed transition on full-rate
frames (pure functions).

* :func:`fade_span`: a fade through a dark frame, from the per-frame mean luma ``mu``.
* :func:`dissolve_fit`: progress ``a_j`` of every frame from the picture before (A) to the one after (B)
  the transition, the span where it rises, and the evidence that the frames are blends of A and B.

Spans are found with :func:`ramp`: the longest run around a centre where a signal keeps rising on both
sides of each frame by more than ``delta``, then trimmed of end frames that only drift (a step under 15% of
the run's steepest one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

HIST_BINS = 32  # Y 16 + U 8 + V 8
MAX_ITERATIONS = 8  # re-fits of the dissolve with the references moved to the span's ends
STEPS = 8  # the coherence test looks at about this many steps along a transition
DRIFT_FACTOR = 2.0  # a fade's luma steps exceed this many times the content's median luma drift per frame


def ramp(x: np.ndarray, j: int, lo: int, hi: int, delta: float, *, direction: int) -> int:
    """Walk from ``j`` (-1: left, +1: right) over frames of ``x`` that lie strictly inside a rise: frame
    ``i`` joins when ``x[i] - x[i-1] > delta`` and ``x[i+1] - x[i] > delta`` (``x`` rises to the right);
    return the last frame reached within ``lo..hi``."""
    pos = j
    while lo <= pos + direction <= hi:
        i = pos + direction
        if x[i] - x[i - 1] <= delta if i - 1 >= lo else False:
            break
        if i + 1 <= hi and x[i + 1] - x[i] <= delta:
            break
        pos = i
    return pos


def _span(x: np.ndarray, j: int, lo: int, hi: int, delta: float) -> tuple[int, int]:
    """The rise of ``x`` around ``j`` (see :func:`ramp`), then trimmed: an end frame whose step from the
    outside is under 15% of the steepest step is a slow drift next to the transition, not part of it."""
    a = ramp(x, j, lo, hi, delta, direction=-1)
    b = ramp(x, j, lo, hi, delta, direction=+1)
    left, right = max(lo, a - 1), min(hi, b + 1)
    steps = np.diff(x[left : right + 1])
    if steps.size:
        keep = 0.15 * float(steps.max())
        while a < j and (x[a] - x[a - 1] if a > lo else x[a + 1] - x[a]) < keep:
            a += 1
        while b > j and (x[b + 1] - x[b] if b < hi else x[b] - x[b - 1]) < keep:
            b -= 1
    return a, b


def fade_span(mu: np.ndarray, lo: int, hi: int, lo_w: int, hi_w: int, black: float) -> tuple[int, int, int] | None:
    """A fade whose darkest frame is near ``lo..hi``: ``(first, last, darkest)`` or None.

    The darkest frame (a local minimum of ``mu`` reached by descent) must be at most ``black``; the
    span extends on each side while the picture keeps brightening away from it faster than the content's
    own brightness drifts: each step must exceed ``DRIFT_FACTOR`` times the median |step| of ``mu`` over
    ``lo_w..hi_w`` (at least 0.2 levels), so a slow brightness ramp next to a fade or a dip (a sunset, an
    exposure change) does not join it.
    """
    lo, hi = max(lo, lo_w), min(hi, hi_w)
    j = lo + int(np.argmin(mu[lo : hi + 1]))
    while True:
        if j > lo_w and mu[j - 1] < mu[j]:
            j -= 1
        elif j < hi_w and mu[j + 1] < mu[j]:
            j += 1
        else:
            break
    dark = float(mu[j])
    if dark > black:
        return None
    steps = np.abs(np.diff(np.asarray(mu[lo_w : hi_w + 1], np.float64)))
    delta = max(0.2, DRIFT_FACTOR * float(np.median(steps))) if steps.size else 0.2
    flat = max(0.5, 0.05 * dark, min(delta, 0.25 * black))  # the dark plateau: e.g. the last frame out, first in
    j0 = j1 = j
    while j0 - 1 >= lo_w and mu[j0 - 1] <= dark + flat:
        j0 -= 1
    while j1 + 1 <= hi_w and mu[j1 + 1] <= dark + flat:
        j1 += 1
    a = _span(-np.asarray(mu, np.float64), j0, lo_w, j0, delta)[0]  # fade-out: mu falls towards the dark frame
    b = _span(np.asarray(mu, np.float64), j1, j1, hi_w, delta)[1]  # fade-in: mu rises after it
    return a, b, j


@dataclass(frozen=True)
class DissolveFit:
    """``first..last``: the span; ``middle``: first frame with progress >= 0.5; ``refs``: the frames used as
    A and B; ``residual``: mean |frame - blend| / change; ``coherence``: mean cosine of the steps along the
    span (about ``STEPS`` of them, so one step spans several frames of a long transition) with B - A
    (step-weighted); ``change``: mean |B - A|; ``contrast_dip``: lowest luma std in the span
    over the lower of A's and B's (about 0.7 for a dissolve between unrelated pictures, 1 for a pan)."""

    first: int
    last: int
    middle: int
    refs: tuple[int, int]
    residual: float
    coherence: float
    change: float
    contrast_dip: float


def _coarse(frames: np.ndarray, factor: int) -> np.ndarray:
    """(W, C, h, w) -> (W, C * h/f * w/f) float32 block means (tolerance to small motions)."""
    if factor <= 1:
        return frames.reshape(len(frames), -1)
    n, c, h, w = frames.shape
    h, w = h // factor * factor, w // factor * factor
    blocks = frames[:, :, :h, :w].reshape(n, c, h // factor, factor, w // factor, factor)
    return blocks.mean(axis=(3, 5)).reshape(n, -1)


def dissolve_fit(
    frames: np.ndarray, sd: np.ndarray, lo: int, hi: int, offset: int, span_max: int, coarse: int = 2
) -> DissolveFit | None:
    """Fit the change between frames ``lo`` and ``hi`` (global indices) on ``frames`` (W, C, h, w), which
    hold frames ``offset .. offset + W - 1``; ``sd``: per-frame luma std (global). None when nothing
    changes between them."""
    flat = _coarse(frames, coarse)
    last_w = offset + len(flat) - 1
    a = b = m = lo
    alpha = np.zeros(len(flat))
    for _ in range(MAX_ITERATIONS):
        ref_a, ref_b = flat[lo - offset], flat[hi - offset]
        v = ref_b - ref_a
        nv = float(v @ v)
        if nv <= 1e-6:
            return None
        alpha = (flat - ref_a) @ v / nv  # (W,) progress A (0) -> B (1)
        inside = np.nonzero(alpha[lo - offset : hi - offset + 1] >= 0.5)[0]
        if inside.size == 0:
            return None
        m = lo + int(inside[0])
        a, b = _span(alpha, m - offset, 0, len(alpha) - 1, 0.01)
        a, b = a + offset, b + offset
        a, b = max(a, offset + 1), min(b, last_w - 1)
        if (lo, hi) == (a - 1, b + 1) or b - a + 1 > span_max:
            break
        lo, hi = a - 1, b + 1
    if b < a:  # the change lies on the window's first or last frame (the video's ends): nothing to fit
        return None
    ref_a, ref_b = flat[lo - offset], flat[hi - offset]
    v = ref_b - ref_a
    change = float(np.abs(v).mean())
    span = alpha[a - offset : b - offset + 1]
    model = ref_a[None] + span[:, None] * v[None]
    residual = float(np.abs(flat[a - offset : b - offset + 1] - model).mean()) / max(change, 1e-6)
    stride = max(1, (b - a + 2) // STEPS)  # about STEPS steps over the span: long dissolves too
    path = flat[a - 1 - offset : b - offset + 2 : stride]
    steps = np.diff(path, axis=0)  # (k, P) changes along the transition
    lengths = np.linalg.norm(steps, axis=1)
    cosines = steps @ v / (lengths * math.sqrt(float(v @ v)) + 1e-9)
    coherence = float((cosines * lengths).sum() / (lengths.sum() + 1e-9))
    dip = float(np.min(sd[a : b + 1])) / max(1e-6, float(min(sd[lo], sd[hi])))
    return DissolveFit(a, b, m, (lo, hi), residual, coherence, change, dip)


# ----------------------------------------------------------------------------------------------- features


class GrowingArray:
    """A float32 array that grows by doubling; ``view`` is the filled part."""

    def __init__(self) -> None:
        self.data = np.full(1024, np.nan, np.float32)
        self.n = 0

    def extend(self, values: np.ndarray) -> None:
        need = self.n + len(values)
        if need > len(self.data):
            grown = np.full(max(need, 2 * len(self.data)), np.nan, np.float32)
            grown[: self.n] = self.data[: self.n]
            self.data = grown
        self.data[self.n : need] = values
        self.n = need

    @property
    def view(self) -> np.ndarray:
        return self.data[: self.n]


def histograms(small: np.ndarray) -> np.ndarray:
    """(c, C, h, w) float32 YUV -> (c, HIST_BINS) per-channel normalised histograms (Y 16 bins, U/V 8)."""
    c, channels = small.shape[:2]
    small = small[:, :, ::2, ::2]  # every 4th pixel is plenty for 16 bins
    y = np.clip(small[:, 0].reshape(c, -1) * (16 / 256), 0, 15).astype(np.int64)
    parts = [y]
    if channels >= 3:
        for ch in (1, 2):  # chroma: 8 bins over 96..160 (most natural colours), clipped
            q = np.clip((small[:, ch].reshape(c, -1) - 96) * (8 / 64), 0, 7).astype(np.int64)
            parts.append(16 + 8 * (ch - 1) + q)
    bins = np.concatenate(parts, axis=1) + (np.arange(c) * HIST_BINS)[:, None]
    hist = np.bincount(bins.ravel(), minlength=c * HIST_BINS).reshape(c, HIST_BINS).astype(np.float32)
    hist /= float(small.shape[2] * small.shape[3])  # each channel sums to 1
    return hist


def row_median(values: np.ndarray) -> np.ndarray:
    """Row medians ignoring NaN (np.median when there is none: much faster than np.nanmedian)."""
    if np.isnan(values).any():
        return np.nanmedian(values, axis=1)
    return np.median(values, axis=1)
