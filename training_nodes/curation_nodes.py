"""Dataset curation nodes (SVD paper section 3.1): load a video folder, annotate (cuts, fades, motion),
split, score (motion, text, CLIP), caption, filter, write the manifest, report; and one node that runs
the whole pipeline over a folder with progress, interruption and resume.

Step nodes never change their inputs. Types, shared inputs and helpers: curation_base.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ..nodes import bridge
from ..nodes.types import number_problem
from ..svd_model.curation import filtering, manifest, pipeline, scoring
from ..svd_model.curation.cuts import DETECTORS
from ..svd_model.curation.dedup import DedupConfig
from ..svd_model.curation.engine import VIDEO_EXTENSIONS, prepare_output, run_curation
from ..svd_model.curation.records import ClipRecord, CurationConfig, KeyframeCache, VideoRef
from ..svd_model.curation.shot_model import preload as preload_shot_model
from ..svd_model.errors import ConfigError, InputError
from ..svd_model.fsutil import write_text_atomic
from .curation_base import (
    ANNOTATIONS,
    CLIPS,
    DEFAULT_FOLDER,
    IF_EXISTS,
    MANIFEST,
    OUTPUT_NAME_INPUT,
    RULES_INPUT,
    VIDEO_LIST,
    VIDEOS_INPUT,
    WRITE_CLIPS_INPUT,
    WRITE_KEYFRAMES_INPUT,
    Annotations,
    ClipSet,
    CurationNode,
    Manifest,
    captioner_choices,
    captioner_problem,
    captioner_registry,
    checkpoint_choices,
    checkpoint_choices_or_none,
    config_problem,
    declare_outputs,
    folder_problem,
    json_problem,
    model_file,
    model_file_problem,
    output_folder,
    parse_settings,
    report_ui,
    resolve_folder,
    settings_captioners_problem,
    video_list,
)

log = logging.getLogger(__name__)


class LoadVideoFolder(CurationNode):
    DESCRIPTION = ("Lists the video files in a folder (searched recursively) for curation. Only file names are "
                   "read here; nothing is decoded.")
    FUNCTION = "load"
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = declare_outputs(
        (VIDEO_LIST, "videos", "The video files and their root folder."),
        ("INT", "count", "How many files were found."))
    REQUIRED = {
        "folder": ("STRING", {"default": DEFAULT_FOLDER, "tooltip": (
            "Folder of videos relative to ComfyUI's input folder (or the output folder, or the pack's example "
            "inputs). A .txt file with one path per line works too; its entries must lie in those folders.")}),
        "extensions": ("STRING", {"default": ",".join(e[1:] for e in VIDEO_EXTENSIONS), "tooltip": (
            "File extensions to include, comma-separated.")}),
        "limit": ("INT", {"default": 0, "min": 0, "max": 10_000_000, "tooltip": "Use at most this many files "
                          "(0 = all), e.g. to try settings on a few videos first."}),
    }

    @classmethod
    def VALIDATE_INPUTS(cls, folder: str | None) -> bool | str:
        return folder_problem(folder) or True

    @classmethod
    def IS_CHANGED(cls, folder: str, extensions: str, limit: int) -> str:
        try:
            path = resolve_folder(folder)
        except InputError:
            return ""
        files = [path] if path.is_file() else sorted(path.rglob("*"))
        return "|".join(f"{p}:{p.stat().st_mtime_ns}" for p in files if p.is_file())

    def load(self, folder: str, extensions: str, limit: int) -> tuple[Any, int]:
        exts = [e.strip() for e in extensions.split(",") if e.strip()]
        videos = video_list(folder, exts or VIDEO_EXTENSIONS)
        if limit:
            videos = replace(videos, paths=videos.paths[:limit])
        log.info("%s: %d video file(s)", bridge.display(videos.root), len(videos))
        return videos, len(videos)


class AnnotateVideos(CurationNode):
    DESCRIPTION = ("Decodes each video once and finds its cuts (a three-level cascade at native, 6 and 1.5 fps that "
                   "also catches fades and dissolves) and its 2-fps optical-flow motion. A file that cannot be "
                   "read is kept with the reason and becomes an error row in the manifest.")
    FUNCTION = "annotate"
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = declare_outputs(
        (ANNOTATIONS, "annotations", "Cuts and motion per video (or the reason a video failed)."))
    REQUIRED = {
        "videos": VIDEOS_INPUT,
        "min_scene_s": ("FLOAT", {"default": 0.3, "min": 0.0, "max": 60.0, "step": 0.05, "tooltip": (
            "Cuts closer than this (seconds) are merged; also the shortest first shot.")}),
        "motion_fps": ("FLOAT", {"default": 2.0, "min": 0.1, "max": 30.0, "step": 0.1, "tooltip": (
            "Rate of the optical-flow samples (the paper uses 2 fps).")}),
        "cut_settings": ("STRING", {"default": "", "multiline": True, "tooltip": (
            "Optional JSON with more CutConfig fields, e.g. {\"levels\": [{\"fps\": null, \"threshold\": 3, "
            "\"min_change\": 6}]}.")}),
    }

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {**super().INPUT_TYPES(), "optional": shot_inputs()}

    @classmethod
    def VALIDATE_INPUTS(cls, cut_settings: str | None, min_scene_s: float | None = None,
                        motion_fps: float | None = None, shot_model: str | None = None,
                        shot_threshold: float | None = None) -> bool | str:
        problem = number_problem(cls, min_scene_s=min_scene_s, motion_fps=motion_fps, shot_threshold=shot_threshold)
        return problem or json_problem(cut_settings, "cut_settings") or shot_model_problem(shot_model) or True

    def annotate(self, videos: Any, min_scene_s: float, motion_fps: float, cut_settings: str,
                 detector: str | None = None, shot_model: str | None = None,
                 shot_threshold: float | None = None) -> tuple[Annotations]:
        cut = with_shot_widgets(parse_settings(cut_settings, "cut_settings"), "cut_settings", detector=detector,
                                shot_model=shot_model, shot_threshold=shot_threshold)
        config = CurationConfig.from_dict({"cut": {**cut, "min_scene_s": min_scene_s}, "motion": {"fps": motion_fps}})
        check_shot_model(config)
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


class SplitClips(CurationNode):
    DESCRIPTION = ("Splits each video at its cuts into clips within the length limits (long shots are cut into "
                   "several clips, transitions are trimmed off).")
    FUNCTION = "split"
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = declare_outputs(
        (CLIPS, "clips", "The clips, and a dropped row with its reason for each span between cuts that gives no "
                         "clip (too short, trimmed away, a transition)."),
        ("INT", "count", "Number of clips."))
    REQUIRED = {
        "annotations": (ANNOTATIONS, {"tooltip": "From Annotate Videos."}),
        "split_settings": ("STRING", {"default": "", "multiline": True, "tooltip": (
            "Optional JSON with SplitConfig fields (clip length limits, trims).")}),
    }

    @classmethod
    def VALIDATE_INPUTS(cls, split_settings: str | None) -> bool | str:
        return json_problem(split_settings, "split_settings") or True

    def split(self, annotations: Annotations, split_settings: str) -> tuple[ClipSet, int]:
        config = CurationConfig.from_dict({**annotations.config.to_dict(),
                                           "split": parse_settings(split_settings, "split_settings")})
        records: list[ClipRecord] = []
        for ref, ann, error in annotations.items:
            bridge.check_interrupt()
            if ann is None:
                records.append(pipeline.status_record(ref, "error", error, config.hash()))
            else:
                records += pipeline.split_records(ref, ann, config)
        clips = ClipSet(tuple(records), config, KeyframeCache(config))
        return clips, len(clips.ok)


RecordStep = Callable[[ClipSet, list[ClipRecord]], None]  # (the copied clip set, [one ok record]) -> fills in the row


class _Step(CurationNode):
    """A step over SVDLAB_CLIPS: copy, update the ok records with progress, return the copy."""

    FUNCTION = "run"
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = declare_outputs((CLIPS, "clips", "The clips with the new scores."))

    @staticmethod
    def _apply(clips: ClipSet, step: RecordStep, **changes: Any) -> tuple[ClipSet]:
        """Copy ``clips`` (with ``changes``) and run ``step`` on each ok record of the copy."""
        out = clips.copy(**changes)
        ok = out.ok
        bar = bridge.Progress(len(ok))
        for i, rec in enumerate(ok):
            step(out, [rec])
            bar.update(i + 1)
        return (out,)


def _scored_with(models: scoring.Models) -> RecordStep:
    """Captions and / or CLIP scores with ``models`` (saved embeddings go to the temp folder)."""
    return lambda out, recs: scoring.score_records(recs, out.cache, out.config, bridge.folder("temp"), models)


class MotionScore(_Step):
    DESCRIPTION = ("Motion score per clip: mean optical-flow magnitude (display short sides per second), and "
                   "the SVD motion_bucket_id it maps to.")
    REQUIRED = {"clips": (CLIPS, {"tooltip": "From Split Clips."})}

    def run(self, clips: ClipSet) -> tuple[ClipSet]:
        return self._apply(clips, lambda out, recs: pipeline.add_motion(recs, out.config.buckets))


class TextScore(_Step):
    DESCRIPTION = "Text-area ratio per clip: the fraction of the frame covered by text on its first/middle/last frame."
    REQUIRED = {
        "clips": (CLIPS, {"tooltip": "From Split Clips (or another step)."}),
        "reduce": (["max", "mean"], {"default": "max", "tooltip": "How the keyframes' ratios combine."}),
    }

    def run(self, clips: ClipSet, reduce: str) -> tuple[ClipSet]:
        return self._apply(clips, lambda out, recs: scoring.add_text(recs, out.cache, out.config),
                           config=clips.config.replace(text=True, text_reduce=reduce))


class ClipScores(_Step):
    DESCRIPTION = ("CLIP scores on the keyframes: image embeddings from the OpenCLIP image tower of an SVD "
                   "checkpoint, an aesthetic score from a head you supply, and caption-frame similarity from a "
                   "text tower you supply (scores whose file is not given stay empty).")
    REQUIRED = {
        "clips": (CLIPS, {"tooltip": "Clips (captioned first for the similarity score)."}),
        "ckpt_name": (checkpoint_choices, {"tooltip": "SVD checkpoint with the OpenCLIP image tower."}),
        "aesthetic_head": ("STRING", {"default": "", "tooltip": (
            "Aesthetic head .safetensors, relative to a model folder (models/svd, checkpoints, clip); '' = none.")}),
        "text_tower": ("STRING", {"default": "", "tooltip": (
            "OpenCLIP text tower .safetensors, relative to a model folder (models/svd, clip, text_encoders); "
            "'' = none.")}),
        "tokenizer": ("STRING", {"default": "", "tooltip": "Tokenizer file for the text tower, relative to a model "
                                                           "folder."}),
    }

    @classmethod
    def VALIDATE_INPUTS(cls, aesthetic_head: str | None, text_tower: str | None,
                        tokenizer: str | None) -> bool | str:
        return (model_file_problem(aesthetic_head, "aesthetic head") or model_file_problem(text_tower, "text tower")
                or model_file_problem(tokenizer, "tokenizer") or True)

    def run(self, clips: ClipSet, ckpt_name: str, aesthetic_head: str, text_tower: str,
            tokenizer: str) -> tuple[ClipSet]:
        config = clips.config.replace(clip_checkpoint=str(bridge.resolve_checkpoint(ckpt_name)),
                                      aesthetic_head=model_file(aesthetic_head, "aesthetic head"),
                                      text_tower=model_file(text_tower, "text tower"),
                                      tokenizer=model_file(tokenizer, "tokenizer"))
        models = scoring.Models(scorer=scoring.get_models(config).scorer)
        return self._apply(clips, _scored_with(models), config=config)


class Captions(_Step):
    DESCRIPTION = ("Captions per clip from captioners the server's user registered (nothing is downloaded): an "
                   "image captioner on the middle frame, a video captioner, a summary of both. A workflow only "
                   "chooses registered names; captioners are registered outside workflows in <ComfyUI user "
                   "folder>/svd_lab/captioners.json (or $SVD_LAB_CAPTIONERS).")
    REQUIRED = {
        "clips": (CLIPS, {"tooltip": "Clips to caption."}),
        "image_captioner": (captioner_choices("image"), {"default": "none", "tooltip": (
            "A registered image captioner (sees the middle keyframe), or none.")}),
        "video_captioner": (captioner_choices("video"), {"default": "none", "tooltip": (
            "A registered video captioner (sees the keyframes), or none.")}),
        "summary_captioner": (captioner_choices("summary"), {"default": "none", "tooltip": (
            "A registered summary captioner (gets the other captions), or none.")}),
    }

    @classmethod
    def VALIDATE_INPUTS(cls, image_captioner: str | None, video_captioner: str | None,
                        summary_captioner: str | None) -> bool | str:
        return (captioner_problem(image_captioner, "image") or captioner_problem(video_captioner, "video")
                or captioner_problem(summary_captioner, "summary") or True)

    def run(self, clips: ClipSet, image_captioner: str, video_captioner: str,
            summary_captioner: str) -> tuple[ClipSet]:
        chosen = {"image": image_captioner, "video": video_captioner, "summary": summary_captioner}
        for kind, name in chosen.items():
            problem = captioner_problem(name, kind)
            if problem:
                raise ConfigError(problem)
        registry = captioner_registry()
        names = tuple(n for n in chosen.values() if n and n.strip().lower() != "none")
        config = clips.config.replace(captioners=names)
        found = scoring.get_models(config, registry).captioners
        if not found:
            log.warning("no captioner chosen: clips are not captioned")
            return (clips.copy(config=config),)
        return self._apply(clips, _scored_with(scoring.Models(captioners=found)), config=config)


class FilterClips(CurationNode):
    DESCRIPTION = ("Marks clips kept or dropped by thresholds per score; fractions (bottom/top) are computed over "
                   "all clips given. Every dropped clip records why.")
    FUNCTION = "run"
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = declare_outputs(
        (CLIPS, "clips", "The clips with keep / drop_reason set."), ("STRING", "summary", "Thresholds and counts."))
    REQUIRED = {"clips": (CLIPS, {"tooltip": "Scored clips."}), "rules": RULES_INPUT}

    @classmethod
    def VALIDATE_INPUTS(cls, rules: str | None) -> bool | str:
        return config_problem(filtering.parse_rules, rules) or True

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


class WriteManifest(CurationNode):
    DESCRIPTION = ("Writes the clips to a Parquet manifest in the output folder (and optionally the clip files and "
                   "keyframe JPEGs), plus manifest_filtered.parquet with keep / drop_reason.")
    FUNCTION = "write"
    OUTPUT_NODE = True
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = declare_outputs(
        (MANIFEST, "manifest", "The curated folder (for Curation Report)."), ("STRING", "path", "Its path."))
    REQUIRED = {
        "clips": (CLIPS, {"tooltip": "Clips (filtered or not)."}),
        "output_name": OUTPUT_NAME_INPUT,
        "write_clips": WRITE_CLIPS_INPUT,
        "write_keyframes": WRITE_KEYFRAMES_INPUT,
    }

    @classmethod
    def VALIDATE_INPUTS(cls, output_name: str | None) -> bool | str:
        return config_problem(output_folder, output_name) or True

    def write(self, clips: ClipSet, output_name: str, write_clips: str,
              write_keyframes: bool) -> dict[str, Any]:
        out = prepare_output(output_folder(output_name), resume=False, overwrite=True)
        config = clips.config.replace(write_clips=write_clips, write_keyframes=write_keyframes)
        records = clips.copy(config=config).records
        scoring.write_files([r for r in records if r.ok], clips.cache, config, out)
        writer = manifest.ManifestWriter(out, worker="nodes", videos_per_part=1_000_000, flush_seconds=1e9)
        by_video: dict[str, list[dict[str, Any]]] = {}
        for rec in records:
            by_video.setdefault(rec.row["video_id"], []).append(rec.row)
        for vid, rows in by_video.items():
            writer.add(vid, rows[0]["source"], rows)
        writer.close()
        manifest.write_table_atomic(manifest.to_table(r.row for r in records), out / manifest.FILTERED_NAME)
        write_text_atomic(clips.filter_json or "{}", out / filtering.FILTER_JSON)
        text = f"{len(records)} rows ({len([r for r in records if r.ok])} clips) written to {bridge.display(out)}"
        return {"ui": {"text": [text]}, "result": (Manifest(out), bridge.display(out))}


class CurationReport(CurationNode):
    DESCRIPTION = ("Builds the HTML report of a curated folder (histograms with thresholds, keyframes of clips on "
                   "either side of each threshold, drop reasons, failed files) and shows its summary in the node. "
                   "With rules set, the filter pass runs again first.")
    FUNCTION = "report"
    OUTPUT_NODE = True
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = declare_outputs(("STRING", "summary", "Counts and thresholds."))
    REQUIRED = {
        "manifest": (MANIFEST, {"tooltip": "From Curate Folder or Write Manifest."}),
        "rules": (RULES_INPUT[0], {**RULES_INPUT[1], "default": "", "tooltip": (
            "Re-filter with these rules first ('' = keep the folder's filter). " + RULES_INPUT[1]["tooltip"])}),
    }

    @classmethod
    def VALIDATE_INPUTS(cls, rules: str | None) -> bool | str:
        return config_problem(filtering.parse_rules, rules) or True

    def report(self, manifest: Manifest, rules: str) -> dict[str, Any]:
        result = filtering.filter_manifest(manifest.out_dir, filtering.parse_rules(rules)) if rules.strip() else None
        ui, text = report_ui(manifest.out_dir, result)
        return {"ui": ui, "result": (text,)}


class DedupClips(CurationNode):
    DESCRIPTION = ("Finds near-duplicate clips across the whole curated folder (re-uploads, the same shot under "
                   "several names, re-encoded / resized / cropped copies) and keeps one per group: the best by the "
                   "filter, then aesthetic score, resolution, duration. The others are marked dropped with "
                   "'duplicate of <clip id>'; nothing is deleted. Two clips are duplicates when the perceptual "
                   "hashes of their middle frames are close, or (when the folder saved CLIP embeddings: CLIP "
                   "checkpoint and save_embeddings) their CLIP embeddings are. The folder keeps the setting: later "
                   "filter passes and reports deduplicate again.")
    FUNCTION = "run"
    OUTPUT_NODE = True
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = declare_outputs(
        (MANIFEST, "manifest", "The same folder, duplicates marked (for Curation Report)."),
        ("STRING", "summary", "Groups found and clips dropped."))
    REQUIRED = {
        "manifest": (MANIFEST, {"tooltip": "From Curate Folder or Write Manifest."}),
        "cosine_threshold": ("FLOAT", {"default": DedupConfig().cosine, "min": 0.5, "max": 1.0, "step": 0.005,
                                       "tooltip": (
            "CLIP cosine similarity from which two clips count as duplicates. Lower finds more copies (crops, "
            "colour changes) but also merges different shots of one scene; higher drops only near-identical ones.")}),
        "hash_distance": ("INT", {"default": DedupConfig().hamming, "min": -1, "max": 64, "tooltip": (
            "Perceptual-hash bits (of 64) that may differ between duplicates (-1 = hashes off). Re-encodes and "
            "resizes differ by 0-4 bits, small crops by ~6-12, unrelated frames by ~30: higher finds more "
            "cropped copies, and more false duplicates among similar-looking clips.")}),
        "use_clip": ("BOOLEAN", {"default": True, "tooltip": (
            "Also compare the saved CLIP embeddings (more robust to crops and re-framing than the hash; needs "
            "the folder curated with a CLIP checkpoint and save_embeddings).")}),
    }

    @classmethod
    def VALIDATE_INPUTS(cls, cosine_threshold: float | None = None, hash_distance: int | None = None) -> bool | str:
        return number_problem(cls, cosine_threshold=cosine_threshold, hash_distance=hash_distance) or True

    def run(self, manifest: Manifest, cosine_threshold: float, hash_distance: int, use_clip: bool) -> dict[str, Any]:
        config = DedupConfig(cosine=cosine_threshold, hamming=hash_distance, use_clip=use_clip)
        found = filtering.dedup_manifest(manifest.out_dir, config)
        text = found.summary()
        return {"ui": {"text": [text]}, "result": (manifest, text)}


class CurateFolder(CurationNode):
    DESCRIPTION = ("Runs the whole curation over a video folder: annotate, split, motion / text / CLIP scores, "
                   "captions, manifest, filter, report. Progress per video; cancelling keeps the finished videos "
                   "and the next run resumes there.")
    FUNCTION = "curate"
    OUTPUT_NODE = True
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = declare_outputs(
        (MANIFEST, "manifest", "The curated folder."), ("STRING", "summary", "Counts and thresholds."))
    REQUIRED = {
        "videos": VIDEOS_INPUT,
        "output_name": OUTPUT_NAME_INPUT,
        "if_exists": (IF_EXISTS, {"default": "resume", "tooltip": (
            "When the folder already has a manifest: resume (skip finished videos), overwrite, or error.")}),
        "workers": ("INT", {"default": 0, "min": 0, "max": 256, "tooltip": "Videos decoded in parallel "
                            "(threads; 0 = one per core)."}),
        "text_score": ("BOOLEAN", {"default": True, "tooltip": "Compute the text-area ratio."}),
        "clip_checkpoint": (checkpoint_choices_or_none, {"default": "none", "tooltip": (
            "SVD checkpoint whose OpenCLIP image tower gives the CLIP scores (none = skip them).")}),
        "write_clips": WRITE_CLIPS_INPUT,
        "write_keyframes": WRITE_KEYFRAMES_INPUT,
        "rules": RULES_INPUT,
        "settings": ("STRING", {"default": "", "multiline": True, "tooltip": (
            "Optional JSON with more CurationConfig fields: cut, motion, split (nested), aesthetic_head, "
            "text_tower, tokenizer, captioners (a list of registered captioner names), keyframe_max_side, "
            "video_timeout, save_embeddings.")}),
    }

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {**super().INPUT_TYPES(), "optional": shot_inputs()}

    @classmethod
    def VALIDATE_INPUTS(cls, rules: str | None, settings: str | None, output_name: str | None = None,
                        shot_model: str | None = None, shot_threshold: float | None = None) -> bool | str:
        return (config_problem(output_folder, output_name) or config_problem(filtering.parse_rules, rules)
                or config_problem(_settings, settings) or settings_captioners_problem(settings)
                or number_problem(cls, shot_threshold=shot_threshold) or shot_model_problem(shot_model) or True)

    def curate(self, videos: Any, output_name: str, if_exists: str, workers: int, text_score: bool,
               clip_checkpoint: str, write_clips: str, write_keyframes: bool, rules: str,
               settings: str, detector: str | None = None, shot_model: str | None = None,
               shot_threshold: float | None = None) -> dict[str, Any]:
        data = _settings(settings)
        data.update(text=text_score, write_clips=write_clips, write_keyframes=write_keyframes)
        if clip_checkpoint != "none":
            data["clip_checkpoint"] = str(bridge.resolve_checkpoint(clip_checkpoint))
        if not isinstance(data.get("cut", {}), dict):
            raise ConfigError("settings.cut must be a JSON object of CutConfig fields")
        data["cut"] = with_shot_widgets(data.get("cut", {}), "settings.cut", detector=detector, shot_model=shot_model,
                                        shot_threshold=shot_threshold)
        config = CurationConfig.from_dict(data)
        check_shot_model(config)
        out = output_folder(output_name)
        bar = bridge.Progress(max(1, len(videos)))
        summary = run_curation(videos, out, config, engine="thread", workers=workers,
                               resume=if_exists == "resume", overwrite=if_exists == "overwrite", videos_per_part=8,
                               progress=lambda s: bar.update(s.done, max(1, s.total)),
                               registry=captioner_registry())
        ui, text = report_ui(out, filtering.filter_manifest(out, filtering.parse_rules(rules)), summary.text())
        return {"ui": ui, "result": (Manifest(out), text)}


#: CurateFolder settings that name files: model files relative to a model folder, a checkpoint by its list name.
MODEL_FILE_SETTINGS = {"aesthetic_head": "aesthetic head", "text_tower": "text tower", "tokenizer": "tokenizer"}


def _settings(text: str) -> dict[str, Any]:
    """The settings JSON with every file it names resolved inside the model folders (a workflow names files, it
    never gives paths); InputError / ConfigError name the setting."""
    data = parse_settings(text, "settings")
    for key in (*MODEL_FILE_SETTINGS, "clip_checkpoint"):
        value = data.get(key)
        if value in (None, ""):
            continue
        if not isinstance(value, str):
            raise ConfigError(f"settings.{key} must be a file name (text), got {type(value).__name__}")
        if key == "clip_checkpoint":
            data[key] = str(bridge.resolve_checkpoint(value))
        else:
            data[key] = model_file(value, f"settings.{key}")
    return data


def shot_model_choices() -> list[str]:
    return ["none", *bridge.list_shot_models()]


def shot_inputs() -> dict[str, Any]:
    """The learned shot detector's widgets (optional inputs: saved workflows without them keep working)."""
    return {
        "detector": (list(DETECTORS), {"default": "cascade", "tooltip": (
            "Cut detector: the classical cascade (default), a learned shot-boundary network (shot_model), or both "
            "(learned cuts near a cascade cut are dropped).")}),
        "shot_model": (shot_model_choices(), {"default": "none", "tooltip": (
            "Shot-boundary network for the learned detector: an .onnx file you put into models/shot_detectors "
            "(e.g. a TransNetV2 export: 48x27 RGB frames in windows of 100). Nothing is downloaded; needs "
            "onnxruntime (pip install onnxruntime).")}),
        "shot_threshold": ("FLOAT", {"default": 0.5, "min": 0.01, "max": 0.99, "step": 0.01, "tooltip": (
            "Boundary probability above which the learned detector reports a cut (TransNetV2: 0.5).")}),
    }


