"""Synthetic captions of a clip (SVD paper, section 3.1 / appendix C): three captions per clip, from an image
captioner on the middle frame (CoCa in the paper), a video captioner (VideoBLIP) and an LLM summary of both.
Training samples one of them with p = 0.5 / 0.25 / 0.25. Captions are metadata, never a filter.

Captioners are pluggable (:class:`Captioner`) and chosen **by name** (:func:`get_captioner`): a workflow or a
config can only name a captioner the local user registered outside workflows (captioner_registry.py: a JSON
settings file, ``$SVD_LAB_CAPTIONERS``, ``svd-lab curate --register-captioner``, or Python code). ``None`` /
``"none"`` means no captions (the default). Registered entries are built as

* ``{"model": <folder>}``: :class:`LocalImageCaptioner`, a transformers image-to-text model (BLIP, GIT,
  ViT-GPT2, ...) read from a local folder only (``local_files_only=True``; nothing is downloaded);
* ``{"argv": [program, args...]}``: :class:`CommandCaptioner`, a local program run without a shell. It gets a
  temporary folder of PNG frames as its last argument and a JSON object on stdin ({"kind", "frames",
  "captions"}); it prints the caption on stdout;
* a Python factory (:func:`register_captioner`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

from ..errors import ConfigError, InputError, SVDError
from . import captioner_registry as registry_mod
from .captioner_registry import CaptionerEntry, CaptionerRegistry
from .text import check_rgb

log = logging.getLogger(__name__)

KINDS = ("image", "video", "summary")
#: Probability of training on each caption kind (SVD paper, appendix E.2.2): CoCa 0.5, V-BLIP 0.25, LLM 0.25.
SAMPLING_PROBS: dict[str, float] = {"image": 0.5, "video": 0.25, "summary": 0.25}


class CaptionError(SVDError):
    """A captioner failed (its program exited with an error, timed out or printed nothing)."""


@runtime_checkable
class Captioner(Protocol):
    """Turns frames (H, W, 3) uint8 into a caption. `kind` is "image" (gets the middle frame), "video" (all
    frames) or "summary" (gets the other captions, may ignore the frames)."""

    name: str
    kind: str

    def caption(self, frames: Sequence[np.ndarray], *, captions: Mapping[str, str] | None = None) -> str: ...


@dataclass(frozen=True)
class CaptionSet:
    """The three captions of a clip (None where no captioner of that kind ran) and how training samples them."""

    image: str | None = None
    video: str | None = None
    summary: str | None = None

    def available(self) -> dict[str, str]:
        return {k: v for k, v in asdict(self).items() if v}

    def probabilities(self) -> dict[str, float]:
        """SAMPLING_PROBS restricted to the captions present, renormalised (empty when there are none)."""
        present = self.available()
        total = sum(SAMPLING_PROBS[k] for k in present)
        return {k: SAMPLING_PROBS[k] / total for k in present} if total else {}

    def sample(self, rng: np.random.Generator) -> str | None:
        """One caption drawn with :meth:`probabilities` (None when there are none)."""
        probs = self.probabilities()
        if not probs:
            return None
        kinds = list(probs)
        return self.available()[kinds[int(rng.choice(len(kinds), p=list(probs.values())))]]

    def to_dict(self) -> dict[str, object]:
        """Manifest form: the captions plus the sampling probabilities of the paper."""
        return {**asdict(self), "sampling_probs": dict(SAMPLING_PROBS)}


def _frames_for(captioner: Captioner, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
    if captioner.kind == "image":
        return [frames[(len(frames) - 1) // 2]]
    return list(frames)


def caption_clip(frames: Sequence[np.ndarray], captioners: Sequence[Captioner]) -> CaptionSet:
    """Run the captioners (at most one per kind; summaries last, given the others' captions) on a clip's frames."""
    if len(frames) == 0:
        raise InputError("caption_clip needs at least one frame, got none")
    by_kind: dict[str, Captioner] = {}
    for captioner in captioners:
        if captioner.kind not in KINDS:
            raise ConfigError(f"captioner {captioner.name!r} has kind {captioner.kind!r}; expected one of {KINDS}")
        if captioner.kind in by_kind:
            first = by_kind[captioner.kind].name
            raise ConfigError(f"two {captioner.kind} captioners given: {first}, {captioner.name}; keep one")
        by_kind[captioner.kind] = captioner
    out: dict[str, str] = {}
    for kind in KINDS:
        if kind in by_kind:
            captioner = by_kind[kind]
            given = dict(out) if kind == "summary" else None  # the summary sees the image and video captions
            out[kind] = captioner.caption(_frames_for(captioner, frames), captions=given).strip()
    return CaptionSet(**out)


# ---------------------------------------------------------------------------------------------------------------
# Built-in captioners
# ---------------------------------------------------------------------------------------------------------------


class CommandCaptioner:
    """Runs a local program: ``argv + [frames_folder]`` with a JSON request on stdin; the caption is its stdout."""

    def __init__(self, argv: Sequence[str], *, kind: str = "image", timeout: float = 120.0) -> None:
        if not argv:
            raise ConfigError("a command captioner needs a program: register it with an argv list")
        if kind not in KINDS:
            raise ConfigError(f"unknown caption kind {kind!r}; choose from {', '.join(KINDS)}")
        program = shutil.which(argv[0]) or (argv[0] if Path(argv[0]).is_file() else None)
        if program is None:
            raise ConfigError(f"caption program not found: {argv[0]!r} (give a path or a program on PATH)")
        if not os.access(program, os.X_OK):
            raise ConfigError(f"caption program {program!r} is not executable (chmod +x it)")
        self.argv, self.kind, self.timeout = [program, *argv[1:]], kind, float(timeout)
        self.name = f"command:{Path(program).name}"

    def caption(self, frames: Sequence[np.ndarray], *, captions: Mapping[str, str] | None = None) -> str:
        with tempfile.TemporaryDirectory(prefix="svdlab-caption-") as folder:
            paths = []
            for i, frame in enumerate(frames):
                path = Path(folder) / f"frame_{i:05d}.png"
                Image.fromarray(check_rgb(frame)).save(path)
                paths.append(str(path))
            request = json.dumps({"kind": self.kind, "frames": paths, "captions": dict(captions or {})})
            try:
                done = subprocess.run(
                    [*self.argv, folder],
                    input=request,
                    capture_output=True,
                    text=True,
                    timeout=self.timeout,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                raise CaptionError(f"{self.name} took longer than {self.timeout:g} s (timeout)") from None
        if done.returncode != 0:
            tail = done.stderr.strip().splitlines()[-3:]
            raise CaptionError(f"{self.name} exited with status {done.returncode}: {' | '.join(tail) or 'no stderr'}")
        text = " ".join(done.stdout.split())
        if not text:
            raise CaptionError(f"{self.name} printed no caption on stdout")
        return text


class LocalImageCaptioner:
    """A transformers image-to-text model from a local folder (never downloaded), run on the middle frame."""

    kind = "image"

    def __init__(self, folder: str | os.PathLike, *, device: str = "cpu", max_new_tokens: int = 30) -> None:
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise ConfigError(
                f"no local captioning model at {folder} (a folder with config.json and weights, saved by "
                "save_pretrained); models are never downloaded"
            )
        try:
            import transformers
        except ImportError:
            raise ConfigError(
                "local-image captioning needs the 'transformers' package: pip install transformers"
            ) from None
        model_cls = getattr(transformers, "AutoModelForImageTextToText", None) or transformers.AutoModelForVision2Seq
        try:
            # safetensors weights only (a pytorch_model.bin is a pickle), no code from the folder, no download
            self.model = model_cls.from_pretrained(folder, local_files_only=True, use_safetensors=True,
                                                   trust_remote_code=False).to(device).eval()
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load an image-to-text model from {folder}: {exc}") from None
        try:
            processor = transformers.AutoProcessor.from_pretrained(folder, local_files_only=True,
                                                                   trust_remote_code=False)
        except (OSError, ValueError, TypeError, KeyError):
            processor = None
        if processor is not None and getattr(processor, "image_processor", None) is not None:
            self.image_processor, self.tokenizer = processor, processor  # BLIP, GIT, ...: one processor
        else:  # e.g. ViT + GPT-2: an image processor and a tokenizer saved side by side
            try:
                self.image_processor = transformers.AutoImageProcessor.from_pretrained(folder, local_files_only=True)
                self.tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"{folder} has no image processor / tokenizer files: {exc}") from None
        self.device, self.max_new_tokens = device, int(max_new_tokens)
        self.name = f"local-image:{folder.name}"

    def caption(self, frames: Sequence[np.ndarray], *, captions: Mapping[str, str] | None = None) -> str:
        import torch

        if len(frames) == 0:
            raise InputError("the image captioner needs a frame, got none")
        image = Image.fromarray(check_rgb(frames[(len(frames) - 1) // 2]))
        inputs = self.image_processor(images=image, return_tensors="pt").to(self.device)
        with torch.no_grad():
            ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens)
        return self.tokenizer.batch_decode(ids, skip_special_tokens=True)[0].strip()


# ---------------------------------------------------------------------------------------------------------------
# By name, from the registry
# ---------------------------------------------------------------------------------------------------------------


def register_captioner(name: str, factory: Callable[[], Captioner], *, kind: str = "image") -> None:
    """Make the name ``name`` build a captioner with ``factory()`` (Python plugins; see captioner_registry)."""
    registry_mod.register_factory(name, factory, kind=kind)


def registered_captioners(registry: CaptionerRegistry | None = None, kind: str | None = None) -> list[str]:
    """Names a workflow may choose (of one kind, or all)."""
    return (registry or registry_mod.default_registry()).names(kind)


def build_captioner(entry: CaptionerEntry) -> Captioner:
    """The captioner a registered entry describes."""
    if entry.factory is not None:
        made = entry.factory()
        if getattr(made, "kind", None) != entry.kind:
            raise ConfigError(f"captioner {entry.name!r} was registered as kind {entry.kind!r} but its factory "
                              f"made kind {getattr(made, 'kind', None)!r}")
        return made
    if entry.model:
        return LocalImageCaptioner(entry.model)
    made = CommandCaptioner(entry.argv, kind=entry.kind, timeout=entry.timeout)
    made.name = entry.name
    return made


def get_captioner(name: str | None, registry: CaptionerRegistry | None = None) -> Captioner | None:
    """Build the captioner registered as ``name`` ("none" / None -> no captioner). Names that look like a
    program or a path, and unknown names, are a ConfigError saying where captioners are registered."""
    entry = (registry or registry_mod.default_registry()).get(name)
    return None if entry is None else build_captioner(entry)
