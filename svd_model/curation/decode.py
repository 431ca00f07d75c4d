"""Streaming decode for curation: cheap luma thumbnails for analysis, exact RGB frames at given times.

* :func:`stream_luma` yields every decoded frame's luma (Y plane) subsampled by an integer stride with numpy
  (no swscale colour conversion or scaling, which costs as much as decoding itself), with its presentation
  time from the frame's pts (correct for variable frame rates). Memory stays at one chunk of thumbnails.
* :func:`read_frames_at` decodes the frames shown at given times as display-corrected RGB (the pixel aspect
  ratio stretched out, the container rotation applied), optionally resized; it seeks only where that skips
  frames (a keyframe lies between the last decoded frame and the next time), so nothing decodes twice.
* :func:`sample_indices` resamples a video's frames to a lower rate by timestamps.

Luma thumbnails are in *coded* geometry (not stretched by the SAR, not rotated); :class:`LumaGeometry`
gives the per-axis factors from thumbnail pixels to display pixels for measurements (optical flow) that
must be independent of resolution and pixel shape.

``fast=True`` sets FFmpeg's ``skip_loop_filter=all`` (H.264/HEVC decoders skip deblocking): 20-40% faster
decoding, slightly blockier pixels, irrelevant for cut and motion analysis on thumbnails. RGB frames from
:func:`read_frames_at` always decode exactly.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from os import PathLike

import av
import cv2
import numpy as np

from ..errors import InputError
from ..videoio import VideoInfo, probe_video
from ..videoio_probe import open_container, pick_video_stream

logger = logging.getLogger(__name__)

MAX_SIDE = 16384  # larger frames are refused (no mainstream codec profile allows more)
MAX_PIXELS = 8192 * 8192
MAX_PACKET_ERRORS = 200
# right shift that brings each >8-bit luma format to 8 bits
_HIGH_DEPTH = {"yuv420p10le": 2, "yuv422p10le": 2, "yuv444p10le": 2, "yuv420p12le": 4, "yuv422p12le": 4, "p010le": 8}


@dataclass(frozen=True)
class LumaFrame:
    """One decoded frame's luma thumbnail. ``luma``: uint8 (h, w), coded geometry; ``time``: pts in s."""

    index: int
    time: float
    luma: np.ndarray


@dataclass(frozen=True)
class LumaGeometry:
    """How luma thumbnails relate to the display picture.

    ``stride``: the integer subsampling step of the Y plane; ``size``: thumbnail ``(width, height)``;
    ``scale``: display pixels per thumbnail pixel along ``(x, y)`` in coded orientation (includes the SAR);
    ``display``: display ``(width, height)`` after SAR and rotation.
    """

    stride: int
    size: tuple[int, int]
    scale: tuple[float, float]
    display: tuple[int, int]

    @property
    def display_short_side(self) -> int:
        return min(self.display)


@dataclass
class DecodeStats:
    """What a decode pass saw: frames out, packet errors, whether the demuxer reached the end, seeks made."""

    frames: int = 0
    errors: int = 0
    first_error: str = ""
    reached_end: bool = False
    seconds: float = 0.0
    seeks: int = 0
    first_time: float = math.nan
    last_time: float = math.nan

    def error(self, exc: Exception) -> None:
        self.errors += 1
        if not self.first_error:
            self.first_error = str(exc)


def open_info(path: str | PathLike[str]) -> VideoInfo:
    """:func:`probe_video` plus the checks curation needs: a video stream, a sane size, a decoder."""
    info = probe_video(path)
    if not info.has_video:
        kind = "an audio-only file" if info.has_audio else "a file without video or audio streams"
        raise InputError(f"{info.path} has no video stream: it is {kind} (container {info.container!r})")
    if info.container == "webp":
        raise InputError(f"{info.path} is an animated WebP; curation reads videos through FFmpeg: convert it to mp4")
    w, h = info.coded_width, info.coded_height
    if w < 2 or h < 2:
        raise InputError(f"{info.path}: video size {w}x{h} is too small to analyse (need at least 2x2)")
    if max(w, h) > MAX_SIDE or w * h > MAX_PIXELS:
        raise InputError(
            f"{info.path}: video size {w}x{h} is too large (limit {MAX_SIDE} px per side and {MAX_PIXELS} pixels); "
            "downscale it first, e.g. ffmpeg -vf scale=-2:2160"
        )
    try:
        av.codec.Codec(info.codec, "r")
    except (av.FFmpegError, ValueError) as exc:
        raise InputError(f"{info.path}: no decoder for the video codec {info.codec!r} in this FFmpeg build") from exc
    return info


