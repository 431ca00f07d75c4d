"""Explain, in specific words, why the ``safetensors`` library refused a checkpoint header.

The library is the gatekeeper (:func:`.checkpoint.read_header` trusts nothing else). Its messages do not
always say which tensor or how many bytes, so when it refuses a file this module reads the same header
bytes with Python's JSON parser and names the first problem it finds: the file, the tensor, what was
expected and what was found. Values from the file are shortened before they are quoted.
"""

from __future__ import annotations

import json
import math
from typing import Any

from ..errors import shorten

#: The largest header the library accepts (bytes).
MAX_HEADER = 100_000_000

#: Bits per element of every dtype name the safetensors format defines.
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8,
    "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64,
}
_FIELDS = ("dtype", "shape", "data_offsets")
_LIMIT = 2**64


class JSONObject(dict):
    """A parsed JSON object that remembers the keys it was given more than once."""

    def __init__(self) -> None:
        super().__init__()
        self.duplicates: list[str] = []


def _pairs(pairs: list[tuple[str, Any]]) -> JSONObject:
    obj = JSONObject()
    for key, value in pairs:
        if key in obj:
            obj.duplicates.append(key)
        obj[key] = value
    return obj


def parse_header(raw: bytes) -> Any:
    """The header as Python values (objects are :class:`JSONObject`). Raises UnicodeDecodeError,
    ValueError (json.JSONDecodeError included) or RecursionError."""
    return json.loads(raw.decode("utf-8"), object_pairs_hook=_pairs)


def kind(value: object) -> str:
    """A JSON-ish name of a value's type, for 'found ...' phrases."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return f"a number ({shorten(value, 30)})"
    if isinstance(value, str):
        return f"a string ({shorten(value, 40)})"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _LIMIT


def _entry_problem(key: str, entry: object) -> tuple[str, int, int] | str:
    """(dtype, start, end) of a well-formed entry, else the problem (without the file name)."""
    where = f"tensor {shorten(key)}"
    if not isinstance(entry, dict):
        return (f"{where}: malformed header entry: expected an object with dtype, shape and data_offsets, "
                f"found {kind(entry)}")
    if isinstance(entry, JSONObject) and entry.duplicates:
        return f"{where}: malformed header entry: field {shorten(entry.duplicates[0])} is given twice"
    missing = [f for f in _FIELDS if f not in entry]
    if missing:
        return f"{where}: malformed header entry: it has no {missing[0]!r} field"
    dtype, shape, offsets = (entry[f] for f in _FIELDS)
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        return f"{where}: dtype {shorten(dtype, 40)} is not a safetensors dtype (expected F32, F16, BF16, F8_E4M3, ...)"
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        return f"{where}: shape {shorten(shape)} is not a list of non-negative integers"
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets):
        return f"{where}: data_offsets {shorten(offsets)} is not a pair of non-negative byte offsets [start, end]"
    start, end = offsets
    if end < start:
        return f"{where}: data_offsets [{start}, {end}] end before they start"
    bits = math.prod(shape) * DTYPE_BITS[dtype]
    if bits >= 8 * _LIMIT:
        return f"{where}: shape {shorten(shape)} {dtype} is too large to be stored in a file"
    if bits % 8:
        return f"{where} {shorten(shape)} {dtype}: the elements do not fill whole bytes"
    if end - start != bits // 8:
        return f"{where} {shorten(shape)} {dtype} should take {bits // 8} bytes, the header gives {end - start}"
    return dtype, start, end


def _layout_problem(name: str, spans: list[tuple[int, int, str]], data_start: int, size: int) -> str | None:
    """Overlaps, gaps, a truncated file or bytes after the last tensor."""
    pos, previous = 0, ""
    for start, end, key in sorted(spans):
        if start < pos:
            return (f"{name}: tensors {shorten(previous)} and {shorten(key)} overlap: the first ends at data byte "
                    f"{pos}, the second starts at {start} (byte ranges must not overlap)")
        if start > pos:
            return (f"{name}: {start - pos} unused bytes before tensor {shorten(key)} (data bytes {pos} to {start}); "
                    "a safetensors file stores its tensors back to back")
        pos, previous = end, key
    data = size - data_start
    if pos > data:
        missing = data_start + pos - size
        return (f"{name} is truncated: the header describes {data_start + pos} bytes, the file has {size} "
                f"({missing} missing). Download or copy it again.")
    if pos < data:
        return (f"{name} has {data - pos} bytes after its last tensor that the header does not describe "
                "(a damaged or appended file)")
    return None


def diagnose(name: str, raw: bytes, size: int, library_detail: str = "") -> str | None:
    """The first specific problem of a header the library refused, or None when none is found here.

    `name` is the file's name, `raw` the header bytes (after the 8-byte length), `size` the file size.
    """
    if "recursion limit" in library_detail:
        return f"{name} is not a .safetensors file: its header JSON is nested too deeply"
    try:
        header = parse_header(raw)
    except UnicodeDecodeError as exc:
        return f"{name} is not a .safetensors file: its header is not UTF-8 text (invalid byte at {exc.start})"
    except RecursionError:
        return f"{name} is not a .safetensors file: its header JSON is nested too deeply"
    except json.JSONDecodeError as exc:
        return f"{name} is not a .safetensors file: its header is not JSON ({exc.msg} at character {exc.pos})"
    except ValueError as exc:  # e.g. an integer with thousands of digits
        return f"{name} is not a .safetensors file: its header cannot be read ({shorten(str(exc), 120)})"
    if not isinstance(header, dict):
        return f"{name} is not a .safetensors file: the header is not a JSON object (found {kind(header)})"
    if isinstance(header, JSONObject) and header.duplicates:
        return f"{name}: the header names tensor {shorten(header.duplicates[0])} more than once"
    metadata = header.get("__metadata__")
    if metadata is not None:
        if not isinstance(metadata, dict):
            return f"{name}: __metadata__ is {kind(metadata)}, expected an object of text values"
        for key, value in metadata.items():
            if not isinstance(value, str):
                return f"{name}: __metadata__[{shorten(key, 40)}] is {kind(value)}, expected text"
    spans = []
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        checked = _entry_problem(key, entry)
        if isinstance(checked, str):
            return f"{name}: {checked}"
        spans.append((checked[1], checked[2], key))
    return _layout_problem(name, spans, 8 + len(raw), size)
