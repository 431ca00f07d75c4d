"""Crash-safe file replacement: readers see the old file or the new one, never half of one.

The new content goes to a temp file in the target's folder (same file system, so the rename is atomic), which is
fsynced, renamed over the target with ``os.replace``, and then the folder is fsynced so the rename itself survives
a power cut. Temp files are named ``.<name>.<pid>.<thread>.tmp`` (a leading dot and a ``.tmp`` suffix, which
cleanup code such as the curation manifest's recovery looks for); a failed write removes its temp file.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

__all__ = ["fsync_dir", "replace_atomic", "write_text_atomic"]


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a folder so a rename inside it is durable; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened; rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace_atomic(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Create or replace `path` atomically: ``write(tmp)`` fills a temp file beside it, which is then fsynced,
    renamed over `path`, and the folder fsynced. Missing parent folders are created. Returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def write_text_atomic(text: str, path: str | os.PathLike[str]) -> Path:
    """Write `text` (UTF-8) to `path` atomically (see :func:`replace_atomic`)."""
    return replace_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
