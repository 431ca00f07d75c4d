"""Training clips: from a curation manifest or a folder of videos; frame windows, sizes (buckets), reading.

A :class:`ClipRecord` is one clip with its measured frame rate and motion bucket. :func:`plan_windows` picks
``num_frames`` frame indices per clip at the target fps (one or more windows per clip, spread over it) and the
bucket size the clip is resized to (cover: scale, centre-crop). :func:`read_window` decodes one window as
(T, 3, H, W) in [-1, 1]. The conditioning frames of a window are its first and last frame.

Conditioning values per window (not constants): ``fps_id = round(effective fps) - 1`` (the demo / diffusers /
ComfyUI convention at sampling time) and the manifest's ``motion_bucket_id``.
"""

from __future__ import annotations

import logging
import math
import os
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError, InputError
from ..jsonfile import read_text_file
from ..media.video import VIDEO_EXTENSIONS, iter_frames, probe_video
from .config import DataConfig

log = logging.getLogger(__name__)

#: Manifest columns the trainer reads (the curation manifest's TRAINER_COLUMNS subset it needs).
REQUIRED_COLUMNS = ("clip_id", "source", "clip_path", "start_frame", "end_frame", "fps", "motion_bucket_id",
                    "width", "height")


@dataclass(frozen=True)
class ClipRecord:
    """One clip: frames [start_frame, end_frame) of `path` (a written clip file, or the source video)."""

    clip_id: str
    path: Path
    start_frame: int
    end_frame: int  # exclusive
    fps: float
    motion_bucket_id: int
    width: int
    height: int
    source: str = ""
    caption: str = ""  # the text a t2v finetune conditions on ('' when the clip has none)

    @property
    def num_frames(self) -> int:
        return self.end_frame - self.start_frame


#: Manifest caption columns, in the order the first non-empty one is taken (the summary of the image and video
#: captions first, as the paper's captions).
CAPTION_COLUMNS = ("caption_summary", "caption_video", "caption_image")
#: Sidecar caption of a clip file in a folder dataset: the same path with this suffix (clip.mp4 -> clip.txt).
CAPTION_SUFFIX = ".txt"
MAX_CAPTION_BYTES = 64 * 1024


@dataclass(frozen=True)
class Window:
    """A planned training sample: T source-frame indices of one clip, its size and conditioning values."""

    key: str  # cache key: clip_id, or clip_id#k for the k-th window
    clip: ClipRecord
    indices: tuple[int, ...]  # frame indices in clip.path
    size: tuple[int, int]  # (width, height) after resizing
    fps_id: int
    motion_bucket_id: int


@dataclass
class VideoDataset:
    """What the dataset nodes hand on (SVDLAB_DATASET): the clips, the data settings, the planned windows."""

    clips: list[ClipRecord]
    config: DataConfig
    windows: list[Window]
    skipped: list[str]

    def summary(self) -> str:
        sizes = Counter(w.size for w in self.windows)
        text = ", ".join(f"{n} at {w}x{h}" for (w, h), n in sorted(sizes.items()))
        skipped = f"; skipped {len(self.skipped)} clip(s) (first: {self.skipped[0]})" if self.skipped else ""
        return (f"{len(self.clips)} clips -> {len(self.windows)} windows of {self.config.num_frames} frames at "
                f"{self.config.fps or 'native'} fps ({text}){skipped}")


# --------------------------------------------------------------------------------------------- sources


def _manifest_table(path: Path):  # -> pyarrow.Table, root folder for relative clip paths
    import pyarrow.parquet as pq

    if path.is_dir():
        from ..curation.manifest import FILTERED_NAME, read_manifest

        filtered = path / FILTERED_NAME
        if filtered.is_file():
            return pq.read_table(filtered), path
        return read_manifest(path), path
    if path.suffix.lower() != ".parquet" or not path.is_file():
        raise InputError(f"manifest {path} not found: give the curation output folder or a .parquet manifest file")
    try:
        return pq.read_table(path), path.parent
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise InputError(f"cannot read the manifest {path}: {exc}") from None


