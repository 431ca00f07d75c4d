"""External captioners, registered by the local user outside workflows and chosen by name.

A workflow (a ComfyUI prompt, a saved workflow, a curation config or manifest that came with a dataset) is
untrusted: it may only *name* a captioner. What a name runs is decided here, from sources only the local
user controls:

* a JSON settings file: inside ComfyUI ``<ComfyUI user folder>/svd_lab/captioners.json`` (the nodes pass its
  path in; this package never imports ComfyUI), headless the file named by ``$SVD_LAB_CAPTIONERS``, and for
  ``svd-lab curate`` also ``--captioner-config FILE``;
* ``svd-lab curate --register-captioner NAME[:KIND]=COMMAND`` (the CLI user is local and trusted);
* Python code calling :func:`register_factory` (plugins; code is trusted by definition).

The settings file::

    {"captioners": [
        {"name": "blip", "kind": "image", "model": "/models/captioners/blip-base"},
        {"name": "vblip", "kind": "video", "argv": ["/opt/captioners/videoblip", "--fast"], "timeout": 300}
    ]}

``argv`` entries run as a program (no shell, ``shell=False``) that gets a folder of PNG frames as its last
argument and a JSON request on stdin (see :class:`~.captions.CommandCaptioner`); ``model`` entries load a
local transformers image-to-text model folder (never downloaded). Names are short identifiers; a value that
looks like a command or a path is refused with a message saying where captioners are registered.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shlex
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..jsonfile import read_json_file

log = logging.getLogger(__name__)

ENV_VAR = "SVD_LAB_CAPTIONERS"
KINDS = ("image", "video", "summary")
#: Where the nodes look inside ComfyUI, relative to ComfyUI's user folder.
USER_FILE = Path("svd_lab") / "captioners.json"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
HOW_TO_REGISTER = (
    "captioners are registered by the local user outside workflows: in <ComfyUI user folder>/svd_lab/"
    f"captioners.json, in the JSON file named by ${ENV_VAR}, or with `svd-lab curate --register-captioner "
    "NAME=COMMAND` / `--captioner-config FILE`; a workflow can only choose a registered name"
)
MAX_FILE_BYTES = 1_000_000


@dataclass(frozen=True)
class CaptionerEntry:
    """One registered captioner: exactly one of ``argv`` (a program), ``model`` (a local transformers model
    folder) or ``factory`` (Python code, :func:`register_factory`)."""

    name: str
    kind: str
    argv: tuple[str, ...] = ()
    model: str = ""
    timeout: float = 120.0
    origin: str = ""
    factory: Callable[[], Any] | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "kind": self.kind, "timeout": self.timeout, "origin": self.origin}
        if self.argv:
            data["argv"] = list(self.argv)
        if self.model:
            data["model"] = self.model
        return data

    def fingerprint(self) -> tuple[Any, ...]:
        return (self.name, self.kind, self.argv, self.model, self.timeout, id(self.factory) if self.factory else 0)


_FACTORIES: dict[str, CaptionerEntry] = {}


def register_factory(name: str, factory: Callable[[], Any], *, kind: str = "image") -> None:
    """Register a Python captioner under ``name``: ``factory()`` returns a :class:`~.captions.Captioner`."""
    _check_name_syntax(name, "a captioner name")
    _check_kind(kind, f"captioner {name!r}")
    _FACTORIES[name] = CaptionerEntry(name, kind, factory=factory, origin="Python (register_factory)")


def unregister_factory(name: str) -> None:
    _FACTORIES.pop(name, None)


def _check_kind(kind: object, where: str) -> str:
    if kind not in KINDS:
        raise ConfigError(f"{where}: kind {kind!r} is not one of {', '.join(KINDS)}")
    return str(kind)


def _check_name_syntax(name: object, where: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or name.lower() == "none":
        raise ConfigError(f"{where} must be a short name (letters, digits, '_', '-', '.'; not 'none'), "
                          f"got {name!r}")
    return name


def looks_like_program(value: str) -> bool:
    """A value that names a program, a path or a spec with an argument rather than a registered name."""
    return bool(re.search(r"[\s/\\:;|&$`<>'\"()~]", value)) or value.startswith((".", "-"))


def check_name(value: object, where: str = "captioner") -> str | None:
    """A captioner name as a workflow may give it (no registry needed): None for ''/'none'; a ConfigError for a
    non-string, a command, a path or anything else that is not a plain name."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{where} must be a captioner name (a string), got {type(value).__name__}")
    text = value.strip()
    if text.lower() in ("", "none"):
        return None
    if looks_like_program(text) or not NAME_RE.fullmatch(text):
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise ConfigError(f"{where} {shown!r} is not a captioner name: it looks like a program, a path or a spec. "
                          f"{HOW_TO_REGISTER}")
    return text


