"""What the curation nodes share: the custom types they pass (``SVDLAB_VIDEO_LIST`` is
:class:`~..svd_model.curation.engine.VideoList`; ``SVDLAB_VIDEO_ANNOTATIONS`` :class:`Annotations`,
``SVDLAB_CLIPS`` :class:`ClipSet`, ``SVDLAB_MANIFEST`` :class:`Manifest`), input specs used by several nodes,
the V1 base :class:`CurationNode`, and helpers for validation, output folders and the report's UI payload.
Not a node module: it defines no nodes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..nodes import bridge
from ..nodes.types import config_problem
from ..svd_model.curation import pipeline
from ..svd_model.curation.captioner_registry import USER_FILE, CaptionerRegistry, default_registry
from ..svd_model.curation.engine import VIDEO_EXTENSIONS, VideoList, list_videos
from ..svd_model.curation.records import ClipRecord, CurationConfig, KeyframeCache, VideoRef
from ..svd_model.curation.report import build_report
from ..svd_model.errors import ConfigError, shorten
from ..svd_model.jsonfile import parse_json

CATEGORY = "SVD Lab/curation"
VIDEO_LIST, ANNOTATIONS, CLIPS, MANIFEST = ("SVDLAB_VIDEO_LIST", "SVDLAB_VIDEO_ANNOTATIONS", "SVDLAB_CLIPS",
                                            "SVDLAB_MANIFEST")
IF_EXISTS = ["resume", "overwrite", "error"]
CLIP_FILES = list(pipeline.CLIP_MODES)
DEFAULT_FOLDER = "svd_lab_curation_example"

Input = tuple[Any, dict[str, Any]]  # (type or choices, options) of one widget / socket
VIDEOS_INPUT: Input = (VIDEO_LIST, {"tooltip": "From Load Video Folder."})
OUTPUT_NAME_INPUT: Input = ("STRING", {"default": "SVDLab/curation", "tooltip": "Folder inside the output folder."})
WRITE_CLIPS_INPUT: Input = (CLIP_FILES, {"default": "none", "tooltip": (
    "Also write each clip as a file: copy (stream copy, snapped to keyframes), reencode (exact), auto.")})
WRITE_KEYFRAMES_INPUT: Input = ("BOOLEAN", {"default": False, "tooltip": "Also write the keyframes as JPEG."})
RULES_INPUT: Input = ("STRING", {"default": "svd", "multiline": True, "tooltip": (
    "Filter rules SCORE:MODE=VALUE separated by commas or lines: MODE min/max (absolute) or bottom/top (fraction "
    "of all clips), e.g. motion_score:bottom=0.25, text_area:max=0.07. Presets: svd, none.")})


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


# ---------------------------------------------------------------------------------------------- helpers


def parse_settings(text: str, what: str) -> dict[str, Any]:
    """A settings widget's JSON object ('' = {}); ConfigError naming ``what`` otherwise."""
    if not text.strip():
        return {}
    data = parse_json(text, what)  # depth-limited; a parse error names the line and column
    if not isinstance(data, dict):
        raise ConfigError(f"{what} must be a JSON object (e.g. {{\"min_scene_s\": 0.5}}), got {shorten(text)}")
    return data


def json_problem(text: str | None, what: str) -> str | None:
    return config_problem(lambda t: parse_settings(t, what), text)


def model_file_problem(value: str | None, what: str) -> str | None:
    """For VALIDATE_INPUTS: why a supporting model file ('' = none) cannot be used (see bridge.model_file)."""
    return config_problem(lambda v: bridge.model_file(v, what), value or None)


def model_file(value: str, what: str) -> str:
    """The path of a supporting model file named relative to a model folder ('' stays '': none)."""
    return str(bridge.model_file(value, what)) if value else ""


def declare_outputs(*outputs: tuple[str, str, str]) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """``(type, name, tooltip)`` per output -> ``RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS``."""
    types, names, tooltips = zip(*outputs, strict=True)
    return types, names, tooltips


def resolve_folder(folder: str) -> Path:
    """A folder of videos (or a .txt list of them) inside the input folder, the output folder or the pack's example
    inputs (anywhere only headless with ``--allow-any-path``)."""
    return bridge.data_path(folder, "video folder")


