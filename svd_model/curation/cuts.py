"""Cascaded cut detection at three frame rates (SVD paper, section 3.1 and appendix C), streaming.

Every decoded frame becomes a small image ``S_k`` (about 48 px wide; Y, U and V planes, float 0..255)
and a colour histogram ``H_k`` (Y 16 bins, U/V 8). Per frame the detector keeps a few scalars: the change
``d_l[k] = sum over Y, U, V of mean |S_k - S_{k-l}|`` and the histogram change ``h_l[k]`` for the lags it
needs, and the mean and standard deviation of the luma. Each cascade level compares frames ``l`` apart,
``l`` being the native rate divided by the level's rate; it is evaluated at every frame (every phase of
the level's sampling grid), so a transition's alignment with the grid does not matter.

* **Level 1 (native rate): hard cuts.** A frame whose change ``d_1[k]`` is a local maximum, above
  ``min_change``, and ``threshold`` times above the local baseline (median of ``d_1`` over ``window_s``
  on each side) is a candidate. A flash (<= ``flash_frames`` frames, then back) fails the persistence test:
  the frames ``flash_frames`` before and after must still differ by ``persistence * d_1[k]``. A short
  dissolve fails the concentration test: one frame must carry ``hard_concentration`` of the change seen
  over ``flash_frames`` frames. Sustained camera motion raises the baseline, so it is not a cut. A cut
  through a dark frame is reported as a fade.
  *Brief transitions* are tested first: up to ``flash_frames`` frames entered and left by big changes and
  alike among themselves (a dip to black or white, a flash frame). When the pictures on either side of them
  differ by ``threshold`` times the change over the same distance just before and just after (and by
  ``min_change``), the excursion is the transition between two shots: a ``fade`` (through a dark frame) or
  a ``flash`` (through a bright one), spanning exactly its frames. Otherwise it is a flash inside one shot,
  not a cut. A candidate whose new frame is the previous one under a per-channel gain and offset (what the
  fit leaves would not stand out as a cut) is a *brightness step* inside a shot (an exposure jump, or with
  fast decoding the drift of a brightness change reset at a keyframe), not a cut; the slow levels apply the
  same test to the one-frame changes they localise.
* **Levels 2 and 3 (default 6 fps and 1.5 fps): gradual transitions.** At a low rate a fade or a
  cross-dissolve is a big change between two samples. Local maxima of ``d_l`` (or of the motion-robust
  ``h_l``) that stand ``threshold`` times above their baseline (the lower of the medians on either side,
  two lags away) are *proposals*, then confirmed and localised on the full-rate frames around them
  (:mod:`.transitions`):

  - fade: the darkest frame is below ``fade_black_level`` and well below both sides (or, through white, the
    brightest within ``fade_black_level`` of white 235 and well above both sides); the span is where the mean
    luma falls towards it and rises after it faster than twice the content's own median drift (a slow
    brightness ramp next to a fade is not part of it); the pictures on either side differ as a cut does;
  - dissolve: the frames of the span are blends ``A + a_j (B - A)`` of the frames just before (A) and
    after (B) it, with ``a_j`` rising: the blend residual is under ``max_blend_residual`` of ``|B - A|`` and
    the steps along the span point towards B (``min_coherence``); or the contrast dips in the middle, as
    it does when two unrelated pictures are mixed. A camera move is neither. A change carried by one
    frame is a hard cut (found here when level 1 missed it, e.g. during fast motion).

Each level sees only candidates that no finer level explains. Events closer than ``min_scene_s`` keep the
higher score. Memory: a ring of the last few seconds of small images plus a few floats per frame.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError
from .transitions import HIST_BINS, GrowingArray, dissolve_fit, fade_span, histograms, row_median

logger = logging.getLogger(__name__)

KINDS: tuple[str, ...] = ("hard", "fade", "dissolve", "flash")
#: Cut detectors (``CutConfig.detector``): the classical cascade, a learned network (:mod:`.shot_model`), both.
DETECTORS: tuple[str, ...] = ("cascade", "learned", "cascade+learned")


@dataclass(frozen=True)
class LevelConfig:
    """One cascade level: compare frames ``1 / fps`` apart (None = consecutive frames).

    ``threshold``: change over the local baseline (an adaptive ratio, as PySceneDetect's
    AdaptiveDetector); ``min_change``: the change the two frames must differ by at least, as the sum over
    Y, U and V of the mean absolute difference (0..255 levels; a hard cut between unrelated shots is
    typically 40-120, sensor noise 1-3).
    """

    fps: float | None
    threshold: float
    min_change: float


@dataclass(frozen=True)
class CutConfig:
    """Cascade settings. Defaults were tuned on synthetic fades/dissolves and a broadcast sample.

    Attributes:
        levels: the cascade, finest first. Default: native rate (hard cuts), 6 fps, 1.5 fps.
        feature_width: width of the small luma images the scores use (px, coded geometry).
        luma_width: maximum width of the decoded luma thumbnails (integer stride of the Y plane).
        window_s: seconds of baseline on each side of a candidate (levels 2/3 use at least 2 lags).
        flash_frames: flashes up to this many frames are not cuts (persistence test span).
        persistence: the change must persist at this fraction over ``flash_frames``.
        hard_concentration: a hard cut carries at least this fraction of the change around it in one frame.
        min_scene_s: events closer than this keep the higher score (also the shortest first shot).
        max_transition_s: longest fade or dissolve localised (longer ones are clipped to it).
        fade_black_level: the darkest frame of a fade has a mean luma at most this (0..255 Y, 16 = black).
        max_blend_residual: a dissolve's frames differ from blends of its ends by at most this fraction
            of the change between the ends.
        min_coherence: a dissolve's steps (about 8 along the span) point along the change between its ends
            (mean cosine weighted by step size); a camera move's do not.
        max_contrast_dip: alternatively, a dissolve whose lowest luma contrast (std) in the span is at most
            this fraction of its ends' (mixing unrelated pictures lowers contrast; about 0.7) is accepted
            with up to twice the blend residual.
        coarse: block size of the extra downscale used for the dissolve tests (tolerance to small motions).
        min_hist_change: a histogram proposal needs at least this histogram change (0..1, half the L1
            distance averaged over Y, U, V).
        hist_floor: lowest baseline used in histogram ratios.
        noise_floor: lowest baseline used in change ratios.
        detector: "cascade" (the default), "learned" (a user-supplied ONNX shot-boundary network instead of
            the cascade) or "cascade+learned" (both; learned cuts near a cascade cut are dropped). See
            :mod:`.shot_model`.
        shot_model: the network's .onnx file for the learned detector: a path the entry points (nodes, CLI)
            resolve from a file name inside the shot-detector models folder ('' = none).
        shot_threshold: the learned detector's boundary probability threshold (0..1, TransNetV2: 0.5).
    """

    levels: tuple[LevelConfig, ...] = (
        LevelConfig(None, 3.0, 8.0),
        LevelConfig(6.0, 3.0, 12.0),
        LevelConfig(1.5, 2.5, 14.0),
    )
    feature_width: int = 48
    luma_width: int = 192
    window_s: float = 0.5
    flash_frames: int = 3
    persistence: float = 0.5
    hard_concentration: float = 0.6
    min_scene_s: float = 0.3
    max_transition_s: float = 2.5
    fade_black_level: float = 40.0
    max_blend_residual: float = 0.2
    min_coherence: float = 0.75
    max_contrast_dip: float = 0.85
    coarse: int = 2
    min_hist_change: float = 0.15
    hist_floor: float = 0.02
    noise_floor: float = 0.5
    detector: str = "cascade"
    shot_model: str = ""
    shot_threshold: float = 0.5

    def __post_init__(self) -> None:
        if not self.levels:
            raise ConfigError("CutConfig.levels must have at least one level")
        for lv in self.levels:
            if lv.fps is not None and not lv.fps > 0:
                raise ConfigError(f"level fps must be positive or None (native), got {lv.fps!r}")
            if lv.threshold <= 0 or lv.min_change < 0:
                raise ConfigError(f"level threshold must be > 0 and min_change >= 0, got {lv!r}")
        if self.feature_width < 8 or self.luma_width < self.feature_width:
            raise ConfigError(f"need 8 <= feature_width <= luma_width, got {self.feature_width} and {self.luma_width}")
        if self.flash_frames < 1 or not 0 < self.hard_concentration <= 1 or not 0 < self.persistence <= 1:
            raise ConfigError("flash_frames >= 1, 0 < hard_concentration <= 1 and 0 < persistence <= 1 required")
        if self.detector not in DETECTORS:
            raise ConfigError(f"detector must be one of {', '.join(DETECTORS)}, got {self.detector!r}")
        if self.detector != "cascade" and not self.shot_model:
            raise ConfigError(f"detector {self.detector!r} needs shot_model: the name of an .onnx shot-boundary "
                              "network in the shot-detector models folder (models/shot_detectors)")
        if not 0 < self.shot_threshold < 1:
            raise ConfigError(f"shot_threshold must be between 0 and 1, got {self.shot_threshold!r}")


@dataclass(frozen=True)
class Cut:
    """A shot boundary. ``frame``..``end_frame`` (inclusive) is the transition; for a hard cut both are the
    first frame of the new shot; for a ``flash`` (or a brief dip reported as ``fade``) the 1..``flash_frames``
    frames between the two shots. ``center`` is the first frame of the new shot for every kind (for a fade or
    dissolve, the middle of the span). ``time`` is the pts (s) of ``frame``. ``score``: the adaptive ratio
    of the level that found it; ``change``: the difference across it (see ``LevelConfig.min_change``);
    ``level``: 1-based cascade level that proposed it."""

    frame: int
    time: float
    kind: str
    score: float
    end_frame: int
    level: int
    change: float = 0.0

    @property
    def center(self) -> int:
        return (self.frame + self.end_frame + 1) // 2


@dataclass
class _Event:
    start: int
    end: int
    kind: str
    score: float
    level: int
    change: float


def level_lags(cfg: CutConfig, fps: float) -> list[int]:
    """Frame distance each level compares (1 = consecutive frames)."""
    return [1 if lv.fps is None or lv.fps >= fps else max(2, round(fps / lv.fps)) for lv in cfg.levels]


@dataclass(frozen=True)
class CascadeFrames:
    """The cascade's sizes in frames of one video (from the config's seconds and the frame rate)."""

    lags: tuple[int, ...]  # frame distance each level compares (1 = consecutive frames)
    flash: int  # longest flash (frames) a cut may not be confused with
    window: int  # adaptive-threshold window of the consecutive-frame level
    span_max: int  # longest fade / dissolve
    min_scene: int  # shortest shot
    slow_max: int  # the largest lag of the slow (sub-sampled) levels, 1 without them
    series_lags: tuple[int, ...]  # every lag a difference series is kept for
    lookahead: int  # frames after a frame needed before it can be decided
    lookback: int  # frames before the oldest undecided frame an event may still start

    @classmethod
    def of(cls, cfg: CutConfig, fps: float) -> CascadeFrames:
        fps = max(fps, 1e-3)
        lags = tuple(level_lags(cfg, fps))
        window = max(2, round(cfg.window_s * fps))
        span_max = max(2, round(cfg.max_transition_s * fps))
        slow = [lag for lag in lags if lag > 1]
        slow_max = max(slow, default=1)
        lookahead = max([window + cfg.flash_frames + 2] + [3 * s + max(window, s) + span_max for s in slow])
        return cls(lags, cfg.flash_frames, window, span_max, max(1, round(cfg.min_scene_s * fps)), slow_max,
                   tuple(sorted({1, cfg.flash_frames + 1, *lags})), lookahead, slow_max + 2 * span_max + 2)

    @property
    def slow_lags(self) -> tuple[int, ...]:
        return tuple(lag for lag in self.lags if lag > 1)


class _Series:
    """Per-frame signals, grown as frames arrive: the mean |difference| to the frame ``lag`` before (pixels, every
    series lag; histograms, slow lags) and the luma mean and standard deviation."""

    def __init__(self, frames: CascadeFrames, pixels: int) -> None:
        self.diffs = {lag: GrowingArray() for lag in frames.series_lags}
        self.hist_diffs = {lag: GrowingArray() for lag in frames.slow_lags}
        self.mean, self.std = GrowingArray(), GrowingArray()
        self._tail = np.zeros((0, pixels), np.float32)  # the last frames, flat, for the lags
        self._hist_tail = np.zeros((0, HIST_BINS), np.float32)

    def extend(self, small: np.ndarray, hist: np.ndarray) -> None:
        """``small`` (c, C, h, w) float32 images of the next frames (0..255, channel 0 = luma), ``hist`` their
        (c, bins) histograms."""
        c, channels = len(small), small.shape[1]
        luma = small[:, 0].reshape(c, -1)
        self.mean.extend(luma.mean(1))
        self.std.extend(luma.std(1))
        frames = np.concatenate([self._tail, small.reshape(c, -1)])  # (t + c, P): the last frames, then these
        hists = np.concatenate([self._hist_tail, hist])
        t = len(self._tail)
        for lag, series in self.diffs.items():
            out = np.full(c, np.nan, np.float32)
            hist_out = np.full(c, np.nan, np.float32)
            first = max(0, lag - t)  # frames of this chunk that have a frame ``lag`` before them
            if first < c:
                cur, prev = frames[t + first : t + c], frames[t + first - lag : t + c - lag]
                # mean |YUV difference| * channels: the sum of the per-channel mean differences
                out[first:] = np.abs(cur - prev).mean(1) * channels
                hist_out[first:] = np.abs(hists[t + first : t + c] - hists[t + first - lag : t + c - lag]).sum(1) / (
                    2 * channels
                )
            series.extend(out)
            if lag in self.hist_diffs:
                self.hist_diffs[lag].extend(hist_out)
        biggest = max(self.diffs)
        self._tail, self._hist_tail = frames[-biggest:].copy(), hists[-biggest:].copy()


@dataclass
class CascadeDetector:
    """Streaming cascade: :meth:`push` chunks of small YUV images, then :meth:`finish` for the cuts.

    ``final_before`` tells how far events are final: no later event starts before it (motion sampling
    relies on this).
    """

    cfg: CutConfig
    fps: float
    shape: tuple[int, int, int]  # small image (channels, height, width): Y or Y, U, V
    ring_extra: int = 64
    scan_every: int = 256  # frames gathered between scans (fewer, larger vectorised passes)
    events: list[_Event] = field(default_factory=list)
    frames: CascadeFrames = field(init=False)
    series: _Series = field(init=False)
    ring: np.ndarray = field(init=False)  # (R, C, h, w) the last small images
    hist: np.ndarray = field(init=False)  # (R, bins) their histograms
    n: int = field(init=False, default=0)  # frames pushed
    scanned: int = field(init=False, default=0)  # frames decided

    def __post_init__(self) -> None:
        self.frames = CascadeFrames.of(self.cfg, self.fps)
        self.series = _Series(self.frames, int(np.prod(self.shape)))
        ring_size = self.frames.lookahead + self.frames.lookback + self.ring_extra + self.scan_every + 8
        self.ring = np.zeros((ring_size, *self.shape), np.float32)
        self.hist = np.zeros((ring_size, HIST_BINS), np.float32)

    @property
    def ring_size(self) -> int:
        return len(self.ring)

    # ------------------------------------------------------------------ input

    def push(self, small: np.ndarray) -> None:
        """Append ``small`` (c, C, h, w) float32 images (0..255, channel 0 = luma) of the next frames; scan
        what is ready."""
        c = len(small)
        if c == 0:
            return
        idx = np.arange(self.n, self.n + c)
        hist = histograms(small)
        self.ring[idx % self.ring_size] = small
        self.hist[idx % self.ring_size] = hist
        self.series.extend(small, hist)
        self.n += c
        if self.n - self.frames.lookahead - self.scanned >= self.scan_every:
            self._scan(self.n - self.frames.lookahead)

    @property
    def final_before(self) -> int:
        """Frames before this index will not be inside any event found later."""
        return max(0, self.scanned - self.frames.lookback)

    def finish(self, times: np.ndarray) -> list[Cut]:
        """Scan the rest and return the merged cuts (``times``: pts s of every frame)."""
        self._scan(self.n)
        return self.cuts(times)

    def pending(self) -> list[_Event]:
        return sorted(self.events, key=lambda e: e.start)

    # ------------------------------------------------------------------ scanning

    def _scan(self, limit: int) -> None:
        limit = min(limit, self.n)
        if limit <= self.scanned:
            return
        lo, hi = self.scanned, limit
        for level, (lag, lv) in enumerate(zip(self.frames.lags, self.cfg.levels, strict=True), start=1):
            if lag == 1:
                self._scan_hard(lo, hi, lv, level)
            else:
                self._scan_gradual(lo, hi, lag, lv, level)
        self.scanned = limit

    def _candidates(
        self, d: np.ndarray, lo: int, hi: int, lag: int, threshold: float, floor: float, minimum: float, sides: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """Frames k in [lo, hi) where ``d`` is the first maximum within +-lag, >= ``minimum`` and >= ``threshold``
        times its baseline: the median of ``d`` over ``window`` frames on each side beyond ``2 * lag`` (hard
        cuts: beyond 0; ``sides``: the lower of the two sides' medians). Returns (indices, ratios)."""
        n = self.n
        with np.errstate(invalid="ignore"):
            idx = np.nonzero(d[lo:hi] >= minimum)[0] + lo
        if idx.size == 0:
            return idx, np.zeros(0)
        padded = np.concatenate([np.full(lag, np.nan, np.float32), d, np.full(lag, np.nan, np.float32)])
        win = np.lib.stride_tricks.sliding_window_view(padded, lag)  # win[j] = d[j - lag : j]
        exclude = 0 if lag == 1 else 2 * lag
        w = self.frames.window if lag == 1 else max(self.frames.window, lag)
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            left = np.nanmax(win[idx], axis=1)  # max of d[k - lag : k]
            right = np.nanmax(win[np.minimum(idx + 1 + lag, len(win) - 1)], axis=1)  # d[k + 1 : k + 1 + lag]
            v = d[idx]
            peak = ~(left >= v) & ~(right > v)
            idx, v = idx[peak], v[peak]
            if idx.size == 0:
                return idx, np.zeros(0)

            def side(offsets: np.ndarray) -> np.ndarray:
                pos = idx[:, None] + offsets[None]
                return np.where((pos >= 0) & (pos < n), d[np.clip(pos, 0, n - 1)], np.nan)

            before, after = side(np.arange(-exclude - w, -exclude)), side(np.arange(exclude + 1, exclude + 1 + w))
            if sides:
                base = np.fmin(row_median(before), row_median(after))
            else:
                base = row_median(np.concatenate([before, after], axis=1))
        base = np.maximum(np.nan_to_num(base, nan=0.0), floor)
        ratio = v / base
        keep = ratio >= threshold
        return idx[keep], ratio[keep]

    def _scan_hard(self, lo: int, hi: int, lv: LevelConfig, level: int) -> None:
        d1 = self.series.diffs[1].view
        dp = self.series.diffs[self.frames.flash + 1].view
        n, p = self.n, self.frames.flash
        idx, ratios = self._candidates(d1, max(lo, 1), hi, 1, lv.threshold, self.cfg.noise_floor, lv.min_change,
                                       sides=False)  # fmt: skip
        for k, ratio in zip(idx.tolist(), ratios.tolist(), strict=True):
            if any(e.start <= k <= e.end + 1 for e in self.events[-4:]):
                continue  # the way out of a brief transition found at its way in
            v = float(d1[k])
            brief = self._brief(k, v, lv)
            if brief is not None:
                if brief.kind:  # a dip or a flash between two shots; else one inside a shot: not a cut
                    brief.score, brief.level = ratio, level
                    self.events.append(brief)
                continue
            around = [float(dp[j]) for j in (k + p, k) if j < n and j - p - 1 >= 0 and math.isfinite(dp[j])]
            if around and min(around) < self.cfg.persistence * v:
                continue  # a flash: the picture comes back
            if around and v < self.cfg.hard_concentration * max(around):
                continue  # a fast dissolve: leave it to the slower levels
            event = None
            near = self.series.mean.view[max(0, k - p - 1) : k + p + 1]
            if float(np.min(near)) <= self.cfg.fade_black_level:
                event = self._fade(k - p - 1, k + p, *self._window(k, p))  # a quick fade through black
            elif float(np.max(near)) >= 251.0 - self.cfg.fade_black_level:
                event = self._fade(k - p - 1, k + p, *self._window(k, p), white=True)  # ... or through white
            if event is None and self._brightness_step(k):
                continue  # the same picture, brighter or darker: an exposure jump, a decoder's drift reset
            event = event or _Event(k, k, "hard", 0.0, 0, v)
            event.score, event.level = ratio, level
            self.events.append(event)

    def _brightness_step(self, b: int) -> bool:
        """Frame ``b`` is frame ``b - 1`` with its brightness changed: what per channel ``b ~ gain * (b - 1) +
        offset`` and ``b - 1 ~ gain' * b + offset'`` (least squares; the larger of the two) leaves unexplained
        (the change measure of ``LevelConfig.min_change``) would not stand out as a hard cut (the native level's
        threshold times the median ``d_1`` over ``window`` frames on each side). Within a shot that is an exposure
        or lighting jump, or (decoding with the loop filter skipped) the drift of a brightness change reset at the
        next keyframe; two shots' pictures differ beyond any gain and offset."""
        d1 = self.series.diffs[1].view
        w = self.frames.window
        around = np.concatenate([d1[max(1, b - w) : b], d1[b + 1 : min(self.n, b + 1 + w)]])
        around = around[np.isfinite(around)]
        base = max(float(np.median(around)) if around.size else 0.0, self.cfg.noise_floor)
        limit = self.cfg.levels[0].threshold * base
        a, r = b - 1, self.ring_size
        x = self.ring[a % r].reshape(self.shape[0], -1).astype(np.float64)  # (C, P)
        y = self.ring[b % r].reshape(self.shape[0], -1).astype(np.float64)
        xc, yc = x - x.mean(1, keepdims=True), y - y.mean(1, keepdims=True)

        def unexplained(src: np.ndarray, dst: np.ndarray) -> float:
            gain = (src * dst).sum(1, keepdims=True) / np.maximum((src * src).sum(1, keepdims=True), 1e-6)
            return float(np.abs(dst - gain * src).mean()) * self.shape[0]

        # Both ways: a brightness change is invertible. One way alone calls a cut to a flat picture a step (a gain
        # near 0 maps any frame to a flat one), the other way cannot rebuild the old picture from the flat one.
        return max(unexplained(xc, yc), unexplained(yc, xc)) < limit

    def _brief(self, k: int, v: float, lv: LevelConfig) -> _Event | None:
        """A brief excursion at candidate ``k`` (``v = d_1[k]``): frames ``s .. s + m - 1`` (``m <= flash_frames``)
        entered and left by changes of at least half ``v``, alike among themselves (a dip to black or white, a
        flash), with ``k`` the way in or the way out. None when there is none. Else an event over the
        excursion, kind ``fade`` (dark) or ``flash``, when the pictures on either side (frames ``s - 1`` and
        ``s + m``) differ as a cut does: by ``min_change`` and ``threshold`` times the change over the same
        distance just before and just after; kind ``""`` when they do not (a flash inside one shot)."""
        d1 = self.series.diffs[1].view
        lo_w, hi_w = self._window(k, 0)
        best, quality = None, 0.0
        for m in range(1, self.frames.flash + 1):
            for s in (k, k - m):  # k is the way in / the way out
                if s - 1 < lo_w or s + m > hi_w:
                    continue
                edge = min(float(d1[s]), float(d1[s + m]))
                inner = max((float(d1[i]) for i in range(s + 1, s + m)), default=0.0)
                if edge >= max(0.5 * v, lv.min_change) and inner <= 0.5 * edge and edge > quality:
                    best, quality = (s, m), edge
        if best is None:
            return None
        s, m = best
        across = self._change(s - 1, s + m)  # shot before vs shot after
        ref = max(self._change(max(lo_w, s - 2 - m), s - 1), self._change(s + m, min(hi_w, s + 2 * m + 1)),
                  self.cfg.noise_floor)  # fmt: skip
        if across < max(lv.min_change, lv.threshold * ref):
            return _Event(s, s + m - 1, "", 0.0, 0, across)
        dark = float(np.min(self.series.mean.view[s : s + m])) <= self.cfg.fade_black_level
        return _Event(s, s + m - 1, "fade" if dark else "flash", 0.0, 0, across)

    def _scan_gradual(self, lo: int, hi: int, lag: int, lv: LevelConfig, level: int) -> None:
        cfg = self.cfg
        series = self.series
        pix = self._candidates(series.diffs[lag].view, lo, hi, lag, lv.threshold, cfg.noise_floor, lv.min_change, True)
        hist = self._candidates(series.hist_diffs[lag].view, lo, hi, lag, lv.threshold, cfg.hist_floor,
                                cfg.min_hist_change, True)
        found: dict[int, float] = {}
        for idx, ratios in (pix, hist):
            for k, r in zip(idx.tolist(), ratios.tolist(), strict=True):
                found[k] = max(found.get(k, 0.0), r)
        for k in sorted(found):
            if any(e.start <= k + 1 and e.end >= k - lag - 1 for e in self.events):
                continue  # a finer level (or an earlier proposal) already explains it
            event = self._confirm(k, lag, lv)
            if event is not None:
                event.score, event.level = found[k], level
                self.events.append(event)

    # ------------------------------------------------------------------ confirmation on full-rate frames

    def _window(self, k: int, lag: int) -> tuple[int, int]:
        oldest = max(0, self.n - self.ring_size + 1)
        return max(oldest, k - lag - self.frames.span_max), min(self.n - 1, k + self.frames.span_max)

    def _confirm(self, k: int, lag: int, lv: LevelConfig) -> _Event | None:
        lo_w, hi_w = self._window(k, lag)
        fade = self._fade(k - lag, k, lo_w, hi_w) or self._fade(k - lag, k, lo_w, hi_w, white=True)
        if fade is not None:
            return fade
        event = self._dissolve(k, lag, lo_w, hi_w, lv)
        if event is not None and not self._persists(event.start, event.end):
            return None
        return event

    def _change(self, a: int, b: int) -> float:
        """Mean |YUV difference| * channels between frames a and b (in the ring)."""
        r = self.ring_size
        return float(np.abs(self.ring[a % r] - self.ring[b % r]).mean()) * self.shape[0]

    def _persists(self, a: int, b: int) -> bool:
        """The picture after ``b`` differs from the one before ``a`` also ``flash_frames`` further out."""
        p = self.cfg.flash_frames
        lo_w, _ = self._window(a, 0)
        hi_w = min(self.n - 1, b + 1 + p)
        if a - 1 < lo_w or b + 1 > hi_w:
            return True
        change = self._change(a - 1, b + 1)
        later, earlier = self._change(a - 1, hi_w), self._change(max(lo_w, a - 1 - p), b + 1)
        return min(later, earlier) >= self.cfg.persistence * change

    def _fade(self, lo: int, hi: int, lo_w: int, hi_w: int, white: bool = False) -> _Event | None:
        """A fade through a dark frame (``white``: a bright one) near [lo, hi]: its span, or None. Through white the
        luma is mirrored about video range (251 - mean: white 235 plays black 16). The pictures on either side must
        differ as a cut does (native level: ``min_change``, and ``threshold`` times the calmer side's own change
        over as many frames, up to ``flash_frames + 1``): else the picture comes back, a flash or dip inside one
        shot."""
        mu = 251.0 - self.series.mean.view if white else self.series.mean.view  # 251 = Y black 16 + white 235
        found = fade_span(mu, lo, hi, lo_w, hi_w, self.cfg.fade_black_level)
        if found is None:
            return None
        a, b, j = found
        dark = float(mu[j])
        level_a = float(mu[a - 1]) if a > lo_w else float(mu[a])
        level_b = float(mu[b + 1]) if b < hi_w else float(mu[b])
        if min(level_a, level_b) < max(self.cfg.fade_black_level + 8.0, 2.0 * dark) or (a == j == b):
            return None  # one side is dark too: not a fade between two shots (or a fade at an end of the video)
        before, after = max(lo_w, a - 1), min(hi_w, b + 1)
        across = self._change(before, after)
        d = min(b - a + 2, self.frames.flash + 1)  # the same shot's own change over (up to) as many frames
        ref = min(self._change(max(lo_w, before - d), before), self._change(after, min(hi_w, after + d)))
        native = self.cfg.levels[0]
        if across < max(native.min_change, native.threshold * ref):
            return None  # the picture comes back: a flash or a dip inside one shot
        return _Event(a, b, "fade", 0.0, 0, across)

    def _dissolve(self, k: int, lag: int, lo_w: int, hi_w: int, lv: LevelConfig) -> _Event | None:
        """Localise the change between frames k - lag and k on full-rate frames; hard cut, dissolve or None."""
        frames = self.ring[np.arange(lo_w, hi_w + 1) % self.ring_size]  # (W C h w)
        fit = dissolve_fit(frames, self.series.std.view, max(lo_w, k - lag), k, lo_w, self.frames.span_max,
                           self.cfg.coarse)
        if fit is None:
            return None
        change = self._change(*fit.refs)
        logger.debug("dissolve candidate %d..%d: residual %.3f coherence %.2f dip %.2f change %.1f", fit.first,
                     fit.last, fit.residual, fit.coherence, fit.contrast_dip, change)  # fmt: skip
        if change < lv.min_change or fit.last - fit.first + 1 > self.frames.span_max:
            return None
        d1 = self.series.diffs[1].view
        if fit.last <= fit.first or float(d1[fit.middle]) >= self.cfg.hard_concentration * change:
            if self._brightness_step(fit.middle):
                return None
            return _Event(fit.middle, fit.middle, "hard", 0.0, 0, change)  # one frame carries the change
        blend = fit.residual <= self.cfg.max_blend_residual and fit.coherence >= self.cfg.min_coherence
        dip = fit.contrast_dip <= self.cfg.max_contrast_dip and fit.residual <= 2 * self.cfg.max_blend_residual
        if not (blend or dip):
            return None
        return _Event(fit.first, fit.last, "dissolve", 0.0, 0, change)

    # ------------------------------------------------------------------ output

    def cuts(self, times: np.ndarray) -> list[Cut]:
        kept: list[_Event] = []
        for e in sorted(self.events, key=lambda e: (e.start, -e.score)):
            if e.start < self.frames.min_scene:
                continue
            if kept and e.start - kept[-1].end - 1 < self.frames.min_scene:
                if e.score > kept[-1].score:
                    kept[-1] = e
                continue
            kept.append(e)
        out = []
        for e in kept:
            t = float(times[e.start]) if e.start < len(times) else float("nan")
            out.append(Cut(e.start, t, e.kind, round(e.score, 4), e.end, e.level, round(e.change, 3)))
        return out
