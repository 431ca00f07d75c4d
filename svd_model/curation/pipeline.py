"""One video through the curation steps: annotate once (decode, cascaded cuts, motion), split into clips,
then per clip motion score, text area, CLIP scores and captions on a few keyframes, optional clip /
keyframe / embedding files; the result is a list of manifest rows.

The steps are separate functions over :class:`ClipRecord` lists so the ComfyUI nodes can run them one at a
time: here annotation, splitting and motion; the keyframe scores and the file outputs are in scoring.py; the
config, the records and the keyframe cache both build on are in records.py (re-exported here).
:func:`curate_video` chains them for one file and never raises for a bad file: a video that fails becomes
one ``status="error"`` row with the reason, a video without any clip one ``status="empty"`` row.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SVDError
from ..fsutil import replace_atomic
from . import annotate, clips, motion, scoring
from .annotate import VideoAnnotation
from .manifest_rows import THUMB_KEY, THUMB_SIDE, empty_row, thumbnail_rel
from .motion import MotionCalibration
from .phash import add_hashes
from .records import (
    CLIP_MODES,
    KEYFRAME_KINDS,
    PIPELINE_VERSION,
    ClipRecord,
    CurationConfig,
    KeyframeCache,
    VideoRef,
    VideoResult,
    check_finite,
    dropped_record,
    error_text,
    keyframe_capture,
    status_record,
    video_fields,
)

__all__ = [  # the records are re-exported: nodes, engines and callers import them from here too
    "CLIP_MODES",
    "KEYFRAME_KINDS",
    "PIPELINE_VERSION",
    "ClipRecord",
    "CurationConfig",
    "KeyframeCache",
    "VideoRef",
    "VideoResult",
    "add_motion",
    "annotate_video",
    "check_finite",
    "curate_video",
    "dropped_record",
    "error_text",
    "split_records",
    "status_record",
]

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ steps


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
    """Decode once: cuts, fades, motion, and the exact keyframe pictures when the config needs them (see
    records.keyframe_capture). Raises InputError for files that are not usable videos."""
    references = config.needs_keyframes and config.keyframe_source == "reference"  # known even when not captured
    return annotate.annotate_video(ref.source, config.cut, config.motion, threads=config.threads,
                                   capture=keyframe_capture(config), references=references)


def split_records(ref: VideoRef, ann: VideoAnnotation, config: CurationConfig) -> list[ClipRecord]:
    """Every span between cuts -> a record, in frame order: the clips (status 'ok') with position, source and cut
    evidence filled in, and the spans that give no clip (status 'dropped', the reason in ``error``: too short,
    trimmed away, transition; see clips.split_spans and records.dropped_record). A video whose decodable part was
    cut short by damage and gives no clip gets an 'error' row first; one without any span an 'empty' row."""
    spans = clips.split_spans(ann, config.split)
    chash = config.hash()
    records: list[ClipRecord] = []
    if all(span.drop for span in spans):
        if ann.note.startswith("truncated"):  # the decodable part was too short: the cause is the damage
            reason = f"{ann.note}; no clip in the {ann.num_frames} decodable frames ({ann.duration:.2f} s)"
            records.append(status_record(ref, "error", reason, chash, ann))
        elif not spans:
            reason = f"no clip: {ann.num_frames} frames ({ann.duration:.2f} s) with {len(ann.cuts)} cut(s) give no span"
            return [status_record(ref, "empty", f"{reason}; {ann.note}" if ann.note else reason, chash, ann)]
    video = video_fields(ann)
    extra = {"video_cuts": len(ann.cuts), "codec": ann.codec}
    if ann.note:
        extra["note"] = ann.note  # damaged file: only its decodable part was analysed
    dropped = 0
    for span in spans:
        if span.drop:
            rec = dropped_record(ref, ann, span, dropped, chash)
            rec.row.update(cut_in_score=_score(span.cut_in, span.cut_in_score),
                           cut_out_score=_score(span.cut_out, span.cut_out_score),
                           extra=json.dumps({**extra, **json.loads(rec.row["extra"])}))
            records.append(rec)
            dropped += 1
            continue
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


# ----------------------------------------------------------------------------------------- timings

#: The per-stage timings a worker reports (seconds): decode (decoding + analysis thumbnails), cuts (cascade and
#: splitting), motion (flow), keyframes (the exact keyframe decode), hash (perceptual hash), text, captions, clip
#: (CLIP embeddings and scores), writes (clip / keyframe / embedding / thumbnail files). The driver adds startup,
#: manifest, filter and report (see engine.RunSummary).
STAGES = ("decode", "cuts", "motion", "keyframes", "hash", "text", "captions", "clip", "writes")


class StageTimer:
    """Seconds per stage, summed over calls (time.perf_counter): ``with timer("text"): ...``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add({stage: time.perf_counter() - start})

    def add(self, seconds: Mapping[str, float]) -> None:
        for stage, value in seconds.items():
            self.seconds[stage] = self.seconds.get(stage, 0.0) + float(value)


