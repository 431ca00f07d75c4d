"""Crash-safe file replacement: readers see the old file or the new one, never half of one.

The new content goes to a temp file in the target's folder (same file system, so the rename is atomic), which is
fsynced, renamed over the target with ``os.replace``, and then the folder is fsynced so the rename itself survives
a power cut. Temp files are named ``.<name>.<pid>.<thread>.tmp`` (a leading dot and a ``.tmp`` suffix, which
cleanup code such as the curation manifest's recovery looks for); a failed write removes its temp file.

Killed processes leave temp files behind: :func:`remove_stale_temps` deletes the pack's own temp files (the
``.tmp`` names above and video writers' ``.<name>.<pid>-<hex>.part``) whose writing process is gone and that are
older than the cleanup; nothing else is touched. :func:`sigterm_as_interrupt` turns SIGTERM into
KeyboardInterrupt in the main thread while it is active, so ``finally`` / ``except BaseException`` cleanups
(temp files, worker pools) run when a service manager or ``kill`` stops the process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["fsync_dir", "pid_alive", "remove_stale_temps", "replace_atomic", "sigterm_as_interrupt",
           "write_text_atomic"]

log = logging.getLogger(__name__)

#: ``.<name>.<pid>.<thread>.tmp`` (replace_atomic) and ``.<name>.<pid>-<hex>.part`` (video writers).
TEMP_RE = re.compile(r"^\..+\.(?P<pid>[0-9]{1,10})\.[0-9]{1,24}\.tmp$")
PART_RE = re.compile(r"^\..+\.(?P<pid>[0-9]{1,10})-[0-9a-f]{8}\.part$")


#: What a path is when it is not a regular file or a folder (for "is not a regular file: it is ...").
_KINDS = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"))


def stat_regular(path: str | os.PathLike[str], what: str, error: type[Exception],
                 shown: str | None = None) -> os.stat_result:
    """``os.stat`` of a regular file, else ``error`` saying what the path is instead: missing, a folder, a named
    pipe, a device or socket, or unreadable. Only stats: nothing is opened, so a FIFO never blocks a reader.
    ``shown`` is how the message names the path (default: as given)."""
    name = str(path) if shown is None else shown
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise error(f"{what} not found: {name}") from None
    except NotADirectoryError:
        raise error(f"{what} not found: {name} (a parent of it is not a folder)") from None
    except (OSError, ValueError) as exc:
        raise error(f"cannot read {what} {name}: {getattr(exc, 'strerror', None) or exc}") from None
    if stat.S_ISDIR(info.st_mode):
        raise error(f"{what} {name} is a folder, not a file")
    if not stat.S_ISREG(info.st_mode):
        kind = next((label for test, label in _KINDS if test(info.st_mode)), "not a file")
        raise error(f"{what} {name} is not a regular file: it is {kind}")
    return info


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


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (one we may not signal counts as alive)."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike[str], *, recursive: bool = False, before: float | None = None,
                       kinds: tuple[str, ...] = ("tmp", "part")) -> list[Path]:
    """Delete temp files this pack wrote and a killed process left in ``folder``: names that match the pack's
    temp naming (``TEMP_RE`` for "tmp", ``PART_RE`` for "part"), regular files (not symlinks), last modified
    before ``before`` (default: now) and whose owning pid is no longer running. Returns what was removed."""
    cutoff = time.time() if before is None else before
    patterns = [r for k, r in (("tmp", TEMP_RE), ("part", PART_RE)) if k in kinds]
    removed: list[Path] = []
    folders = [Path(folder)]
    while folders:
        current = folders.pop()
        try:
            entries = list(os.scandir(current))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    if recursive:
                        folders.append(Path(entry.path))
                    continue
                match = next((m for r in patterns if (m := r.match(entry.name))), None)
                if match is None or not entry.is_file(follow_symlinks=False):
                    continue
                if entry.stat(follow_symlinks=False).st_mtime >= cutoff or pid_alive(int(match["pid"])):
                    continue
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            except OSError:
                continue
    if removed:
        log.info("removed %d stale temp file(s) left by killed runs in %s: %s", len(removed), folder,
                 [p.name for p in removed[:5]])
    return removed


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While active (main thread only; elsewhere a no-op), SIGTERM raises KeyboardInterrupt in the main thread,
    so the usual Ctrl-C cleanups run. The previous handler is restored on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum} (SIGTERM)")

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except (ValueError, OSError):  # not the main interpreter, or the platform refuses
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
