"""The host of a headless run: where nodes write and where their progress goes, handed over by the runner.

``workflow.execute(..., host=...)`` enters ``host.headless_run(output_dir=..., reporter=...)`` for the run, and
the runner resolves UI file entries with ``host.folder(kind)``. A node pack passes its own host (this pack: its
``nodes.bridge`` package, whose nodes read their folders and report progress there); without one, the
:data:`GENERIC` host serves node classes that use this module's :func:`output_directory` and
``workflow.progress.report`` (the runner's own tests, other packs). The runner shares no globals with a pack.

Output nodes report saved files in their UI dict as ``{"filename", "subfolder", "type": "output" | "temp"}``
(relative to those folders, as ComfyUI's SaveImage does), best with ``"fullpath"`` too; the CLI prints the paths.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Protocol

from . import progress

OUTPUT_ENV = "SVD_LAB_OUTPUT"  # the same variable nodes/bridge/folders.py reads

_output_dir: Path | None = None


def output_directory() -> Path:
    """Where output nodes write: the directory set for this run, else ``$SVD_LAB_OUTPUT``, else ``./output``."""
    if _output_dir is not None:
        return _output_dir
    return Path(os.environ.get(OUTPUT_ENV) or "output")


def temp_directory() -> Path:
    """Where previews (UI type "temp") go headless: ``./temp``, as in the bridge."""
    return Path("temp")


def set_output_directory(path: str | Path | None) -> Path | None:
    """Set (None: unset) the output directory; returns the previous explicit setting."""
    global _output_dir
    previous, _output_dir = _output_dir, Path(path) if path is not None else None
    return previous


@contextmanager
def using_output_directory(path: str | Path | None) -> Iterator[None]:
    """Use ``path`` as the output directory inside a ``with`` block (None keeps the current one)."""
    if path is None:
        yield
        return
    previous = set_output_directory(path)
    try:
        yield
    finally:
        set_output_directory(previous)


class Host(Protocol):
    """What the runner needs from the code that owns the nodes."""

    def headless_run(self, *, output_dir: str | Path | None = None,
                     reporter: Callable[[int, int], None] | None = None) -> AbstractContextManager[None]: ...

    def folder(self, kind: str) -> Path: ...


class GenericHost:
    """The host for node classes that use :func:`output_directory` and ``workflow.progress.report``."""

    @contextmanager
    def headless_run(self, *, output_dir: str | Path | None = None,
                     reporter: Callable[[int, int], None] | None = None) -> Iterator[None]:
        with using_output_directory(output_dir), progress.reporting(reporter):
            yield

    def folder(self, kind: str) -> Path:
        return temp_directory() if kind == "temp" else output_directory()


GENERIC: Host = GenericHost()


def resolve_ui_file(item: dict, host: Host = GENERIC) -> Path | None:
    """The path a UI file entry (``{"filename", "subfolder", "type"}``, or a legacy ``{"fullpath"}``) points at."""
    if item.get("fullpath"):
        return Path(item["fullpath"])
    if not item.get("filename"):
        return None
    base = host.folder("temp" if item.get("type") == "temp" else "output")
    return Path(base) / (item.get("subfolder") or "") / item["filename"]