def luma_geometry(info: VideoInfo, max_width: int) -> LumaGeometry:
    """Stride so the thumbnail's coded width is at most ``max_width`` (and at least half of it)."""
    stride = max(1, math.ceil(info.coded_width / max(1, max_width)))
    w, h = max(1, info.coded_width // stride), max(1, info.coded_height // stride)
    dw, dh = (info.height, info.width) if info.rotation % 180 else (info.width, info.height)  # unrotated display
    return LumaGeometry(stride, (w, h), (dw / w, dh / h), (info.width, info.height))


def _configure(stream: av.video.stream.VideoStream, threads: int, fast: bool) -> None:
    if threads == 1:
        stream.thread_count = 1
    else:
        stream.thread_type = "AUTO"
        stream.thread_count = max(0, threads)
    if fast and stream.codec_context.name in ("h264", "hevc"):
        stream.codec_context.options = {"skip_loop_filter": "all"}


_LITTLE = sys.byteorder == "little"
_WIDE = {2: np.uint16, 4: np.uint32, 8: np.uint64}


def _subsample(plane: np.ndarray, step: int, out: np.ndarray) -> None:
    """out[...] = plane[::step, ::step] cropped to out's shape; uint8 planes with step 2/4/8 read whole
    machine words (the low byte of each little-endian word is the wanted pixel): about 2x faster."""
    h, w = out.shape
    rows = plane[: h * step : step]
    if step in _WIDE and _LITTLE and plane.dtype == np.uint8 and rows.shape[1] >= w * step:
        out[...] = rows[:, : w * step].view(_WIDE[step])  # truncating cast keeps the low byte
    else:
        out[...] = rows[:, : w * step : step]


class _PlaneReader:
    """Copies a frame's Y (and U, V) planes, subsampled, into chunk buffers; built for one pixel format."""

    def __init__(self, frame: av.VideoFrame, stride: int, chroma_stride: int | None) -> None:
        self.key = (frame.format.name, frame.width, frame.height)
        name = frame.format.name
        self.shift = _HIGH_DEPTH.get(name, 0)
        planar8 = name.startswith(("yuv", "yuvj", "nv12", "nv21", "gray")) and frame.format.components[0].bits == 8
        self.direct = bool(self.shift) or planar8
        self.stride = stride
        self.uv: list[tuple[int, tuple[int, int]]] = []  # (step, (h, w)) per chroma plane
        if chroma_stride and len(frame.planes) >= 3 and name.startswith(("yuv", "yuvj")) and self.direct:
            for plane in frame.planes[1:3]:
                step = max(1, round(chroma_stride * plane.width / frame.width))
                self.uv.append((step, (max(1, plane.height // step), max(1, plane.width // step))))

    @property
    def uv_shape(self) -> tuple[int, int] | None:
        return self.uv[0][1] if self.uv else None

    def _plane(self, plane: av.video.plane.VideoPlane, height: int, width: int) -> np.ndarray:
        if self.shift:
            arr = np.frombuffer(plane, np.uint16).reshape(height, plane.line_size // 2)[:, :width]
            return (arr >> self.shift).astype(np.uint8)
        return np.frombuffer(plane, np.uint8).reshape(height, plane.line_size)[:, :width]

    def read(self, frame: av.VideoFrame, y_out: np.ndarray, uv_out: np.ndarray | None) -> None:
        """Y -> y_out (h, w); U, V -> uv_out (2, hc, wc) when the format has them."""
        if not self.direct:
            _subsample(frame.to_ndarray(format="gray"), self.stride, y_out)
            return
        planes = frame.planes
        _subsample(self._plane(planes[0], frame.height, frame.width), self.stride, y_out)
        if uv_out is not None:
            for i, (step, _) in enumerate(self.uv):
                plane = planes[i + 1]
                _subsample(self._plane(plane, plane.height, plane.width), step, uv_out[i])


def luma_chunks(
    info: VideoInfo,
    geometry: LumaGeometry,
    stats: DecodeStats,
    *,
    chunk: int = 64,
    threads: int = 1,
    fast: bool = False,
    start_time: float | None = None,
    end_time: float | None = None,
    chroma: bool = False,
    chroma_step: int = 1,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """Decode and yield ``(times (c,) float64 s, luma (c, h, w) uint8, chroma)`` chunks of ``chunk`` frames.

    ``chroma`` (when asked for and the pixel format is planar YUV): uint8 (c, 2, hc, wc), the U and V planes
    strided to about the luma thumbnail's size divided by ``chroma_step``; else None. The arrays are reused
    between chunks: copy what must outlive the next iteration. ``times`` come from the frames' pts (decode
    count / fps without pts).
    """
    stride = geometry.stride
    w, h = geometry.size
    buf = np.empty((chunk, h, w), np.uint8)  # (c h w)
    uv_buf: np.ndarray | None = None  # (c 2 hc wc), allocated at the first frame with chroma planes
    pts = np.zeros(chunk, np.float64)
    reader: _PlaneReader | None = None
    container = open_container(info.path)
    try:
        stream = pick_video_stream(container)
        if stream is None:  # pragma: no cover - open_info checked
            return
        _configure(stream, threads, fast)
        tb = float(stream.time_base or Fraction(1, 1))
        fps = float(info.fps)
        if start_time:
            container.seek(max(0, int(start_time / tb)), stream=stream, backward=True)
        lo = -math.inf if start_time is None else start_time - 0.25 / fps
        hi = math.inf if end_time is None else end_time - 0.25 / fps
        n = 0
        for frame in _frames(container, stream, stats):
            stamp = frame.pts
            t = stamp * tb if stamp is not None else stats.frames / fps
            stats.frames += 1
            if stats.frames == 1:
                stats.first_time = t
            if t < lo:
                continue
            if t >= hi:
                break
            if reader is None or reader.key != (frame.format.name, frame.width, frame.height):
                reader = _PlaneReader(frame, stride, stride * chroma_step if chroma else None)
                if reader.key[1:] != (info.coded_width, info.coded_height):  # size changed mid-stream
                    logger.warning("%s: frame size changed to %dx%d; analysing it resized", info.path, *reader.key[1:])
                if reader.uv_shape is not None and (uv_buf is None or uv_buf.shape[2:] != reader.uv_shape):
                    if uv_buf is not None and n:
                        yield pts[:n], buf[:n], uv_buf[:n]
                        n = 0
                    uv_buf = np.full((chunk, 2, *reader.uv_shape), 128, np.uint8)
            if reader.key[1:] == (info.coded_width, info.coded_height):
                reader.read(frame, buf[n], uv_buf[n] if uv_buf is not None and reader.uv else None)
            else:
                buf[n] = cv2.resize(frame.to_ndarray(format="gray"), (w, h), interpolation=cv2.INTER_AREA)
            pts[n] = t
            stats.last_time = t
            n += 1
            if n == chunk:
                yield pts, buf, uv_buf
                n = 0
        if n:
            yield pts[:n], buf[:n], None if uv_buf is None else uv_buf[:n]
    finally:
        container.close()


def _frames(container: av.container.InputContainer, stream, stats: DecodeStats) -> Iterator[av.VideoFrame]:
    """Decoded frames; undecodable packets are skipped and counted; a demuxer failure ends the stream.

    PyAV's own decode loop runs until the first error (it is the fastest); from there on packets are
    decoded one by one so that a damaged packet costs only its own frames.
    """
    try:
        yield from container.decode(stream)
        stats.reached_end = True
        return
    except av.FFmpegError as exc:
        stats.error(exc)
    try:
        for packet in container.demux(stream):
            try:
                yield from stream.decode(packet)
            except av.FFmpegError as exc:
                stats.error(exc)
                if stats.errors > MAX_PACKET_ERRORS:
                    return
        stats.reached_end = True
    except av.FFmpegError as exc:  # truncated or corrupt container: flush what the decoder holds
        stats.error(exc)
        stats.reached_end = True
        try:
            yield from stream.decode(None)
        except av.FFmpegError as flush_exc:
            stats.error(flush_exc)


def stream_luma(
    path: str | PathLike[str],
    *,
    max_width: int = 160,
    threads: int = 1,
    start_time: float | None = None,
    end_time: float | None = None,
    fast: bool = False,
) -> Iterator[LumaFrame]:
    """Yield every frame's luma thumbnail (uint8 (h, w), width <= ``max_width``, coded geometry).

    ``index`` counts decoded frames from the start of the file; after a seek (``start_time``) it is
    estimated as ``round((time - first pts) * fps)``, exact for constant-rate files. ``end_time`` is
    exclusive. Raises InputError for unreadable input (see :func:`open_info`) and when no frame decodes.
    """
    info = open_info(path)
    geometry = luma_geometry(info, max_width)
    stats = DecodeStats()
    t0: float | None = None
    count = 0
    for times, lumas, _ in luma_chunks(info, geometry, stats, threads=threads, fast=fast, start_time=start_time,
                                       end_time=end_time):  # fmt: skip
        for t, luma in zip(times.tolist(), lumas, strict=True):
            if start_time:
                if t0 is None:
                    t0 = _first_pts(info)
                index = round((t - t0) * float(info.fps))
            else:
                index = count
            count += 1
            yield LumaFrame(index, t, luma.copy())
    check_decoded(info, stats)


def check_decoded(info: VideoInfo, stats: DecodeStats) -> None:
    """Raise when nothing decoded; log a warning for lost packets or a short (truncated) stream."""
    if stats.frames == 0:
        detail = f" (first error: {stats.first_error})" if stats.first_error else ""
        raise InputError(f"no decodable video frames in {info.path}{detail}; the file is corrupt or truncated")
    note = damage_note(info, stats)
    if note:
        logger.warning("%s: %s", info.path, note)


def _short(info: VideoInfo, stats: DecodeStats) -> bool:
    """The stream ended well before the frame count or duration its header announces."""
    if not stats.reached_end:
        return False
    if info.frame_count_exact:
        return stats.frames < info.frame_count
    covered = stats.last_time - stats.first_time + 1.0 / float(info.fps)
    return info.duration > 0 and math.isfinite(covered) and covered < 0.95 * info.duration - 2.0 / float(info.fps)


def damage_note(info: VideoInfo, stats: DecodeStats) -> str:
    """'' for a clean decode, else a sentence on lost packets / missing frames."""
    short = _short(info, stats)
    if not stats.errors and not short:
        return ""
    total = f"the {info.frame_count} frames the header lists" if info.frame_count_exact else \
        f"about {info.frame_count} frames ({info.duration:.2f} s) the header announces"  # fmt: skip
    parts = [f"decoded {stats.frames} of {total}"]
    if stats.errors:
        parts.append(f"{stats.errors} packet(s) failed (first error: {stats.first_error})")
    return "; ".join(parts) + "; the file is truncated or corrupt, only the decodable part was analysed"


def _first_pts(info: VideoInfo) -> float:
    container = open_container(info.path)
    try:
        stream = pick_video_stream(container)
        tb = float(stream.time_base or 1)
        return float(stream.start_time or 0) * tb
    finally:
        container.close()


# ----------------------------------------------------------------------------------------------- RGB at times


def _rgb(frame: av.VideoFrame, info: VideoInfo, max_side: int | None) -> np.ndarray:
    """Display-corrected uint8 (H, W, 3): SAR stretched out, rotation applied, long side <= max_side."""
    dw, dh = (info.height, info.width) if info.rotation % 180 else (info.width, info.height)  # unrotated display
    if max_side and max(dw, dh) > max_side:
        s = max_side / max(dw, dh)
        dw, dh = max(1, round(dw * s)), max(1, round(dh * s))
    shrink = dw <= frame.width and dh <= frame.height
    arr = frame.to_ndarray(format="rgb24", width=dw, height=dh, interpolation="AREA" if shrink else "BICUBIC")
    if info.rotation:
        arr = np.rot90(arr, info.rotation // 90)  # (h w 3) counter-clockwise
    return np.ascontiguousarray(arr)


class _SeekProbe:
    """Where a backward seek to a time would land: the pts (stream ticks) of the first packet after seeking a
    second, demux-only container (nothing is decoded), so the decoding container keeps its position. Opened
    on first use; None where the packets carry no timestamps or the demuxer fails."""

    def __init__(self, path: PathLike[str] | str, stream_index: int) -> None:
        self.path, self.stream_index = path, stream_index
        self._container: av.container.InputContainer | None = None

    def landing(self, ticks: int) -> int | None:
        if self._container is None:
            self._container = open_container(self.path)
        stream = self._container.streams[self.stream_index]
        try:
            self._container.seek(max(0, ticks), stream=stream, backward=True)
            for packet in self._container.demux(stream):
                stamp = packet.pts if packet.pts is not None else packet.dts
                if stamp is not None:
                    return int(stamp)
        except av.FFmpegError:
            pass
        return None

    def close(self) -> None:
        if self._container is not None:
            self._container.close()


def read_frames_at(
    path: str | PathLike[str],
    times: Sequence[float],
    *,
    max_side: int | None = None,
    threads: int = 0,
    stats: DecodeStats | None = None,
) -> list[np.ndarray]:
    """RGB uint8 ``(H, W, 3)`` frames shown at each of ``times`` (pts seconds), in the order given.

    The frame shown at ``t`` is the last one whose pts is <= ``t`` (plus a quarter frame of tolerance);
    a time before the first frame gives the first frame, after the last gives the last. Frames are display
    corrected (SAR, rotation) and scaled so the long side is at most ``max_side`` (None = display size).
    Times are served in increasing order; the decoder seeks only where the keyframe a seek would land on
    lies after the last decoded frame, else it decodes forward, so no frame is decoded twice however sparse
    the keyframes. ``stats`` (optional) receives the count of decoded frames and seeks.
    """
    if not len(times):
        return []
    info = open_info(path)
    order = sorted(range(len(times)), key=lambda i: float(times[i]))
    out: list[np.ndarray | None] = [None] * len(times)
    eps = 0.25 / float(info.fps)
    stats = stats if stats is not None else DecodeStats()
    container = open_container(info.path)
    probe: _SeekProbe | None = None
    try:
        stream = pick_video_stream(container)
        _configure(stream, threads, fast=False)
        tb = float(stream.time_base or 1)
        probe = _SeekProbe(info.path, stream.index)
        frames: Iterator[av.VideoFrame] | None = None
        cur: tuple[float, av.VideoFrame] | None = None  # last frame with pts <= the current time
        nxt: tuple[float, av.VideoFrame] | None = None  # decoded look-ahead frame (pts > the current time)
        for i in order:
            t = float(times[i])
            target = math.floor((t + eps) / tb)  # pts ticks of the latest frame that counts as shown at t
            if frames is None or _seek_ahead(probe, target, tb, t, nxt or cur, eps):
                container.seek(max(0, target), stream=stream, backward=True)
                frames, cur, nxt = _frames(container, stream, stats), None, None
                stats.seeks += 1
            while nxt is None or nxt[0] <= t + eps:
                if nxt is not None:
                    cur, nxt = nxt, None
                frame = next(frames, None)
                if frame is None:
                    break  # end of stream: the last frame holds
                stats.frames += 1
                ft = frame.pts * tb if frame.pts is not None else (cur[0] if cur else 0.0) + 1 / float(info.fps)
                nxt = (ft, frame)
            chosen = cur or nxt  # before the first frame: the first frame
            if chosen is None:
                raise InputError(f"no decodable frame near t={t:.3f}s in {info.path}")
            out[i] = _rgb(chosen[1], info, max_side)
    finally:
        container.close()
        if probe is not None:
            probe.close()
    return [a for a in out if a is not None]


def _seek_ahead(probe: _SeekProbe, target: int, tb: float, t: float, last: tuple[float, av.VideoFrame] | None,
                eps: float) -> bool:
    """Seek rather than decode forward: the keyframe a seek to ``target`` lands on is after the last decoded
    frame ``last`` (time, frame). Without timestamps to tell, seek across gaps of over 2 s as a fallback."""
    if last is None or last[0] > t + eps:
        return False  # the answer is already decoded (or the stream ended)
    landing = probe.landing(target)
    if landing is None:
        return t > last[0] + 2.0
    return landing * tb > last[0] + 1e-6


def sample_indices(
    frame_times: np.ndarray, fps: float, *, start: float | None = None, end: float | None = None
) -> np.ndarray:
    """Indices of the frames nearest to the grid ``start + k / fps`` (k = 0, 1, ...) before ``end``.

    ``frame_times`` must be increasing (pts seconds of each frame). Repeats are removed, so a grid finer
    than the frames gives each frame once. Defaults: the first frame's time and the last frame's time.
    """
    times = np.asarray(frame_times, np.float64)
    if times.size == 0:
        return np.zeros(0, np.int64)
    t0 = times[0] if start is None else start
    t1 = times[-1] + 1e-9 if end is None else end
    grid = t0 + np.arange(max(0, math.ceil((t1 - t0) * fps - 1e-9))) / fps
    right = np.clip(np.searchsorted(times, grid), 0, times.size - 1)
    left = np.clip(right - 1, 0, times.size - 1)
    idx = np.where(np.abs(times[left] - grid) <= np.abs(times[right] - grid), left, right)
    return np.unique(idx)