def shot_model_problem(name: str | None) -> str | None:
    """For VALIDATE_INPUTS: why the shot_model widget's file cannot be used (None for 'none' or when linked)."""
    return None if name in (None, "", "none") else config_problem(bridge.resolve_shot_model, name)


def with_shot_widgets(cut: dict[str, Any], what: str, **widgets: Any) -> dict[str, Any]:
    """``cut`` settings with the shot-detector widgets applied (a JSON value that contradicts a widget is
    refused, never silently replaced) and the network's name resolved inside models/shot_detectors: a workflow
    names a file there, never a path."""
    cut = dict(cut)
    for key, value in widgets.items():
        if value is None:  # an older workflow without the widget
            continue
        value = "" if key == "shot_model" and value == "none" else value
        if key in cut and cut[key] != value:
            raise ConfigError(f"{what}.{key} = {cut[key]!r} contradicts the {key} widget ({value!r}): set it with "
                              "the widget")
        cut[key] = value
    name = cut.get("shot_model")
    if name not in (None, ""):
        if not isinstance(name, str):
            raise ConfigError(f"{what}.shot_model must be a file name (text), got {type(name).__name__}")
        cut["shot_model"] = str(bridge.resolve_shot_model(name, f"{what}.shot_model"))
    return cut


def check_shot_model(config: CurationConfig) -> None:
    """Load the learned detector's network once before any video (onnxruntime missing, a wrong file: one clear
    error instead of an error row per video)."""
    preload_shot_model(config.cut, config.threads)


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
    "SVDLab_DedupClips": (DedupClips, "SVD Lab Dedup Clips (near-duplicates)"),
}
