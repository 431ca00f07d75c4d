"""Exact frames at given times for curation (keyframes, report thumbnails): display-corrected RGB (the pixel
aspect ratio stretched out, the container rotation applied), optionally resized. :func:`read_frames_at` seeks only
where that skips frames (a keyframe lies between the last decoded frame and the next time), so nothing decodes
twice however sparse the keyframes. The analysis decode (luma thumbnails) is :mod:`.decode`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from os import PathLike

import av
import numpy as np

from ..errors import InputError
from ..media.probe import VideoInfo, open_container, pick_video_stream
from .decode import DecodeStats, configure_stream, decoded_frames, open_info, packet_frames


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


#: Where read_frames_at seeks for a time: at it (backward to the keyframe before, where the demuxer knows them),
#: then, when no frame at or before the time decodes from there, 2 s and 10 s earlier, then from the start.
SEEK_BACK_S: tuple[float | None, ...] = (0.0, 2.0, 10.0, None)


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
    frame_times: Sequence[float] | np.ndarray | None = None,
) -> list[np.ndarray]:
    """RGB uint8 ``(H, W, 3)`` frames shown at each of ``times`` (pts seconds), in the order given.

    The frame shown at ``t`` is the last one whose pts is <= ``t`` (plus a quarter frame of tolerance);
    a time before the first frame gives the first frame, after the last gives the last. Frames are display
    corrected (SAR, rotation) and scaled so the long side is at most ``max_side`` (None = display size).
    Times are served in increasing order; the decoder seeks only where the keyframe a seek would land on
    lies after the last decoded frame, else it decodes forward, so no frame is decoded twice however sparse
    the keyframes. ``stats`` (optional) receives the count of decoded frames and seeks.
    ``frame_times``: the pts (s) of every frame of the file (e.g. VideoAnnotation.frame_times, from the analysis
    decode); with them and a single-threaded decoder, non-reference frames that are not asked for are skipped
    (never displayed, never needed by another frame: about 40% less work on H.264 with B-frames). The frames
    returned are the same.
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
        configure_stream(stream, threads, fast=False)
        tb = float(stream.time_base or 1)
        keep = _shown_ticks(frame_times, times, tb, eps) if frame_times is not None and threads == 1 else None
        probe = _SeekProbe(info.path, stream.index)
        frames: Iterator[av.VideoFrame] | None = None
        cur: tuple[float, av.VideoFrame] | None = None  # last frame with pts <= the current time
        nxt: tuple[float, av.VideoFrame] | None = None  # decoded look-ahead frame (pts > the current time)
        for i in order:
            t = float(times[i])
            target = math.floor((t + eps) / tb)  # pts ticks of the latest frame that counts as shown at t
            seek = frames is None or _seek_ahead(probe, target, tb, t, nxt or cur, eps)
            for back in SEEK_BACK_S if seek else (0.0,):
                if seek:  # ``back`` s before the target (None: from the start)
                    container.seek(0 if back is None else max(0, target - round(back / tb)), stream=stream,
                                   backward=True)
                    frames = decoded_frames(container, stream, stats) if keep is None else _skipping(
                        container, stream, stats, keep)
                    cur, nxt = None, None
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
                if cur is not None or not seek:
                    break
                # nothing decoded at or before t after the seek: it landed past t or on a frame that needs earlier
                # ones (MPEG-TS seeks to any packet, and the decoder waits for the next keyframe): seek further back
            chosen = cur or nxt  # before the first frame (even seeking from the start): the first frame
            if chosen is None:
                raise InputError(f"no decodable frame near t={t:.3f}s in {info.path}")
            out[i] = _rgb(chosen[1], info, max_side)
    finally:
        container.close()
        if probe is not None:
            probe.close()
    return [a for a in out if a is not None]


