"""Folders of a headless run: where UI file entries point, and a run-scoped output folder for generic nodes.

Inside ComfyUI, nodes write under ``folder_paths.get_output_directory()`` / ``get_temp_directory()``. Headless,
this pack's nodes use ``nodes/bridge.py`` (``bridge.configure(output_dir=...)``, else ``$SVD_LAB_OUTPUT``, else
``./output``; temp ``./temp``); this module uses the same defaults, so both agree unless one is configured.
``workflow.execute(output_dir=...)`` sets ``output_directory()`` for the run and restores it afterwards.

Output nodes report saved files in their UI dict as ``{"filename", "subfolder", "type": "output" | "temp"}``
(relative to those folders, as ComfyUI's SaveImage does), best with ``"fullpath"`` too; the CLI prints the paths.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

OUTPUT_ENV = "SVD_LAB_OUTPUT"  # the same variable nodes/bridge.py reads

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


def resolve_ui_file(item: dict) -> Path | None:
    """The path a UI file entry (``{"filename", "subfolder", "type"}`` or ``{"fullpath"}``) points at, if any."""
    if item.get("fullpath"):
        return Path(item["fullpath"])
    if not item.get("filename"):
        return None
    base = temp_directory() if item.get("type") == "temp" else output_directory()
    return base / (item.get("subfolder") or "") / item["filename"]
