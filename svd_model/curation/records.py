"""The curation records: the config that decides a manifest row, a source file's identity, the row under
construction (:class:`ClipRecord`), the keyframes the scorers share (:class:`KeyframeCache`), one video's result,
the row of a video that failed and the rows of the spans between cuts that give no clip (status ``dropped``).

Both the step modules (pipeline.py: annotate, split, motion; scoring.py: keyframe scores and files) and the
engines build on these; this module imports neither.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from ..configdict import build, check_finite
from ..errors import ConfigError, SVDError
from . import clips, frames_at
from .annotate import FrameCapture, VideoAnnotation
from .captioner_registry import check_name
from .clips import ClipSpan, SplitConfig
from .cuts import CutConfig
from .manifest_rows import empty_row, video_status
from .motion import MotionCalibration, MotionConfig

log = logging.getLogger(__name__)

#: One manifest row: a value for every column of manifest_rows.COLUMN_SPECS (see manifest_rows.empty_row).
Row = dict[str, Any]

PIPELINE_VERSION = "1"
CLIP_MODES = ("none", "auto", "copy", "reencode")
KEYFRAME_KINDS = ("first", "middle", "last")
KEYFRAME_SOURCES = ("exact", "intra", "reference")
#: 'reference' keyframes: the reference frame nearest to each exact keyframe, at most this many frames away
#: (x264's B-frame patterns put one every 2-4 frames) and inside the clip; else the exact frame.
REFERENCE_MAX_SHIFT = 4


#: CurationConfig fields that change how a run goes, not its rows: left out of the config hash.
UNHASHED = ("threads", "video_timeout", "keyframe_capture_mib")


@dataclass(frozen=True)
class CurationConfig:
    """Everything that decides a manifest row's values (hashed into ``config_hash``).

    cut / motion / split: the annotation and splitting settings (see cuts.py, motion.py, clips.py);
    buckets: how motion scores map to SVD's motion_bucket_id.
    text: compute the text-area ratio on the keyframes (``text_reduce`` combines them: max or mean).
    clip_checkpoint: an SVD checkpoint whose OpenCLIP image tower embeds the keyframes ('' = no CLIP scores);
    aesthetic_head / text_tower / tokenizer: user-supplied files for the aesthetic and caption-similarity scores.
    captioners: names of registered captioners (captioner_registry.py), at most one per kind (image, video,
    summary); () = no captions. A name, never a program or a path: captioners are registered outside workflows.
    keyframes: which frames of a clip the scorers see; keyframe_max_side: their longest side (0 = full size).
    keyframe_source: 'exact' (the frames at the clip's first / middle / last times, decoded from the source
    keyframe before each) or 'intra' (each from the nearest intra frame inside the clip within
    max(0.5 s, 10 % of the clip), decoded alone by seeking; the exact frame where there is none; the times used
    in the row's ``extra`` as ``keyframe_times`` and ``keyframe_intra``) or 'reference' (the default; H.264: the
    reference frame, one that other frames are predicted from, nearest to each exact keyframe inside the clip and
    at most REFERENCE_MAX_SHIFT frames away, else the exact frame; other codecs: the exact frames; the times used
    in ``extra`` as ``keyframe_times``). With 'reference' the analysis decode holds only reference frames and skips
    deblocking the others, which are never keyframes (:class:`.annotate.FrameCapture`): faster than 'exact', with
    pictures decoded just as exactly, a frame or two from the exact ones. Hashed only when not 'exact', so
    manifests from before the option (and before 'reference' became the default) keep their hash.
    write_clips: 'none', or write each clip as a file: 'copy' (stream copy, keyframe-snapped), 'reencode'
    (frame-exact), 'auto'; write_keyframes: JPEGs of the keyframes; save_embeddings: the CLIP embeddings.
    perceptual_hash: a 64-bit DCT hash of each clip's middle keyframe in ``extra`` (dedup.py's model-free
    near-duplicate signal; decodes the keyframes even when no other step needs them).
    threads: decoder threads per video (1 for batch runs: one process per core scales better).
    video_timeout: seconds one video may take before it becomes an ``error`` row "timed out after N s"
    (0 = no limit); like ``threads`` it is not part of the hash.
    keyframe_capture_mib: memory (MiB, per worker) the analysis decode may hold to capture the keyframes exactly on
    its way (no second decode; :class:`.annotate.FrameCapture`); a video whose frames over the cut detector's
    latency do not fit (with 512: above about 576p), and frames past it, are decoded again. 0 = never capture.
    Not part of the hash (the pictures are the same either way).
    Every float must be finite (NaN / Inf are refused, naming the field).
    """

    cut: CutConfig = field(default_factory=CutConfig)
    motion: MotionConfig = field(default_factory=MotionConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    buckets: MotionCalibration = field(default_factory=MotionCalibration)
    text: bool = True
    text_reduce: str = "max"
    clip_checkpoint: str = ""
    aesthetic_head: str = ""
    text_tower: str = ""
    tokenizer: str = ""
    captioners: tuple[str, ...] = ()
    keyframes: tuple[str, ...] = KEYFRAME_KINDS
    keyframe_max_side: int = 512
    keyframe_source: str = "reference"
    write_clips: str = "none"
    write_keyframes: bool = False
    save_embeddings: bool = False
    perceptual_hash: bool = True
    threads: int = 1
    video_timeout: float = 600.0
    keyframe_capture_mib: int = 512

    def __post_init__(self) -> None:
        check_finite(self, "config.")
        if self.keyframe_capture_mib < 0:
            raise ConfigError(f"config.keyframe_capture_mib must be >= 0 (0 = no capture), got "
                              f"{self.keyframe_capture_mib!r}")
        if self.video_timeout < 0:
            raise ConfigError(f"config.video_timeout must be >= 0 seconds (0 = no limit), got {self.video_timeout!r}")
        if not isinstance(self.captioners, (tuple, list)):
            raise ConfigError(f"config.captioners must be a list of captioner names, got {self.captioners!r}")
        for i, name in enumerate(self.captioners):
            check_name(name, f"config.captioners[{i}]")
        if self.write_clips not in CLIP_MODES:
            raise ConfigError(f"write_clips must be one of {CLIP_MODES}, got {self.write_clips!r}")
        if self.text_reduce not in ("max", "mean"):
            raise ConfigError(f"text_reduce must be 'max' or 'mean', got {self.text_reduce!r}")
        bad = [k for k in self.keyframes if k not in KEYFRAME_KINDS]
        if bad or not self.keyframes:
            raise ConfigError(f"keyframes must be a non-empty subset of {KEYFRAME_KINDS}, got {self.keyframes!r}")
        if self.keyframe_source not in KEYFRAME_SOURCES:
            raise ConfigError(f"keyframe_source must be one of {KEYFRAME_SOURCES}, got {self.keyframe_source!r}")
        if self.keyframe_max_side < 0 or self.threads < 0:
            raise ConfigError("keyframe_max_side and threads must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CurationConfig:
        """Build from a (possibly partial, possibly nested) dict; unknown keys and wrong types are a ConfigError
        naming the dotted key (``split.min_seconds``)."""
        return build(cls, data)

    def replace(self, **changes: Any) -> CurationConfig:
        return dataclasses.replace(self, **changes)

    def hash(self) -> str:
        """Hash of what changes rows (not ``threads``, ``video_timeout``, ``keyframe_capture_mib``), 12 hex digits."""
        data = {k: v for k, v in self.to_dict().items() if k not in UNHASHED}
        if data["keyframe_source"] == "exact":  # the default before the option existed: the same hash
            del data["keyframe_source"]
        return hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]

    @property
    def needs_keyframes(self) -> bool:
        return bool(self.text or self.clip_checkpoint or self.captioners or self.write_keyframes
                    or self.perceptual_hash)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Fraction):
        return float(value)
    return value


# ------------------------------------------------------------------------------------ identity and rows


@dataclass(frozen=True)
class VideoRef:
    """A source file: video_id = hash(path relative to the input root, size, mtime)."""

    video_id: str
    source: str  # absolute path
    source_rel: str  # relative to the input root (posix), or absolute when outside it

    @classmethod
    def of(cls, path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None) -> VideoRef:
        path = Path(path).absolute()
        rel = path.as_posix()
        if root is not None:
            try:
                rel = path.relative_to(Path(root).absolute()).as_posix()
            except ValueError:
                pass
        try:
            st = path.stat()
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        digest = hashlib.sha1(f"{rel}\0{stamp}".encode()).hexdigest()[:16]
        return cls(digest, str(path), rel)


def _sar_text(sar: Any) -> str:
    if sar is None:
        return "1:1"
    if isinstance(sar, (tuple, list)) and len(sar) == 2:
        return f"{int(sar[0])}:{int(sar[1])}"
    frac = Fraction(sar).limit_denominator(10_000)
    return f"{frac.numerator}:{frac.denominator}"


def video_fields(ann: VideoAnnotation) -> dict[str, Any]:
    """The columns that describe the source video (fps, size, sample aspect, rotation, length)."""
    return {"fps": float(ann.fps), "width": int(ann.width), "height": int(ann.height), "sar": _sar_text(ann.sar),
            "rotation": int(ann.rotation), "video_num_frames": int(ann.num_frames),
            "video_duration": float(ann.duration)}


@dataclass
class ClipRecord:
    """One manifest row under construction, with what later steps need (the clip span and its video).
    The steps fill ``row``'s columns in place; the properties read the ones every step keys on."""

    row: Row
    span: ClipSpan | None = None
    annotation: VideoAnnotation | None = None

    @property
    def ok(self) -> bool:
        return self.row["status"] == "ok"

    @property
    def clip_id(self) -> str:
        return str(self.row["clip_id"])

    @property
    def video_id(self) -> str:
        return str(self.row["video_id"])

    @property
    def source(self) -> str:
        """The source video's absolute path."""
        return str(self.row["source"])


