"""The manifest's row layout without Arrow: column names, types (by name) and meanings, an empty row, a video's
status from its rows, and where the workers put report thumbnails.

The per-video pipeline (run in every curation worker) needs only these; manifest.py, which reads and writes the
Parquet parts, imports pyarrow (about 0.07-0.14 s of each worker's start-up) and re-exports everything here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

#: Column -> (Arrow type name, meaning), the one definition of the manifest's columns; manifest.py turns the type
#: names ('string', 'int32', 'int64', 'float64', 'bool', 'list<string>') into pyarrow types for its SCHEMA.
#: The trainer reads clip_id, source, clip_path, start/end frame and time, fps, motion_score, motion_bucket_id,
#: width, height and keep; do not rename those.
COLUMN_SPECS: dict[str, tuple[str, str]] = {
    "clip_id": ("string", "video_id + '_' + 4-digit clip index; '<video_id>_err' / '_none' for status rows, "
                          "'<video_id>_d' + 4 digits for dropped spans"),
    "video_id": ("string", "hash of the source path relative to the input root, its size and mtime"),
    "source": ("string", "absolute path of the source video"),
    "source_rel": ("string", "source path relative to the input root (posix)"),
    "clip_index": ("int32", "0.. within the video; -1 on a status or dropped row"),
    "status": ("string", "'ok' (a clip), 'dropped' (a span between cuts that gives no clip: too short, trimmed "
                         "away, transition; the reason in error), 'error' (the video failed) or 'empty' (no span)"),
    "error": ("string", "why the video failed or the span gives no clip ('' when ok)"),
    "start_frame": ("int64", "first frame of the clip (source frame index)"),
    "end_frame": ("int64", "one past the last frame (exclusive)"),
    "num_frames": ("int64", "end_frame - start_frame"),
    "start_time": ("float64", "presentation time of start_frame, seconds"),
    "end_time": ("float64", "presentation time just after the last frame, seconds"),
    "duration": ("float64", "end_time - start_time"),
    "fps": ("float64", "source frame rate"),
    "width": ("int32", "display width (SAR and rotation applied)"),
    "height": ("int32", "display height"),
    "sar": ("string", "sample aspect ratio 'num:den'"),
    "rotation": ("int32", "display rotation in degrees (0/90/180/270)"),
    "video_num_frames": ("int64", "frames decoded from the whole source"),
    "video_duration": ("float64", "source duration, seconds"),
    "cut_in": ("string", "what starts the clip: 'start' (video start), 'hard', 'fade', 'dissolve', 'flash', 'split' "
                         "(max length)"),
    "cut_out": ("string", "what ends the clip: 'end', 'hard', 'fade', 'dissolve', 'flash', 'split'"),
    "cut_in_score": ("float64", "detector score of the cut before the clip (null at the video start)"),
    "cut_out_score": ("float64", "detector score of the cut after the clip (null at the video end)"),
    "motion_score": ("float64", "mean optical-flow magnitude over the clip (SVD's motion score)"),
    "motion_bucket_id": ("int32", "SVD motion_bucket_id derived from motion_score"),
    "text_area": ("float64", "fraction of the frame covered by text (max over the keyframes); null if off"),
    "clip_embedding_path": ("string", "safetensors file (relative to OUT) holding tensor <clip_id>: (k, d)"),
    "aesthetic": ("float64", "aesthetic head score, mean over keyframes; null without a head"),
    "clip_score": ("float64", "CLIP image-caption cosine similarity; null without a text tower/caption"),
    "caption_image": ("string", "caption of the middle frame (image captioner)"),
    "caption_video": ("string", "caption of the clip (video captioner)"),
    "caption_summary": ("string", "summary of the two captions"),
    "clip_path": ("string", "written clip file relative to OUT ('' when clips are not written)"),
    "keyframe_paths": ("list<string>", "written keyframe JPEGs relative to OUT (first, middle, last)"),
    "keep": ("bool", "True when the clip passed the filter (always False for status rows)"),
    "drop_reason": ("string", "'; '-joined failed filter rules, or the status reason"),
    "pipeline_version": ("string", "curation code version"),
    "config_hash": ("string", "hash of the CurationConfig that produced the row"),
    "extra": ("string", "JSON object with further per-clip evidence (cut levels, motion spread, ...)"),
}

#: The column names the trainer relies on.
TRAINER_COLUMNS = ("clip_id", "source", "clip_path", "start_frame", "end_frame", "start_time", "end_time", "fps",
                   "motion_score", "motion_bucket_id", "width", "height", "keep")


def video_status(statuses: Iterable[str]) -> str:
    """One video's status from its rows' statuses: 'error' if any row is, else 'ok' if it has a clip, else
    'empty' (no clip: only dropped spans, or an 'empty' row)."""
    statuses = set(statuses)
    if "error" in statuses:
        return "error"
    return "ok" if "ok" in statuses else "empty"


def empty_row() -> dict[str, Any]:
    """A row with every column present (None / [] / False defaults)."""
    row: dict[str, Any] = dict.fromkeys(COLUMN_SPECS)
    row.update(keyframe_paths=[], keep=False, drop_reason="", error="", clip_path="", extra="{}")
    return row


#: Report thumbnails written by the workers: one JPEG strip per video (the middle keyframe of each clip side by
#: side, long side <= THUMB_SIDE px); a clip's row names its tile in ``extra`` as ``"thumb": [file, x, width]``.
THUMB_DIR = "thumbs"
THUMB_KEY = "thumb"
THUMB_SIDE = 160


def thumbnail_rel(video_id: str) -> str:
    """The thumbnail strip of a video, relative to the output folder."""
    return f"{THUMB_DIR}/{video_id}.jpg"
