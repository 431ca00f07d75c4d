"""`svd-lab curate` and `svd-lab curate-report`: dataset curation from the command line.

  svd-lab curate INPUT --out DIR [--engine local|thread|inline|ray] [--workers N] [--resume | --overwrite]
                 [--config FILE_OR_JSON] [--set KEY=VALUE ...] [--filter RULE ...] [--clip-checkpoint CKPT]
                 [--aesthetic-head F] [--text-tower F] [--tokenizer F] [--captioner NAME ...]
                 [--captioner-config FILE] [--register-captioner NAME[:KIND]=COMMAND ...]
                 [--video-timeout S] [--retry-timeouts]
                 [--write-clips auto|copy|reencode] [--write-keyframes] [--save-embeddings] [--no-text]
                 [--detector cascade|learned|cascade+learned] [--shot-model NAME] [--shot-model-dir DIR]
                 [--shot-threshold P]
                 [--dedup [--dedup-threshold COS] [--dedup-hamming BITS]]
  svd-lab curate-report DIR [--filter RULE ...] [--dedup ... | --no-dedup]

INPUT is a folder (searched recursively for video files) or a text file with one path per line. After the
videos are annotated, the filter pass runs over the whole manifest and the HTML report is written. With
--dedup, near-duplicate clips (perceptual hash of the middle keyframe, and CLIP embeddings with
--clip-checkpoint) are then marked dropped as "duplicate of <clip id>", one representative kept per group; the
folder keeps the setting for later curate-report runs (--no-dedup turns it off).

Captioners are chosen by name (--captioner, or "captioners" in --config); the names are registered by you,
never by a config: --register-captioner NAME[:KIND]=COMMAND (run without a shell), --captioner-config FILE and
$SVD_LAB_CAPTIONERS (JSON, see svd_model/curation/captioner_registry.py). SIGTERM stops a run like Ctrl-C: the
finished videos are kept and --resume continues.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TextIO

from ..svd_model.curation.workers import ENGINES  # the light module: `svd-lab --help` imports no engine
from ..workflow.progress import StatusLine

FILTER_HELP = ("filter rule SCORE:MODE=VALUE, MODE min|max (absolute) or bottom|top (fraction of all clips), "
               "e.g. motion_score:bottom=0.25 text_area:max=0.07; or a preset: svd, none (repeatable; default: the "
               "rules of the last filter pass, else svd)")


class _Progress:
    """One progress line on stderr: redrawn in place on a terminal, ~20 lines otherwise."""

    def __init__(self, stream: TextIO, quiet: bool) -> None:
        self.quiet = quiet
        self.line = StatusLine(stream, parts=20, min_interval=0.2)

    def __call__(self, state: Any) -> None:
        final = state.done >= state.total
        if not self.quiet and self.line.due(state.done, state.total, force=final):
            self.line.write(state.line(), final=final)


def build_config(args: argparse.Namespace) -> Any:
    from ..svd_model.configdict import parse_value, set_dotted
    from ..svd_model.curation.records import CurationConfig
    from ..svd_model.errors import ConfigError

    data: dict[str, Any] = {}
    if args.config:
        from ..svd_model.errors import shorten
        from ..svd_model.jsonfile import parse_json, read_json_file

        if args.config.lstrip().startswith("{"):
            data = parse_json(args.config, f"--config {shorten(args.config)}")
        else:  # a file: BOM, UTF-16, depth, size and file type handled as for every config file
            data = read_json_file(args.config, what="curation config")
        if not isinstance(data, dict):
            raise ConfigError(f"--config must be a JSON object of CurationConfig fields, got {type(data).__name__}")
    flags = {"clip_checkpoint": args.clip_checkpoint, "aesthetic_head": args.aesthetic_head,
             "text_tower": args.text_tower, "tokenizer": args.tokenizer,
             "write_clips": args.write_clips}
    data.update({k: v for k, v in flags.items() if v is not None})
    if args.captioner:
        data["captioners"] = [c for c in args.captioner if c.strip().lower() != "none"]
    if getattr(args, "video_timeout", None) is not None:
        data["video_timeout"] = args.video_timeout
    if args.write_keyframes:
        data["write_keyframes"] = True
    if args.save_embeddings or (getattr(args, "dedup", False) and data.get("clip_checkpoint")):
        data["save_embeddings"] = True  # the dedup reads the saved embeddings
    if args.no_text:
        data["text"] = False
    shot = {"detector": getattr(args, "detector", None), "shot_model": getattr(args, "shot_model", None),
            "shot_threshold": getattr(args, "shot_threshold", None)}
    for key, value in shot.items():
        if value is not None:
            set_dotted(data, f"cut.{key}", value)
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: write KEY=VALUE, e.g. split.min_seconds=2.0")
        set_dotted(data, key.strip(), parse_value(value.strip(), f"--set {key.strip()!r}"))
    config = CurationConfig.from_dict(_resolve_shot_model(data, getattr(args, "shot_model_dir", None)))
    from ..svd_model.curation.shot_model import preload

    preload(config.cut, config.threads)
    return config


def _resolve_shot_model(data: dict[str, Any], folders: list[str] | None) -> dict[str, Any]:
    """cut.shot_model (a file name) -> its path inside --shot-model-dir (default: $SVD_LAB_SHOT_MODELS, else
    shot_detectors in the model folders and ./models/shot_detectors); models load from that folder only."""
    cut = data.get("cut")
    if not isinstance(cut, dict) or cut.get("shot_model") in (None, ""):
        return data
    from ..svd_model.curation.shot_model import find_shot_model

    if not folders:
        from ..nodes import bridge

        folders = [str(p) for p in bridge.shot_model_dirs()]
    return {**data, "cut": {**cut, "shot_model": str(find_shot_model(cut["shot_model"], folders))}}


def dedup_setting(args: argparse.Namespace) -> Any:
    """--dedup / --no-dedup -> a DedupConfig to store, None to stop deduplicating, or ... to keep the folder's."""
    from ..svd_model.curation.dedup_config import DedupConfig

    if getattr(args, "no_dedup", False):
        return None
    if not getattr(args, "dedup", False):
        return ...
    return DedupConfig(cosine=args.dedup_threshold, hamming=args.dedup_hamming)


