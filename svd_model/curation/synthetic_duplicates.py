"""A synthetic dataset with known near-duplicates, for the dedup tests and bench/dedup_quality.py.

:func:`make_variant` copies a video as a dataset would hold it twice: ``"renamed"`` (the same bytes under
another name), ``"reencoded"`` (decoded and encoded again at a lower quality), ``"resized"`` (scaled to
``scale`` of its size) or ``"cropped"`` (``crop`` of each side cut off, not scaled back).
:func:`make_duplicate_set` renders distinct single-shot sources (:func:`~.synthetic.make_video`, one seed each),
copies some of them, and returns which files show the same shot.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .synthetic import make_video

VARIANTS = ("renamed", "reencoded", "resized", "cropped")


def make_variant(src: str | PathLike[str], dst: str | PathLike[str], kind: str, *, scale: float = 0.75,
                 crop: float = 0.05, quality: int = 60) -> Path:
    """Write a copy of video ``src`` to ``dst`` (see the module doc for the kinds); frames resized and cropped
    with kornia, encoded with the pack's writer (H.264 for .mp4, ``quality`` 0..100)."""
    import kornia
    import torch

    from ..media.video import read_video
    from ..media.write import write_video

    if kind not in VARIANTS:
        raise ConfigError(f"unknown variant {kind!r}; choose from {VARIANTS}")
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if kind == "renamed":
        shutil.copyfile(src, dst)
        return dst
    frames, fps = read_video(src)  # (t, H, W, 3) float in [0, 1]
    t, h, w, _ = frames.shape
    x = frames.permute(0, 3, 1, 2)  # (t, 3, H, W)
    if kind == "resized":
        size = (max(16, round(h * scale / 2) * 2), max(16, round(w * scale / 2) * 2))
        x = kornia.geometry.transform.resize(x, size, antialias=True)
    elif kind == "cropped":
        dy, dx = round(h * crop), round(w * crop)
        x = x[..., dy : h - dy, dx : w - dx]
        x = x[..., : x.shape[-2] // 2 * 2, : x.shape[-1] // 2 * 2]  # even sides for yuv420p
    write_video(torch.clamp(x, 0, 1).permute(0, 2, 3, 1).contiguous(), dst, fps=fps,
                quality=quality if kind == "reencoded" else 85)
    return dst


@dataclass(frozen=True)
class DuplicateSet:
    """The files of :func:`make_duplicate_set`: ``groups`` maps each file name to the name of its source (a
    file is its own source); two files show the same shot exactly when their sources are equal."""

    folder: Path
    groups: dict[str, str]

    def true_pairs(self) -> set[tuple[str, str]]:
        """Unordered pairs (a < b) of file names that are duplicates of each other."""
        names = sorted(self.groups)
        return {(a, b) for i, a in enumerate(names) for b in names[i + 1 :] if self.groups[a] == self.groups[b]}

    @staticmethod
    def predicted_pairs(pairs: Iterable[Any], rows: Iterable[dict[str, Any]]) -> set[tuple[str, str]]:
        """Unordered file-name pairs a dedup result calls duplicates: ``pairs`` (DedupPair: kept, dropped clip
        ids) form groups (a representative and its dropped clips), every two files of a group are a pair.
        ``rows``: the manifest rows (clip id -> source file)."""
        name = {r["clip_id"]: Path(r["source"]).name for r in rows}
        members: dict[str, set[str]] = {}
        for pair in pairs:
            members.setdefault(pair.kept, {name[pair.kept]}).add(name[pair.dropped])
        return {(a, b) for group in members.values() for a in group for b in group if a < b}

    def precision_recall(self, pairs: Iterable[Any], rows: Iterable[dict[str, Any]]) -> tuple[float, float]:
        """Pair precision and recall of a dedup result (see :meth:`predicted_pairs`); 1.0 where there is nothing
        to find / nothing predicted."""
        predicted = self.predicted_pairs(pairs, rows)
        truth = self.true_pairs()
        hits = len(predicted & truth)
        return (hits / len(predicted) if predicted else 1.0, hits / len(truth) if truth else 1.0)


def make_duplicate_set(folder: str | PathLike[str], *, sources: int = 8, copies: Sequence[Sequence[str]] = (),
                       size: tuple[int, int] = (128, 72), frames: int = 30, seed: int = 0) -> DuplicateSet:
    """``sources`` distinct one-shot videos ``src_<i>.mp4`` (seeds ``seed + i``, slow pans); ``copies[i]`` lists
    the variants of source i to add (``src_<i>_<kind>.mp4``). Deterministic."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if len(copies) > sources:
        raise ConfigError(f"copies names {len(copies)} sources but only {sources} are made")
    groups: dict[str, str] = {}
    for i in range(sources):
        name = f"src_{i}.mp4"
        make_video(folder / name, shots=(frames,), size=size, seed=seed + i, motion=(1.0,), gop=10)
        groups[name] = name
    for i, kinds in enumerate(copies):
        for kind in kinds:
            copy = f"src_{i}_{kind}.mp4"
            make_variant(folder / f"src_{i}.mp4", folder / copy, kind)
            groups[copy] = f"src_{i}.mp4"
    return DuplicateSet(folder, groups)
