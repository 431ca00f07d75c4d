"""From an annotated video to clips: split at cuts, per-clip motion, keyframes, and writing clip files.

* :func:`split_spans`: every span between cuts, in order: one clip per shot, trimmed ``trim_frames`` away from
  every cut or transition, long shots split into equal pieces of at most ``max_seconds``; and the spans that give
  no clip, each with its reason (:attr:`ClipSpan.drop`): shorter than ``min_seconds``, trimmed away entirely,
  or the frames of a fade / dissolve / flash. Nothing between two cuts disappears without a row.
  :func:`split_clips` keeps only the clips.
* :func:`write_clip`: ``"copy"`` remuxes whole GOPs without re-encoding, keyframe-aware as in the SVD paper
  (appendix C): the start snaps *forward* to the next source keyframe and the end *backward* to a
  keyframe, so a copied clip never crosses a cut (it may be shorter than the span). ``"reencode"``
  writes exactly the span's frames with libx264. ``"auto"`` copies when the snapped clip is still at
  least ``min_seconds`` long, else re-encodes. Written clips keep the source's SAR and rotation; video
  only (audio is dropped).
"""

from __future__ import annotations

import logging
import math
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from os import PathLike
from pathlib import Path

import av
import numpy as np

from ..errors import ConfigError, InputError
from ..media.probe import open_container, pick_video_stream
from .annotate import VideoAnnotation
from .decode import open_info
from .frames_at import read_frames_at

logger = logging.getLogger(__name__)

CUT_TAGS: tuple[str, ...] = ("start", "hard", "fade", "dissolve", "flash", "split", "end")
#: Why a span between cuts gives no clip: the first words of :attr:`ClipSpan.drop`.
DROP_REASONS: tuple[str, ...] = ("too short", "trimmed away", "transition")


def min_seconds_for(num_frames: int, fps: float) -> float:
    """The shortest clip that holds one training window of ``num_frames`` frames sampled at ``fps``: seconds.

    A window spans ``(num_frames - 1) * stride + 1`` source frames, ``stride = source fps / fps`` (at least 1,
    see training.data.window_indices), i.e. ``(num_frames - 1) / fps + 1 / source fps`` seconds; at any source
    rate at or above ``fps`` that is at most ``num_frames / fps``. SVD finetuning's defaults (training.config
    DataConfig: 14 frames at 7 fps) give 2.0 s; SVD-XT's 25 frames at 7 fps give 3.57 s.
    """
    if num_frames < 1 or not fps > 0:
        raise ConfigError(f"min_seconds_for needs num_frames >= 1 and fps > 0, got {num_frames} and {fps}")
    return num_frames / fps


#: Training defaults the minimum clip length follows (training.config.DataConfig: num_frames, fps).
TRAIN_FRAMES, TRAIN_FPS = 14, 7.0
WRITE_MODES: tuple[str, ...] = ("auto", "copy", "reencode")


@dataclass(frozen=True)
class SplitConfig:
    """How shots become clips (seconds are measured on frame timestamps).

    ``trim_frames``: frames dropped on each side of a cut or transition (not at the video's ends);
    ``max_seconds``: longer shots are split into the fewest equal pieces of at most this (0 = never);
    ``min_seconds``: shorter clips are not clips but rows with status ``dropped`` ("too short"). The default,
    2.0 s, is what one finetuning window needs at the training defaults: ``min_seconds_for(14, 7.0)``
    (14 frames at 7 fps, training.config.DataConfig); for SVD-XT (25 frames at 7 fps) use 3.57 s
    (``split.min_seconds=3.57``), or the window will not fit and the trainer skips the clip.
    """

    min_seconds: float = min_seconds_for(TRAIN_FRAMES, TRAIN_FPS)
    max_seconds: float = 10.0
    trim_frames: int = 2

    def __post_init__(self) -> None:
        if self.min_seconds < 0 or self.max_seconds < 0 or self.trim_frames < 0:
            raise ConfigError(f"SplitConfig values must be >= 0, got {self}")
        if self.max_seconds and self.max_seconds < self.min_seconds:
            raise ConfigError(f"max_seconds ({self.max_seconds}) must be >= min_seconds ({self.min_seconds}) or 0")


