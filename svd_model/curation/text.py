"""Text-area score of a clip (SVD paper, appendix C "Text Detection"): detect text boxes on a few frames
(start / middle / end) and measure the fraction of the frame they cover.

The paper runs CRAFT; here the detector is pluggable (:class:`TextDetector`):

* :class:`ClassicTextDetector` (the default) needs no weights. It is a classical scene-text detector: stroke
  candidates from morphological top-hat / black-hat maps on an image pyramid (bright and dark text separately),
  touching letters split at their faint anti-aliased bridges, per-component geometry and stroke-width filters,
  grouping of aligned neighbours into text lines, and line checks (a quiet margin above and below, stroke
  density, contrast, even heights and strokes, a common baseline, varied shapes) that reject textures,
  foliage and rows of repeated objects.
* :class:`~.text_dnn.DnnTextDetector` (in text_dnn.py) runs a user-supplied DB or EAST network through OpenCV's
  dnn text-detection API.

The text-area ratio is the area of the **union** of the boxes (overlaps count once) over the frame area.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Literal, Protocol, runtime_checkable

import cv2
import numpy as np

from ..errors import ConfigError, InputError

log = logging.getLogger(__name__)

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in frame pixels; x1 / y1 exclusive
_FBox = tuple[float, float, float, float]
MIN_COMPONENTS = 3  # a text line needs at least this many separate components


@runtime_checkable
class TextDetector(Protocol):
    """Anything that finds text boxes in an RGB frame (H, W, 3) uint8."""

    def detect(self, rgb: np.ndarray) -> list[Box]: ...


def check_rgb(rgb: np.ndarray) -> np.ndarray:
    """Validate one frame: (H, W, 3) uint8 RGB; returns it (C-contiguous)."""
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3:
        shape = rgb.shape if isinstance(rgb, np.ndarray) else type(rgb).__name__
        raise InputError(f"expected an RGB frame of shape (H, W, 3), got {shape}; drop alpha / add channels first")
    if rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise InputError(f"expected a non-empty frame, got shape {rgb.shape}")
    if rgb.dtype != np.uint8:
        hint = "; convert with (frame * 255).round().astype(np.uint8)" if rgb.dtype.kind == "f" else ""
        raise InputError(f"expected a uint8 frame (0..255), got dtype {rgb.dtype}{hint}")
    return np.ascontiguousarray(rgb)


# ---------------------------------------------------------------------------------------------------------------
# Classical detector
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassicTextConfig:
    """Parameters of :class:`ClassicTextDetector`. Pixel sizes are per pyramid level (after `max_side`)."""

    max_side: int = 1024  # frames are first downscaled so that the long side is at most this
    levels: int = 3  # pyramid levels, each half the previous: letters up to max_char_height * 2^(levels-1) px
    stroke_kernel: int = 11  # top-hat square: strokes up to about this wide are candidates
    min_contrast: float = 36.0  # top-hat response (gray levels) a stroke pixel must exceed
    split_fraction: float = 0.5  # re-threshold each component at this fraction of its mean response
    min_char_height: int = 8
    max_char_height: int = 44
    max_aspect: float = 8.0  # width / height of one component (touching letters make whole words)
    min_chars: int = 3  # a line needs at least this many (estimated) characters
    max_gap: float = 1.1  # horizontal gap between linked neighbours, in character heights
    max_height_ratio: float = 2.0  # of two linked neighbours
    max_color_diff: float = 48.0  # largest difference of the mean R, G, B (0..255) of two linked neighbours
    max_fill: float = 0.8  # median ink fill of a line's component boxes (solid blobs and windows are ~1)
    min_shape_variety: float = 0.08  # coefficient of variation of widths / fill / heights (repeated objects ~0)
    min_score: float = 1.5  # threshold on line_score (higher: fewer false alarms, lower recall)

    def __post_init__(self) -> None:
        if self.stroke_kernel < 3 or self.stroke_kernel % 2 == 0:
            raise ConfigError(f"stroke_kernel must be an odd number >= 3, got {self.stroke_kernel}")
        if not 1 <= self.levels <= 8:
            raise ConfigError(f"levels must be in 1..8, got {self.levels}")
        if not 4 <= self.min_char_height < self.max_char_height:
            raise ConfigError(
                f"need 4 <= min_char_height < max_char_height, got {self.min_char_height}, {self.max_char_height}"
            )
        if self.max_side < 64:
            raise ConfigError(f"max_side must be >= 64, got {self.max_side}")


@dataclass(frozen=True)
class _Components:
    """Statistics of the character-like components of one stroke map; arrays of length n (level pixels)."""

    x: np.ndarray
    y: np.ndarray
    w: np.ndarray
    h: np.ndarray
    area: np.ndarray
    stroke: np.ndarray  # mean stroke width: 2 x distance-to-background on the stroke ridges
    stroke_cv: np.ndarray  # its coefficient of variation inside the component
    color: np.ndarray  # (n, 3) mean RGB
    contrast: np.ndarray  # mean top-hat response

    def take(self, keep: np.ndarray) -> _Components:
        return _Components(**{f.name: getattr(self, f.name)[keep] for f in fields(self)})

    def __len__(self) -> int:
        return len(self.x)


@dataclass(frozen=True)
class LineFeatures:
    """Evidence that a group of aligned components is a text line (see :func:`line_score`)."""

    box: _FBox  # level pixels
    n: int  # components (after dropping height outliers)
    chars: float  # estimated characters (a wide component counts as several)
    straight: float  # std of the centres around the fitted line / median height
    base_frac: float  # fraction of components whose bottom lies on the common baseline
    h_cv: float  # coefficient of variation of the heights
    stroke_in: float  # median within-component stroke-width variation
    stroke_rel: float  # median stroke width / median height
    contrast: float  # median mean top-hat response
    margin: float  # stroke density in the bands above / below (the busier one) relative to inside
    density: float  # stroke density inside the box
    variety: float  # largest coefficient of variation of widths, fills, heights
    fill: float  # median ink fill of the component boxes


def line_score(f: LineFeatures) -> float:
    """Linear text-line evidence; > 0 leans text. The weights were fitted (logistic regression) on synthetic
    frames: rendered captions, titles, signs and subtitles over generated photo-like backgrounds, against
    textless foliage, branch, gravel, brick and window-grid textures. Positive terms: contrast, component
    count, stroke density, fill, a common baseline. Negative: a busy margin, thick or uneven strokes, uneven
    heights, a crooked line."""
    return float(
        4.95 * np.log(f.contrast)
        + 3.34 * np.log(f.n)
        + 15.3 * f.density
        - 2.06 * f.margin
        + 6.19 * f.fill
        - 7.34 * f.stroke_rel
        - 5.14 * f.stroke_in
        - 7.14 * f.h_cv
        + 1.53 * f.base_frac
        - 5.72 * f.straight
        - 29.07
    )


class ClassicTextDetector:
    """Offline scene-text detector (no weights); see the module docstring for the method.

    ``detect(rgb)`` returns one box per detected text line (words closer than ``max_gap`` heights join).
    About 50 ms of CPU time per 1024x576 frame (one thread); stateless, so one instance can serve threads.
    """

    def __init__(self, config: ClassicTextConfig | None = None) -> None:
        self.config = config or ClassicTextConfig()
        k = self.config.stroke_kernel
        self._kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (k, k))

    def detect(self, rgb: np.ndarray) -> list[Box]:
        """rgb: (H, W, 3) uint8 -> text-line boxes (x0, y0, x1, y1) in the frame's pixels."""
        rgb = check_rgb(rgb)
        height, width = rgb.shape[:2]
        scale = min(1.0, self.config.max_side / max(height, width))
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        boxes: list[Box] = []
        factor = 1.0 / scale  # level pixels -> frame pixels
        for _ in range(self.config.levels):
            if min(rgb.shape[:2]) < 2 * self.config.min_char_height:
                break
            gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
            for polarity in (cv2.MORPH_TOPHAT, cv2.MORPH_BLACKHAT):  # bright text, dark text
                for x0, y0, x1, y1 in self._lines(gray, rgb, polarity):
                    boxes.append(
                        (
                            max(0, int(x0 * factor)),
                            max(0, int(y0 * factor)),
                            min(width, int(np.ceil(x1 * factor))),
                            min(height, int(np.ceil(y1 * factor))),
                        )
                    )
            rgb = cv2.pyrDown(rgb)
            factor *= 2.0
        return merge_boxes(boxes)

    def _lines(self, gray: np.ndarray, rgb: np.ndarray, polarity: int) -> list[_FBox]:
        """Text-line boxes (level pixels) of one pyramid level and one polarity."""
        cfg = self.config
        response = cv2.morphologyEx(gray, polarity, self._kernel)  # (h, w) uint8 local contrast
        mask, idx = _split_touching((response > cfg.min_contrast).astype(np.uint8), response, cfg.split_fraction)
        comps = _components(mask, idx, rgb, response, cfg)
        lines = []
        for members in _group(comps, cfg):
            feats = line_features(comps.take(members), mask)
            if feats is not None and self._accept(feats):
                lines.append(feats.box)
        return lines

    def _accept(self, f: LineFeatures) -> bool:
        """Hard gates, then the linear evidence :func:`line_score` above ``min_score``."""
        cfg = self.config
        if f.n < MIN_COMPONENTS or f.chars < cfg.min_chars or f.straight > 0.25:
            return False
        if f.fill > cfg.max_fill or f.variety < cfg.min_shape_variety:  # solid blobs; rows of identical objects
            return False
        return line_score(f) > cfg.min_score


