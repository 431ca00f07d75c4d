"""Fixtures of the fuzz suite: a sandbox of ComfyUI-like folders with a tripwire around it, and a guard that
fails a test the moment anything tries to start a process.

Every fuzz case runs inside ``sandbox``: ``root/{input,output,temp,models}`` are the allowed folders and
``root/outside`` is a neighbour that nothing may write into; ``sandbox.written_outside()`` lists every file
that appeared or changed anywhere under ``root`` except the allowed folders. ``no_process`` replaces every
way the standard library starts a program (subprocess, os.system/popen/exec*/spawn*/posix_spawn, fork) by a
function that records the attempt and raises, so an injection that reached a process launcher is a failure,
not a hope.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .comfyui_graphs import comfy  # noqa: F401  (the real-server fixture of test_fuzz_comfyui.py)

ALLOWED = ("input", "output", "temp", "models")


@dataclass
class Sandbox:
    root: Path
    _before: dict[str, tuple[int, int]] = field(default_factory=dict)

    def folder(self, kind: str) -> Path:
        return self.root / kind

    @property
    def outside(self) -> Path:
        return self.root / "outside"

    def _snapshot(self) -> dict[str, tuple[int, int]]:
        seen: dict[str, tuple[int, int]] = {}
        for dirpath, dirnames, filenames in os.walk(self.root):
            rel = Path(dirpath).relative_to(self.root)
            if not rel.parts:
                dirnames[:] = [d for d in dirnames if d not in ALLOWED]
            for name in [*filenames, *dirnames]:
                path = Path(dirpath) / name
                try:
                    st = path.lstat()
                except OSError:
                    continue
                seen[str(path.relative_to(self.root))] = (st.st_mtime_ns, st.st_size)
        return seen

    def mark(self) -> None:
        """Remember the tree outside the allowed folders (done once by the fixture; call again after setup)."""
        self._before = self._snapshot()

    def written_outside(self) -> list[str]:
        after = self._snapshot()
        return sorted(k for k, v in after.items() if self._before.get(k) != v)


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    for kind in (*ALLOWED, "outside"):
        (tmp_path / kind).mkdir()
    (tmp_path / "outside" / "secret.png").write_bytes(b"not for workflows")
    box = Sandbox(tmp_path)
    box.mark()
    yield box
    assert box.written_outside() == [], f"files written outside the allowed folders: {box.written_outside()}"


class ProcessStarted(AssertionError):
    """Raised (and recorded) when code under test tries to start a program."""


@pytest.fixture
def no_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    attempts: list[str] = []

    def refuse(name: str):
        def launcher(*args, **kwargs):
            attempts.append(f"{name}{args[:2]!r}")
            raise ProcessStarted(f"a process was started through {name}: {args[:2]!r}")
        return launcher

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse("subprocess.Popen"))
    for name in ("system", "popen", "fork", "forkpty", "posix_spawn", "posix_spawnp", "execv", "execve", "execvp",
                 "execvpe", "execl", "execle", "execlp", "execlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe",
                 "spawnl", "spawnle", "spawnlp", "spawnlpe"):
        if hasattr(os, name):
            monkeypatch.setattr(os, name, refuse(f"os.{name}"))
    yield attempts
    assert attempts == [], f"processes were started: {attempts}"
