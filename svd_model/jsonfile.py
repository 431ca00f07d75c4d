"""Reading user-supplied JSON (and TOML) files safely: one clear ``ConfigError`` for every way a file can be bad.

    data = read_json_file("workflow.json", what="workflow")        # -> parsed JSON
    text = read_text_file("run.toml", what="training config")      # -> decoded text

What is checked, in this order, each with its own message naming the file:
- the path exists, is not a directory, and is a regular file (a FIFO, socket or device is refused after a
  ``stat``, so opening it never blocks);
- its size is at most ``max_bytes`` (64 MiB by default);
- its bytes decode: a UTF-8 BOM is dropped; UTF-16/UTF-32 with a BOM, and BOM-less UTF-16 (detected from the
  zero bytes of the first characters, as RFC 4627 describes), are decoded; anything else must be UTF-8;
- JSON nesting is at most ``max_depth`` levels (64), checked by a bracket scan before parsing, so the parser
  never recurses deeply; numbers the parser refuses (more than 4300 digits) are reported, not raised.

``shorten(value)`` is the one way messages show a user value: at most ~80 characters, with the full length.
"""

from __future__ import annotations

import codecs
import json
import os
import re
import stat
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .fsutil import stat_regular

MAX_BYTES = 64 * 2**20
MAX_DEPTH = 64

# A JSON string (skipped whole) or a bracket; the unrolled-loop form keeps the regex linear in the input.
_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.S)
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"), (codecs.BOM_UTF8, "utf-8"),
         (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))

def _regular_file(path: Path, what: str, max_bytes: int) -> None:
    info = stat_regular(path, what, ConfigError)
    if info.st_size > max_bytes:
        raise ConfigError(f"{what} {path} is {info.st_size / 2**20:.1f} MiB; the limit is {max_bytes / 2**20:g} MiB")


def read_bytes(path: str | os.PathLike, *, what: str = "file", max_bytes: int = MAX_BYTES) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``; ConfigError naming the file otherwise."""
    path = Path(path)
    _regular_file(path, what, max_bytes)
    try:
        # O_NONBLOCK: should the path have been swapped for a FIFO since the stat, opening still returns at once.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise ConfigError(f"{what} {path} is not a regular file")
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise ConfigError(f"{what} {path} is larger than the limit of {max_bytes / 2**20:g} MiB")
    return data


def _guess_encoding(data: bytes) -> tuple[str, int]:
    """(codec, BOM length) from a BOM, else from the zero bytes of the first two characters, else UTF-8."""
    for bom, codec in _BOMS:
        if data.startswith(bom):
            return codec, len(bom)
    head = data[:4]
    if len(head) >= 4:  # JSON text starts with two ASCII characters, so zero bytes give the encoding away
        if head[0] == 0 and head[1] == 0 and head[2] == 0 and head[3] != 0:
            return "utf-32-be", 0
        if head[0] != 0 and head[1] == 0 and head[2] == 0 and head[3] == 0:
            return "utf-32-le", 0
    if len(head) >= 2:
        if head[0] == 0 and head[1] != 0:
            return "utf-16-be", 0
        if head[0] != 0 and head[1] == 0:
            return "utf-16-le", 0
    return "utf-8", 0


def decode_text(data: bytes, name: str = "the file") -> str:
    """Text of ``data``: UTF-8 (BOM dropped), or UTF-16/UTF-32 recognised by BOM or zero bytes; else ConfigError."""
    codec, skip = _guess_encoding(data)
    try:
        return data[skip:].decode(codec)
    except UnicodeDecodeError as exc:
        if codec == "utf-8":
            raise ConfigError(f"{name} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start} "
                              "cannot be decoded); save it as UTF-8") from None
        label = codec.upper().replace("-LE", " little-endian").replace("-BE", " big-endian")
        raise ConfigError(f"{name} looks like {label} text but is not valid {label} (at byte {exc.start + skip}); "
                          "save it as UTF-8") from None


def _line_col(text: str, pos: int) -> tuple[int, int]:
    line = text.count("\n", 0, pos) + 1
    return line, pos - (text.rfind("\n", 0, pos) + 1) + 1


def check_depth(text: str, name: str = "the file", max_depth: int = MAX_DEPTH) -> None:
    """ConfigError when JSON ``text`` nests objects/arrays deeper than ``max_depth`` (brackets in strings ignored)."""
    if text.count("[") + text.count("{") <= max_depth:
        return
    depth = 0
    for match in _TOKENS.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > max_depth:
                line, col = _line_col(text, match.start())
                raise ConfigError(f"{name} nests objects/arrays more than {max_depth} levels deep "
                                  f"(at line {line} column {col})")
        elif token in "]}":
            depth -= 1


def check_value_depth(value: Any, name: str = "the value", max_depth: int = MAX_DEPTH) -> None:
    """ConfigError when an already parsed value (dicts and lists) nests deeper than ``max_depth``; no recursion."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list, tuple)):
            if depth >= max_depth:
                raise ConfigError(f"{name} nests objects/arrays more than {max_depth} levels deep")
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)


def parse_json(text: str, name: str = "the file", max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads(text)`` with the depth limit; every parse failure becomes one ConfigError naming ``name``."""
    check_depth(text, name, max_depth)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{name} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:  # not reached after check_depth; kept so no RecursionError can ever escape
        raise ConfigError(f"{name} nests objects/arrays too deeply to read") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        detail = str(exc)
        raise ConfigError(f"{name} is not usable JSON: {detail[:160]}{'…' if len(detail) > 160 else ''}") from None


def read_text_file(path: str | os.PathLike, *, what: str = "file", max_bytes: int = MAX_BYTES) -> str:
    """The decoded text of a user file (see the module docstring); ConfigError naming the file otherwise."""
    return decode_text(read_bytes(path, what=what, max_bytes=max_bytes), f"{what} {path}")


def read_json_file(path: str | os.PathLike, *, what: str = "file", max_bytes: int = MAX_BYTES,
                   max_depth: int = MAX_DEPTH) -> Any:
    """The parsed JSON of a user file (see the module docstring); ConfigError naming the file otherwise."""
    return parse_json(read_text_file(path, what=what, max_bytes=max_bytes), f"{what} {path}", max_depth)
