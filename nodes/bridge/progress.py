"""Progress, interruption and latent previews: ComfyUI's ProgressBar and interrupt flag inside ComfyUI; headless,
the reporter the workflow runner installs (:func:`~.headless_run`), else the log."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

from ...svd_model.diffusion.sampling import StepInfo
from .. import adapters
from .comfy import _comfy_args, _mm, _progress_bar_class

log = logging.getLogger(__name__)

Reporter = Callable[[int, int], None]
#: The headless run's progress receiver (value, total), installed by :func:`reporting`; None: log only.
_reporter: Reporter | None = None


@contextlib.contextmanager
def reporting(reporter: Reporter | None) -> Iterator[None]:
    """Send every node's progress to ``reporter(value, total)`` inside the ``with`` block (headless)."""
    global _reporter
    previous, _reporter = _reporter, reporter
    try:
        yield
    finally:
        _reporter = previous


def check_interrupt() -> None:
    """Raise ComfyUI's InterruptProcessingException when the user pressed cancel."""
    mm = _mm()
    if mm is not None:
        mm.throw_exception_if_processing_interrupted()


def _preview_size() -> int | None:
    """Preview size when ComfyUI's latent previews are on (--preview-method / the frontend's setting), else None."""
    method = getattr(_comfy_args(), "preview_method", None)
    if method is None or getattr(method, "value", method) == "none":
        return None
    return int(getattr(_comfy_args(), "preview_size", 512))


class Progress:
    """A node's progress bar: comfy.utils.ProgressBar in ComfyUI; headless, the run's reporter (or the log)."""

    def __init__(self, total: int) -> None:
        self.total = max(1, int(total))
        bar = _progress_bar_class()
        self._bar: Any = bar(self.total) if bar is not None else None

    @property
    def in_comfyui(self) -> bool:
        return self._bar is not None

    def update(self, value: int, total: int | None = None, preview: tuple[str, Any, int] | None = None) -> None:
        self.total = max(1, int(total or self.total))
        check_interrupt()
        if self._bar is not None:
            self._bar.update_absolute(value, self.total, preview)
            return
        reporter = _reporter
        if reporter is None:
            log.debug("progress %d/%d", value, self.total)
            return
        reporter(int(value), self.total)


def step_callback(steps: int) -> Callable[[StepInfo], None]:
    """Sampler callback: interruption check, progress per step, latent previews inside ComfyUI."""
    bar = Progress(steps)
    size = _preview_size() if bar.in_comfyui else None

    def callback(info: StepInfo) -> None:
        preview = ("JPEG", adapters.latent_preview(info.denoised), size) if size else None
        bar.update(info.index + 1, info.total, preview)

    return callback


def chunk_callback(total: int) -> Callable[[int, int], None]:
    """Decode callback (frames_done, frames_total): interruption check and progress."""
    bar = Progress(total)
    return lambda done, frames: bar.update(done, frames)
