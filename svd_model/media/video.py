"""Video and image file reading: probe, streaming decode, frame-rate resampling, resizing.

Frames leave as ComfyUI ``IMAGE`` tensors: float32 ``(t, H, W, 3)`` in ``[0, 1]``, RGB, height and width
in *display* orientation. :func:`iter_frames` yields the same frames as uint8 ``(H, W, 3)`` numpy arrays one
at a time for videos too long to hold in memory. Writing lives in :mod:`.write` and is re-exported here.

Decisions (the behaviour callers can rely on):

* **Pixel aspect (SAR).** Output frames have square pixels and the display aspect. With ``size=None`` the
  short axis is stretched and no coded pixel is dropped: SAR > 1 widens (704x576 at SAR 16:11 -> 1024x576),
  SAR < 1 heightens (``height / SAR``). A requested ``size`` is a display-space size; ``resize_mode`` works
  on the display aspect, so ``cover``/``contain`` never distort.
* **Rotation.** The container's display matrix (phone videos) is honoured in multiples of 90 degrees; flips
  in the matrix are ignored. ``size`` is given in the rotated (display) orientation.
* **Selection order.** ``skip_first`` drops decoded source frames; then ``target_fps`` resamples the rest on
  the grid ``t0 + k / target_fps`` (``t0`` = first kept frame's timestamp), each grid point taking the frame
  with the nearest presentation timestamp (the earlier one on a tie), except that a frame more than half an
  output period after the grid point is not due yet, so the previous frame holds: variable-frame-rate gaps
  and long-held frames (gif/webp delays) repeat the frame on screen, and upsampling repeats frames (e.g.
  30 -> 60 fps gives 0, 0, 1, 1, ...; 30 -> 10 fps gives 0, 3, 6, ...); then ``every_nth`` keeps every n-th
  of those; then ``frame_cap`` stops decoding once that many frames are out. Effective fps =
  ``(target_fps or source fps) / every_nth``; for variable-frame-rate input without ``target_fps`` the source
  fps is the container's average rate.
* **Damaged files.** Undecodable packets are skipped. If at least one frame decodes, the frames are returned
  and a warning is logged (also when fewer frames than the header promises arrive: a truncated file). When
  none decodes: :class:`InputError` "no decodable video frames". An MP4 cut short usually loses its index
  (the ``moov`` atom, written last unless ``faststart``), so FFmpeg cannot open it: :class:`InputError` too.
* **Animated WebP** is decoded with Pillow (FFmpeg's WebP decoder reads still images only); GIF and
  everything else with PyAV/FFmpeg. Text files (FFmpeg would render them as "ANSI art" video) are refused.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from os import PathLike
from typing import Literal

import av
import numpy as np
import torch
from PIL import Image

from ..errors import ConfigError, InputError
from .image import read_image, read_image_rgba
from .probe import (
    VideoInfo,
    display_size,
    open_container,
    pick_video_stream,
    probe_video,
    size_error,
    undecodable_error,
)
from .resize import cover_box
from .write import FORMATS, read_video_metadata, write_video

__all__ = [
    "FORMATS",
    "IMAGE_EXTENSIONS",
    "RESIZE_MODES",
    "VIDEO_EXTENSIONS",
    "VideoInfo",
    "iter_frames",
    "probe_video",
    "read_image",
    "read_image_rgba",
    "read_video",
    "read_video_metadata",
    "write_video",
]

logger = logging.getLogger(__name__)

ResizeMode = Literal["stretch", "cover", "contain"]
RESIZE_MODES: tuple[str, ...] = ("stretch", "cover", "contain")
#: What the pack lists and scans for as videos (the Load Video file list, a training folder): the common
#: containers plus animated GIF / WebP. (Curation scans a longer list of FFmpeg containers: curation/engine.py.)
VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".gif", ".webp", ".m4v")
#: What the pack lists as still images (the Load Image file list); read with Pillow.
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
_MAX_PACKET_ERRORS = 200


# ----------------------------------------------------------------------------------------------- decode


class _DecodeLog:
    """What happened while decoding: frames out, packets lost, whether the end of the file was reached."""

    def __init__(self) -> None:
        self.decoded = 0
        self.errors = 0
        self.first_error = ""
        self.reached_end = False

    def error(self, exc: Exception) -> None:
        self.errors += 1
        if not self.first_error:
            self.first_error = str(exc)


# A decoded frame: (presentation time s, duration s or None, frame object: av.VideoFrame or PIL image)
_Decoded = tuple[Fraction, "Fraction | None", object]


def _decode_av(info: VideoInfo, log: _DecodeLog) -> Iterator[_Decoded]:
    container = open_container(info.path)
    try:
        stream = pick_video_stream(container)
        if stream is None:  # pragma: no cover - probe_video already checked
            return
        stream.thread_type = "AUTO"
        time_base = stream.time_base or Fraction(1, 1)

        def stamped(frames: list[av.VideoFrame]) -> Iterator[_Decoded]:
            for frame in frames:
                if frame.pts is None:
                    t = Fraction(log.decoded) / info.fps
                else:
                    t = frame.pts * (frame.time_base or time_base)
                dur = frame.duration * (frame.time_base or time_base) if frame.duration else None
                log.decoded += 1
                yield t, dur, frame

        try:
            for packet in container.demux(stream):
                try:
                    frames = stream.decode(packet)
                except av.FFmpegError as exc:
                    log.error(exc)
                    if log.errors > _MAX_PACKET_ERRORS:
                        return
                    continue
                yield from stamped(frames)
            log.reached_end = True
        except av.FFmpegError as exc:  # the demuxer gave up (truncated or corrupt container)
            log.error(exc)
            log.reached_end = True
            try:
                yield from stamped(stream.decode(None))
            except av.FFmpegError as flush_exc:
                log.error(flush_exc)
    finally:
        container.close()


def _decode_pillow(info: VideoInfo, log: _DecodeLog) -> Iterator[_Decoded]:
    try:
        with Image.open(info.path) as image:
            t_ms = 0
            for k in range(getattr(image, "n_frames", 1)):
                image.seek(k)
                image.load()
                dur_ms = int(image.info.get("duration") or 0)
                log.decoded += 1
                yield Fraction(t_ms, 1000), (Fraction(dur_ms, 1000) if dur_ms else None), image.convert("RGB")
                t_ms += dur_ms
        log.reached_end = True
    except (OSError, ValueError, EOFError) as exc:
        log.error(exc)
        log.reached_end = True


# ----------------------------------------------------------------------------------------------- selection


class _Selector:
    """Streaming frame selection: skip_first -> target_fps grid (nearest pts) -> every_nth -> frame_cap."""

    def __init__(self, skip_first: int, every_nth: int, frame_cap: int, target_fps: Fraction | None) -> None:
        self.skip_first, self.every_nth, self.frame_cap, self.target_fps = skip_first, every_nth, frame_cap, target_fps
        self.seen = 0  # decoded frames pushed
        self.candidates = 0  # frames after resampling (before every_nth)
        self.emitted = 0
        self.prev: tuple[Fraction, Fraction | None, object] | None = None
        self.t0: Fraction | None = None
        self.k = 0

    @property
    def done(self) -> bool:
        return 0 < self.frame_cap <= self.emitted

    def _offer(self, frame: object) -> list[object]:
        keep = self.candidates % self.every_nth == 0 and not self.done
        self.candidates += 1
        if keep:
            self.emitted += 1
            return [frame]
        return []

    def _grid(self) -> Fraction:
        assert self.t0 is not None and self.target_fps is not None
        return self.t0 + self.k / self.target_fps

    def push(self, t: Fraction, dur: Fraction | None, frame: object) -> list[object]:
        """Frames to output now (possibly the previous frame, possibly repeated)."""
        self.seen += 1
        if self.seen <= self.skip_first:
            return []
        if self.target_fps is None:
            return self._offer(frame)
        if self.t0 is None:
            self.t0 = t
        out: list[object] = []
        while not self.done and self._grid() <= t:
            g = self._grid()
            # nearest timestamp (ties: earlier), but a frame more than half an output period ahead of the grid
            # point is not due yet: the previous frame holds (gaps, merged/held frames in gif/webp)
            early = t - g > 1 / (2 * self.target_fps)
            use_prev = self.prev is not None and (early or g - self.prev[0] <= t - g)
            out += self._offer(self.prev[2] if use_prev and self.prev is not None else frame)
            self.k += 1
        self.prev = (t, dur, frame)
        return out

    def finish(self, fallback_duration: Fraction) -> list[object]:
        """Grid points after the last frame's timestamp but before its end show the last frame."""
        if self.target_fps is None or self.prev is None:
            return []
        t, dur, frame = self.prev
        end = t + (dur or fallback_duration)
        out: list[object] = []
        while not self.done and self._grid() < end:
            out += self._offer(frame)
            self.k += 1
        return out