def video_list(folder: str, extensions: list[str] | tuple[str, ...] = VIDEO_EXTENSIONS) -> VideoList:
    """The videos of a folder or .txt list inside the allowed folders; every entry (a list line, a symbolic
    link in the folder) must lie inside them too."""
    path = resolve_folder(folder)
    videos = list_videos(path, extensions)
    bridge.check_data_files(list(videos.paths), f"video list {path.name}")
    return videos


def folder_problem(folder: str | None) -> str | None:
    return config_problem(video_list, folder)


def output_folder(name: str) -> Path:
    """``name`` (a folder name, subfolders allowed) inside ComfyUI's output folder; paths are refused."""
    return bridge.output_path(name, "output name")


def report_ui(out: Path, result: Any, head: str = "") -> tuple[dict[str, list], str]:
    """Build ``out``/report.html (``result``: a fresh filter pass or None); returns the node's UI payload (the
    summary and a link to the report) and the summary, after ``head`` when given."""
    info = build_report(out, result)
    text = f"{head}\n{info.summary()}" if head else info.summary()
    ui: dict[str, list] = {"text": [text]}
    if info.path is not None:
        base = bridge.folder("output").absolute()
        sub = os.path.relpath(info.path.parent.absolute(), base).replace(os.sep, "/")
        ui["svdlab_report"] = [{"filename": info.path.name, "subfolder": "" if sub == "." else sub,
                                "type": "output"}]
    return ui, text


class CurationNode:
    """Shared V1 parts: the category, and ``INPUT_TYPES`` from ``REQUIRED``, in widget order (saved UI workflows
    list widget values by position). A choice list known only at run time is given as a function."""

    CATEGORY = CATEGORY
    REQUIRED: dict[str, Input] = {}

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {name: (kind() if callable(kind) else kind, dict(opts))
                             for name, (kind, opts) in cls.REQUIRED.items()}}


def checkpoint_choices() -> list[str]:
    return bridge.list_checkpoints()


def checkpoint_choices_or_none() -> list[str]:
    return ["none", *bridge.list_checkpoints()]


# --------------------------------------------------------------------------------------------- captioners


def captioner_registry() -> CaptionerRegistry:
    """The captioners the local user registered outside workflows: inside ComfyUI
    ``<user folder>/svd_lab/captioners.json``, and the file named by ``$SVD_LAB_CAPTIONERS``."""
    files: list[Path] = []
    folder = bridge.user_folder()
    if folder:
        files.append(Path(folder) / USER_FILE)
    return default_registry(files)


def captioner_choices(kind: str) -> Callable[[], list[str]]:
    """COMBO choices of a captioner input: "none" and the registered names of that kind (read when the node's
    inputs are listed, so a newly registered captioner appears after a refresh)."""
    def choices() -> list[str]:
        try:
            return ["none", *captioner_registry().names(kind)]
        except ConfigError:  # a broken settings file: the node still loads; running it names the problem
            return ["none"]
    return choices


def captioner_problem(value: str | None, kind: str) -> str | None:
    """For VALIDATE_INPUTS: why ``value`` is not a registered captioner of ``kind`` (None when it is)."""
    if value is None:
        return None

    def check(name: str) -> None:
        entry = captioner_registry().get(name, f"{kind} captioner")
        if entry is not None and entry.kind != kind:
            raise ConfigError(f"captioner {name!r} is a {entry.kind} captioner, not a {kind} captioner")

    return config_problem(check, value)


def settings_captioners_problem(settings: str | None) -> str | None:
    """For VALIDATE_INPUTS: why the ``captioners`` list of a settings JSON names something that is not a registered
    captioner (None when every entry is one, or the settings are linked / not JSON: reported elsewhere)."""
    if settings is None:
        return None
    try:
        names = parse_settings(settings, "settings").get("captioners", [])
    except ConfigError:
        return None

    def check(_: str) -> None:
        if not isinstance(names, list):
            raise ConfigError(f"settings.captioners must be a list of registered captioner names, got {names!r}")
        registry = captioner_registry()
        for i, name in enumerate(names):
            registry.get(name, f"settings.captioners[{i}]")

    return config_problem(check, settings)