@dataclass(frozen=True)
class ClipSpan:
    """Frames ``start_frame`` (inclusive) .. ``end_frame`` (exclusive) of one source video.

    ``start_time``: pts (s) of the first frame; ``end_time``: pts of the first frame after the clip (the
    video's end for the last clip); ``middle_time`` / ``last_time``: pts of the middle and last frames.
    ``cut_in`` / ``cut_out``: what bounds the clip (``start``, ``hard``, ``fade``, ``dissolve``, ``flash``,
    ``split``, ``end``) with the detector's score (0.0 for start/end/split).
    ``drop``: '' for a clip; for a span that gives no clip, why (one of :data:`DROP_REASONS`, then details,
    e.g. "too short: 1.20 s < 2.00 s minimum"); such spans have ``index`` -1.
    """

    index: int
    start_frame: int
    end_frame: int
    start_time: float
    end_time: float
    cut_in: str
    cut_out: str
    cut_in_score: float
    cut_out_score: float
    middle_time: float = 0.0
    last_time: float = 0.0
    drop: str = ""

    @property
    def num_frames(self) -> int:
        return self.end_frame - self.start_frame

    @property
    def duration(self) -> float:
        return self.end_time - self.start_time


def _end_time(times: np.ndarray, end: int, fps: float) -> float:
    if end < len(times):
        return float(times[end])
    step = float(times[-1] - times[-2]) if len(times) > 1 else 1.0 / fps
    return float(times[-1]) + step