def load_manifest(path: str | os.PathLike, *, only_kept: bool = True) -> list[ClipRecord]:
    """Clips of a curation manifest: its output folder (completed parts, or manifest_filtered.parquet when the
    filter pass ran) or a .parquet file. Rows with status != 'ok' (and keep = False with `only_kept`) are
    skipped. Relative clip paths resolve against the output folder (the file's folder for a .parquet)."""
    table, root = _manifest_table(Path(path))
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if only_kept and "keep" not in table.column_names:
        missing.append("keep")
    if missing:
        raise InputError(f"manifest {path} lacks the column(s) {missing} the trainer needs; it has "
                         f"{table.column_names}. Write it with `svd-lab curate` (or add the columns), or set "
                         "only_kept false when there is no keep column")
    clips = []
    for row in table.to_pylist():
        if row.get("status", "ok") not in (None, "ok") or (only_kept and not row.get("keep")):
            continue
        clip_rel = row.get("clip_path")
        if clip_rel:
            file = Path(clip_rel) if Path(clip_rel).is_absolute() else root / clip_rel
            start, end = 0, int(row["end_frame"]) - int(row["start_frame"])
        else:
            file, start, end = Path(row["source"]), int(row["start_frame"]), int(row["end_frame"])
        bucket = row.get("motion_bucket_id")
        if bucket is None or row.get("fps") is None:
            raise InputError(f"manifest {path}: clip {row['clip_id']} has no measured fps / motion_bucket_id; "
                             "run the curation's motion pass, or train from a folder with a fixed motion bucket")
        caption = next((str(row[c]).strip() for c in CAPTION_COLUMNS if row.get(c) and str(row[c]).strip()), "")
        clips.append(ClipRecord(str(row["clip_id"]), file, start, end, float(row["fps"]), int(bucket),
                                int(row["width"]), int(row["height"]), str(row["source"]), caption))
    if not clips:
        raise InputError(f"manifest {path} has no usable clip ({len(table)} rows; only status 'ok'"
                         f"{' and keep = true' if only_kept else ''} rows are used)")
    return clips


