"""Frame interpolation from dense optical flow: no weights, no download, bounded memory.

For each pair of neighbouring frames (I0, I1) and each output time t in (0, 1):

1. Dense flow both ways with OpenCV (DIS or Farnebaeck) on greyscale copies, optionally downscaled
   (``FlowSettings.max_flow_side``): F01 with I0(x) ~ I1(x + F01(x)) and F10.
2. Occlusion masks from the forward-backward check (Sundaram, Brox & Keutzer 2010): a pixel of I0 has
   no match in I1 where |F01(x) + F10(x + F01(x))|^2 > a (|F01|^2 + |F10(x + F01)|^2) + b, or where its
   target leaves the frame; likewise for I1. The masks are softened by a small Gaussian.
3. Flows from time t back to both frames by forward projection ("splatting") of F01 scaled by t and of
   F10 scaled by 1 - t, bilinear, weighted by softmax(|flow|) (larger motion wins a collision: the
   mover is usually in front) and down-weighted at occluded sources. Pixels nothing lands on take the
   linear estimate of Jiang et al. 2018 (Super SloMo): F_t0 = -(1-t) t F01 + t^2 F10,
   F_t1 = (1-t)^2 F01 - t (1-t) F10.
4. Backward warping of I0 by F_t0 and I1 by F_t1 (bilinear, ``cv2.remap``).
5. Occlusion-aware blend of the two warped candidates with weights (1 - t) and t, except that where
   only one frame's sample has no match in the other frame, that frame alone is used (content that only
   one frame sees must come from it; the other frame's candidate there is the occluder); where both
   samples are unmatched (or both matched) neither is preferred and the candidates are blended by time.

With exact flows this recovers a moving object over a static background almost exactly (the tests
check it); with DIS flows, which bleed across motion boundaries, the gain over a plain average of the
warped candidates is small, while the gain over blending the frames is large (bench/interpolation_quality.py).

Frames are numpy (H, W, 3) uint8 in [0, 255] or float in [0, 1]; results keep the input's dtype.
Retiming works on positions in source-frame units: output frame j sits at j * step (step = 1 / factor,
or source fps / target fps); whole positions copy a source frame. :func:`interpolate_stream` holds two
frames and one pair's flows at a time, whatever the video's length. :func:`interpolate_images` wraps it
for (t, H, W, 3) float tensors in [0, 1] (ComfyUI's IMAGE layout).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

import cv2
import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError, InputError, choose

#: Dense flow estimators: OpenCV DIS presets (fast, good on real video) and Farnebaeck (slower).
FLOW_METHODS = ("dis_medium", "dis_fast", "dis_ultrafast", "farneback")
_DIS_PRESETS = {"dis_medium": "MEDIUM", "dis_fast": "FAST", "dis_ultrafast": "ULTRAFAST"}


@dataclass(frozen=True)
class FlowSettings:
    """How flow is estimated and trusted. Defaults suit 25-30 fps footage up to 1080p."""

    method: str = "dis_medium"  # one of FLOW_METHODS
    max_flow_side: int = 640  # estimate flow on a copy whose longer side is at most this (0 = full size)
    consistency_a: float = 0.01  # forward-backward check, relative term
    consistency_b: float = 0.5  # forward-backward check, absolute term (pixels^2 at flow resolution)
    mask_sigma: float = 1.0  # Gaussian softening of the occlusion masks (pixels at flow resolution)
    splat_sharpness: float = 1.0  # softmax factor on |flow| (pixels) when projected flows collide

    def __post_init__(self) -> None:
        choose(dict.fromkeys(FLOW_METHODS), self.method, "flow method")
        if self.max_flow_side < 0 or (0 < self.max_flow_side < 16):
            raise ConfigError(f"max_flow_side must be 0 (full size) or >= 16, got {self.max_flow_side}")
        numbers = {"consistency_a": self.consistency_a, "consistency_b": self.consistency_b,
                   "mask_sigma": self.mask_sigma, "splat_sharpness": self.splat_sharpness}
        for name, value in numbers.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number, got {value!r}")
        if min(numbers.values()) < 0:
            raise ConfigError("consistency_a, consistency_b, mask_sigma and splat_sharpness must be >= 0")


# ------------------------------------------------------------------------------------------- timing


def _fraction(value: float | Fraction, what: str) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, int | float | Fraction) or not math.isfinite(value):
        raise ConfigError(f"{what} must be a finite number, got {value!r}")
    if value <= 0:
        raise ConfigError(f"{what} must be > 0, got {value}")
    return Fraction(value).limit_denominator(1_000_000)


def resample_step(
    *, factor: float | None = None, source_fps: float | None = None, target_fps: float | None = None
) -> tuple[Fraction, float | None]:
    """(step, output fps): output frame j sits at source position j * step.

    Either ``factor`` (x2 -> step 1/2, output fps = source_fps * factor when source_fps is known) or
    ``target_fps`` with ``source_fps`` (step = source_fps / target_fps).
    """
    if (factor is None) == (target_fps is None):
        raise ConfigError("give either factor (e.g. 2 for x2) or target_fps (with source_fps), not both or neither")
    src = _fraction(source_fps, "source_fps") if source_fps is not None else None
    if factor is not None:
        f = _fraction(factor, "factor")
        return 1 / f, float(src * f) if src is not None else None
    if src is None:
        raise ConfigError(f"target_fps {target_fps} needs the source frame rate (source_fps)")
    target = _fraction(target_fps, "target_fps")  # type: ignore[arg-type]
    return src / target, float(target)


def output_count(num_frames: int, step: Fraction) -> int:
    """Frames produced from `num_frames` source frames: positions 0, step, ... up to num_frames - 1."""
    return 0 if num_frames < 1 else math.floor((num_frames - 1) / step) + 1


def output_positions(num_frames: int, step: Fraction) -> list[Fraction]:
    """Source positions (exact fractions) of every output frame."""
    return [j * step for j in range(output_count(num_frames, step))]


# --------------------------------------------------------------------------------------- flow, masks


def _gray(frame: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 or float [0, 1] -> (H, W) uint8."""
    if frame.dtype != np.uint8:
        frame = (np.clip(frame, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)


def estimate_flow(src: np.ndarray, dst: np.ndarray, method: str = "dis_medium") -> np.ndarray:
    """(H, W, 2) float32 flow of greyscale uint8 `src` towards `dst`: src(x) ~ dst(x + flow(x))."""
    h, w = src.shape
    pad_y, pad_x = max(0, 16 - h), max(0, 16 - w)  # DIS refuses images under 12 pixels
    if pad_y or pad_x:
        src, dst = (cv2.copyMakeBorder(g, 0, pad_y, 0, pad_x, cv2.BORDER_REPLICATE) for g in (src, dst))
    if method == "farneback":
        flow = cv2.calcOpticalFlowFarneback(src, dst, None, 0.5, 5, 15, 3, 5, 1.2, 0)
    else:
        preset = getattr(cv2, "DISOPTICAL_FLOW_PRESET_" + choose(_DIS_PRESETS, method, "flow method"))
        flow = cv2.DISOpticalFlow_create(preset).calc(src, dst, None)
    return np.ascontiguousarray(flow[:h, :w], dtype=np.float32)


@lru_cache(maxsize=4)
def _grid(h: int, w: int) -> np.ndarray:
    """(H, W, 2) float32 pixel coordinates (x, y). Read-only."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    grid = np.stack([xs, ys], axis=-1)
    grid.flags.writeable = False
    return grid


def _sample(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Backward warp: out(x) = image(x + flow(x)), bilinear, borders replicated."""
    maps = _grid(*flow.shape[:2]) + flow
    return cv2.remap(image, maps[..., 0], maps[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def occlusion(flow_ab: np.ndarray, flow_ba: np.ndarray, settings: FlowSettings) -> np.ndarray:
    """(H, W) float32 in [0, 1]: 1 where a pixel of frame a has no match in frame b (forward-backward check)."""
    h, w = flow_ab.shape[:2]
    back = _sample(flow_ba, flow_ab)  # F_ba at x + F_ab(x)
    err = np.sum((flow_ab + back) ** 2, axis=-1)
    bound = settings.consistency_a * (np.sum(flow_ab**2, axis=-1) + np.sum(back**2, axis=-1)) + settings.consistency_b
    target = _grid(h, w) + flow_ab
    outside = (target[..., 0] < 0) | (target[..., 0] > w - 1) | (target[..., 1] < 0) | (target[..., 1] > h - 1)
    mask = ((err > bound) | outside).astype(np.float32)
    if settings.mask_sigma > 0:
        mask = np.clip(cv2.GaussianBlur(mask, (0, 0), settings.mask_sigma) * 2.0, 0.0, 1.0)
    return mask


@dataclass(frozen=True)
class PairMotion:
    """Flows and occlusion masks of one frame pair, at flow resolution (``scale`` = flow px / frame px)."""

    f01: np.ndarray  # (h, w, 2)
    f10: np.ndarray  # (h, w, 2)
    occ0: np.ndarray  # (h, w): pixels of frame 0 with no match in frame 1
    occ1: np.ndarray  # (h, w): pixels of frame 1 with no match in frame 0
    scale: float


def pair_motion(frame0: np.ndarray, frame1: np.ndarray, settings: FlowSettings) -> PairMotion:
    g0, g1 = _gray(frame0), _gray(frame1)
    h, w = g0.shape
    scale = 1.0
    if settings.max_flow_side and max(h, w) > settings.max_flow_side:
        scale = settings.max_flow_side / max(h, w)
        size = (max(8, round(w * scale)), max(8, round(h * scale)))
        g0, g1 = (cv2.resize(g, size, interpolation=cv2.INTER_AREA) for g in (g0, g1))
    f01, f10 = estimate_flow(g0, g1, settings.method), estimate_flow(g1, g0, settings.method)
    return PairMotion(f01, f10, occlusion(f01, f10, settings), occlusion(f10, f01, settings), scale)


# ------------------------------------------------------------------------------------- intermediate


def _splat(flow: np.ndarray, t: float, weight: np.ndarray, acc: np.ndarray) -> None:
    """Forward-project `flow` scaled by t: each source pixel adds (weight, weight * flow, coverage)
    bilinearly at x + t flow(x) into acc (4, h * w). Targets outside the frame go to a dropped extra bin."""
    h, w = flow.shape[:2]
    pos = _grid(h, w) + np.float32(t) * flow
    x0, y0 = np.floor(pos[..., 0]), np.floor(pos[..., 1])
    fx, fy = pos[..., 0] - x0, pos[..., 1] - y0
    x0, y0 = x0.astype(np.int32), y0.astype(np.int32)
    base = y0 * w + x0
    in_x = ((x0 >= 0) & (x0 < w), (x0 >= -1) & (x0 < w - 1))
    in_y = ((y0 >= 0) & (y0 < h), (y0 >= -1) & (y0 < h - 1))
    wx, wy = (1 - fx, fx), (1 - fy, fy)
    idx = np.concatenate([np.where(in_x[dx] & in_y[dy], base + (dy * w + dx), h * w).reshape(-1)
                          for dy in (0, 1) for dx in (0, 1)])
    bil = np.concatenate([(wx[dx] * wy[dy]).reshape(-1) for dy in (0, 1) for dx in (0, 1)])
    wt = bil * np.tile(weight.reshape(-1).astype(np.float32, copy=False), 4)
    n = h * w + 1
    acc[0] += np.bincount(idx, wt, n)[:-1]
    acc[1] += np.bincount(idx, wt * np.tile(flow[..., 0].reshape(-1), 4), n)[:-1]
    acc[2] += np.bincount(idx, wt * np.tile(flow[..., 1].reshape(-1), 4), n)[:-1]
    acc[3] += np.bincount(idx, bil, n)[:-1]


def flows_at(motion: PairMotion, t: float, settings: FlowSettings) -> tuple[np.ndarray, np.ndarray]:
    """(F_t0, F_t1) at flow resolution: where a pixel at time t comes from in frame 0 and in frame 1."""
    f01, f10 = motion.f01, motion.f10
    h, w = f01.shape[:2]
    mag01, mag10 = np.linalg.norm(f01, axis=-1), np.linalg.norm(f10, axis=-1)
    top = max(float(mag01.max()), float(mag10.max()))
    k = settings.splat_sharpness
    acc = np.zeros((4, h * w), np.float64)
    # A pixel moving along F01 sits at x + t F01 at time t; its flow back to frame 0 is -t F01, i.e. the
    # projected F01 times -t (and (1 - t) towards frame 1). Sources with no match count 20x less.
    _splat(f01, t, np.exp(k * (mag01 - top)) * (1.0 - 0.95 * motion.occ0), acc)
    acc10 = np.zeros_like(acc)
    _splat(f10, 1.0 - t, np.exp(k * (mag10 - top)) * (1.0 - 0.95 * motion.occ1), acc10)
    total = acc[0] + acc10[0]
    covered = (acc[3] + acc10[3] > 0.05) & (total > 0)
    denom = np.where(covered, total, 1.0)
    # projected F01 (per unit) from frame 0 and -F10 (per unit) from frame 1 agree for a consistent motion
    unit = np.stack([(acc[1] - acc10[1]) / denom, (acc[2] - acc10[2]) / denom], axis=-1).reshape(h, w, 2)
    ft0, ft1 = -t * unit, (1.0 - t) * unit
    linear0 = -(1 - t) * t * f01 + t * t * f10
    linear1 = (1 - t) ** 2 * f01 - t * (1 - t) * f10
    hole = ~covered.reshape(h, w, 1)
    return np.where(hole, linear0, ft0).astype(np.float32), np.where(hole, linear1, ft1).astype(np.float32)


def _to_frame(flow: np.ndarray, scale: float, h: int, w: int) -> np.ndarray:
    """Flow at flow resolution -> flow in frame pixels at (h, w)."""
    if scale == 1.0 and flow.shape[:2] == (h, w):
        return flow
    return cv2.resize(flow, (w, h), interpolation=cv2.INTER_LINEAR) * np.float32(1.0 / scale)


def _resize(mask: np.ndarray, h: int, w: int) -> np.ndarray:
    return mask if mask.shape[:2] == (h, w) else cv2.resize(mask, (w, h), interpolation=cv2.INTER_LINEAR)


def interpolate_at(
    frame0: np.ndarray, frame1: np.ndarray, motion: PairMotion, t: float, settings: FlowSettings
) -> np.ndarray:
    """The frame at time t in (0, 1) between frame0 and frame1 (same dtype as the input)."""
    h, w = frame0.shape[:2]
    ft0, ft1 = flows_at(motion, t, settings)
    # occlusion of the sample each candidate takes, looked up at flow resolution
    occ0 = _sample(motion.occ0, ft0)  # the frame-0 sample has no match in frame 1
    occ1 = _sample(motion.occ1, ft1)
    ft0, ft1 = _to_frame(ft0, motion.scale, h, w), _to_frame(ft1, motion.scale, h, w)
    occ0, occ1 = _resize(occ0, h, w), _resize(occ1, h, w)
    a, b = frame0.astype(np.float32), frame1.astype(np.float32)
    warped0, warped1 = _sample(a, ft0), _sample(b, ft1)
    # Where only the frame-1 sample has no match in frame 0, frame 1 shows something frame 0 cannot (it is
    # hidden there): drop frame 0's candidate, and vice versa. Both or neither unmatched: blend by time.
    w0 = (1.0 - t) * (1.0 - occ1 * (1.0 - occ0))
    w1 = t * (1.0 - occ0 * (1.0 - occ1))
    out = (w0[..., None] * warped0 + w1[..., None] * warped1) / np.maximum(w0 + w1, 1e-6)[..., None]
    if frame0.dtype == np.uint8:
        return np.clip(out + 0.5, 0, 255).astype(np.uint8)
    return out.astype(frame0.dtype, copy=False)


def interpolate_pair(
    frame0: np.ndarray, frame1: np.ndarray, times: Iterable[float], settings: FlowSettings | None = None
) -> list[np.ndarray]:
    """Frames at each time in `times` (each in [0, 1]; 0 and 1 copy the inputs), flows computed once."""
    settings = settings or FlowSettings()
    _check_pair(frame0, frame1, 0)
    motion: PairMotion | None = None
    out = []
    for t in times:
        t = float(t)
        if not 0.0 <= t <= 1.0:
            raise InputError(f"interpolation time {t} is outside [0, 1]")
        if t in (0.0, 1.0):
            out.append((frame0 if t == 0.0 else frame1).copy())
            continue
        motion = motion or pair_motion(frame0, frame1, settings)
        out.append(interpolate_at(frame0, frame1, motion, t, settings))
    return out


# ---------------------------------------------------------------------------------------- streaming


def _check_pair(frame0: np.ndarray, frame1: np.ndarray, index: int) -> None:
    for i, f in ((index, frame0), (index + 1, frame1)):
        if not isinstance(f, np.ndarray) or f.ndim != 3 or f.shape[-1] != 3:
            shape = getattr(f, "shape", type(f).__name__)
            raise InputError(f"frame {i} must be a numpy (H, W, 3) RGB array, got {shape}")
    if frame0.shape != frame1.shape or frame0.dtype != frame1.dtype:
        raise InputError(
            f"frames {index} and {index + 1} differ: {frame0.shape[1]}x{frame0.shape[0]} {frame0.dtype} vs "
            f"{frame1.shape[1]}x{frame1.shape[0]} {frame1.dtype}; every frame of a video must have one size "
            "and type (resize them first)"
        )


def interpolate_stream(
    frames: Iterable[np.ndarray], step: Fraction | float, settings: FlowSettings | None = None
) -> Iterator[np.ndarray]:
    """Yield the retimed video frame by frame: output j is the frame at source position j * step.

    `frames` may be any iterable (e.g. a decoder's generator); at most two source frames and one
    pair's flows are held at once, so memory does not grow with the video's length. Flows are computed
    only for pairs that contain a non-whole position. Needs at least two frames.
    """
    settings = settings or FlowSettings()
    step = _fraction(step, "step")
    it = iter(frames)
    prev = next(it, None)
    if prev is None:
        raise InputError("no frames to interpolate: at least two frames are needed")
    index, j = 0, 0
    position = Fraction(0)
    for cur in it:
        _check_pair(prev, cur, index)
        motion: PairMotion | None = None
        while position < index + 1:
            t = position - index
            if t == 0:
                yield prev.copy()
            else:
                motion = motion or pair_motion(prev, cur, settings)
                yield interpolate_at(prev, cur, motion, float(t), settings)
            j += 1
            position = j * step
        prev, index = cur, index + 1
    if index == 0:
        raise InputError("only one frame: interpolation needs at least two frames")
    if position == index:
        yield prev.copy()


def interpolate_images(
    images: Tensor,
    *,
    factor: float | None = None,
    source_fps: float | None = None,
    target_fps: float | None = None,
    settings: FlowSettings | None = None,
    callback: Callable[[int, int], None] | None = None,
) -> tuple[Tensor, float | None]:
    """(t, H, W, 3) float frames in [0, 1] -> (retimed frames, output fps or None when unknown).

    The output (float32, CPU) is allocated once; the frames are produced pair by pair through
    :func:`interpolate_stream`. callback(frames_done, frames_total) runs after each output frame
    (raise in it to stop).
    """
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[-1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise InputError(f"images must be a (frames, H, W, 3) tensor, got {shape}")
    n = images.shape[0]
    if n < 2:
        raise InputError(f"interpolation needs at least two frames, got {n}")
    step, fps = resample_step(factor=factor, source_fps=source_fps, target_fps=target_fps)
    total = output_count(n, step)
    src = images.detach().to("cpu", torch.float32)
    out = torch.empty((total, *src.shape[1:]), dtype=torch.float32)  # (total, H, W, 3)
    frames = (src[i].numpy() for i in range(n))
    for i, frame in enumerate(interpolate_stream(frames, step, settings)):
        out[i] = torch.from_numpy(frame)
        if callback is not None:
            callback(i + 1, total)
    return out, fps