def store_dedup(out: Path, setting: Any) -> None:
    """Keep a dedup_setting in OUT/dedup.json, where every later filter pass (curate-report, a resumed curate,
    the nodes) reads it; ``...`` keeps what the folder has."""
    if setting is not ...:
        from ..svd_model.curation.dedup import store_config

        store_config(out, setting)


def _filter_and_report(out: Path, filters: list[str] | None, stdout: TextIO, dedup: Any = ...,
                       summary: Any = None) -> int:
    """The filter pass and the report; after a run (``summary``: its RunSummary) their seconds join the run's
    per-stage timings (printed, and in OUT/timings.json for the report's table)."""
    import time

    from ..svd_model.curation import dedup as dedup_mod
    from ..svd_model.curation.engine import write_timings
    from ..svd_model.curation.filtering import filter_manifest, load_rules, parse_rules
    from ..svd_model.curation.manifest import FILTERED_NAME
    from ..svd_model.curation.report import build_report

    start = time.perf_counter()
    rules = parse_rules(filters) if filters else load_rules(out)
    rules = parse_rules("svd") if rules is None else rules
    store_dedup(out, dedup)  # the filter pass deduplicates a folder that has a stored setting
    result = filter_manifest(out, rules)
    filter_seconds = time.perf_counter() - start
    if summary is not None:
        write_timings(summary, filter=filter_seconds)
    start = time.perf_counter()
    info = build_report(out, result)
    report_seconds = time.perf_counter() - start
    print(info.summary(), file=stdout)
    found = dedup_mod.stored_summary(out)
    if found:
        print(found, file=stdout)
    print(f"filtered manifest: {out / FILTERED_NAME}\nreport: {info.path}", file=stdout)
    if summary is not None:
        write_timings(summary, filter=filter_seconds, report=report_seconds)
        print(f"filter pass {filter_seconds:.2f} s, report {report_seconds:.2f} s", file=stdout)
    return 0