def read_intra_frames(
    path: str | PathLike[str],
    times: Sequence[float],
    *,
    max_side: int | None = None,
    stats: DecodeStats | None = None,
) -> list[np.ndarray]:
    """RGB uint8 ``(H, W, 3)`` intra-coded frames whose pts (s) are ``times`` (e.g. clips.PacketIndex's
    ``keyframe_times``), in the order given, display corrected as in :func:`read_frames_at`.

    Each is decoded alone: one seek to its pts, the decoder told to skip every non-key frame
    (skip_frame=NONKEY), so a frame costs one frame's decoding however long its GOP. An intra frame references
    no other frame, so the picture is the one :func:`read_frames_at` gives at that time. A time that is not the
    pts of a decodable intra frame is an InputError.
    """
    if not len(times):
        return []
    info = open_info(path)
    stats = stats if stats is not None else DecodeStats()
    container = open_container(info.path)
    out: list[np.ndarray] = []
    try:
        stream = pick_video_stream(container)
        configure_stream(stream, 1, fast=False)
        tb = float(stream.time_base or 1)
        for t in times:
            target = round(float(t) / tb)
            frame = _intra_frame(container, stream, target, stats)
            if frame is None:
                raise InputError(f"no intra frame at t={float(t):.3f}s in {info.path}")
            out.append(_rgb(frame, info, max_side))
    finally:
        container.close()
    return out


def _intra_frame(container: av.container.InputContainer, stream: av.video.stream.VideoStream, target: int,
                 stats: DecodeStats) -> av.VideoFrame | None:
    """The key frame with pts ``target`` (stream ticks), decoded alone after a seek; None if there is none."""
    ctx = stream.codec_context
    container.seek(max(0, target), stream=stream, backward=True)
    ctx.flush_buffers()
    ctx.skip_frame = "NONKEY"
    stats.seeks += 1
    try:
        for packet in container.demux(stream):
            try:
                decoded = stream.decode(packet)
            except av.FFmpegError as exc:
                stats.error(exc)
                continue
            for frame in decoded:
                stats.frames += 1
                if frame.pts == target:
                    return frame if _is_intra(frame) else None
            if packet.pts is not None and packet.pts >= target:
                break  # the target was fed: the decoder's delay holds it
        for frame in stream.decode(None):  # drain (flush_buffers above readies the decoder for the next seek)
            stats.frames += 1
            if frame.pts == target:
                return frame if _is_intra(frame) else None
    except av.FFmpegError as exc:
        stats.error(exc)
    finally:
        ctx.skip_frame = "DEFAULT"
    return None


def _is_intra(frame: av.VideoFrame) -> bool:
    """A key frame or an I picture (pict_type 1): nothing else was decoded before it, so only such a frame is
    exact when decoded alone (a recovery-point 'keyframe' of an intra-refresh stream is not)."""
    return bool(frame.key_frame) or int(frame.pict_type) == 1


def _shown_ticks(frame_times: Sequence[float] | np.ndarray, times: Sequence[float], tb: float,
                 eps: float) -> set[int] | None:
    """pts (stream ticks) of the frames shown at ``times`` (the last frame time <= t + eps); None without
    usable frame times."""
    ft = np.asarray(frame_times, np.float64)
    if ft.ndim != 1 or not len(ft) or not np.all(np.isfinite(ft)) or np.any(np.diff(ft) <= 0):
        return None
    idx = np.searchsorted(ft, np.asarray(times, np.float64) + eps, side="right") - 1
    return {round(float(ft[i]) / tb) for i in np.clip(idx, 0, len(ft) - 1)}


def _skipping(container: av.container.InputContainer, stream: av.video.stream.VideoStream, stats: DecodeStats,
              keep: set[int]) -> Iterator[av.VideoFrame]:
    """Decoded frames, the decoder told per packet to skip it when it is a non-reference frame whose pts is not
    in ``keep`` (FFmpeg's skip_frame=NONREF: reference frames are always decoded, so the kept ones are exact).
    Undecodable packets are skipped and counted as in decode.decoded_frames."""
    ctx = stream.codec_context

    def before(packet: av.Packet | None) -> None:  # None: the final flush decodes everything it holds
        ctx.skip_frame = "DEFAULT" if packet is None or packet.pts is None or packet.pts in keep else "NONREF"

    return packet_frames(container, stream, stats, before)


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