def status_record(ref: VideoRef, status: str, reason: str, config_hash: str = "",
                  annotation: VideoAnnotation | None = None) -> ClipRecord:
    """The single row of a video that failed ('error') or yielded no span at all ('empty'); spans that give no
    clip have rows of their own (:func:`dropped_record`)."""
    row = empty_row()
    row.update(clip_id=f"{ref.video_id}_{'err' if status == 'error' else 'none'}", video_id=ref.video_id,
               source=ref.source, source_rel=ref.source_rel, clip_index=-1, status=status, error=reason,
               keep=False, drop_reason=f"{status}: {reason}", pipeline_version=PIPELINE_VERSION,
               config_hash=config_hash)
    if annotation is not None:
        row.update(video_fields(annotation))
    return ClipRecord(row, None, annotation)


def dropped_record(ref: VideoRef, ann: VideoAnnotation, span: ClipSpan, number: int,
                   config_hash: str = "") -> ClipRecord:
    """The row of a span between cuts that gives no clip: status ``dropped``, ``error`` = the reason
    (``span.drop``: too short / trimmed away / transition), its frames and times, ``clip_id`` =
    ``<video_id>_d<number>`` (the ``number``-th dropped span of the video), ``clip_index`` -1, never kept.
    ``extra`` holds ``{"dropped": <reason kind>}`` (one of clips.DROP_REASONS)."""
    row = empty_row()
    row.update(video_fields(ann))
    start, end = int(span.start_frame), int(span.end_frame)
    row.update(clip_id=f"{ref.video_id}_d{number:04d}", video_id=ref.video_id, source=ref.source,
               source_rel=ref.source_rel, clip_index=-1, status="dropped", error=span.drop, keep=False,
               drop_reason=f"dropped: {span.drop}", start_frame=start, end_frame=end, num_frames=end - start,
               start_time=float(span.start_time), end_time=float(span.end_time),
               duration=float(span.end_time) - float(span.start_time), cut_in=span.cut_in, cut_out=span.cut_out,
               pipeline_version=PIPELINE_VERSION, config_hash=config_hash,
               extra=json.dumps({"dropped": span.drop.split(":", 1)[0]}))
    return ClipRecord(row, span, ann)


