"""Streaming decode for curation: cheap luma thumbnails for analysis, exact RGB frames at given times.

* :func:`stream_luma` yields every decoded frame's luma (Y plane) subsampled by an integer stride with numpy
  (no swscale colour conversion or scaling, which costs as much as decoding itself), with its presentation
  time from the frame's pts (correct for variable frame rates). Memory stays at one chunk of thumbnails.
* :func:`.frames_at.read_frames_at` (its own module) decodes the frames shown at given times as RGB.
* :func:`sample_indices` resamples a video's frames to a lower rate by timestamps.

Luma thumbnails are in *coded* geometry (not stretched by the SAR, not rotated); :class:`LumaGeometry`
gives the per-axis factors from thumbnail pixels to display pixels for measurements (optical flow) that
must be independent of resolution and pixel shape.

``fast=True`` sets FFmpeg's ``skip_loop_filter=all`` (H.264/HEVC decoders skip deblocking): 20-40% faster
decoding, slightly blockier pixels, irrelevant for cut and motion analysis on thumbnails. RGB frames from
:func:`.frames_at.read_frames_at` always decode exactly.

Reference frames (H.264): :class:`.h264_refs.H264References` reads each packet's ``nal_ref_idc`` (no decoding), so
:func:`luma_chunks` can tell, per decoded frame, whether other frames are predicted from it. With ``noref=True``
the decoder skips deblocking only on the non-reference frames (``skip_loop_filter=noref``): nothing is predicted
from them, so every reference frame still decodes exactly, bit for bit, and the cheap frames (most B-frames) get
cheaper still (5-13% less decoding on the broadcast sample).
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from os import PathLike

import av
import cv2
import numpy as np

from ..errors import InputError
from ..media.probe import (
    IMAGE_DEMUXERS,
    VideoInfo,
    mp4_damage,
    open_container,
    pick_video_stream,
    probe_video,
    size_error,
    undecodable_error,
)
from .h264_refs import H264References

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
    if info.container in IMAGE_DEMUXERS:
        raise InputError(f"{info.path} is a still image (FFmpeg reads it as {info.container!r}), not a video; "
                         "check the file's extension")
    w, h = info.coded_width, info.coded_height
    if w < 2 or h < 2:
        problem = size_error(info)  # 0x0: FFmpeg refused the (huge) size the file claims, or it has none
        raise problem or InputError(f"{info.path}: video size {w}x{h} is too small to analyse (need at least 2x2)")
    if max(w, h) > MAX_SIDE or w * h > MAX_PIXELS:
        raise InputError(
            f"{info.path}: video too large ({w}x{h}; limit {MAX_SIDE} px per side and {MAX_PIXELS} pixels); "
            "downscale it first, e.g. ffmpeg -vf scale=-2:2160"
        )
    if info.frame_count_exact and info.frame_count == 0:
        raise InputError(f"{info.path} has a video stream with zero frames (nothing to analyse)")
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


def configure_stream(stream: av.video.stream.VideoStream, threads: int, fast: bool, noref: bool = False) -> None:
    """Decoder threads; ``fast``: no deblocking (H.264 / HEVC); ``noref``: no deblocking of H.264 non-reference
    frames only (see :class:`H264References`; ignored with ``fast``)."""
    if threads == 1:
        stream.thread_count = 1
    else:
        stream.thread_type = "AUTO"
        stream.thread_count = max(0, threads)
    if fast and stream.codec_context.name in ("h264", "hevc"):
        stream.codec_context.options = {"skip_loop_filter": "all"}
    elif noref and stream.codec_context.name == "h264":
        stream.codec_context.options = {"skip_loop_filter": "noref"}


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
    on_frame: Callable[[int, av.VideoFrame, bool | None, bool], None] | None = None,
    references: bool = False,
    noref: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """Decode and yield ``(times (c,) float64 s, luma (c, h, w) uint8, chroma)`` chunks of ``chunk`` frames.

    ``chroma`` (when asked for and the pixel format is planar YUV): uint8 (c, 2, hc, wc), the U and V planes
    strided to about the luma thumbnail's size divided by ``chroma_step``; else None. The arrays are reused
    between chunks: copy what must outlive the next iteration. ``times`` come from the frames' pts (decode
    count / fps without pts). ``on_frame(index, frame, reference, exact)`` (optional) sees every decoded frame
    that is yielded, before its chunk is (``index`` counts yielded frames from 0), e.g. to keep a few exact
    pictures while analysing (:class:`.annotate.FrameCapture`): ``reference`` is whether it is an H.264
    reference frame (with ``references``, see :class:`H264References`; None where unknown: other codecs, frames
    without pts, interlaced frames), ``exact`` whether its pixels are the exact decode (not with ``fast``; with
    ``noref``, where H.264 non-reference frames are not deblocked, only the frames known to be references).
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
        refs = H264References.of(stream) if references and info.container != "h264" else None  # raw: no pts
        noref = noref and refs is not None and not fast
        configure_stream(stream, threads, fast, noref)
        ref_of: dict[int, bool | None] = {}  # packet pts -> whether it codes a reference picture

        def note_packet(packet: av.Packet | None) -> None:
            if refs is not None and packet is not None and packet.pts is not None and packet.size:
                ref_of[packet.pts] = refs.packet(packet)

        frames = decoded_frames(container, stream, stats) if refs is None else packet_frames(
            container, stream, stats, note_packet)
        tb = float(stream.time_base or Fraction(1, 1))
        fps = float(info.fps)
        if start_time:
            container.seek(max(0, int(start_time / tb)), stream=stream, backward=True)
        lo = -math.inf if start_time is None else start_time - 0.25 / fps
        hi = math.inf if end_time is None else end_time - 0.25 / fps
        n = 0
        count = 0  # frames yielded so far (the index on_frame gets)
        for frame in frames:
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
            if on_frame is not None:
                ref = ref_of.pop(stamp, None) if refs is not None and stamp is not None else None
                ref = None if ref and frame.interlaced_frame else ref  # a field's slices may sit in another packet
                on_frame(count, frame, ref, not fast and (not noref or ref is True))
            count += 1
            n += 1
            if n == chunk:
                yield pts, buf, uv_buf
                n = 0
        if n:
            yield pts[:n], buf[:n], None if uv_buf is None else uv_buf[:n]
    finally:
        container.close()