def write_thumbnails(records: Sequence[ClipRecord], cache: KeyframeCache, out_dir: str | os.PathLike[str],
                     max_side: int = THUMB_SIDE) -> None:
    """The report's thumbnails, from the keyframes already decoded: one JPEG strip per video
    (thumbs/<video_id>.jpg, the middle keyframe of each ok clip side by side, long side <= ``max_side`` px),
    the clip's tile in its row's extra JSON (``thumb``: [file, x offset, width]), so the report never decodes the
    sources again. A failure only logs (the report then decodes that clip's frame)."""
    from PIL import Image

    ok = [r for r in records if r.ok]
    if not ok:
        return
    try:
        tiles = []
        for rec in ok:
            frames = cache.get(rec)
            image = Image.fromarray(frames[len(frames) // 2])
            image.thumbnail((max_side, max_side))  # PIL on uint8 numpy: no tensors here, so not kornia
            tiles.append(image)
        w, h = tiles[0].size
        strip = Image.new("RGB", (w * len(tiles), h))
        for i, tile in enumerate(tiles):
            strip.paste(tile.resize((w, h)) if tile.size != (w, h) else tile, (i * w, 0))
        rel = thumbnail_rel(ok[0].row["video_id"])
        replace_atomic(Path(out_dir) / rel, lambda tmp: strip.save(tmp, format="JPEG", quality=80))
    except (SVDError, ValueError, OSError) as exc:
        log.info("%s: no report thumbnails (%s)", ok[0].row["source"], error_text(exc))
        return
    for i, rec in enumerate(ok):
        extra = json.loads(rec.row.get("extra") or "{}")
        extra[THUMB_KEY] = [rel, i * w, w]  # the tile: x offset and width (px) in the strip
        rec.row["extra"] = json.dumps(extra)


# ----------------------------------------------------------------------------------------- one video


def curate_video(path: str | os.PathLike[str], root: str | os.PathLike[str] | None, config: CurationConfig,
                 out_dir: str | os.PathLike[str], models: Any = None, registry: Any = None) -> VideoResult:
    """Every step for one file; never raises for a bad file (SVDError, OSError, ValueError, ...).
    ``registry``: the captioner registry the config's captioner names are looked up in (None: the default)."""
    start = time.perf_counter()
    ref = VideoRef.of(path, root)
    frames = 0
    timer = StageTimer()
    try:
        ann = annotate_video(ref, config)
        timer.add(ann.stage_seconds)
        frames = int(ann.num_frames)
        with timer("cuts"):  # splitting the cut list into clips and the per-clip motion mean
            records = split_records(ref, ann, config)
            add_motion(records, config.buckets)
        if any(r.ok for r in records):
            cache = KeyframeCache(config)
            if config.needs_keyframes:
                with timer("keyframes"):
                    cache.prefetch(records, threads=config.threads)
            if config.perceptual_hash:
                with timer("hash"):
                    add_hashes(records, cache)
            if config.text:
                with timer("text"):
                    scoring.add_text(records, cache, config)
            models = models if models is not None else scoring.get_models(config, registry)
            if models.captioners:  # captions first: the CLIP caption similarity reads them
                with timer("captions"):
                    scoring.score_records(records, cache, config, out_dir, scoring.Models(None, models.captioners))
            if models.scorer is not None:
                with timer("clip"):
                    scoring.score_records(records, cache, config, out_dir, scoring.Models(models.scorer, ()))
            with timer("writes"):
                scoring.write_files(records, cache, config, out_dir)
                write_thumbnails(records, cache, out_dir)
    except (KeyboardInterrupt, SystemExit, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - one bad file must never stop the run
        log.info("%s: %s", ref.source, error_text(exc))
        records = [status_record(ref, "error", error_text(exc), config.hash())]
    return VideoResult(ref.video_id, ref.source, [r.row for r in records], time.perf_counter() - start, frames,
                       timer.seconds)