def _split_touching(mask: np.ndarray, response: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Drop each component's pixels whose response is below `fraction` of the component's mean: the faint
    anti-aliased bridges between neighbouring letters (outlined or bold text) go, the strokes stay. Returns the
    new mask and its pixels' flat indices in order (np.flatnonzero of it)."""
    n, labels = cv2.connectedComponents(mask, connectivity=8)
    idx = np.flatnonzero(mask)
    lab = labels.ravel()[idx]
    resp = response.ravel()[idx].astype(np.float64)
    mean = np.bincount(lab, weights=resp, minlength=n) / np.maximum(np.bincount(lab, minlength=n), 1)
    out = np.zeros_like(mask)
    kept = idx[resp > fraction * mean[lab]]
    out.ravel()[kept] = 1
    return out, kept


def _components(mask: np.ndarray, idx: np.ndarray, rgb: np.ndarray, response: np.ndarray,
                cfg: ClassicTextConfig) -> _Components:
    """Connected components of `mask` (``idx``: its pixels' flat indices in order, np.flatnonzero(mask)) shaped
    like characters (or runs of touching characters), with stats."""
    # BBDT (Grana's block-based scan) gives the same labels and statistics as the default algorithm (Spaghetti)
    # 2-3x faster here, where the statistics dominate: this call was the text stage's largest cost
    n, labels, stats, _ = cv2.connectedComponentsWithStatsWithAlgorithm(mask, 8, cv2.CV_32S, cv2.CCL_BBDT)
    s = stats[1:].astype(np.float64)
    x, y, w, h, area = (s[:, i] for i in range(5))  # CC_STAT_LEFT, TOP, WIDTH, HEIGHT, AREA
    aspect = w / np.maximum(h, 1)
    fill = area / np.maximum(w * h, 1)
    keep = (h >= cfg.min_char_height) & (h <= cfg.max_char_height) & (aspect >= 0.08) & (aspect <= cfg.max_aspect)
    keep &= (fill >= 0.12) & ((fill <= 0.9) | (aspect < 0.4))  # thin letters (l, I, 1) are allowed to be solid
    keep &= (x > 0) & (y > 0) & (x + w < mask.shape[1]) & (y + h < mask.shape[0])  # cut by the frame edge
    lut = np.full(n, -1)
    lut[1:][keep] = np.arange(int(keep.sum()))
    comp = lut[labels.ravel()[idx]]
    idx, comp = idx[comp >= 0], comp[comp >= 0]
    k = int(keep.sum())
    count = np.maximum(np.bincount(comp, minlength=k), 1)

    def mean(values: np.ndarray, at: np.ndarray, of: np.ndarray, counts: np.ndarray) -> np.ndarray:
        return np.bincount(of, weights=values.ravel()[at].astype(np.float64), minlength=k) / counts

    dist = cv2.distanceTransform(mask, cv2.DIST_L2, 5)
    ridge = dist.ravel()[idx] >= cv2.dilate(dist, np.ones((3, 3), np.uint8)).ravel()[idx]
    r_idx, r_comp = idx[ridge], comp[ridge]
    r_count = np.maximum(np.bincount(r_comp, minlength=k), 1)
    stroke = 2.0 * mean(dist, r_idx, r_comp, r_count)
    stroke_sq = 4.0 * mean(dist**2, r_idx, r_comp, r_count)
    comps = _Components(
        x=x[keep],
        y=y[keep],
        w=w[keep],
        h=h[keep],
        area=area[keep],
        stroke=stroke,
        stroke_cv=np.sqrt(np.maximum(stroke_sq - stroke**2, 0.0)) / np.maximum(stroke, 1e-6),
        color=np.stack([mean(rgb[..., ch], idx, comp, count) for ch in range(3)], axis=1),
        contrast=mean(response, idx, comp, count),
    )
    return comps.take(comps.stroke <= 0.4 * comps.h + 1.0)  # strokes are thin for their height; blobs are not


def _group(c: _Components, cfg: ClassicTextConfig) -> list[np.ndarray]:
    """Link each component to its nearest compatible right-hand neighbour (similar height, stroke and colour,
    overlapping rows, small gap); return the linked groups of at least MIN_COMPONENTS members."""
    n = len(c)
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    x1, y1 = c.x + c.w, c.y + c.h
    for start in range(0, n, 512):
        i = np.arange(start, min(n, start + 512))[:, None]  # (b, 1) against every j: (b, n) tables
        lo, hi = np.minimum(c.h[i], c.h[None]), np.maximum(c.h[i], c.h[None])
        gap = c.x[None] - x1[i]  # from i's right edge to j's left edge
        overlap = np.minimum(y1[i], y1[None]) - np.maximum(c.y[i], c.y[None])
        ok = (gap >= -0.25 * lo) & (gap <= cfg.max_gap * hi) & (c.x[None] > c.x[i])
        ok &= (hi <= cfg.max_height_ratio * lo) & (overlap >= 0.6 * lo)
        ok &= np.abs(c.color[i] - c.color[None]).max(axis=-1) <= cfg.max_color_diff  # (b, n, 3) -> (b, n)
        ok &= np.maximum(c.stroke[i], c.stroke[None]) <= 2.0 * np.minimum(c.stroke[i], c.stroke[None])
        cost = np.where(ok, gap, np.inf)
        best = np.argmin(cost, axis=1)
        for row in np.flatnonzero(np.isfinite(cost[np.arange(len(best)), best])):
            a, b = find(start + int(row)), find(int(best[row]))
            if a != b:
                parent[a] = b
    roots = np.array([find(i) for i in range(n)], dtype=np.int64)
    labels, counts = np.unique(roots, return_counts=True)
    return [np.flatnonzero(roots == r) for r in labels[counts >= MIN_COMPONENTS]]


def line_features(c: _Components, mask: np.ndarray) -> LineFeatures | None:
    """Features of one linked group (level pixels); None when fewer than 2 components of typical height."""
    h_med = float(np.median(c.h))
    c = c.take((c.h >= 0.5 * h_med) & (c.h <= 1.8 * h_med))
    if len(c) < 2:
        return None
    cx, cy = c.x + c.w / 2, c.y + c.h / 2
    dx = cx - cx.mean()
    slope = float((dx * (cy - cy.mean())).sum() / max(float((dx * dx).sum()), 1e-9))  # least-squares line
    intercept = float(cy.mean()) - slope * float(cx.mean())
    bottoms = c.y + c.h - slope * cx
    tol = max(1.0, 0.08 * h_med)
    base_frac = max(int((np.abs(bottoms - b) <= tol).sum()) for b in bottoms) / len(c)
    fill = c.area / (c.w * c.h)
    x0, y0 = int(c.x.min()), int(c.y.min())
    x1, y1 = int((c.x + c.w).max()), int((c.y + c.h).max())
    inside = float(mask[y0:y1, x0:x1].mean())
    band = max(2, round(0.5 * h_med))
    above = mask[max(0, y0 - band) : max(0, y0 - 1), x0:x1]
    below = mask[y1 + 1 : y1 + band, x0:x1]
    margin = max(above.mean() if above.size else 0.0, below.mean() if below.size else 0.0)

    def cv(v: np.ndarray) -> float:
        return float(np.std(v) / max(float(np.mean(v)), 1e-6))

    return LineFeatures(
        box=(float(x0), float(y0), float(x1), float(y1)),
        n=len(c),
        chars=float(np.maximum(1, np.round(c.w / (0.6 * c.h))).sum()),
        straight=float(np.std(cy - (slope * cx + intercept)) / h_med),
        base_frac=base_frac,
        h_cv=cv(c.h),
        stroke_in=float(np.median(c.stroke_cv)),
        stroke_rel=float(np.median(c.stroke) / h_med),
        contrast=float(np.median(c.contrast)),
        margin=float(margin / max(inside, 1e-6)),
        density=inside,
        variety=max(cv(c.w), cv(fill), cv(c.h)),
        fill=float(np.median(fill)),
    )


def merge_boxes(boxes: Sequence[Box], containment: float = 0.7) -> list[Box]:
    """Merge boxes of which one covers `containment` of the other (the same line found at two pyramid levels or
    in both polarities) into their bounding box; returns boxes sorted top to bottom, left to right."""
    out: list[Box] = [(int(b[0]), int(b[1]), int(b[2]), int(b[3])) for b in boxes if b[2] > b[0] and b[3] > b[1]]
    merged = True
    while merged:
        merged = False
        for i in range(len(out)):
            for j in range(i + 1, len(out)):
                a, b = out[i], out[j]
                iw = min(a[2], b[2]) - max(a[0], b[0])
                ih = min(a[3], b[3]) - max(a[1], b[1])
                small = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
                if iw > 0 and ih > 0 and iw * ih >= containment * small:
                    out[i] = (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))
                    del out[j]
                    merged = True
                    break
            if merged:
                break
    return sorted(out, key=lambda b: (b[1], b[0]))


