"""Path confinement for values that come from a workflow (pure path logic; the folders come from the bridge).

A workflow is untrusted input: whoever can reach a ComfyUI server's ``/prompt`` chooses every widget value. So a
value that names a file is checked against the folders it may use, *after* every symlink is resolved, and a
value that names something new (a run, a cache, a file prefix) must be a plain name (or, for prefixes, plain
names separated by ``/``). The checks are lexical first (absolute paths, ``..``, hidden names, control
characters, look-alike Unicode such as the fullwidth solidus, which NFKC folds to ``/``), then by resolution
(a symlink inside a folder that points out of it is refused). Messages never say whether a refused or missing
path exists, and never print an absolute server path.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ...svd_model.errors import InputError, shorten

#: Longest value accepted where a name or relative path is expected (ComfyUI's own limit for names is the OS's).
MAX_TEXT = 1024
MAX_NAME = 255
_SEPARATORS = ("/", "\\")
#: Characters no portable file name contains (Windows' reserved set); ':' also stops drive-relative paths.
_RESERVED = set('<>:"|?*')


class PathRefused(InputError):
    """A workflow value names a path outside the folders it may use, or is not a valid name."""


@dataclass(frozen=True)
class Root:
    """A folder a value may name files in; ``label`` is how messages call it ("the input folder")."""

    path: Path
    label: str
    #: Where relative values are joined; defaults to ``path``. (The pack's example inputs are also reachable as
    #: ``example_workflows/inputs/...`` relative to the pack, as older workflows name them.)
    base: Path | None = None

    def join(self, value: str) -> Path:
        return (self.base or self.path) / value


def is_inside(path: Path, root: Path) -> bool:
    """True when ``path``, with every symlink resolved, is ``root`` or lies below it (``root`` resolved too)."""
    try:
        real, base = path.resolve(strict=False), root.resolve(strict=False)
    except (OSError, RuntimeError, ValueError):  # symlink loop, NUL byte, ...
        return False
    return real == base or base in real.parents


def _text_problem(value: object, what: str, *, empty: bool = True, label: str | None = None) -> str | None:
    """Why ``value`` is no usable text (not a string, too long, control characters; with ``empty`` also blank)."""
    if not isinstance(value, str):
        return f"{what} must be text, got {type(value).__name__}"
    if len(value) > MAX_TEXT:
        return f"{what} is too long ({len(value)} characters, at most {MAX_TEXT})"
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs") for c in value):
        return f"{what} {label or shorten(value)} contains control or invisible characters"
    if empty and not value.strip():
        return f"{what} is empty: give a name"
    return None


def _part_problem(part: str, label: str, what: str) -> str | None:
    """Why one path component ``part`` is not a plain name; ``label`` is how messages show the whole value."""
    folded = unicodedata.normalize("NFKC", part)
    if any(s in folded for s in _SEPARATORS):
        return f"{what} {label} contains a character that reads as a path separator"
    if folded in (".", "..") or folded.startswith("."):
        return f"{what} {label}: names may not be '.', '..' or start with '.' (hidden files)"
    if _RESERVED & set(folded):
        return f"{what} {label} contains one of the reserved characters {''.join(sorted(_RESERVED))}"
    if len(part.encode("utf-8")) > MAX_NAME:
        return f"{what} {label} has a name longer than {MAX_NAME} bytes"
    if part != part.strip() or part.endswith("."):
        return f"{what} {label}: names may not start or end with spaces or end with '.'"
    return None


def name_problem(value: object, what: str) -> str | None:
    """None when ``value`` is a plain file or folder name (one component: no separator, not hidden, not '..')."""
    problem = _text_problem(value, what)
    if problem:
        return problem
    assert isinstance(value, str)
    if any(s in value for s in _SEPARATORS):
        return f"{what} {shorten(value)} must be a name, not a path (no '/' or '\\')"
    return _part_problem(value, shorten(value), what)


def relative_problem(value: object, what: str, *, shown: str | None = None) -> str | None:
    """None when ``value`` is a relative path of plain names (``sub/dir/name``): not absolute, no '..', no hidden
    component, no drive letter. Messages quote ``shown`` (what the user typed) instead of ``value`` when given."""
    label = shorten(shown if shown is not None else value)
    problem = _text_problem(value, what, label=label)
    if problem:
        return problem
    assert isinstance(value, str)
    if value.startswith(_SEPARATORS) or os.path.isabs(value) or (len(value) > 1 and value[1] == ":"):
        return f"{what} {label} is an absolute path; give a name relative to its folder"
    parts = [p for p in value.replace("\\", "/").split("/") if p]
    if not parts:
        return f"{what} {label} names no file"
    return next((p for p in (_part_problem(part, label, what) for part in parts) if p), None)


def find_file(value: str, roots: Sequence[Root], what: str, *, folder: bool | None = False,
              allow_absolute: bool = False) -> Path:
    """The existing, readable file (``folder`` True: folder; None: either) ``value`` names inside one of ``roots``.

    ``value`` is relative to a root (absolute only when it resolves inside a root, or with ``allow_absolute``,
    the headless opt-in for a local user's own files). Raises :class:`PathRefused` when it leaves every root and
    :class:`InputError` with one message for missing and unreadable files.
    """
    problem = _text_problem(value, what, empty=False)
    if problem:
        raise PathRefused(problem)
    where = " or ".join(dict.fromkeys(r.label for r in roots)) or "the allowed folders"
    if not value.strip():
        raise InputError(f"no {what} given")
    kind = {True: "folder", False: "file", None: "file or folder"}[folder]
    given = Path(value)
    if allow_absolute:
        candidates = [(c, None) for c in ([given] if given.is_absolute() else [given, *(r.join(value) for r in roots)])]
    else:
        candidates = [(r.join(value), r) for r in roots] if not given.is_absolute() else [(given, r) for r in roots]
        candidates = [(c, r) for c, r in candidates if lexically_inside(c, r.path)]
        if not candidates:
            raise PathRefused(f"{what} {shorten(value)} is outside {where}: only what lies inside {where} can be used")
    for candidate, root in candidates:
        if not os.path.lexists(candidate):
            continue
        if root is not None and not is_inside(candidate, root.path):
            raise PathRefused(f"{what} {shorten(value)} is outside {where}: it is a symbolic link (or lies in a "
                              f"linked folder) that leads out of {root.label}")
        if _readable(candidate, folder):
            return candidate
    raise InputError(f"{what} {shorten(value)}: no readable {kind} of that name in {where}")


def lexically_inside(path: Path, root: Path) -> bool:
    """``path`` lies in ``root`` by its spelling alone ('..' collapsed, symlinks not followed)."""
    real, base = os.path.normpath(os.path.abspath(path)), os.path.normpath(os.path.abspath(root))
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)


def _readable(path: Path, folder: bool | None) -> bool:
    try:
        if path.is_dir():
            return folder is not False and os.access(path, os.R_OK | os.X_OK)
        return folder is not True and path.is_file() and os.access(path, os.R_OK)
    except (OSError, ValueError):
        return False


def check_inside(paths: Sequence[Path], roots: Sequence[Root], what: str) -> None:
    """Raise :class:`PathRefused` when any of ``paths`` (e.g. the entries of a list file or a manifest, which come
    with the workflow's data) resolves outside every root."""
    where = " or ".join(dict.fromkeys(r.label for r in roots))
    for path in paths:
        if not any(is_inside(Path(path), r.path) for r in roots):
            raise PathRefused(f"{what} names a file outside {where} ({shorten(Path(path).name)}): every file it "
                              f"lists must lie inside {where}")


def relative_label(path: Path, roots: Sequence[Root]) -> str:
    """``path`` as "<folder label>/<relative path>" for messages and UI text (never the absolute server path)."""
    for root in roots:
        try:
            rel = Path(path).resolve().relative_to(root.path.resolve())
        except (ValueError, OSError, RuntimeError):
            continue
        return f"{root.label.removeprefix('the ').removesuffix(' folder')}/{rel.as_posix()}".rstrip("/.")
    return Path(path).name
