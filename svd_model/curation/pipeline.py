"""One video through the curation steps: annotate once (decode, cascaded cuts, motion), split into clips,
then per clip motion score, text area, CLIP scores and captions on a few keyframes, optional clip /
keyframe / embedding files; the result is a list of manifest rows.

The steps are separate functions over :class:`ClipRecord` lists so the ComfyUI nodes can run them one at a
time: here the config, the records, annotation, splitting, motion and the keyframe cache; the keyframe
scores and the file outputs are in scoring.py. :func:`curate_video` chains them for one file and never
raises for a bad file: a video that fails becomes one ``status="error"`` row with the reason, a video
without any clip one ``status="empty"`` row.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, SVDError
from . import annotate, clips, frames_at, motion
from .annotate import VideoAnnotation
from .captioner_registry import check_name
from .clips import ClipSpan, SplitConfig
from .cuts import CutConfig
from .manifest import empty_row
from .motion import MotionCalibration, MotionConfig

log = logging.getLogger(__name__)

PIPELINE_VERSION = "1"
CLIP_MODES = ("none", "auto", "copy", "reencode")
KEYFRAME_KINDS = ("first", "middle", "last")


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
    write_clips: 'none', or write each clip as a file: 'copy' (stream copy, keyframe-snapped), 'reencode'
    (frame-exact), 'auto'; write_keyframes: JPEGs of the keyframes; save_embeddings: the CLIP embeddings.
    threads: decoder threads per video (1 for batch runs: one process per core scales better).
    video_timeout: seconds one video may take before it becomes an ``error`` row "timed out after N s"
    (0 = no limit); like ``threads`` it is not part of the hash.
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
    write_clips: str = "none"
    write_keyframes: bool = False
    save_embeddings: bool = False
    threads: int = 1
    video_timeout: float = 600.0

    def __post_init__(self) -> None:
        check_finite(self, "config")
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
        if self.keyframe_max_side < 0 or self.threads < 0:
            raise ConfigError("keyframe_max_side and threads must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CurationConfig:
        """Build from a (possibly partial, possibly nested) dict; unknown keys are a ConfigError."""
        return _build(cls, data, "config")

    def replace(self, **changes: Any) -> CurationConfig:
        return dataclasses.replace(self, **changes)

    def hash(self) -> str:
        """Hash of what changes rows (not ``threads``), 12 hex digits."""
        data = {k: v for k, v in self.to_dict().items() if k not in ("threads", "video_timeout")}
        return hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]

    @property
    def needs_keyframes(self) -> bool:
        return bool(self.text or self.clip_checkpoint or self.captioners or self.write_keyframes)


def check_finite(obj: Any, where: str) -> None:
    """ConfigError naming the first float field of the dataclass ``obj`` (nested ones and tuples of them
    included) that is NaN or infinite."""
    def walk(value: Any, path: str) -> None:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            for f in dataclasses.fields(value):
                walk(getattr(value, f.name), f"{path}.{f.name}")
        elif isinstance(value, (tuple, list)):
            for i, item in enumerate(value):
                walk(item, f"{path}[{i}]")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{path} must be a finite number, got {value!r} (NaN and Inf are refused)")

    walk(obj, where)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Fraction):
        return float(value)
    return value


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a JSON object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ConfigError(f"unknown {where} key(s) {sorted(unknown)}; known: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        spec = fields[name]
        current = spec.default_factory() if spec.default_factory is not dataclasses.MISSING else spec.default
        if dataclasses.is_dataclass(current):
            value = _build(type(current), value, f"{where}.{name}")
        elif isinstance(current, tuple) and isinstance(value, (list, tuple)):
            kind = type(current[0]) if current and dataclasses.is_dataclass(current[0]) else None
            value = tuple(_build(kind, v, f"{where}.{name}[{i}]") if kind and isinstance(v, dict) else
                          tuple(v) if isinstance(v, list) else v for i, v in enumerate(value))
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"bad {where}: {exc}") from None


# ------------------------------------------------------------------------------------------ identity


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


@dataclass
class ClipRecord:
    """One manifest row under construction, with what later steps need (the clip span and its video)."""

    row: dict[str, Any]
    span: ClipSpan | None = None
    annotation: VideoAnnotation | None = None

    @property
    def ok(self) -> bool:
        return self.row["status"] == "ok"


def status_record(ref: VideoRef, status: str, reason: str, config_hash: str = "",
                  annotation: VideoAnnotation | None = None) -> ClipRecord:
    """The single row of a video that failed ('error') or yielded no clip ('empty')."""
    row = empty_row()
    row.update(clip_id=f"{ref.video_id}_{'err' if status == 'error' else 'none'}", video_id=ref.video_id,
               source=ref.source, source_rel=ref.source_rel, clip_index=-1, status=status, error=reason,
               keep=False, drop_reason=f"{status}: {reason}", pipeline_version=PIPELINE_VERSION,
               config_hash=config_hash)
    if annotation is not None:
        row.update(_video_fields(annotation))
    return ClipRecord(row, None, annotation)


def error_text(exc: BaseException) -> str:
    """A one-line reason: SVDErrors as they are (they name the problem), others with their type."""
    text = " ".join(str(exc).split()) or "(no message)"
    return text if isinstance(exc, SVDError) else f"{type(exc).__name__}: {text}"


# ------------------------------------------------------------------------------------------ steps


def _sar_text(sar: Any) -> str:
    if sar is None:
        return "1:1"
    if isinstance(sar, (tuple, list)) and len(sar) == 2:
        return f"{int(sar[0])}:{int(sar[1])}"
    frac = Fraction(sar).limit_denominator(10_000)
    return f"{frac.numerator}:{frac.denominator}"


def _video_fields(ann: VideoAnnotation) -> dict[str, Any]:
    return {"fps": float(ann.fps), "width": int(ann.width), "height": int(ann.height), "sar": _sar_text(ann.sar),
            "rotation": int(ann.rotation), "video_num_frames": int(ann.num_frames),
            "video_duration": float(ann.duration)}


def _kind(value: Any, default: str) -> str:
    if value is None:
        return default
    return str(getattr(value, "kind", value))


def _score(kind: Any, value: Any) -> float | None:
    """A cut's detector score; None where the clip is bounded by the video's ends or a length split."""
    if value is None or _kind(kind, "start") in ("start", "end", "split"):
        return None
    value = float(getattr(value, "score", value))
    return value if np.isfinite(value) else None


def annotate_video(ref: VideoRef, config: CurationConfig) -> VideoAnnotation:
    """Decode once: cuts, fades, motion. Raises InputError for files that are not usable videos."""
    return annotate.annotate_video(ref.source, config.cut, config.motion, threads=config.threads)


def split_records(ref: VideoRef, ann: VideoAnnotation, config: CurationConfig) -> list[ClipRecord]:
    """Clip spans -> records with position, source and cut evidence filled in (an 'empty' record if none)."""
    spans = clips.split_clips(ann, config.split)
    chash = config.hash()
    if not spans:
        if ann.note.startswith("truncated"):  # the decodable part was too short: the cause is the damage
            reason = f"{ann.note}; no clip in the {ann.num_frames} decodable frames ({ann.duration:.2f} s)"
            return [status_record(ref, "error", reason, chash, ann)]
        reason = (f"no clip: {ann.num_frames} frames ({ann.duration:.2f} s) with {len(ann.cuts)} cut(s) give no "
                  "span inside the split limits (see split settings, e.g. the minimum clip length)")
        if ann.note:
            reason += f"; {ann.note}"
        return [status_record(ref, "empty", reason, chash, ann)]
    records = []
    video = _video_fields(ann)
    extra = {"video_cuts": len(ann.cuts), "codec": ann.codec}
    if ann.note:
        extra["note"] = ann.note  # damaged file: only its decodable part was analysed
    for span in spans:
        row = empty_row()
        row.update(video)
        start, end = int(span.start_frame), int(span.end_frame)
        row.update(
            clip_id=f"{ref.video_id}_{int(span.index):04d}", video_id=ref.video_id, source=ref.source,
            source_rel=ref.source_rel, clip_index=int(span.index), status="ok", start_frame=start, end_frame=end,
            num_frames=end - start, start_time=float(span.start_time), end_time=float(span.end_time),
            duration=float(span.end_time) - float(span.start_time), cut_in=_kind(span.cut_in, "start"),
            cut_out=_kind(span.cut_out, "end"), cut_in_score=_score(span.cut_in, span.cut_in_score),
            cut_out_score=_score(span.cut_out, span.cut_out_score), keep=True, pipeline_version=PIPELINE_VERSION,
            config_hash=chash, extra=json.dumps(extra),
        )
        records.append(ClipRecord(row, span, ann))
    return records


def add_motion(records: Sequence[ClipRecord], calibration: MotionCalibration | None = None) -> None:
    """motion_score (mean flow magnitude over the clip, display short sides per second) and SVD's
    motion_bucket_id (127 when the clip has no flow sample)."""
    for rec in records:
        if rec.ok:
            score = float(clips.clip_motion(rec.annotation, rec.span))
            rec.row["motion_score"] = score if np.isfinite(score) else None  # NaN: no flow sample inside the clip
            rec.row["motion_bucket_id"] = int(motion.motion_bucket_id(score, calibration))


class KeyframeCache:
    """Keyframes (RGB uint8 (H, W, 3) each) per clip id, decoded on first use."""

    def __init__(self, config: CurationConfig) -> None:
        self.which = tuple(config.keyframes)
        self.max_side = config.keyframe_max_side or None
        self._frames: dict[str, list[np.ndarray]] = {}

    def get(self, rec: ClipRecord) -> list[np.ndarray]:
        cid = rec.row["clip_id"]
        if cid not in self._frames:
            self._frames[cid] = list(clips.keyframes(rec.row["source"], rec.span, which=self.which,
                                                     max_side=self.max_side))
        return self._frames[cid]

    def prefetch(self, records: Sequence[ClipRecord], threads: int = 1) -> None:
        """Decode the keyframes of all ``records`` (clips of one video) in one sorted pass: the decoder seeks
        only where that skips frames, so no stretch between two source keyframes is decoded twice."""
        todo = [r for r in records if r.ok and r.row["clip_id"] not in self._frames]
        if not todo:
            return
        fields = {"first": "start_time", "middle": "middle_time", "last": "last_time"}
        times = [float(getattr(r.span, fields[w])) for r in todo for w in self.which]
        try:
            frames = frames_at.read_frames_at(todo[0].row["source"], times, max_side=self.max_side, threads=threads)
        except (SVDError, ValueError, OSError) as exc:  # per-clip reads in get() will say which clip fails
            log.info("keyframe prefetch failed (%s); reading clip by clip", error_text(exc))
            return
        if len(frames) != len(times):
            return
        k = len(self.which)
        for i, rec in enumerate(todo):
            self._frames[rec.row["clip_id"]] = frames[i * k : (i + 1) * k]

    def drop(self, clip_id: str) -> None:
        self._frames.pop(clip_id, None)


# ----------------------------------------------------------------------------------------- one video


@dataclass
class VideoResult:
    """What one video produced: its rows and how long it took (frames = frames decoded)."""

    video_id: str
    source: str
    rows: list[dict[str, Any]]
    seconds: float = 0.0
    frames: int = 0

    @property
    def status(self) -> str:
        return self.rows[0]["status"] if self.rows else "empty"

    @property
    def clips(self) -> int:
        return sum(1 for r in self.rows if r["status"] == "ok")


def curate_video(path: str | os.PathLike[str], root: str | os.PathLike[str] | None, config: CurationConfig,
                 out_dir: str | os.PathLike[str], models: Any = None, registry: Any = None) -> VideoResult:
    """Every step for one file; never raises for a bad file (SVDError, OSError, ValueError, ...).
    ``registry``: the captioner registry the config's captioner names are looked up in (None: the default)."""
    from . import scoring  # it builds on this module's records

    start = time.perf_counter()
    ref = VideoRef.of(path, root)
    frames = 0
    try:
        ann = annotate_video(ref, config)
        frames = int(ann.num_frames)
        records = split_records(ref, ann, config)
        add_motion(records, config.buckets)
        if any(r.ok for r in records):
            cache = KeyframeCache(config)
            if config.needs_keyframes:
                cache.prefetch(records, threads=config.threads)
            if config.text:
                scoring.add_text(records, cache, config)
            models = models if models is not None else scoring.get_models(config, registry)
            scoring.score_records(records, cache, config, out_dir, models)
            scoring.write_files(records, cache, config, out_dir)
    except (KeyboardInterrupt, SystemExit, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - one bad file must never stop the run
        log.info("%s: %s", ref.source, error_text(exc))
        records = [status_record(ref, "error", error_text(exc), config.hash())]
    return VideoResult(ref.video_id, ref.source, [r.row for r in records], time.perf_counter() - start, frames)
