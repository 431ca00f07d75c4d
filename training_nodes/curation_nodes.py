"""Dataset curation nodes (SVD paper section 3.1): load a video folder, annotate (cuts, fades, motion),
split, score (motion, text, CLIP), caption, filter, write the manifest, report; and one node that runs
the whole pipeline over a folder with progress, interruption and resume.

Custom types: ``SVDLAB_VIDEO_LIST`` (:class:`~..svd_model.curation.engine.VideoList`),
``SVDLAB_VIDEO_ANNOTATIONS`` (:class:`Annotations`), ``SVDLAB_CLIPS`` (:class:`ClipSet`),
``SVDLAB_MANIFEST`` (:class:`Manifest`: a curated output folder). Step nodes never change their inputs.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..nodes import bridge
from ..svd_model.curation import filtering, manifest, pipeline
from ..svd_model.curation.engine import VIDEO_EXTENSIONS, list_videos, prepare_output, run_curation
from ..svd_model.curation.pipeline import ClipRecord, CurationConfig, KeyframeCache, VideoRef
from ..svd_model.curation.report import build_report
from ..svd_model.errors import ConfigError, InputError

log = logging.getLogger(__name__)

CATEGORY = "SVD Lab/curation"
VIDEO_LIST, ANNOTATIONS, CLIPS, MANIFEST = ("SVDLAB_VIDEO_LIST", "SVDLAB_VIDEO_ANNOTATIONS", "SVDLAB_CLIPS",
                                            "SVDLAB_MANIFEST")
IF_EXISTS = ["resume", "overwrite", "error"]
CLIP_FILES = list(pipeline.CLIP_MODES)
DEFAULT_FOLDER = "svd_lab_curation_example"


@dataclass(frozen=True)
class Annotations:
    """SVDLAB_VIDEO_ANNOTATIONS: per video its ref and annotation, or the reason it failed."""

    root: Path
    items: tuple[tuple[VideoRef, Any, str], ...]  # (ref, VideoAnnotation | None, error)
    config: CurationConfig


@dataclass(frozen=True)
class ClipSet:
    """SVDLAB_CLIPS: clip records (and status rows of failed videos), the config, a shared keyframe cache."""

    records: tuple[ClipRecord, ...]
    config: CurationConfig
    cache: KeyframeCache
    filter_json: str = ""

    def copy(self, **changes: Any) -> ClipSet:
        """New records (row dicts copied) so a step never alters what an upstream node returned."""
        records = tuple(ClipRecord(dict(r.row), r.span, r.annotation) for r in self.records)
        return replace(self, records=records, **changes)

    @property
    def ok(self) -> list[ClipRecord]:
        return [r for r in self.records if r.ok]


@dataclass(frozen=True)
class Manifest:
    """SVDLAB_MANIFEST: a curated output folder (manifest/, manifest_filtered.parquet, report.html)."""

    out_dir: Path


def _settings(text: str, what: str) -> dict[str, Any]:
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{what} must be JSON (e.g. {{\"min_scene_s\": 0.5}}), got {text!r}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} must be a JSON object, got {text!r}")
    return data


def _json_problem(text: str | None, what: str) -> str | None:
    if text is None:
        return None
    try:
        _settings(text, what)
    except ConfigError as exc:
        return str(exc)
    return None


def resolve_folder(folder: str) -> Path | None:
    """An absolute folder, or one relative to the working directory, ComfyUI's input folder or the pack's
    example inputs."""
    if not folder:
        return None
    candidates = [Path(folder)] if Path(folder).is_absolute() else [
        Path(folder), bridge.folder("input") / folder, bridge.PACK_INPUTS / folder]
    return next((c for c in candidates if c.exists()), None)


def _out_dir(name: str) -> Path:
    rel = Path(name)
    if not name.strip() or rel.is_absolute() or ".." in rel.parts:
        raise ConfigError(f"output name {name!r} must be a relative folder name inside the output folder")
    return bridge.folder("output") / rel


def _ui(out: Path, summary: str, report: Path | None) -> dict[str, list]:
    ui: dict[str, list] = {"text": [summary]}
    if report is not None:
        base = bridge.folder("output").absolute()
        sub = os.path.relpath(report.parent.absolute(), base).replace(os.sep, "/")
        ui["svdlab_report"] = [{"filename": report.name, "subfolder": "" if sub == "." else sub, "type": "output",
                                "fullpath": str(report)}]
    return ui


# ---------------------------------------------------------------------------------------------- nodes


class LoadVideoFolder:
    DESCRIPTION = ("Lists the video files in a folder (searched recursively) for curation. Only file names are "
                   "read here; nothing is decoded.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (VIDEO_LIST, "INT")
    RETURN_NAMES = ("videos", "count")
    OUTPUT_TOOLTIPS = ("The video files and their root folder.", "How many files were found.")

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "folder": ("STRING", {"default": DEFAULT_FOLDER, "tooltip": (
                "Folder of videos: absolute, or relative to the working directory, ComfyUI's input folder or "
                "the pack's example inputs. A .txt file with one path per line works too.")}),
            "extensions": ("STRING", {"default": ",".join(e[1:] for e in VIDEO_EXTENSIONS), "tooltip": (
                "File extensions to include, comma-separated.")}),
            "limit": ("INT", {"default": 0, "min": 0, "max": 10_000_000, "tooltip": "Use at most this many files "
                              "(0 = all), e.g. to try settings on a few videos first."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, folder: str | None) -> bool | str:
        if folder is None or resolve_folder(folder) is not None:
            return True
        return f"video folder {folder!r} not found (absolute, or relative to {bridge.folder('input')})"

    @classmethod
    def IS_CHANGED(cls, folder: str, extensions: str, limit: int) -> str:
        path = resolve_folder(folder)
        if path is None:
            return ""
        files = [path] if path.is_file() else sorted(path.rglob("*"))
        return "|".join(f"{p}:{p.stat().st_mtime_ns}" for p in files if p.is_file())

    def load(self, folder: str, extensions: str, limit: int) -> tuple[Any, int]:
        path = resolve_folder(folder)
        if path is None:
            raise InputError(self.VALIDATE_INPUTS(folder))
        exts = [e.strip() for e in extensions.split(",") if e.strip()]
        videos = list_videos(path, exts or VIDEO_EXTENSIONS)
        if limit:
            videos = replace(videos, paths=videos.paths[:limit])
        log.info("%s: %d video file(s)", path, len(videos))
        return videos, len(videos)


class AnnotateVideos:
    DESCRIPTION = ("Decodes each video once and finds its cuts (a three-level cascade at native, 6 and 1.5 fps that "
                   "also catches fades and dissolves) and its 2-fps optical-flow motion. A file that cannot be "
                   "read is kept with the reason and becomes an error row in the manifest.")
    CATEGORY = CATEGORY
    FUNCTION = "annotate"
    RETURN_TYPES = (ANNOTATIONS,)
    RETURN_NAMES = ("annotations",)
    OUTPUT_TOOLTIPS = ("Cuts and motion per video (or the reason a video failed).",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "videos": (VIDEO_LIST, {"tooltip": "From Load Video Folder."}),
            "min_scene_s": ("FLOAT", {"default": 0.3, "min": 0.0, "max": 60.0, "step": 0.05, "tooltip": (
                "Cuts closer than this (seconds) are merged; also the shortest first shot.")}),
            "motion_fps": ("FLOAT", {"default": 2.0, "min": 0.1, "max": 30.0, "step": 0.1, "tooltip": (
                "Rate of the optical-flow samples (the paper uses 2 fps).")}),
            "cut_settings": ("STRING", {"default": "", "multiline": True, "tooltip": (
                "Optional JSON with more CutConfig fields, e.g. {\"levels\": [{\"fps\": null, \"threshold\": 3, "
                "\"min_change\": 6}]}.")}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, cut_settings: str | None) -> bool | str:
        return _json_problem(cut_settings, "cut_settings") or True

    def annotate(self, videos: Any, min_scene_s: float, motion_fps: float, cut_settings: str) -> tuple[Annotations]:
        config = CurationConfig.from_dict({"cut": {**_settings(cut_settings, "cut_settings"),
                                                   "min_scene_s": min_scene_s}, "motion": {"fps": motion_fps}})
        bar = bridge.Progress(len(videos))
        items = []
        for i, path in enumerate(videos.paths):
            ref = VideoRef.of(path, videos.root)
            try:
                items.append((ref, pipeline.annotate_video(ref, config), ""))
            except Exception as exc:  # noqa: BLE001 - a bad file becomes an error row, the run goes on
                items.append((ref, None, pipeline.error_text(exc)))
            bar.update(i + 1)
        return (Annotations(videos.root, tuple(items), config),)


class SplitClips:
    DESCRIPTION = ("Splits each video at its cuts into clips within the length limits (long shots are cut into "
                   "several clips, transitions are trimmed off).")
    CATEGORY = CATEGORY
    FUNCTION = "split"
    RETURN_TYPES = (CLIPS, "INT")
    RETURN_NAMES = ("clips", "count")
    OUTPUT_TOOLTIPS = ("The clips (and a status row for each video without any).", "Number of clips.")

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "annotations": (ANNOTATIONS, {"tooltip": "From Annotate Videos."}),
            "split_settings": ("STRING", {"default": "", "multiline": True, "tooltip": (
                "Optional JSON with SplitConfig fields (clip length limits, trims).")}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, split_settings: str | None) -> bool | str:
        return _json_problem(split_settings, "split_settings") or True

    def split(self, annotations: Annotations, split_settings: str) -> tuple[ClipSet, int]:
        config = CurationConfig.from_dict({**annotations.config.to_dict(),
                                           "split": _settings(split_settings, "split_settings")})
        records: list[ClipRecord] = []
        for ref, ann, error in annotations.items:
            bridge.check_interrupt()
            if ann is None:
                records.append(pipeline.status_record(ref, "error", error, config.hash()))
            else:
                records += pipeline.split_records(ref, ann, config)
        clips = ClipSet(tuple(records), config, KeyframeCache(config))
        return clips, len(clips.ok)


class _Step:
    """A step over SVDLAB_CLIPS: copy, update the ok records with progress, return the copy."""

    CATEGORY = CATEGORY
    FUNCTION = "run"
    RETURN_TYPES = (CLIPS,)
    RETURN_NAMES = ("clips",)
    OUTPUT_TOOLTIPS = ("The clips with the new scores.",)

    @staticmethod
    def _each(clips: ClipSet, fn: Any) -> None:
        ok = clips.ok
        bar = bridge.Progress(len(ok))
        for i, rec in enumerate(ok):
            fn([rec])
            bar.update(i + 1)


class MotionScore(_Step):
    DESCRIPTION = ("Motion score per clip: mean optical-flow magnitude (display short sides per second), and "
                   "the SVD motion_bucket_id it maps to.")

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"clips": (CLIPS, {"tooltip": "From Split Clips."})}}

    def run(self, clips: ClipSet) -> tuple[ClipSet]:
        out = clips.copy()
        self._each(out, lambda recs: pipeline.add_motion(recs, out.config.buckets))
        return (out,)


class TextScore(_Step):
    DESCRIPTION = "Text-area ratio per clip: the fraction of the frame covered by text on its first/middle/last frame."

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "clips": (CLIPS, {"tooltip": "From Split Clips (or another step)."}),
            "reduce": (["max", "mean"], {"default": "max", "tooltip": "How the keyframes' ratios combine."}),
        }}

    def run(self, clips: ClipSet, reduce: str) -> tuple[ClipSet]:
        out = clips.copy(config=clips.config.replace(text=True, text_reduce=reduce))
        self._each(out, lambda recs: pipeline.add_text(recs, out.cache, out.config))
        return (out,)


def _file_problem(value: str | None, what: str) -> str | None:
    if value and not Path(value).is_file():
        return f"{what} file not found: {value!r}"
    return None


class ClipScores(_Step):
    DESCRIPTION = ("CLIP scores on the keyframes: image embeddings from the OpenCLIP image tower of an SVD "
                   "checkpoint, an aesthetic score from a head you supply, and caption-frame similarity from a "
                   "text tower you supply (scores whose file is not given stay empty).")

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "clips": (CLIPS, {"tooltip": "Clips (captioned first for the similarity score)."}),
            "ckpt_name": (bridge.list_checkpoints(), {"tooltip": "SVD checkpoint with the OpenCLIP image tower."}),
            "aesthetic_head": ("STRING", {"default": "", "tooltip": "Aesthetic head .safetensors ('' = none)."}),
            "text_tower": ("STRING", {"default": "", "tooltip": "OpenCLIP text tower .safetensors ('' = none)."}),
            "tokenizer": ("STRING", {"default": "", "tooltip": "Tokenizer file for the text tower."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, aesthetic_head: str | None, text_tower: str | None,
                        tokenizer: str | None) -> bool | str:
        return (_file_problem(aesthetic_head, "aesthetic head") or _file_problem(text_tower, "text tower")
                or _file_problem(tokenizer, "tokenizer") or True)

    def run(self, clips: ClipSet, ckpt_name: str, aesthetic_head: str, text_tower: str,
            tokenizer: str) -> tuple[ClipSet]:
        config = clips.config.replace(clip_checkpoint=str(bridge.resolve_checkpoint(ckpt_name)),
                                      aesthetic_head=aesthetic_head, text_tower=text_tower, tokenizer=tokenizer)
        out = clips.copy(config=config)
        models = pipeline.get_models(config)
        self._each(out, lambda recs: pipeline.score_records(recs, out.cache, config, bridge.folder("temp"),
                                                            pipeline.Models(scorer=models.scorer)))
        return (out,)


class Captions(_Step):
    DESCRIPTION = ("Captions per clip from local captioners you configure (nothing is downloaded): an image "
                   "captioner on the middle frame, a video captioner, a summary of both. Empty: no captions.")

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "clips": (CLIPS, {"tooltip": "Clips to caption."}),
            "captioners": ("STRING", {"default": "", "multiline": True, "tooltip": (
                "One captioner spec per line, e.g. local-image:/models/blip or command:my_captioner (see the "
                "captions module); at most one per kind.")}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, captioners: str | None) -> bool | str:
        if captioners is None:
            return True
        try:
            get_captioner_specs(captioners)
        except ConfigError as exc:
            return str(exc)
        return True

    def run(self, clips: ClipSet, captioners: str) -> tuple[ClipSet]:
        config = clips.config.replace(captioners=get_captioner_specs(captioners))
        out = clips.copy(config=config)
        models = pipeline.get_models(config)
        if not models.captioners:
            log.warning("no captioner configured: clips are not captioned")
            return (out,)
        self._each(out, lambda recs: pipeline.score_records(recs, out.cache, config, bridge.folder("temp"),
                                                            pipeline.Models(captioners=models.captioners)))
        return (out,)


def get_captioner_specs(text: str) -> tuple[str, ...]:
    """Specs, one per line; each must name a known captioner kind (nothing is loaded here)."""
    from ..svd_model.curation.captions import registered_captioners

    specs = tuple(line.strip() for line in text.splitlines() if line.strip() and line.strip().lower() != "none")
    for spec in specs:
        prefix = spec.partition(":")[0]
        if prefix not in registered_captioners():
            raise ConfigError(f"unknown captioner {spec!r}; specs start with one of {registered_captioners()}")
    return specs


RULES_INPUT = ("STRING", {"default": "svd", "multiline": True, "tooltip": (
    "Filter rules SCORE:MODE=VALUE separated by commas or lines: MODE min/max (absolute) or bottom/top (fraction "
    "of all clips), e.g. motion_score:bottom=0.25, text_area:max=0.07. Presets: svd, none.")})


def _rules_problem(rules: str | None) -> str | None:
    if rules is None:
        return None
    try:
        filtering.parse_rules(rules)
    except ConfigError as exc:
        return str(exc)
    return None


class FilterClips:
    DESCRIPTION = ("Marks clips kept or dropped by thresholds per score; fractions (bottom/top) are computed over "
                   "all clips given. Every dropped clip records why.")
    CATEGORY = CATEGORY
    FUNCTION = "run"
    RETURN_TYPES = (CLIPS, "STRING")
    RETURN_NAMES = ("clips", "summary")
    OUTPUT_TOOLTIPS = ("The clips with keep / drop_reason set.", "Thresholds and counts.")

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"clips": (CLIPS, {"tooltip": "Scored clips."}), "rules": RULES_INPUT}}

    @classmethod
    def VALIDATE_INPUTS(cls, rules: str | None) -> bool | str:
        return _rules_problem(rules) or True

    def run(self, clips: ClipSet, rules: str) -> tuple[ClipSet, str]:
        parsed = filtering.parse_rules(rules)
        result = filtering.apply_filters(manifest.to_table(r.row for r in clips.records), parsed)
        out = clips.copy(filter_json=result.to_json(parsed))
        for rec, keep, reason in zip(out.records, result.table["keep"].to_pylist(),
                                     result.table["drop_reason"].to_pylist(), strict=True):
            rec.row.update(keep=keep, drop_reason=reason)
        lines = [f"{result.kept} of {len(clips.ok)} clips kept"]
        lines += [f"{t.rule}: {t.dropped} dropped" + (f" (threshold {t.threshold:.4g})" if t.threshold is not None
                                                       else f" ({t.note})" if t.note else "")
                  for t in result.thresholds]
        return out, "\n".join(lines)


class WriteManifest:
    DESCRIPTION = ("Writes the clips to a Parquet manifest in the output folder (and optionally the clip files and "
                   "keyframe JPEGs), plus manifest_filtered.parquet with keep / drop_reason.")
    CATEGORY = CATEGORY
    FUNCTION = "write"
    OUTPUT_NODE = True
    RETURN_TYPES = (MANIFEST, "STRING")
    RETURN_NAMES = ("manifest", "path")
    OUTPUT_TOOLTIPS = ("The curated folder (for Curation Report).", "Its path.")

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "clips": (CLIPS, {"tooltip": "Clips (filtered or not)."}),
            "output_name": ("STRING", {"default": "SVDLab/curation", "tooltip": "Folder inside the output folder."}),
            "write_clips": (CLIP_FILES, {"default": "none", "tooltip": (
                "Also write each clip as a file: copy (stream copy, snapped to keyframes), reencode (exact), auto.")}),
            "write_keyframes": ("BOOLEAN", {"default": False, "tooltip": "Also write the keyframes as JPEG."}),
        }}

    def write(self, clips: ClipSet, output_name: str, write_clips: str,
              write_keyframes: bool) -> dict[str, Any]:
        out = prepare_output(_out_dir(output_name), resume=False, overwrite=True)
        config = clips.config.replace(write_clips=write_clips, write_keyframes=write_keyframes)
        records = clips.copy(config=config).records
        pipeline.write_files([r for r in records if r.ok], clips.cache, config, out)
        writer = manifest.ManifestWriter(out, worker="nodes", videos_per_part=1_000_000, flush_seconds=1e9)
        by_video: dict[str, list[dict[str, Any]]] = {}
        for rec in records:
            by_video.setdefault(rec.row["video_id"], []).append(rec.row)
        for vid, rows in by_video.items():
            writer.add(vid, rows[0]["source"], rows)
        writer.close()
        manifest.write_table_atomic(manifest.to_table(r.row for r in records), out / manifest.FILTERED_NAME)
        manifest.write_text_atomic(clips.filter_json or "{}", out / filtering.FILTER_JSON)
        text = f"{len(records)} rows ({len([r for r in records if r.ok])} clips) written to {out}"
        return {"ui": {"text": [text]}, "result": (Manifest(out), str(out))}


class CurationReport:
    DESCRIPTION = ("Builds the HTML report of a curated folder (histograms with thresholds, keyframes of clips on "
                   "either side of each threshold, drop reasons, failed files) and shows its summary in the node. "
                   "With rules set, the filter pass runs again first.")
    CATEGORY = CATEGORY
    FUNCTION = "report"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("summary",)
    OUTPUT_TOOLTIPS = ("Counts and thresholds.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        rules = (RULES_INPUT[0], {**RULES_INPUT[1], "default": "", "tooltip": (
            "Re-filter with these rules first ('' = keep the folder's filter). " + RULES_INPUT[1]["tooltip"])})
        return {"required": {"manifest": (MANIFEST, {"tooltip": "From Curate Folder or Write Manifest."}),
                             "rules": rules}}

    @classmethod
    def VALIDATE_INPUTS(cls, rules: str | None) -> bool | str:
        return _rules_problem(rules) or True

    def report(self, manifest: Manifest, rules: str) -> dict[str, Any]:
        result = filtering.filter_manifest(manifest.out_dir, filtering.parse_rules(rules)) if rules.strip() else None
        info = build_report(manifest.out_dir, result)
        return {"ui": _ui(manifest.out_dir, info.summary(), info.path), "result": (info.summary(),)}


class CurateFolder:
    DESCRIPTION = ("Runs the whole curation over a video folder: annotate, split, motion / text / CLIP scores, "
                   "captions, manifest, filter, report. Progress per video; cancelling keeps the finished videos "
                   "and the next run resumes there.")
    CATEGORY = CATEGORY
    FUNCTION = "curate"
    OUTPUT_NODE = True
    RETURN_TYPES = (MANIFEST, "STRING")
    RETURN_NAMES = ("manifest", "summary")
    OUTPUT_TOOLTIPS = ("The curated folder.", "Counts and thresholds.")

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "videos": (VIDEO_LIST, {"tooltip": "From Load Video Folder."}),
            "output_name": ("STRING", {"default": "SVDLab/curation", "tooltip": "Folder inside the output folder."}),
            "if_exists": (IF_EXISTS, {"default": "resume", "tooltip": (
                "When the folder already has a manifest: resume (skip finished videos), overwrite, or error.")}),
            "workers": ("INT", {"default": 0, "min": 0, "max": 256, "tooltip": "Videos decoded in parallel "
                                "(threads; 0 = one per core)."}),
            "text_score": ("BOOLEAN", {"default": True, "tooltip": "Compute the text-area ratio."}),
            "clip_checkpoint": (["none", *bridge.list_checkpoints()], {"default": "none", "tooltip": (
                "SVD checkpoint whose OpenCLIP image tower gives the CLIP scores (none = skip them).")}),
            "write_clips": (CLIP_FILES, {"default": "none", "tooltip": "Write each clip as a file (see Write "
                                                                       "Manifest)."}),
            "write_keyframes": ("BOOLEAN", {"default": False, "tooltip": "Write the keyframes as JPEG."}),
            "rules": RULES_INPUT,
            "settings": ("STRING", {"default": "", "multiline": True, "tooltip": (
                "Optional JSON with more CurationConfig fields: cut, motion, split (nested), aesthetic_head, "
                "text_tower, tokenizer, captioners (a list of specs), keyframe_max_side, save_embeddings.")}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, rules: str | None, settings: str | None) -> bool | str:
        return _rules_problem(rules) or _json_problem(settings, "settings") or True

    def curate(self, videos: Any, output_name: str, if_exists: str, workers: int, text_score: bool,
               clip_checkpoint: str, write_clips: str, write_keyframes: bool, rules: str,
               settings: str) -> dict[str, Any]:
        data = _settings(settings, "settings")
        data.update(text=text_score, write_clips=write_clips, write_keyframes=write_keyframes)
        if clip_checkpoint != "none":
            data["clip_checkpoint"] = str(bridge.resolve_checkpoint(clip_checkpoint))
        config = CurationConfig.from_dict(data)
        out = _out_dir(output_name)
        bar = bridge.Progress(max(1, len(videos)))
        summary = run_curation(videos, out, config, engine="thread", workers=workers,
                               resume=if_exists == "resume", overwrite=if_exists == "overwrite", videos_per_part=8,
                               progress=lambda s: bar.update(s.done, max(1, s.total)))
        result = filtering.filter_manifest(out, filtering.parse_rules(rules))
        info = build_report(out, result)
        text = f"{summary.text()}\n{info.summary()}"
        return {"ui": _ui(out, text, info.path), "result": (Manifest(out), text)}


NODES: dict[str, tuple[type, str]] = {
    "SVDLab_LoadVideoFolder": (LoadVideoFolder, "SVD Lab Load Video Folder"),
    "SVDLab_AnnotateVideos": (AnnotateVideos, "SVD Lab Annotate Videos (cuts, motion)"),
    "SVDLab_SplitClips": (SplitClips, "SVD Lab Split Clips"),
    "SVDLab_MotionScore": (MotionScore, "SVD Lab Motion Score"),
    "SVDLab_TextScore": (TextScore, "SVD Lab Text Score"),
    "SVDLab_ClipScores": (ClipScores, "SVD Lab CLIP Scores"),
    "SVDLab_Captions": (Captions, "SVD Lab Captions"),
    "SVDLab_FilterClips": (FilterClips, "SVD Lab Filter Clips"),
    "SVDLab_WriteManifest": (WriteManifest, "SVD Lab Write Manifest"),
    "SVDLab_CurationReport": (CurationReport, "SVD Lab Curation Report"),
    "SVDLab_CurateFolder": (CurateFolder, "SVD Lab Curate Folder"),
}
