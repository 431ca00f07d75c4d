"""The keyframe steps of the curation pipeline and its file outputs, over :class:`~.records.ClipRecord` lists:
text area (classical detector), captions and CLIP scores from the optional local models (loaded once per
process by :func:`get_models`), CLIP embeddings, clip files and keyframe JPEGs.

A failed optional step never fails the clip: its score stays null and the row's ``error`` says why.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SVDError
from ..fsutil import replace_atomic
from . import clips
from .records import ClipRecord, CurationConfig, KeyframeCache, error_text

log = logging.getLogger(__name__)


def _note(rec: ClipRecord, step: str, exc: BaseException) -> None:
    """A failed optional step: the score stays null, the row says why (status stays 'ok')."""
    text = f"{step}: {error_text(exc)}"
    rec.row["error"] = f"{rec.row['error']}; {text}" if rec.row["error"] else text
    log.warning("%s clip %s: %s", rec.row["source"], rec.row["clip_id"], text)


def add_text(records: Sequence[ClipRecord], cache: KeyframeCache, config: CurationConfig) -> None:
    """text_area: fraction of the frame covered by detected text on the keyframes (max or mean)."""
    from . import text

    for rec in records:
        if rec.ok:
            try:
                rec.row["text_area"] = float(text.clip_text_score(cache.get(rec), reduce=config.text_reduce))
            except (SVDError, ValueError, OSError) as exc:
                _note(rec, "text", exc)


@dataclass
class Models:
    """The loaded optional models: a ClipScorer (None when not configured) and the captioners."""

    scorer: Any = None
    captioners: tuple[Any, ...] = ()


_MODELS: dict[tuple[str, ...], Models] = {}
_MODELS_LOCK = threading.Lock()


def get_models(config: CurationConfig, registry: Any = None) -> Models:
    """Load (once per process) the CLIP scorer and the captioners the config names (registered names, looked up
    in ``registry``, default: captioner_registry.default_registry()); never downloads."""
    from .captioner_registry import default_registry

    registry = registry if registry is not None else default_registry() if config.captioners else None
    key = (config.clip_checkpoint, config.aesthetic_head, config.text_tower, config.tokenizer,
           *(registry.fingerprint(config.captioners) if registry is not None else ()))
    with _MODELS_LOCK:  # thread engine: load once, not once per thread
        return _MODELS[key] if key in _MODELS else _load_models(config, key, registry)


def _load_models(config: CurationConfig, key: tuple[Any, ...], registry: Any) -> Models:
    models = Models()
    if config.clip_checkpoint:
        from .clip_scores import ClipScorer

        models.scorer = ClipScorer.from_checkpoint(
            config.clip_checkpoint, aesthetic_head=config.aesthetic_head or None,
            text_tower=config.text_tower or None, tokenizer=config.tokenizer or None)
    elif config.aesthetic_head or config.text_tower:
        log.warning("aesthetic_head / text_tower need clip_checkpoint (the image tower): CLIP scores skipped")
    if config.captioners:
        from .captions import get_captioner

        made = (get_captioner(name, registry) for name in config.captioners)
        models.captioners = tuple(c for c in made if c is not None)
    _MODELS[key] = models
    return models


def _as_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().float().cpu().numpy()
    return np.asarray(value, dtype=np.float32)


def score_records(records: Sequence[ClipRecord], cache: KeyframeCache, config: CurationConfig,
                  out_dir: str | os.PathLike[str], models: Models) -> None:
    """Captions (image captioners see the middle keyframe), then CLIP embeddings, aesthetic (mean over the
    keyframes) and caption similarity (mean over keyframes and captions); embeddings optionally to
    embeddings/<video_id>.safetensors."""
    embeddings: dict[str, np.ndarray] = {}
    for rec in records:
        if not rec.ok:
            continue
        if models.captioners:
            from .captions import caption_clip

            try:
                found = caption_clip(cache.get(rec), models.captioners)
                rec.row.update(caption_image=found.image, caption_video=found.video, caption_summary=found.summary)
            except (SVDError, ValueError, OSError, RuntimeError) as exc:
                _note(rec, "captions", exc)
        scorer = models.scorer
        if scorer is None:
            continue
        try:
            emb = scorer.embed(cache.get(rec))  # (k, d)
            if scorer.has_aesthetic:
                rec.row["aesthetic"] = float(_as_numpy(scorer.aesthetic(emb)).mean())
            texts = [rec.row[k] for k in ("caption_image", "caption_video", "caption_summary") if rec.row[k]]
            if scorer.has_text and texts:
                rec.row["clip_score"] = float(_as_numpy(scorer.similarity(emb, texts)).mean())
            if config.save_embeddings:
                embeddings[rec.row["clip_id"]] = _as_numpy(emb).astype(np.float16)
        except (SVDError, ValueError, OSError, RuntimeError) as exc:
            _note(rec, "clip scores", exc)
    if embeddings:
        from safetensors.numpy import save_file

        vid = records[0].row["video_id"]
        rel = f"embeddings/{vid}.safetensors"
        replace_atomic(Path(out_dir) / rel, lambda tmp: save_file(embeddings, str(tmp)))
        for rec in records:
            if rec.row["clip_id"] in embeddings:
                rec.row["clip_embedding_path"] = rel


def write_files(records: Sequence[ClipRecord], cache: KeyframeCache, config: CurationConfig,
                out_dir: str | os.PathLike[str]) -> None:
    """Clip files (clips/<video_id>/<clip_id>.mp4) and keyframe JPEGs (keyframes/<video_id>/...)."""
    from PIL import Image

    out = Path(out_dir)
    index = None
    for rec in records:
        if not rec.ok:
            continue
        if config.write_clips != "none" and index is None:
            index = clips.packet_index(rec.row["source"])  # one demux per video, shared by its clips
        vid, cid = rec.row["video_id"], rec.row["clip_id"]
        if config.write_keyframes:
            try:
                paths = []
                for kind, frame in zip(config.keyframes, cache.get(rec), strict=False):
                    rel = f"keyframes/{vid}/{cid}_{kind}.jpg"
                    image = Image.fromarray(frame)
                    replace_atomic(out / rel, lambda tmp, image=image: image.save(tmp, format="JPEG", quality=88))
                    paths.append(rel)
                rec.row["keyframe_paths"] = paths
            except (SVDError, ValueError, OSError) as exc:
                _note(rec, "keyframes", exc)
        if config.write_clips != "none":
            _write_clip(rec, config, out, index)


def _write_clip(rec: ClipRecord, config: CurationConfig, out: Path, index: Any) -> None:
    """clips/<video_id>/<clip_id>.mp4 (mkv/mov kept for stream copies). A copied clip starts and ends on
    source keyframes, so it can be shorter than the analysed span: the row then describes the written
    frames and ``extra.analysed_frames`` keeps the span the scores were computed on."""
    suffix = Path(rec.row["source"]).suffix.lower()
    suffix = suffix if config.write_clips != "reencode" and suffix in (".mp4", ".mkv", ".mov") else ".mp4"
    rel = f"clips/{rec.row['video_id']}/{rec.row['clip_id']}{suffix}"
    try:
        res = clips.write_clip(rec.row["source"], rec.span, out / rel, mode=config.write_clips,
                               min_seconds=config.split.min_seconds, index=index)
    except (SVDError, ValueError, OSError) as exc:
        _note(rec, "clip file", exc)
        return
    row = rec.row
    row["clip_path"] = rel
    if (res.start_frame, res.end_frame) != (row["start_frame"], row["end_frame"]):
        extra = json.loads(row["extra"])
        extra["analysed_frames"] = [row["start_frame"], row["end_frame"]]
        row.update(extra=json.dumps(extra), start_frame=res.start_frame, end_frame=res.end_frame,
                   num_frames=res.end_frame - res.start_frame, start_time=res.start_time, end_time=res.end_time,
                   duration=res.end_time - res.start_time)
    extra = json.loads(row["extra"])
    extra["clip_mode"] = res.mode
    row["extra"] = json.dumps(extra)
