"""Progress of a headless run: a node counter plus the running node's own progress.

Nodes never import this module directly: the pack's bridge module does, when ComfyUI is not present
(inside ComfyUI the bridge uses ``comfy.utils.ProgressBar`` instead)::

    from . import progress as headless_progress
    headless_progress.report(step, total)   # e.g. after each sampling step; a no-op when nobody listens

``report(value, total)`` forwards to the reporter installed with ``set_reporter(fn)`` (or the ``reporting(fn)``
context manager); ``workflow.execute`` installs its progress listener's ``update`` for the run and restores the
previous reporter afterwards. A reporter may raise (e.g. KeyboardInterrupt) to stop the node that reports.

``TextProgress`` is the listener the CLI uses: a small text bar on stderr, redrawn in place on a terminal and
written as at most ~10 lines per node otherwise (logs, CI). No tqdm needed.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol, TextIO

Reporter = Callable[[int, int], None]

_reporter: Reporter | None = None


def set_reporter(fn: Reporter | None) -> Reporter | None:
    """Install ``fn(value, total)`` as the receiver of ``report`` calls (None removes it); returns the previous one."""
    global _reporter
    previous, _reporter = _reporter, fn
    return previous


def get_reporter() -> Reporter | None:
    return _reporter


def report(value: int, total: int) -> None:
    """Tell the current listener that the running node is at ``value`` of ``total`` (steps, frames, clips...)."""
    if _reporter is not None:
        _reporter(int(value), int(total))


@contextmanager
def reporting(fn: Reporter | None) -> Iterator[None]:
    """Install ``fn`` as the reporter for the duration of a ``with`` block."""
    previous = set_reporter(fn)
    try:
        yield
    finally:
        set_reporter(previous)


class ProgressListener(Protocol):
    """What ``workflow.execute(progress=...)`` calls: the run's node counter and the node's own progress."""

    def start(self, total_nodes: int) -> None: ...
    def node_started(self, index: int, node_id: str, class_type: str) -> None: ...
    def update(self, value: int, total: int) -> None: ...
    def node_finished(self, node_id: str, class_type: str, seconds: float) -> None: ...
    def finish(self) -> None: ...


class StatusLine:
    """One status line on ``stream``: redrawn in place on a terminal (at most every ``min_interval`` seconds), and
    on a log or pipe a new line only when the value enters the next of ``parts`` equal parts of the total.
    The progress text of the headless runner (:class:`TextProgress`) and of ``svd-lab curate``."""

    def __init__(self, stream: TextIO | None = None, *, parts: int = 10, min_interval: float = 0.1) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.parts = parts
        self.min_interval = min_interval
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.reset()

    def reset(self) -> None:
        """Forget what was drawn (a new task starts)."""
        self._last_draw: float | None = None  # None: nothing drawn yet (the first value is always drawn)
        self._last_part = -1

    def due(self, value: int, total: int, *, force: bool = False) -> bool:
        """Whether ``value`` of ``total`` should be drawn now (``force``: always, e.g. the final state)."""
        if self.tty:
            now = time.monotonic()
            if not force and self._last_draw is not None and now - self._last_draw < self.min_interval:
                return False
            self._last_draw = now
            return True
        part = value * self.parts // max(total, 1)
        if part == self._last_part and not force:
            return False
        self._last_part = part
        return True

    def write(self, text: str, *, final: bool) -> None:
        """Draw ``text``; on a terminal ``final`` ends the line, elsewhere every text is a line of its own."""
        if self.tty:
            self.stream.write("\r\033[K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


class TextProgress:
    """``[2/5] node 3 SVDLab_Sampler |######------| 12/25`` on ``stream`` (stderr by default)."""

    def __init__(self, stream: TextIO | None = None, width: int = 24, min_interval: float = 0.1) -> None:
        self.line = StatusLine(stream, parts=10, min_interval=min_interval)
        self.stream = self.line.stream
        self.width = width
        self.tty = self.line.tty
        self.total_nodes = 0
        self.prefix = ""

    def start(self, total_nodes: int) -> None:
        self.total_nodes = total_nodes

    def node_started(self, index: int, node_id: str, class_type: str) -> None:
        self.prefix = f"[{index}/{self.total_nodes}] node {node_id} {class_type}"
        self.line.reset()
        self.line.write(self.prefix, final=not self.tty)

    def update(self, value: int, total: int) -> None:
        if total <= 0:
            return
        value = max(0, min(value, total))
        if self.line.due(value, total, force=self.tty and value >= total):
            self.line.write(f"{self.prefix} {bar(value, total, self.width)} {value}/{total}", final=not self.tty)

    def node_finished(self, node_id: str, class_type: str, seconds: float) -> None:
        self.line.write(f"{self.prefix} done ({seconds:.1f} s)", final=True)

    def finish(self) -> None:
        self.stream.flush()


def bar(value: int, total: int, width: int = 24) -> str:
    """``|#####-----|``: ``value`` of ``total`` as a bar ``width`` characters wide."""
    filled = width * value // total if total > 0 else 0
    return "|" + "#" * filled + "-" * (width - filled) + "|"