class CaptionerRegistry:
    """The captioners a run may use, by name (file / CLI entries plus the Python factories)."""

    def __init__(self, entries: Iterable[CaptionerEntry] = (), sources: Iterable[str] = ()) -> None:
        self._entries: dict[str, CaptionerEntry] = {}
        for entry in entries:
            self._entries[entry.name] = entry
        self.sources = tuple(sources)

    def entries(self) -> dict[str, CaptionerEntry]:
        return {**_FACTORIES, **self._entries}

    def names(self, kind: str | None = None) -> list[str]:
        return sorted(n for n, e in self.entries().items() if kind is None or e.kind == kind)

    def where(self) -> str:
        return ", ".join(self.sources) if self.sources else "no settings file"

    def get(self, value: object, where: str = "captioner") -> CaptionerEntry | None:
        """The entry a name chooses (None for ''/'none'); ConfigError for commands, paths and unknown names."""
        name = check_name(value, where)
        if name is None:
            return None
        entry = self.entries().get(name)
        if entry is None:
            known = self.names()
            listing = ", ".join(known) if known else "none registered"
            raise ConfigError(f"unknown {where} {name!r}; registered captioners: {listing} (read from "
                              f"{self.where()}). {HOW_TO_REGISTER}")
        return entry

    def to_dict(self) -> dict[str, Any]:
        """Plain data for worker processes (the Python factories are registered there by their own imports)."""
        return {"sources": list(self.sources), "captioners": [e.to_dict() for e in self._entries.values()]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CaptionerRegistry:
        entries = [_entry(item, f"captioners[{i}]", str(item.get("origin", "")) if isinstance(item, dict) else "")
                   for i, item in enumerate(data.get("captioners", []))]
        return cls(entries, data.get("sources", ()))

    def merged(self, other: CaptionerRegistry) -> CaptionerRegistry:
        """This registry with ``other``'s entries added (``other`` wins on a name both define)."""
        return CaptionerRegistry([*self._entries.values(), *other._entries.values()], [*self.sources, *other.sources])

    def fingerprint(self, names: Iterable[str]) -> tuple[Any, ...]:
        entries = self.entries()
        return tuple(entries[n].fingerprint() if n in entries else (n,) for n in names)


def _entry(item: object, where: str, origin: str) -> CaptionerEntry:
    if not isinstance(item, dict):
        raise ConfigError(f"{where} must be a JSON object with name, kind and argv or model, got "
                          f"{type(item).__name__}")
    unknown = set(item) - {"name", "kind", "argv", "model", "timeout", "origin"}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; known: name, kind, argv, model, timeout")
    name = _check_name_syntax(item.get("name"), f"{where}.name")
    kind = _check_kind(item.get("kind", "image"), f"{where}.kind")
    argv, model = item.get("argv"), item.get("model")
    if (argv is None) == (model is None):
        raise ConfigError(f"{where} ({name!r}) needs exactly one of 'argv' (a program and its arguments, a list) "
                          "or 'model' (a local image-to-text model folder)")
    if argv is not None and (not isinstance(argv, list) or not argv or not all(isinstance(a, str) and a
                                                                              for a in argv)):
        raise ConfigError(f"{where}.argv must be a non-empty list of non-empty strings (no shell line), got {argv!r}")
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise ConfigError(f"{where}.model must be the path of a local model folder, got {model!r}")
    if model is not None and kind != "image":
        raise ConfigError(f"{where}: a 'model' captioner is an image captioner, got kind {kind!r}")
    timeout = item.get("timeout", 120.0)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) \
            or timeout <= 0:
        raise ConfigError(f"{where}.timeout must be a finite number of seconds > 0, got {timeout!r}")
    return CaptionerEntry(name, kind, tuple(argv or ()), str(model or ""), float(timeout), origin)


def load_file(path: str | os.PathLike[str]) -> CaptionerRegistry:
    """Read a captioners settings file (see the module docstring); a missing file is an empty registry."""
    path = Path(path)
    if not path.exists():
        return CaptionerRegistry([], [f"{path} (missing)"])
    data = read_json_file(path, what="captioner settings", max_bytes=MAX_FILE_BYTES)
    if not isinstance(data, dict) or not isinstance(data.get("captioners", []), list):
        raise ConfigError(f"captioner settings {path} must be a JSON object {{\"captioners\": [...]}}")
    entries = [_entry(item, f"{path}: captioners[{i}]", str(path)) for i, item in enumerate(data.get("captioners", []))]
    return CaptionerRegistry(entries, [str(path)])


def parse_registration(text: str) -> CaptionerEntry:
    """``NAME[:KIND]=COMMAND`` (the CLI flag): COMMAND is split like a shell would (shlex) but run without one."""
    head, sep, command = text.partition("=")
    if not sep or not command.strip():
        raise ConfigError(f"--register-captioner {text!r}: write NAME[:KIND]=COMMAND, e.g. blip=/opt/blip/caption")
    name, _, kind = head.strip().partition(":")
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise ConfigError(f"--register-captioner {text!r}: cannot split the command: {exc}") from None
    item = {"name": name, "kind": kind or "image", "argv": argv}
    return _entry(item, f"--register-captioner {text!r}", "--register-captioner")


def default_registry(files: Iterable[str | os.PathLike[str]] = ()) -> CaptionerRegistry:
    """The given settings files (the nodes pass ComfyUI's user file) and ``$SVD_LAB_CAPTIONERS``, merged."""
    registry = CaptionerRegistry()
    paths = [Path(f) for f in files]
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        paths += [Path(p) for p in env.split(os.pathsep) if p]
    for path in paths:
        registry = registry.merged(load_file(path))
    return registry