def build_registry(args: argparse.Namespace) -> Any:
    """The captioners this (local, trusted) user registered: $SVD_LAB_CAPTIONERS, --captioner-config files,
    then --register-captioner flags (later ones win on a name)."""
    from ..svd_model.curation.captioner_registry import CaptionerRegistry, default_registry, parse_registration

    registry = default_registry(getattr(args, "captioner_config", None) or ())
    flags = [parse_registration(text) for text in getattr(args, "register_captioner", None) or ()]
    if flags:
        registry = registry.merged(CaptionerRegistry(flags, ["--register-captioner"]))
    return registry


def cmd_curate(args: argparse.Namespace, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    if args.engine == "local":  # the workers' forkserver imports the pipeline while this process imports it too
        from ..svd_model.curation.workers import start_server

        start_server()
    from ..svd_model.curation.engine import list_videos, run_curation
    from ..svd_model.fsutil import sigterm_as_interrupt

    out_stream, err_stream = stdout or sys.stdout, stderr or sys.stderr
    config = build_config(args)
    registry = build_registry(args)
    videos = list_videos(args.input)
    if not len(videos):
        print(f"svd-lab: no video files in {args.input}", file=err_stream)
        return 2
    try:
        with sigterm_as_interrupt():  # SIGTERM (kill, a service manager) stops the run like Ctrl-C
            summary = run_curation(videos, args.out, config, engine=args.engine, workers=args.workers,
                                   resume=args.resume, overwrite=args.overwrite, videos_per_part=args.part_size,
                                   progress=_Progress(err_stream, args.quiet), registry=registry,
                                   retry_timeouts=getattr(args, "retry_timeouts", False))
            print(summary.text(), file=out_stream)
            if args.no_report:  # no filter pass now: a later one (curate-report) deduplicates as asked here
                store_dedup(Path(args.out), dedup_setting(args))
                return 0
            return _filter_and_report(Path(args.out), args.filter, out_stream, dedup_setting(args), summary)
    except KeyboardInterrupt:
        print(f"svd-lab: interrupted; finished videos are saved, continue with --resume --out {args.out}",
              file=err_stream)
        return 130


def cmd_report(args: argparse.Namespace, stdout: TextIO | None = None) -> int:
    return _filter_and_report(Path(args.dir), args.filter, stdout or sys.stdout, dedup_setting(args))


def _add_dedup_flags(p: argparse.ArgumentParser) -> None:
    from ..svd_model.curation.dedup_config import DedupConfig

    default = DedupConfig()
    p.add_argument("--dedup", action="store_true", help="mark near-duplicate clips dropped ('duplicate of <clip "
                   "id>'), keeping one per group: the best by filter, aesthetic, resolution, duration (perceptual "
                   "hash of the middle keyframe; CLIP embeddings too with --clip-checkpoint)")
    p.add_argument("--dedup-threshold", type=float, default=default.cosine, metavar="COS", help="CLIP cosine "
                   f"similarity from which two clips are duplicates (default {default.cosine:g}; lower finds more, "
                   "and more false duplicates)")
    p.add_argument("--dedup-hamming", type=int, default=default.hamming, metavar="BITS", help="perceptual-hash bits "
                   f"(of 64) that may differ between duplicates (default {default.hamming}; -1 = hash off; higher "
                   "finds more cropped / re-encoded copies, and more false duplicates)")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register `curate` and `curate-report` on the `svd-lab` parser."""
    p = sub.add_parser("curate", help="annotate, split, score and filter a folder of videos into a Parquet manifest")
    p.add_argument("input", help="folder of videos (recursive) or a text file with one video path per line")
    p.add_argument("--out", required=True, help="output folder: manifest/, clips, keyframes, report.html")
    p.add_argument("--engine", default="local", choices=list(ENGINES),
                   help="local: process pool (default); thread: threads; inline: one by one; ray: Ray actors")
    p.add_argument("--workers", type=int, default=0, help="processes / threads / Ray CPUs (default: all cores)")
    p.add_argument("--resume", action="store_true", help="continue a run in --out, skipping finished videos")
    p.add_argument("--overwrite", action="store_true", help="delete the manifest already in --out and start again")
    p.add_argument("--config", help="JSON file or JSON text with CurationConfig fields (nested: cut, motion, split)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one config field, dotted for "
                   "nested ones, e.g. split.min_seconds=2 (repeatable; VALUE is JSON or a string)")
    p.add_argument("--filter", action="append", metavar="RULE", help=FILTER_HELP)
    p.add_argument("--clip-checkpoint", help="SVD checkpoint whose OpenCLIP image tower embeds keyframes")
    p.add_argument("--aesthetic-head", help="aesthetic predictor head (.safetensors) on the CLIP embedding")
    p.add_argument("--text-tower", help="OpenCLIP text tower (.safetensors) for caption-frame similarity")
    p.add_argument("--tokenizer", help="tokenizer file for the text tower")
    p.add_argument("--captioner", action="append", metavar="NAME", help="a registered captioner by name "
                   "(repeatable, one per kind: image, video, summary; none by default; nothing is downloaded)")
    p.add_argument("--captioner-config", action="append", metavar="FILE", help="JSON file registering captioners: "
                   '{"captioners": [{"name": "blip", "kind": "image", "model": "/models/blip"}, {"name": "mine", '
                   '"kind": "video", "argv": ["/opt/cap", "--fast"]}]} (repeatable; $SVD_LAB_CAPTIONERS too)')
    p.add_argument("--register-captioner", action="append", metavar="NAME[:KIND]=COMMAND", help="register a "
                   "captioner program, e.g. mine:video='/opt/cap --fast' (run without a shell; it gets a folder of "
                   "PNG frames as last argument and a JSON request on stdin, prints the caption; KIND image by "
                   "default)")
    p.add_argument("--video-timeout", type=float, metavar="S", help="seconds one video may take before it becomes "
                   "an error row 'timed out after S s' (default 600; 0 = no limit)")
    p.add_argument("--retry-timeouts", action="store_true", help="with --resume, curate the videos that timed "
                   "out before again")
    p.add_argument("--write-clips", choices=["none", "auto", "copy", "reencode"],
                   help="write each clip as a file: copy (stream copy, keyframe-snapped), reencode (exact), auto")
    p.add_argument("--write-keyframes", action="store_true", help="write the clips' keyframes as JPEG")
    p.add_argument("--save-embeddings", action="store_true", help="save the CLIP embeddings (safetensors)")
    p.add_argument("--no-text", action="store_true", help="skip the text-area score")
    p.add_argument("--detector", choices=["cascade", "learned", "cascade+learned"], help="cut detector: the "
                   "classical cascade (default), a learned shot-boundary network (--shot-model), or both")
    p.add_argument("--shot-model", metavar="NAME", help="the learned detector's .onnx file (e.g. a TransNetV2 "
                   "export), by name inside --shot-model-dir; needs onnxruntime; nothing is downloaded")
    p.add_argument("--shot-model-dir", action="append", metavar="DIR", help="folder of shot-boundary networks "
                   "(repeatable; default $SVD_LAB_SHOT_MODELS, else models/svd/shot_detectors and "
                   "models/shot_detectors)")
    p.add_argument("--shot-threshold", type=float, metavar="P", help="boundary probability of the learned "
                   "detector (default 0.5)")
    p.add_argument("--part-size", type=int, default=32, help="videos per manifest part file (default 32)")
    p.add_argument("--no-report", action="store_true", help="skip the filter pass and the report")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    _add_dedup_flags(p)
    p.set_defaults(func=cmd_curate)

    p = sub.add_parser("curate-report", help="re-run the filter pass on a curated folder and rebuild its report")
    p.add_argument("dir", help="the --out folder of `svd-lab curate`")
    p.add_argument("--filter", action="append", metavar="RULE", help=FILTER_HELP)
    _add_dedup_flags(p)
    p.add_argument("--no-dedup", action="store_true", help="stop deduplicating this folder (default: as before)")
    p.set_defaults(func=cmd_report)