def error_text(exc: BaseException) -> str:
    """A one-line reason: SVDErrors as they are (they name the problem), others with their type."""
    text = " ".join(str(exc).split()) or "(no message)"
    return text if isinstance(exc, SVDError) else f"{type(exc).__name__}: {text}"


# ------------------------------------------------------------------------------------------ keyframes


def keyframe_capture(config: CurationConfig) -> FrameCapture | None:
    """What the analysis decode should keep so that :class:`KeyframeCache` decodes nothing again: the exact
    pictures of every clip's keyframes (``config.keyframes`` of the clips of :func:`clips.split_spans`), when the
    config needs keyframes from the 'exact' or 'reference' source; else None (the 'intra' source reads its own
    frames)."""
    if not config.needs_keyframes or config.keyframe_source == "intra" or not config.keyframe_capture_mib:
        return None
    which, split = tuple(config.keyframes), config.split
    references = config.keyframe_source == "reference"

    def wanted(ann: VideoAnnotation) -> set[int]:
        spans = [s for s in clips.split_spans(ann, split) if not s.drop]
        return {i for s in spans for i in keyframe_indices(ann, s, which, references)}

    return FrameCapture(wanted, config.keyframe_max_side or None, config.keyframe_capture_mib * 2**20, references)


def keyframe_indices(ann: VideoAnnotation, span: ClipSpan, which: Sequence[str], references: bool = False) -> list[int]:
    """The frame index of each ``which`` keyframe of ``span``: the frame shown at its exact time, or with
    ``references`` the reference frame nearest to it (:attr:`VideoAnnotation.reference`; the earlier of two as
    near) inside the span and at most REFERENCE_MAX_SHIFT frames away; the exact frame where there is none or the
    annotation does not know its reference frames."""
    exact = _frame_indices(ann, clips.keyframe_times(span, which)).tolist()
    ref = getattr(ann, "reference", None)
    if not references or ref is None:
        return exact
    out = []
    for e in exact:
        lo, hi = max(span.start_frame, e - REFERENCE_MAX_SHIFT), min(span.end_frame - 1, e + REFERENCE_MAX_SHIFT)
        near = [j for j in range(lo, hi + 1) if j < len(ref) and ref[j]]
        out.append(min(near, key=lambda j: (abs(j - e), j)) if near else e)
    return out