# ----------------------------------------------------------------------------------------------- resize


@dataclass(frozen=True)
class _Plan:
    """Per-frame conversion: scale to ``scale`` (coded orientation), crop or pad, rotate by ``quarter`` x 90."""

    scale: tuple[int, int]
    crop: tuple[int, int, int, int] | None  # x0, y0, w, h inside the scaled frame
    pad: tuple[int, int, int, int] | None  # canvas w, h, x0, y0 where the scaled frame goes
    quarter: int
    shrink: bool

    @staticmethod
    def make(info: VideoInfo, size: tuple[int, int] | None, mode: str) -> _Plan:
        quarter = info.rotation // 90
        dw, dh = display_size(info.coded_width, info.coded_height, info.sar, 0)  # display, unrotated
        shrink = dw <= info.coded_width and dh <= info.coded_height
        if size is None:
            return _Plan((dw, dh), None, None, quarter, shrink)
        tw, th = (size[1], size[0]) if quarter % 2 else size
        shrink = tw <= info.coded_width and th <= info.coded_height
        if mode == "stretch":
            return _Plan((tw, th), None, None, quarter, shrink)
        if mode == "cover":
            sw, sh, x0, y0 = cover_box(dw, dh, tw, th)
            return _Plan((sw, sh), (x0, y0, tw, th), None, quarter, shrink)
        s = min(tw / dw, th / dh)  # contain
        sw, sh = min(tw, max(1, round(dw * s))), min(th, max(1, round(dh * s)))
        return _Plan((sw, sh), None, (tw, th, (tw - sw) // 2, (th - sh) // 2), quarter, shrink)

    def apply(self, frame: object) -> np.ndarray:
        """av.VideoFrame or PIL RGB image -> uint8 (H, W, 3), display orientation, C-contiguous."""
        sw, sh = self.scale
        if isinstance(frame, av.VideoFrame):
            interpolation = "AREA" if self.shrink else "BICUBIC"
            arr = frame.to_ndarray(format="rgb24", width=sw, height=sh, interpolation=interpolation)
        else:
            assert isinstance(frame, Image.Image)
            if frame.size != (sw, sh):
                resample = Image.Resampling.BOX if self.shrink else Image.Resampling.BICUBIC
                frame = frame.resize((sw, sh), resample)
            arr = np.array(frame)  # writable copy
        if self.crop is not None:
            x0, y0, w, h = self.crop
            arr = arr[y0 : y0 + h, x0 : x0 + w]
        if self.pad is not None:
            cw, ch, x0, y0 = self.pad
            canvas = np.zeros((ch, cw, 3), dtype=np.uint8)  # letterbox bars are black
            canvas[y0 : y0 + arr.shape[0], x0 : x0 + arr.shape[1]] = arr
            arr = canvas
        if self.quarter:
            arr = np.rot90(arr, self.quarter)  # (h w 3) rotated counter-clockwise
        return np.ascontiguousarray(arr)


# ----------------------------------------------------------------------------------------------- read


def _check_params(
    frame_cap: int,
    skip_first: int,
    every_nth: int,
    target_fps: float | Fraction | None,
    size: tuple[int, int] | None,
    resize_mode: str,
) -> Fraction | None:
    for name, value, low in (("frame_cap", frame_cap, 0), ("skip_first", skip_first, 0), ("every_nth", every_nth, 1)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
    if resize_mode not in RESIZE_MODES:
        raise ConfigError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
    if size is not None and (len(size) != 2 or any(not isinstance(v, numbers.Integral) or v < 1 for v in size)):
        raise ConfigError(f"size must be (width, height) with positive integers, got {size!r}")
    if target_fps is None:
        return None
    if isinstance(target_fps, bool) or not isinstance(target_fps, numbers.Real) or not 0 < target_fps < 10_000:
        raise ConfigError(f"target_fps must be a positive number (frames per second) or None, got {target_fps!r}")
    exact = target_fps if isinstance(target_fps, Fraction) else Fraction(float(target_fps))
    return exact.limit_denominator(1_000_000)


def _frames(
    info: VideoInfo, frame_cap: int, skip_first: int, every_nth: int, target_fps: Fraction | None, plan: _Plan
) -> Iterator[np.ndarray]:
    log = _DecodeLog()
    selector = _Selector(skip_first, every_nth, frame_cap, target_fps)
    decoded = _decode_pillow(info, log) if info.container == "webp" else _decode_av(info, log)
    last: tuple[object, np.ndarray] | None = None

    def convert(frame: object) -> np.ndarray:
        nonlocal last
        if last is not None and last[0] is frame:  # a repeated frame (upsampling): convert once, copy
            return last[1].copy()
        arr = plan.apply(frame)
        last = (frame, arr)
        return arr

    try:
        for t, dur, frame in decoded:
            for chosen in selector.push(t, dur, frame):
                yield convert(chosen)
            if selector.done:
                break
        else:
            for chosen in selector.finish(1 / info.fps):
                yield convert(chosen)
    finally:
        decoded.close()
    if log.decoded == 0:
        raise undecodable_error(info, log.first_error)
    if log.errors or (log.reached_end and info.frame_count_exact and log.decoded < info.frame_count):
        logger.warning(
            "%s: decoded %d of the %d frames the header lists (%d packets failed%s); the file may be truncated or "
            "corrupt; returning the decodable frames",
            info.path,
            log.decoded,
            info.frame_count,
            log.errors,
            f", first error: {log.first_error}" if log.first_error else "",
        )
    if selector.emitted == 0:
        raise InputError(
            f"no frames left to return from {info.path}: skip_first={skip_first} skips all {log.decoded} decoded "
            f"frames; use a smaller skip_first (at most {log.decoded - 1})"
        )


def iter_frames(
    path: str | PathLike[str],
    *,
    frame_cap: int = 0,
    skip_first: int = 0,
    every_nth: int = 1,
    target_fps: float | Fraction | None = None,
    size: tuple[int, int] | None = None,
    resize_mode: ResizeMode = "stretch",
) -> Iterator[np.ndarray]:
    """Decode a video lazily, yielding uint8 RGB frames ``(H, W, 3)`` in ``[0, 255]`` (display orientation).

    Arguments as :func:`read_video`. The file is probed (and bad arguments refused) when this is called;
    decoding errors surface while iterating. Memory stays at about one decoded frame plus the one yielded.
    """
    fps = _check_params(frame_cap, skip_first, every_nth, target_fps, size, resize_mode)
    info = probe_video(path)
    _require_video(info)
    return _frames(info, frame_cap, skip_first, every_nth, fps, _Plan.make(info, size, resize_mode))


def _require_video(info: VideoInfo) -> None:
    if not info.has_video:
        kind = "an audio-only file" if info.has_audio else "a file without video or audio streams"
        raise InputError(f"{info.path} has no video stream: it is {kind} (container {info.container!r})")
    problem = size_error(info)
    if problem is not None:
        raise problem


def read_video(
    path: str | PathLike[str],
    *,
    frame_cap: int = 0,
    skip_first: int = 0,
    every_nth: int = 1,
    target_fps: float | Fraction | None = None,
    size: tuple[int, int] | None = None,
    resize_mode: ResizeMode = "stretch",
) -> tuple[torch.Tensor, float]:
    """Decode a video file into a ComfyUI ``IMAGE`` batch.

    Args:
        path: any container/codec FFmpeg reads (mp4, mov, mkv, webm, avi, gif...), or an animated WebP.
        frame_cap: stop after this many output frames (0 = no limit); decoding stops there too.
        skip_first: decoded source frames to drop first.
        every_nth: keep every n-th frame after resampling (1 = all).
        target_fps: resample to this rate by nearest timestamp (None = keep the source frames).
        size: ``(width, height)`` of the output in display space (None = display size, see module notes).
        resize_mode: ``"stretch"`` (ignore aspect), ``"cover"`` (scale to fill, centre crop) or
            ``"contain"`` (scale to fit, centred on black bars).

    Returns:
        ``(frames, fps)``: float32 ``(t, H, W, 3)`` in ``[0, 1]`` and the effective frame rate of those
        frames, ``(target_fps or source fps) / every_nth``.

    Raises:
        InputError: missing/empty/unreadable/text/audio-only file, no decodable frame, or nothing left after
            ``skip_first``. ConfigError: invalid arguments.
    """
    fps = _check_params(frame_cap, skip_first, every_nth, target_fps, size, resize_mode)
    info = probe_video(path)
    _require_video(info)
    frames = list(_frames(info, frame_cap, skip_first, every_nth, fps, _Plan.make(info, size, resize_mode)))
    height, width = frames[0].shape[:2]
    out = torch.empty((len(frames), height, width, 3), dtype=torch.float32)  # (t H W 3)
    for i, arr in enumerate(frames):
        out[i] = torch.from_numpy(arr)
        frames[i] = None  # type: ignore[call-overload]  # release the uint8 copy as we go
    out.div_(255.0)
    return out, float((fps or info.fps) / every_nth)
