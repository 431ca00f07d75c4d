"""The one progress line (workflow.progress.StatusLine) behind the headless runner's and `svd-lab curate`'s bars."""

from __future__ import annotations

import io
from types import SimpleNamespace

from comfyui_svd_lab.cli.curate import _Progress
from comfyui_svd_lab.workflow.progress import StatusLine


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_pipe_gets_one_line_per_part_and_the_final_one():
    stream = io.StringIO()
    line = StatusLine(stream, parts=4)
    for value in range(101):
        if line.due(value, 100, force=value == 100):
            line.write(f"{value}/100", final=value == 100)
    assert stream.getvalue().splitlines() == ["0/100", "25/100", "50/100", "75/100", "100/100"]


def test_terminal_redraws_in_place_throttled_and_ends_the_line():
    stream = _Tty()
    line = StatusLine(stream, min_interval=3600.0)
    for value in range(10):
        if line.due(value, 10, force=value == 9):
            line.write(f"{value}", final=value == 9)
    assert stream.getvalue() == "\r\033[K0\r\033[K9\n"  # the first draw, then only the forced final one
    line.reset()
    assert line.due(0, 10)


def test_curate_progress_writes_about_twenty_lines_and_nothing_when_quiet():
    stream = io.StringIO()
    progress = _Progress(stream, quiet=False)
    for done in range(201):
        progress(SimpleNamespace(done=done, total=200, line=lambda d=done: f"{d} videos"))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 21 and lines[0] == "0 videos" and lines[-1] == "200 videos"
    quiet = io.StringIO()
    _Progress(quiet, quiet=True)(SimpleNamespace(done=1, total=1, line=lambda: "x"))
    assert quiet.getvalue() == ""