def _frame_indices(ann: VideoAnnotation, times: Sequence[float]) -> np.ndarray:
    """Index of the frame shown at each of ``times`` (pts s): the last frame whose pts <= t plus a quarter frame,
    the rule of frames_at.read_frames_at; int64 (len(times),)."""
    ft = np.asarray(ann.frame_times, np.float64)
    idx = np.searchsorted(ft, np.asarray(times, np.float64) + 0.25 / float(ann.fps), side="right") - 1
    return np.clip(idx, 0, max(0, len(ft) - 1))


class KeyframeCache:
    """Keyframes (RGB uint8 (H, W, 3) each) per clip id, decoded on first use, from ``config.keyframe_source``;
    with the 'exact' and 'reference' sources the pictures the analysis decode captured (VideoAnnotation.pictures,
    see :func:`keyframe_capture`) are used as they are and only the others are decoded."""

    def __init__(self, config: CurationConfig) -> None:
        self.which = tuple(config.keyframes)
        self.max_side = config.keyframe_max_side or None
        self.intra = config.keyframe_source == "intra"
        self.references = config.keyframe_source == "reference"
        self._frames: dict[str, list[np.ndarray]] = {}
        self._intra_times: dict[str, np.ndarray] = {}  # source -> its intra frames' pts (s), one demux pass each

    def get(self, rec: ClipRecord) -> list[np.ndarray]:
        if rec.clip_id not in self._frames:
            self._frames[rec.clip_id] = self._read([rec], threads=1)[0]
        return self._frames[rec.clip_id]

    def prefetch(self, records: Sequence[ClipRecord], threads: int = 1) -> None:
        """Decode the keyframes of all ``records`` (clips of one video) in one sorted pass: the decoder seeks
        only where that skips frames, so no stretch between two source keyframes is decoded twice (with the
        'intra' source, the intra frames chosen are decoded one by one, the others in that pass)."""
        todo = [r for r in records if r.ok and r.clip_id not in self._frames]
        if not todo:
            return
        try:
            frames = self._read(todo, threads)
        except (SVDError, ValueError, OSError) as exc:  # per-clip reads in get() will say which clip fails
            log.info("keyframe prefetch failed (%s); reading clip by clip", error_text(exc))
            return
        for rec, clip_frames in zip(todo, frames, strict=True):
            self._frames[rec.clip_id] = clip_frames

    def _read(self, todo: Sequence[ClipRecord], threads: int) -> list[list[np.ndarray]]:
        """The keyframes of ``todo`` (clips of one video), per clip in ``self.which`` order. With the 'reference'
        source the pts used, and with the 'intra' source also which were intra frames, go to each row's
        ``extra``."""
        source = todo[0].source
        exact = [t for r in todo for t in clips.keyframe_times(r.span, self.which)]
        if self.references and getattr(todo[0].annotation, "reference", None) is not None:
            ann = todo[0].annotation  # the chosen reference frames' times (the exact frames where there are none)
            exact = [float(ann.frame_times[i]) for r in todo for i in keyframe_indices(ann, r.span, self.which, True)]
        chosen: list[float | None] = [None] * len(exact)
        if self.intra:
            if source not in self._intra_times:
                self._intra_times[source] = clips.packet_index(source).keyframe_times
            chosen = [t for r in todo for t in clips.intra_keyframe_times(self._intra_times[source], r.span,
                                                                          self.which)]
        flat: list[np.ndarray | None] = [None] * len(exact)
        intra_at = [i for i, t in enumerate(chosen) if t is not None]
        exact_at = [i for i, t in enumerate(chosen) if t is None]
        try:
            intra_frames = frames_at.read_intra_frames(source, [chosen[i] for i in intra_at], max_side=self.max_side)
        except SVDError as exc:  # a "keyframe" packet that is not a whole intra picture: the exact frames instead
            log.info("%s: intra keyframes unusable (%s); reading the exact frames", source, error_text(exc))
            chosen = [None] * len(exact)
            intra_at, exact_at, intra_frames = [], list(range(len(exact))), []
        for i, frame in zip(intra_at, intra_frames, strict=True):
            flat[i] = frame
        ann = todo[0].annotation
        pictures = getattr(ann, "pictures", None)
        if pictures and ann is not None and exact_at:  # captured during the analysis decode: exact already
            where = _frame_indices(ann, [exact[i] for i in exact_at])
            for i, j in zip(exact_at, where.tolist(), strict=True):
                flat[i] = pictures.get(j)
            exact_at = [i for i in exact_at if flat[i] is None]
        frame_times = getattr(ann, "frame_times", None)
        for i, frame in zip(exact_at, frames_at.read_frames_at(source, [exact[i] for i in exact_at],
                                                               max_side=self.max_side, threads=threads,
                                                               frame_times=frame_times), strict=True):
            flat[i] = frame
        k = len(self.which)
        if self.references or self.intra:  # the times used (for 'reference', ``exact`` holds them already)
            for n, rec in enumerate(todo):
                extra = json.loads(rec.row.get("extra") or "{}")
                extra["keyframe_times"] = [float(chosen[i] if chosen[i] is not None else exact[i])
                                           for i in range(n * k, (n + 1) * k)]
                if self.intra:
                    extra["keyframe_intra"] = [chosen[i] is not None for i in range(n * k, (n + 1) * k)]
                rec.row["extra"] = json.dumps(extra)
        return [[f for f in flat[n * k : (n + 1) * k] if f is not None] for n in range(len(todo))]

    def drop(self, clip_id: str) -> None:
        self._frames.pop(clip_id, None)


# ------------------------------------------------------------------------------------------ one video


@dataclass
class VideoResult:
    """What one video produced: its rows and how long it took (frames = frames decoded)."""

    video_id: str
    source: str
    rows: list[dict[str, Any]]
    seconds: float = 0.0
    frames: int = 0
    #: seconds per pipeline stage in the worker (decode, cuts, motion, keyframes, text, captions, clip, writes;
    #: see pipeline.STAGES), summed by the engine into the run's per-stage timings
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def status(self) -> str:
        """'ok', 'error' or 'empty' (see :func:`video_status`)."""
        return video_status([r["status"] for r in self.rows])

    @property
    def clips(self) -> int:
        return sum(1 for r in self.rows if r["status"] == "ok")