def scan_folder(folder: str | os.PathLike, *, motion_bucket_id: int = 127) -> list[ClipRecord]:
    """Every video file below `folder` as one clip (whole file). There is no motion measurement, so every clip
    gets `motion_bucket_id`; curate the folder for measured values."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"clip folder not found: {root}")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
    if not files:
        raise InputError(f"no video files ({', '.join(VIDEO_EXTENSIONS)}) in {root}")
    clips = []
    for file in files:
        info = probe_video(file, count_frames=True)
        clip_id = file.relative_to(root).as_posix()
        clips.append(ClipRecord(clip_id, file, 0, info.frame_count, float(info.fps), motion_bucket_id,
                                info.width, info.height, str(file), read_sidecar_caption(file)))
    return clips


def read_sidecar_caption(video: Path) -> str:
    """The caption in the text file beside `video` (clip.mp4 -> clip.txt, UTF-8, whitespace collapsed), or ''."""
    sidecar = video.with_suffix(CAPTION_SUFFIX)
    if not sidecar.is_file():
        return ""
    try:  # the project's one reader of user text files: regular file, size limit, BOM / UTF-8 / UTF-16
        return " ".join(read_text_file(sidecar, what="caption file", max_bytes=MAX_CAPTION_BYTES).split())
    except ConfigError as exc:
        raise InputError(str(exc)) from None


# -------------------------------------------------------------------------------------------- planning


def nearest_bucket(width: int, height: int, sizes: tuple[tuple[int, int], ...]) -> tuple[int, int]:
    """The size whose aspect ratio is closest (in log ratio) to width/height; the first on a tie."""
    aspect = math.log(width / height)
    return min(sizes, key=lambda s: abs(math.log(s[0] / s[1]) - aspect))


def window_indices(n: int, fps: float, target_fps: float, t: int, count: int,
                   rng: np.random.Generator) -> tuple[list[tuple[int, ...]], float]:
    """Up to `count` windows of `t` frame indices in 0..n-1 at `target_fps` (0: every frame), and the effective
    fps. Upsampling is refused (frames would repeat): the stride is at least one frame. Windows spread evenly
    over the clip; a single window is placed at random (`rng`). Returns ([], fps) when the clip is too short."""
    stride = max(1.0, fps / target_fps) if target_fps > 0 else 1.0
    span = round((t - 1) * stride)
    room = n - 1 - span
    if room < 0:
        return [], fps / stride
    offsets = [int(rng.integers(0, room + 1))] if count == 1 else sorted(
        {round(k * room / (count - 1)) for k in range(count)})
    windows = [tuple(off + round(k * stride) for k in range(t)) for off in offsets]
    return windows, fps / stride


def plan_windows(clips: list[ClipRecord], config: DataConfig) -> tuple[list[Window], list[str]]:
    """Windows for every clip long enough; messages for the clips skipped (too short)."""
    windows: list[Window] = []
    skipped: list[str] = []
    for clip in clips:
        rng = np.random.default_rng([config.seed, zlib.crc32(clip.clip_id.encode())])
        picks, eff_fps = window_indices(clip.num_frames, clip.fps, config.fps, config.num_frames,
                                        config.windows_per_clip, rng)
        if not picks:
            need = round((config.num_frames - 1) * max(1.0, clip.fps / config.fps if config.fps else 1.0)) + 1
            skipped.append(f"{clip.clip_id}: {clip.num_frames} frames at {clip.fps:g} fps, {need} needed for "
                           f"{config.num_frames} frames at {config.fps or clip.fps:g} fps")
            continue
        size = nearest_bucket(clip.width, clip.height, config.sizes)
        fps_id = max(0, round(eff_fps) - 1)
        for k, idx in enumerate(picks):
            key = clip.clip_id if len(picks) == 1 else f"{clip.clip_id}#{k}"
            windows.append(Window(key, clip, tuple(clip.start_frame + i for i in idx), size, fps_id,
                                 clip.motion_bucket_id))
    if skipped:
        log.warning("%d clip(s) are shorter than %d frames at the target fps and were skipped, e.g. %s",
                    len(skipped), config.num_frames, skipped[0])
    if not windows:
        raise InputError(f"no clip is long enough for {config.num_frames} frames at {config.fps or 'native'} fps "
                         f"({len(clips)} clips; e.g. {skipped[0] if skipped else '-'}); lower data.num_frames or "
                         "data.fps, or use longer clips")
    return windows, skipped


def make_dataset(config: DataConfig) -> VideoDataset:
    """Read the clip list named by ``config`` (manifest or folder) and plan its windows."""
    if config.manifest:
        clips = load_manifest(config.manifest, only_kept=config.only_kept)
    elif config.folder:
        clips = scan_folder(config.folder, motion_bucket_id=config.motion_bucket_id)
    else:
        raise InputError("no clips configured: set data.manifest (curation output) or data.folder")
    windows, skipped = plan_windows(clips, config)
    return VideoDataset(clips, config, windows, skipped)


# --------------------------------------------------------------------------------------------- reading


def read_window(window: Window) -> Tensor:
    """Decode one window: (T, 3, H, W) float32 in [-1, 1] at window.size (cover-resized, centre-cropped)."""
    first, last = window.indices[0], window.indices[-1]
    wanted = {i - first: n for n, i in enumerate(window.indices)}
    frames: list[np.ndarray | None] = [None] * len(window.indices)
    got = 0
    for pos, frame in enumerate(iter_frames(window.clip.path, skip_first=first, frame_cap=last - first + 1,
                                            size=window.size, resize_mode="cover")):
        if pos in wanted:
            frames[wanted[pos]] = frame
            got += 1
    if got < len(frames):
        raise InputError(f"clip {window.clip.clip_id} ({window.clip.path}) ended early: frames {first}..{last} "
                         f"were planned, only {got} of {len(frames)} decoded (a truncated or changed file?)")
    arr = np.stack(frames)  # (T, H, W, 3) uint8
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)  # (T, 3, H, W)