# ---------------------------------------------------------------------------------------------------------------
# Scores
# ---------------------------------------------------------------------------------------------------------------

_DEFAULT: list[ClassicTextDetector] = []


def default_detector() -> ClassicTextDetector:
    """A shared ClassicTextDetector with the default config."""
    if not _DEFAULT:
        _DEFAULT.append(ClassicTextDetector())
    return _DEFAULT[0]


def key_frame_indices(count: int, k: int = 3) -> list[int]:
    """Indices of k frames spread evenly from the first to the last of `count` (k=3: start, middle, end),
    without repeats: count=1 -> [0]; count=5 -> [0, 2, 4]."""
    if count < 1:
        raise InputError(f"need at least one frame, got {count}")
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    if k == 1:
        return [(count - 1) // 2]
    return sorted({round(i * (count - 1) / (k - 1)) for i in range(k)})


def boxes_area_ratio(boxes: Sequence[Box], height: int, width: int) -> float:
    """Area of the union of boxes (clipped to the frame) / frame area, in [0, 1]."""
    covered = np.zeros((height, width), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        covered[max(0, y0) : max(0, y1), max(0, x0) : max(0, x1)] = True
    return float(covered.mean())


def text_area_ratio(rgb: np.ndarray, detector: TextDetector | None = None) -> float:
    """Fraction of the frame (H, W, 3) uint8 covered by detected text boxes (their union), in [0, 1]."""
    rgb = check_rgb(rgb)
    boxes = (detector or default_detector()).detect(rgb)
    return boxes_area_ratio(boxes, rgb.shape[0], rgb.shape[1])


def clip_text_score(
    frames: Sequence[np.ndarray], detector: TextDetector | None = None, reduce: Literal["max", "mean"] = "max"
) -> float:
    """Text-area ratio of a clip from the given frames (the paper: its start, middle and end frames; pick them
    with :func:`key_frame_indices`). reduce: "max" (a caption on any frame counts) or "mean"."""
    if reduce not in ("max", "mean"):
        raise ConfigError(f"unknown reduce {reduce!r}; choose from max, mean")
    if len(frames) == 0:
        raise InputError("clip_text_score needs at least one frame, got none")
    ratios = [text_area_ratio(frame, detector) for frame in frames]
    return float(max(ratios) if reduce == "max" else np.mean(ratios))