def decoded_frames(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, stats: DecodeStats
) -> Iterator[av.VideoFrame]:
    """Decoded frames; undecodable packets are skipped and counted; a demuxer failure ends the stream.

    PyAV's own decode loop runs until the first error (it is the fastest); from there on packets are
    decoded one by one (:func:`packet_frames`) so that a damaged packet costs only its own frames.
    """
    try:
        yield from container.decode(stream)
        stats.reached_end = True
        return
    except av.FFmpegError as exc:
        stats.error(exc)
    yield from packet_frames(container, stream, stats)


def packet_frames(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, stats: DecodeStats,
    before: Callable[[av.Packet | None], None] | None = None,
) -> Iterator[av.VideoFrame]:
    """Frames decoded packet by packet: an undecodable packet is skipped and counted (more than
    MAX_PACKET_ERRORS end the stream); a demuxer failure (truncated or corrupt container) flushes what the decoder
    holds. ``before(packet)`` runs before each packet is decoded, and ``before(None)`` before that flush (e.g. to
    set the decoder's skip_frame)."""
    try:
        for packet in container.demux(stream):
            if before is not None:
                before(packet)
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
        if before is not None:
            before(None)
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
        raise undecodable_error(info, stats.first_error)
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
    damage = mp4_damage(info.path) if short else ""
    head = "truncated" if short else "corrupt"
    parts = [f"{head}: decoded {stats.frames} of {total}"]
    if damage:
        parts.append(damage)
    if stats.errors:
        parts.append(f"{stats.errors} packet(s) failed (first error: {stats.first_error})")
    return "; ".join(parts) + "; only the decodable part was analysed"


def _first_pts(info: VideoInfo) -> float:
    container = open_container(info.path)
    try:
        stream = pick_video_stream(container)
        tb = float(stream.time_base or 1)
        return float(stream.start_time or 0) * tb
    finally:
        container.close()


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