def _span(ann: VideoAnnotation, index: int, a: int, b: int, cin: tuple[str, float], cout: tuple[str, float],
          drop: str = "") -> ClipSpan:
    times = ann.frame_times
    return ClipSpan(
        index=index, start_frame=a, end_frame=b, start_time=float(times[a]), end_time=_end_time(times, b, ann.fps),
        cut_in=cin[0], cut_out=cout[0], cut_in_score=cin[1], cut_out_score=cout[1],
        middle_time=float(times[(a + b - 1) // 2]), last_time=float(times[b - 1]), drop=drop,
    )  # fmt: skip


def split_spans(annotation: VideoAnnotation, cfg: SplitConfig = SplitConfig()) -> list[ClipSpan]:  # noqa: B008
    """Every span between the cuts of ``annotation``, in frame order (see :class:`SplitConfig`): the clips, indexed
    from 0, and the spans that give none (``drop`` says why, ``index`` -1): a shot (or a piece of a long one)
    shorter than ``min_seconds`` after trimming, a shot of at most ``2 * trim_frames`` frames between two cuts,
    and the frames of every fade, dissolve or flash. The ``trim_frames`` next to a cut stay out of both."""
    n = annotation.num_frames
    times = annotation.frame_times
    spans: list[ClipSpan] = []
    clips = 0

    def dropped(a: int, b: int, cin: tuple[str, float], cout: tuple[str, float], why: str) -> None:
        spans.append(_span(annotation, -1, a, b, cin, cout, why))

    start, cin = 0, ("start", 0.0)
    for cut in (*annotation.cuts, None):
        cout = (cut.kind, cut.score) if cut is not None else ("end", 0.0)
        shot_end = cut.frame if cut is not None else n
        a = start + (cfg.trim_frames if cin[0] != "start" else 0)
        b = shot_end - (cfg.trim_frames if cout[0] != "end" else 0)
        if b - a < 1:
            if shot_end > start:
                dropped(start, shot_end, cin, cout, f"trimmed away: {shot_end - start} frame(s) between the cuts, "
                        f"{cfg.trim_frames} trimmed next to each cut")  # fmt: skip
        else:
            length = _end_time(times, b, annotation.fps) - float(times[a])
            pieces = max(1, math.ceil(length / cfg.max_seconds - 1e-9)) if cfg.max_seconds else 1
            edges = [a + round(k * (b - a) / pieces) for k in range(pieces + 1)]
            for k in range(pieces):
                pa, pb = edges[k], edges[k + 1]
                if pb <= pa:
                    continue
                tag_in = cin if k == 0 else ("split", 0.0)
                tag_out = cout if k == pieces - 1 else ("split", 0.0)
                span = _span(annotation, clips, pa, pb, tag_in, tag_out)
                if span.duration + 1e-9 >= cfg.min_seconds:
                    spans.append(span)
                    clips += 1
                else:
                    dropped(pa, pb, tag_in, tag_out, f"too short: {span.duration:.2f} s < {cfg.min_seconds:.2f} s "
                            f"minimum ({pb - pa} frames)")  # fmt: skip
        if cut is None:
            break
        if cut.kind != "hard":  # the transition's own frames
            first, last = cut.frame, min(cut.end_frame, n - 1)
            dropped(first, last + 1, (cut.kind, cut.score), (cut.kind, cut.score),
                    f"transition: {cut.kind} of {last - first + 1} frame(s)")
        start, cin = cut.end_frame + (0 if cut.kind == "hard" else 1), (cut.kind, cut.score)
    return spans


def split_clips(annotation: VideoAnnotation, cfg: SplitConfig = SplitConfig()) -> list[ClipSpan]:  # noqa: B008
    """The clips of ``annotation`` (see :func:`split_spans`), in order, indexed from 0."""
    return [span for span in split_spans(annotation, cfg) if not span.drop]


def clip_motion(annotation: VideoAnnotation, span: ClipSpan) -> float:
    """Mean motion magnitude (``annotation.motion_unit``) over the sample pairs inside ``span``; NaN if none."""
    pairs = annotation.motion_frames
    if len(pairs) == 0:
        return float("nan")
    inside = (pairs[:, 0] >= span.start_frame) & (pairs[:, 1] < span.end_frame)
    if not inside.any():
        return float("nan")
    return float(np.mean(annotation.motion_magnitudes[inside]))


def keyframes(
    path: str | PathLike[str],
    span: ClipSpan,
    which: Sequence[str] = ("first", "middle", "last"),
    max_side: int | None = None,
) -> list[np.ndarray]:
    """RGB uint8 (H, W, 3) display-corrected frames of ``span``: any of ``first``, ``middle``, ``last``."""
    return read_frames_at(path, keyframe_times(span, which), max_side=max_side)


#: "intra" keyframe source: an intra frame counts as a clip's keyframe when it lies inside the clip within
#: max(INTRA_TOLERANCE_S, INTRA_TOLERANCE_FRACTION x clip duration) of the exact time (0.5 s: about a GOP of
#: broadcast / streaming encodes; 10 %: keeps first / middle / last apart on long clips).
INTRA_TOLERANCE_S = 0.5
INTRA_TOLERANCE_FRACTION = 0.1


def keyframe_times(span: ClipSpan, which: Sequence[str]) -> list[float]:
    """The exact times (pts, s) of the ``which`` keyframes (first / middle / last) of ``span``."""
    table = {"first": span.start_time, "middle": span.middle_time, "last": span.last_time}
    unknown = [w for w in which if w not in table]
    if unknown:
        raise ConfigError(f"keyframes: unknown frame names {unknown}; choose from {sorted(table)}")
    return [float(table[w]) for w in which]


def intra_keyframe_times(intra_times: np.ndarray, span: ClipSpan, which: Sequence[str]) -> list[float | None]:
    """Per requested keyframe of ``span``, the pts (s) of the nearest intra frame (``intra_times``, sorted, e.g.
    :attr:`PacketIndex.keyframe_times`) inside the clip (start_time .. last_time) and within the tolerance
    (max(INTRA_TOLERANCE_S, INTRA_TOLERANCE_FRACTION x duration)) of the exact time; None where there is none
    (the exact frame is read instead). One intra frame serves at most one keyframe of a clip, so a clip keeps
    distinct frames."""
    tol = max(INTRA_TOLERANCE_S, INTRA_TOLERANCE_FRACTION * float(span.duration))
    eps = 1e-6
    keys = np.asarray(intra_times, np.float64)
    keys = keys[(keys >= span.start_time - eps) & (keys <= span.last_time + eps)]
    used: set[float] = set()
    out: list[float | None] = []
    for t in keyframe_times(span, which):
        near = [float(k) for k in keys[np.abs(keys - t) <= tol + eps] if float(k) not in used]
        best = min(near, key=lambda k: abs(k - t), default=None)
        if best is not None:
            used.add(best)
        out.append(best)
    return out


# ----------------------------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class PacketIndex:
    """Presentation times (s) of every video packet, sorted (= decoded frame times), and of the keyframes."""

    times: np.ndarray
    keyframe_times: np.ndarray


def packet_index(path: str | PathLike[str]) -> PacketIndex:
    """Demux (no decoding) the video stream's packet times and keyframe times."""
    info = open_info(path)
    container = open_container(info.path)
    pts, keys = [], []
    try:
        stream = pick_video_stream(container)
        tb = float(stream.time_base or 1)
        for packet in container.demux(stream):
            if packet.pts is None or not packet.size:
                continue
            pts.append(packet.pts * tb)
            if packet.is_keyframe:
                keys.append(packet.pts * tb)
    except av.FFmpegError as exc:
        logger.warning("%s: demuxing stopped early (%s); indexing the packets read so far", info.path, exc)
    finally:
        container.close()
    return PacketIndex(np.sort(np.asarray(pts, np.float64)), np.sort(np.asarray(keys, np.float64)))


@dataclass(frozen=True)
class WriteResult:
    """What :func:`write_clip` wrote: the mode used and the source frames/times actually in the file."""

    path: Path
    mode: str
    start_frame: int
    end_frame: int
    start_time: float
    end_time: float

    @property
    def num_frames(self) -> int:
        return self.end_frame - self.start_frame


def snap_to_keyframes(index: PacketIndex, span: ClipSpan) -> tuple[int, int] | None:
    """Source frame range ``[a, b)`` of whole GOPs inside ``span``: a = first keyframe at or after the
    start, b = last keyframe at or before the end (or the video's end). None when no GOP fits."""
    times, keys = index.times, index.keyframe_times
    eps = 1e-6
    k0 = np.searchsorted(keys, span.start_time - eps)
    if k0 >= len(keys):
        return None
    a = int(np.searchsorted(times, keys[k0] - eps))
    if span.end_frame >= len(times):
        b = len(times)
    else:
        k1 = np.searchsorted(keys, span.end_time + eps) - 1
        b = int(np.searchsorted(times, keys[k1] - eps)) if k1 >= 0 else 0
    b = min(b, span.end_frame)
    return (a, b) if b > a else None


def write_clip(
    src: str | PathLike[str],
    span: ClipSpan,
    dst: str | PathLike[str],
    *,
    mode: str = "auto",
    min_seconds: float = 2.0,
    index: PacketIndex | None = None,
    crf: int = 18,
    preset: str = "medium",
) -> WriteResult:
    """Write the frames of ``span`` from ``src`` to ``dst`` (mp4/mkv/mov by suffix), atomically.

    ``index``: a :func:`packet_index` of ``src`` to reuse across clips. ``min_seconds``: for ``"auto"``,
    the shortest keyframe-snapped clip still written by stream copy. ``crf``/``preset``: libx264 settings
    for ``"reencode"``. Raises InputError for an unreadable source or a span outside it; ConfigError for a
    bad mode; in ``"copy"`` mode, InputError when no whole GOP fits inside the span.
    """
    if mode not in WRITE_MODES:
        raise ConfigError(f"write_clip mode must be one of {WRITE_MODES}, got {mode!r}")
    info = open_info(src)
    index = index or packet_index(info.path)
    if not 0 <= span.start_frame < span.end_frame <= len(index.times):
        raise InputError(f"clip frames {span.start_frame}..{span.end_frame} are outside {info.path} "
                         f"({len(index.times)} frames)")  # fmt: skip
    snapped = snap_to_keyframes(index, span)
    if mode == "copy" and snapped is None:
        raise InputError(
            f"no whole GOP of {info.path} fits in {span.start_time:.3f}..{span.end_time:.3f}s (keyframes too sparse "
            "for a stream copy); use mode='reencode' or 'auto'"
        )
    if mode == "auto":
        fits = snapped is not None and _time(index, snapped[1], info) - index.times[snapped[0]] + 1e-9 >= min_seconds
        mode = "copy" if fits else "reencode"
    a, b = snapped if mode == "copy" and snapped is not None else (span.start_frame, span.end_frame)
    t0, t1 = float(index.times[a]), _time(index, b, info)
    target = Path(dst).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.stem}.{secrets.token_hex(4)}.part{target.suffix}"
    try:
        if mode == "copy":
            _remux(info, tmp, t0, t1)
        else:
            _reencode(info, tmp, t0, t1, crf, preset)
        os.replace(tmp, target)
    except av.FFmpegError as exc:
        raise InputError(f"writing {target} from {info.path} ({mode}) failed: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return WriteResult(target, mode, a, b, t0, t1)


def _time(index: PacketIndex, frame: int, info) -> float:
    if frame < len(index.times):
        return float(index.times[frame])
    return _end_time(index.times, frame, float(info.fps))


def _output(path: Path) -> av.container.OutputContainer:
    options = {"movflags": "+faststart"} if path.suffix.lower() in (".mp4", ".mov", ".m4v") else {}
    return av.open(str(path), mode="w", options=options)


def _remux(info, dst: Path, t0: float, t1: float) -> None:
    """Stream-copy the packets with pts in [t0, t1) (whole GOPs) with timestamps rebased to start near 0."""
    eps = 0.25 / float(info.fps)
    src = open_container(info.path)
    try:
        stream = pick_video_stream(src)
        tb = stream.time_base
        with _output(dst) as out:
            ostream = out.add_stream_from_template(stream)
            if info.rotation:
                ostream.set_display_rotation(float(info.rotation))
            src.seek(max(0, int((t0 - eps) / float(tb))), stream=stream, backward=True)
            offset = None
            for packet in src.demux(stream):
                if packet.pts is None or not packet.size:
                    continue
                t = packet.pts * float(tb)
                if t < t0 - eps or t >= t1 - eps:
                    if t >= t1 - eps and packet.is_keyframe:
                        break
                    continue
                if offset is None:
                    offset = packet.dts if packet.dts is not None else packet.pts
                packet.pts -= offset
                if packet.dts is not None:
                    packet.dts -= offset
                packet.stream = ostream
                out.mux(packet)
    finally:
        src.close()


def _reencode(info, dst: Path, t0: float, t1: float, crf: int, preset: str) -> None:
    """Decode the frames with pts in [t0, t1) and encode them with libx264 (same SAR, rotation, timing)."""
    eps = 0.25 / float(info.fps)
    src = open_container(info.path)
    try:
        stream = pick_video_stream(src)
        stream.thread_type = "AUTO"
        tb = stream.time_base
        with _output(dst) as out:
            ostream = out.add_stream("libx264", rate=Fraction(info.fps).limit_denominator(100_000))
            ostream.width, ostream.height, ostream.pix_fmt = info.coded_width, info.coded_height, "yuv420p"
            ostream.time_base = tb
            ostream.codec_context.time_base = tb
            ostream.options = {"crf": str(crf), "preset": preset}
            if info.sar != 1:
                ostream.codec_context.sample_aspect_ratio = info.sar
            if info.rotation:
                ostream.set_display_rotation(float(info.rotation))
            src.seek(max(0, int((t0 - eps) / float(tb))), stream=stream, backward=True)
            start_pts = None
            for frame in src.decode(stream):
                if frame.pts is None:
                    continue
                t = frame.pts * float(tb)
                if t < t0 - eps:
                    continue
                if t >= t1 - eps:
                    break
                start_pts = frame.pts if start_pts is None else start_pts
                pts = frame.pts - start_pts
                if frame.format.name != "yuv420p" or frame.width != info.coded_width:
                    frame = frame.reformat(width=info.coded_width, height=info.coded_height, format="yuv420p")
                frame.pts, frame.time_base = pts, tb
                frame.pict_type = av.video.frame.PictureType.NONE
                out.mux(ostream.encode(frame))
            out.mux(ostream.encode(None))
    finally:
        src.close()
