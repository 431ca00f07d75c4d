"""Synthetic test videos with known shot boundaries: textured "scenes", hard cuts, fades and dissolves.

:func:`make_video` renders a sequence of shots and encodes them as H.264 (libx264, yuv420p) with PyAV. Every
shot is a different procedural scene (fractal-noise terrain in its own colour palette, a sky/ground gradient,
a few soft shapes, fine grain), seen through a camera that pans or zooms at a given speed. Between shots
come hard cuts or gradual transitions of ``transition_frames`` frames:

* ``"fade"``: the first half fades shot A out to black, the second half fades shot B in from black
  (frame j of T: A * (1 - (2j+1)/T) while (2j+1)/T < 1, else B * ((2j+1)/T - 1)).
* ``"fade_white"``: the same through white (frame = A (1 - u) + 255 u).
* ``"dissolve"``: a cross-dissolve, frame j = (1 - a) A + a B with a = (j + 1) / (T + 1).
* ``"dip_black"`` / ``"dip_white"``: ``dip_frames`` (1-2) frames of near black (A * 0.04) or near white
  (A * 0.08 + 0.92 * 255) between the shots: a brief dip, as an editor's "dip to black/white".
* ``"flash"``: ``dip_frames`` frames of shot A overexposed (0.25 A + 0.75 * 255) between the shots: a camera
  flash or a flash-frame edit at the cut.

``gain`` gives each shot a slow brightness ramp (start and end factor over the shot's own frames, held
during transitions), the "gradual brightness change" that fades and dips must be told apart from.

Gradual transitions are inserted *between* the shots' own frames, and both scenes keep moving during the
transition. :class:`SyntheticTruth` gives the exact frame indices (0-based decoded order).

Everything is deterministic given ``seed`` (numpy ``Generator`` streams; libx264 is deterministic with one
thread). Keyframes sit exactly every ``gop`` frames (``sc_threshold=0``), which the clip-copy tests rely on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from os import PathLike
from pathlib import Path

import av
import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..errors import ConfigError

TRANSITION_KINDS: tuple[str, ...] = ("hard", "fade", "fade_white", "dissolve", "dip_black", "dip_white", "flash")
#: The brief transitions: ``dip_frames`` frames between the shots (see the module docstring).
BRIEF_KINDS: tuple[str, ...] = ("dip_black", "dip_white", "flash")
MOTION_KINDS: tuple[str, ...] = ("pan", "zoom")


@dataclass(frozen=True)
class SyntheticTruth:
    """Ground truth of a :func:`make_video` file (frame indices are 0-based, in decoded order).

    ``cuts``: first frame of each new shot; for a gradual or brief transition the frame in its middle
    (``first + T // 2``). ``transitions``: ``(first, last, kind)`` with ``last`` inclusive; a hard cut is
    ``(cut, cut, "hard")``; a brief one (dip, flash) spans its ``dip_frames`` frames. ``shots``: ``(start, end)``
    frame ranges of each shot's own frames, ``end`` exclusive (transition frames belong to no shot).
    ``keyframes``: frames encoded as keyframes. ``flashes``: frames replaced by a near-white flash (inside a shot).
    ``times``: presentation time of every frame (s).
    """

    cuts: tuple[int, ...]
    transitions: tuple[tuple[int, int, str], ...]
    num_frames: int
    fps: float
    shots: tuple[tuple[int, int], ...]
    keyframes: tuple[int, ...] = ()
    flashes: tuple[int, ...] = ()
    times: tuple[float, ...] = field(default=(), repr=False)
    size: tuple[int, int] = (0, 0)


# ----------------------------------------------------------------------------------------------- scenes


def _fractal(rng: np.random.Generator, height: int, width: int, octaves: int = 6) -> np.ndarray:
    """Smooth multi-octave noise, float32 (height, width) in [0, 1]."""
    out = np.zeros((height, width), np.float32)
    weight, total = 1.0, 0.0
    for o in range(octaves):
        gh, gw = 2 + 2**o, 2 + int(2**o * width / max(height, 1))
        grid = rng.standard_normal((gh, gw)).astype(np.float32)
        out += weight * cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
        total += weight
        weight *= 0.6
    out /= total
    lo, hi = np.percentile(out, [1, 99])
    return np.clip((out - lo) / max(hi - lo, 1e-6), 0.0, 1.0)


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6) % 6
    f = h * 6 - math.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i], np.float32)


def _scene(rng: np.random.Generator, height: int, width: int, hue: float) -> np.ndarray:
    """A textured, natural-looking scene: float32 (height, width, 3) RGB in [0, 255]."""
    terrain = _fractal(rng, height, width)
    grain = rng.random((height, width), dtype=np.float32)
    grain = cv2.GaussianBlur(grain, (0, 0), 0.8)
    value = float(rng.uniform(0.45, 0.95))
    stops = [_hsv_to_rgb((hue + d) % 1.0, float(rng.uniform(0.35, 0.9)), value * v) for d, v in
             ((0.0, 0.35), (0.06, 0.75), (0.12, 1.0))]  # fmt: skip
    t = terrain[..., None]
    low = stops[0] + (stops[1] - stops[0]) * np.clip(t * 2, 0, 1)
    img = np.where(t < 0.5, low, stops[1] + (stops[2] - stops[1]) * np.clip(t * 2 - 1, 0, 1))
    horizon = float(rng.uniform(0.25, 0.6)) * height
    sky = _hsv_to_rgb((hue + 0.5) % 1.0, float(rng.uniform(0.2, 0.6)), float(rng.uniform(0.5, 1.0)))
    rows = np.arange(height, dtype=np.float32)[:, None, None]
    sky_mix = np.clip((horizon - rows) / (0.08 * height + 1), 0, 1) * float(rng.uniform(0.3, 0.9))
    img = img * (1 - sky_mix) + sky * sky_mix
    canvas = np.ascontiguousarray(img * 255.0, dtype=np.float32)
    for _ in range(int(rng.integers(6, 14))):  # soft shapes: "objects"
        colour = _hsv_to_rgb(float(rng.random()), float(rng.uniform(0.2, 1)), float(rng.uniform(0.1, 1))) * 255
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        axes = (int(rng.integers(4, max(5, width // 10))), int(rng.integers(4, max(5, height // 6))))
        cv2.ellipse(canvas, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour.tolist(), -1, cv2.LINE_AA)
    canvas += (grain[..., None] - 0.5) * 40.0
    return np.clip(canvas, 0, 255)


def _text_layer(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Big caption text: (rgb float32 (h, w, 3), alpha float32 (h, w, 1))."""
    words = ["BREAKING NEWS", "SALE 50% OFF", "SUBSCRIBE", "LIVE TODAY", "HELLO WORLD"]
    text = words[int(rng.integers(0, len(words)))]
    font = ImageFont.load_default(size=max(8, height // 5))
    layer = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    box = draw.textbbox((0, 0), text, font=font, stroke_width=max(1, height // 60))
    x = max(0, (width - (box[2] - box[0])) // 2)
    y = int(height * 0.62)
    draw.text((x, y), text, font=font, fill=(255, 255, 240, 255), stroke_width=max(1, height // 60),
              stroke_fill=(10, 10, 10, 255))  # fmt: skip
    arr = np.asarray(layer, dtype=np.float32)
    return arr[..., :3], arr[..., 3:] / 255.0


@dataclass(frozen=True)
class _Shot:
    world: np.ndarray  # float32 (H, W, 3)
    origin: tuple[float, float]  # top-left of the view at local time 0 (pan) / centre (zoom)
    velocity: tuple[float, float]  # px per frame
    zoom_rate: float  # relative scale change per frame
    text: tuple[np.ndarray, np.ndarray] | None
    gain: tuple[float, float] = (1.0, 1.0)  # brightness factor at the shot's first and last own frame
    length: int = 1  # the shot's own frames

    def render(self, tau: float, width: int, height: int) -> np.ndarray:
        """View at local time ``tau`` (frames): float32 (height, width, 3)."""
        if self.zoom_rate:
            scale = 1.0 + self.zoom_rate * (tau + 64)  # always >= 1 over the shot (zoom in)
            cx, cy = self.origin
            m = np.float32([[scale, 0, cx - scale * width / 2], [0, scale, cy - scale * height / 2]])
            m = cv2.invertAffineTransform(m)
        else:
            x = self.origin[0] + self.velocity[0] * tau
            y = self.origin[1] + self.velocity[1] * tau
            m = np.float32([[1, 0, -x], [0, 1, -y]])
        out = cv2.warpAffine(self.world, m, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        if self.text is not None:
            rgb, alpha = self.text
            out = out * (1 - alpha) + rgb * alpha
        g0, g1 = self.gain
        if g0 != 1.0 or g1 != 1.0:
            out = np.clip(out * (g0 + (g1 - g0) * min(1.0, max(0.0, tau / max(1, self.length - 1)))), 0, 255)
        return out


def _make_shot(
    rng: np.random.Generator, index: int, length: int, pad: int, size: tuple[int, int], speed: float, kind: str,
    text: bool, gain: tuple[float, float] = (1.0, 1.0),
) -> _Shot:  # fmt: skip
    width, height = size
    hue = (0.13 + index * 0.618034) % 1.0
    span = speed * (length + 2 * pad) + 8
    if kind not in MOTION_KINDS:
        raise ConfigError(f"motion_kind must be from {MOTION_KINDS}, got {kind!r}")
    if kind == "zoom":
        world = _scene(rng, height + 16, width + 16, hue)
        rate = speed / (width / 2) * (64 / (64 + length + 2 * pad))
        layer = _text_layer(rng, height, width) if text else None
        return _Shot(world, ((width + 16) / 2, (height + 16) / 2), (0.0, 0.0), rate, layer, gain, length)
    angle = float(rng.uniform(0, 2 * math.pi))
    vx, vy = speed * math.cos(angle), speed * math.sin(angle)
    ww, wh = width + int(abs(vx) / max(speed, 1e-9) * span) + 8, height + int(abs(vy) / max(speed, 1e-9) * span) + 8
    world = _scene(rng, wh, ww, hue)
    # the view travels through the world; local time -pad .. length + pad stays inside it
    x0 = 4 + (abs(vx) * pad if vx >= 0 else ww - width - 4 - abs(vx) * pad)
    y0 = 4 + (abs(vy) * pad if vy >= 0 else wh - height - 4 - abs(vy) * pad)
    layer = _text_layer(rng, height, width) if text else None
    return _Shot(world, (x0, y0), (vx, vy), 0.0, layer, gain, length)


# ----------------------------------------------------------------------------------------------- encode


def _per_shot(values: Sequence | None, n: int, default: object, name: str) -> list:
    if values is None:
        return [default] * n
    if len(values) != n:
        raise ConfigError(f"{name} must have one entry per shot ({n}), got {len(values)}")
    return list(values)


def make_video(
    path: str | PathLike[str],
    *,
    shots: Sequence[int] = (50, 60, 40),
    transitions: Sequence[str] | None = None,
    transition_frames: int = 12,
    size: tuple[int, int] = (320, 180),
    fps: float = 25,
    motion: Sequence[float] | None = None,
    seed: int = 0,
    gop: int = 25,
    text: Sequence[bool] | None = None,
    crf: int = 20,
    motion_kind: Sequence[str] | None = None,
    flashes: Sequence[int] = (),
    timestamps: Sequence[float] | None = None,
    sar: Fraction | None = None,
    rotation: int = 0,
    noise: float = 2.0,
    preset: str = "veryfast",
    dip_frames: int = 2,
    gain: Sequence[tuple[float, float]] | None = None,
) -> SyntheticTruth:
    """Render and encode a synthetic multi-shot H.264 video; return its ground truth.

    Args:
        path: output file (.mp4 / .mkv / .mov), overwritten.
        shots: number of frames of each shot's own content.
        transitions: kind of each of the ``len(shots) - 1`` transitions (``"hard"``, ``"fade"``,
            ``"fade_white"``, ``"dissolve"``, ``"dip_black"``, ``"dip_white"``, ``"flash"``); None = all hard.
        transition_frames: length T of each gradual transition (frames inserted between the shots).
        size: ``(width, height)``, even numbers (yuv420p).
        fps: frame rate (the encoder's rate; ``timestamps`` can make it variable).
        motion: camera speed per shot in pixels per frame (pan) or edge pixels per frame (zoom); None = 0
            (static scenes, only the grain changes).
        seed: random seed of scenes, directions and grain.
        gop: keyframe interval in frames (fixed, no scene-cut keyframes).
        text: per shot, overlay big caption text.
        crf: libx264 constant rate factor.
        motion_kind: per shot ``"pan"`` (random direction) or ``"zoom"`` (in); None = all pan.
        flashes: frame indices replaced by a near-white flash (0.25 frame + 0.75 white).
        timestamps: presentation time (s) of every frame, strictly increasing (variable frame rate);
            None = ``i / fps``.
        sar: sample aspect ratio to store (e.g. ``Fraction(16, 11)``); None = square pixels.
        rotation: display rotation to store in the container (0, 90, 180, 270; counter-clockwise).
        noise: standard deviation of per-frame sensor noise on luma (0..255 scale).
        preset: libx264 preset.
        dip_frames: length (frames, 1..4) of the brief transitions (dips and flashes).
        gain: per shot ``(start, end)`` brightness factor (0.1..2), linear over the shot's own frames and
            held during the transitions next to it; None = 1 (constant brightness).
    """
    n_shots = len(shots)
    if n_shots < 1 or any(int(s) < 1 for s in shots):
        raise ConfigError(f"shots must be a non-empty list of positive frame counts, got {list(shots)!r}")
    kinds = _per_shot(transitions, n_shots - 1, "hard", "transitions")
    if any(k not in TRANSITION_KINDS for k in kinds):
        raise ConfigError(f"transitions must be from {TRANSITION_KINDS}, got {kinds!r}")
    if not 1 <= dip_frames <= 4:
        raise ConfigError(f"dip_frames must be 1..4 (a brief transition), got {dip_frames}")
    gains = [(float(g[0]), float(g[1])) for g in _per_shot(gain, n_shots, (1.0, 1.0), "gain")]
    if any(not (0.1 <= g <= 2.0) for pair in gains for g in pair):
        raise ConfigError(f"gain factors must be in 0.1..2, got {gains}")
    if transition_frames < 2 and any(k in ("fade", "fade_white", "dissolve") for k in kinds):
        raise ConfigError(f"transition_frames must be >= 2 for gradual transitions, got {transition_frames}")
    width, height = size
    if width % 2 or height % 2 or width < 16 or height < 16:
        raise ConfigError(f"size must be even and at least 16x16 (yuv420p), got {size}")
    speeds = [float(v) for v in _per_shot(motion, n_shots, 0.0, "motion")]
    mkinds = _per_shot(motion_kind, n_shots, "pan", "motion_kind")
    texts = [bool(t) for t in _per_shot(text, n_shots, False, "text")]
    rng = np.random.default_rng(seed)
    pad = transition_frames
    scenes = [
        _make_shot(np.random.default_rng([seed, i]), i, shots[i], pad, size, speeds[i], mkinds[i], texts[i], gains[i])
        for i in range(n_shots)
    ]
    # timeline: (shot a, local time a, shot b, local time b, weight of b, darkness) per frame
    plan: list[tuple[int, float, int, float, float, float]] = []
    cuts, spans, shot_ranges = [], [], []
    for i, length in enumerate(shots):
        start = len(plan)
        plan += [(i, float(t), i, float(t), 0.0, 0.0) for t in range(length)]
        shot_ranges.append((start, len(plan)))
        if i == n_shots - 1:
            break
        kind, first = kinds[i], len(plan)
        if kind == "hard":
            cuts.append(first)
            spans.append((first, first, kind))
            continue
        t_len = dip_frames if kind in BRIEF_KINDS else transition_frames
        for j in range(t_len):
            ta, tb = float(length + j), float(j - t_len)
            if kind in BRIEF_KINDS:  # darkness 1 = black; negative: towards white (-0.92 = 0.08 A + 0.92 white)
                plan.append((i, ta, i, ta, 0.0, {"dip_black": 0.96, "dip_white": -0.92, "flash": -0.75}[kind]))
            elif kind == "dissolve":
                plan.append((i, ta, i + 1, tb, (j + 1) / (t_len + 1), 0.0))
            else:
                u = (2 * j + 1) / t_len
                sign = -1.0 if kind == "fade_white" else 1.0  # negative darkness: towards white
                plan.append((i, ta, i, ta, 0.0, sign * u) if u < 1 else (i + 1, tb, i + 1, tb, 0.0, sign * (2 - u)))
        cuts.append(first + t_len // 2)
        spans.append((first, first + t_len - 1, kind))
    n = len(plan)
    if timestamps is not None:
        times = [float(t) for t in timestamps]
        if len(times) != n or any(b <= a for a, b in zip(times, times[1:], strict=False)):
            raise ConfigError(f"timestamps must be {n} strictly increasing times, got {len(times)}")
    else:
        times = [k / fps for k in range(n)]
    flash_set = {int(f) for f in flashes}
    _encode(path, plan, scenes, size, fps, times, timestamps is not None, flash_set, rng, noise, gop, crf, preset,
            sar, rotation)  # fmt: skip
    return SyntheticTruth(
        cuts=tuple(cuts), transitions=tuple(spans), num_frames=n, fps=float(fps), shots=tuple(shot_ranges),
        keyframes=tuple(range(0, n, gop)), flashes=tuple(sorted(flash_set)), times=tuple(times), size=size,
    )  # fmt: skip


_RGB_TO_YUV = np.array(  # BT.601, limited range: rows Y, U, V
    [[0.2568, 0.5041, 0.0979], [-0.1482, -0.2910, 0.4392], [0.4392, -0.3678, -0.0714]], np.float32
)


def make_audio_only(path: str | PathLike[str], *, rate: int = 16000, frames: int = 10) -> Path:
    """An AAC file with no video stream (``frames`` frames of 1024 silent samples at ``rate``)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = "mono"
        for i in range(frames):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, i * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return Path(path)


def _yuv420(img: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    """float RGB (h, w, 3) 0..255 -> uint8 yuv420p planes stacked (h * 3 / 2, w), sensor noise on luma."""
    h, w = img.shape[:2]
    yuv = cv2.transform(np.ascontiguousarray(img, np.float32), _RGB_TO_YUV)  # (h w 3)
    y = yuv[..., 0] + 16.0
    if noise:
        y += rng.standard_normal((h, w), dtype=np.float32) * noise
    uv = cv2.resize(yuv[..., 1:], (w // 2, h // 2), interpolation=cv2.INTER_AREA) + 128.0  # (h/2 w/2 2)
    out = np.empty((h * 3 // 2, w), np.uint8)
    out[:h] = np.clip(y + 0.5, 0, 255)
    out[h : h + h // 4] = np.clip(uv[..., 0] + 0.5, 0, 255).reshape(h // 4, w)
    out[h + h // 4 :] = np.clip(uv[..., 1] + 0.5, 0, 255).reshape(h // 4, w)
    return out


def _encode(
    path: str | PathLike[str], plan: list, scenes: list[_Shot], size: tuple[int, int], fps: float,
    times: list[float], vfr: bool, flashes: set[int], rng: np.random.Generator, noise: float, gop: int, crf: int,
    preset: str, sar: Fraction | None, rotation: int,
) -> None:  # fmt: skip
    width, height = size
    rate = Fraction(fps).limit_denominator(100_000)
    time_base = Fraction(1, 90_000) if vfr else 1 / rate
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(target), mode="w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = time_base
        stream.codec_context.time_base = time_base
        stream.thread_count = 1
        params = f"keyint={gop}:min-keyint={gop}:scenecut=0:threads=1:lookahead-threads=1"
        stream.options = {"crf": str(crf), "preset": preset, "x264-params": params}
        if sar is not None:
            stream.codec_context.sample_aspect_ratio = Fraction(sar)
        if rotation:
            stream.set_display_rotation(float(rotation))
        for k, (a, ta, b, tb, wb, dark) in enumerate(plan):
            img = scenes[a].render(ta, width, height)
            if wb:
                img = img * (1 - wb) + scenes[b].render(tb, width, height) * wb
            if dark > 0:
                img = img * (1 - dark)
            elif dark < 0:  # towards white
                img = img * (1 + dark) - 255 * dark
            if k in flashes:
                img = img * 0.25 + 255 * 0.75
            frame = av.VideoFrame.from_ndarray(_yuv420(img, rng, noise), format="yuv420p")
            frame.pts = round(times[k] / time_base) if vfr else k
            frame.time_base = time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
