"""Reading and writing single-file ``.safetensors`` checkpoints without unpickling or double copies.

Reading validates the file with the ``safetensors`` library (header length, UTF-8 JSON, dtypes, shapes,
byte ranges that neither overlap nor leave gaps and cover the file exactly); a file it refuses is
explained by :mod:`.diagnose` in specific words (file, tensor, expected, found). The data is
memory-mapped: a tensor of the requested dtype on the CPU is a zero-copy view of the file; a converted
or moved tensor is copied and the file pages it came from are released at once, so a load never holds
two copies of the weights. Writing streams one tensor at a time into a temporary file next to the
target, then renames it (an interrupted save leaves the old file intact).
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from ..errors import CheckpointError, shorten
from ..fsutil import replace_atomic, stat_regular
from .diagnose import MAX_HEADER, diagnose, parse_header

log = logging.getLogger(__name__)

_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_NAMES = {v: k for k, v in _DTYPES.items()}
_PAGE = mmap.PAGESIZE


def dtype_name(dtype: torch.dtype) -> str:
    """The safetensors name of a torch dtype (F32, BF16, F8_E4M3, ...), or torch's own name."""
    return _NAMES.get(dtype, str(dtype).removeprefix("torch."))


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives in the file: dtype, shape and byte range relative to the data start."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    end: int


def _sniff_format(head: bytes) -> str | None:
    """Name a known non-safetensors format from the first bytes, else None."""
    if head[:2] == b"PK":
        return "a zip archive (a PyTorch .ckpt/.pt/.pth pickle checkpoint?)"
    if head[:1] == b"\x80":
        return "a Python pickle (a .ckpt/.pt/.bin checkpoint?)"
    if head[:4] == b"GGUF":
        return "a GGUF file"
    if head[:8] == b"\x89HDF\r\n\x1a\n":
        return "an HDF5 file"
    return None


def _stat_file(path: Path) -> int:
    """The size of a regular file; a CheckpointError for a missing path, a folder or a device/FIFO."""
    return stat_regular(path, "checkpoint", CheckpointError, shown=path.name).st_size


def _read_prefix(path: Path, size: int) -> tuple[int, bytes]:
    """(header length, header bytes) after the checks that need no JSON: size, length field, known formats."""
    if size == 0:
        raise CheckpointError(f"{path.name} is empty (0 bytes): not a .safetensors file")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path.name} is {size} bytes long: too short to be a .safetensors file")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER or n + 8 > size:
                kind = _sniff_format(head)
                if kind:
                    raise CheckpointError(
                        f"{path.name} is {kind}, not .safetensors. Weights load from safetensors only (pickles "
                        "can run code); convert the file with a trusted tool first."
                    )
                raise CheckpointError(
                    f"{path.name} is not a .safetensors file (header length field says {n} bytes, file has {size})"
                    if n > MAX_HEADER
                    else f"{path.name} is truncated: its header needs {n + 8} bytes, the file has {size}"
                )
            raw = f.read(n)
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path.name} cannot be read ({exc.strerror or exc})") from None
    if len(raw) < n:
        raise CheckpointError(f"{path.name} changed while being read (its header is shorter than {n} bytes)")
    return n, raw


def _library_check(path: Path, raw: bytes, size: int) -> tuple[dict[str, tuple[str, tuple[int, ...]]], dict[str, str]]:
    """Validate with the safetensors library: ({key: (dtype name, shape)}, metadata), or a specific error."""
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            entries = {}
            for key in f.keys():
                piece = f.get_slice(key)
                entries[key] = (str(piece.get_dtype()), tuple(int(d) for d in piece.get_shape()))
    except SafetensorError as exc:
        detail = str(exc).removeprefix("Error while deserializing header: ")
        raise CheckpointError(diagnose(path.name, raw, size, detail) or f"{path.name} is not a valid .safetensors "
                              f"file: {shorten(detail, 300)}") from None
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path.name} cannot be read ({exc.strerror or exc})") from None
    return entries, dict(metadata)


def read_header(path: str | os.PathLike) -> tuple[dict[str, TensorInfo], dict[str, str], int]:
    """Validate a safetensors file and read its table: ({key: TensorInfo}, metadata, byte offset of the data).

    Raises CheckpointError naming the file and the problem for anything but a well-formed safetensors file
    whose dtypes this pack can read (F8_E4M3 and F8_E5M2 included: they are upcast when loaded).
    """
    path = Path(path)
    size = _stat_file(path)
    n, raw = _read_prefix(path, size)
    entries, metadata = _library_check(path, raw, size)
    # The library has validated the layout; read the offsets from the same (now known-good) JSON.
    try:
        table = parse_header(raw)
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path.name}: its header cannot be read ({shorten(str(exc), 120)})") from None
    if table.duplicates:
        raise CheckpointError(
            f"{path.name}: the header names tensor {shorten(table.duplicates[0])} more than once (a damaged or "
            "hand-edited file)"
        )
    table.pop("__metadata__", None)
    if set(table) != set(entries):
        raise CheckpointError(f"{path.name}: the safetensors library and the JSON header disagree on the tensor names")
    infos: dict[str, TensorInfo] = {}
    for key in table:  # the file's order
        name, shape = entries[key]
        dtype = _DTYPES.get(name)
        if dtype is None:
            raise CheckpointError(
                f"{path.name}: tensor {shorten(key)} has dtype {name}: dtype {name} is not supported yet "
                f"(supported: {', '.join(_DTYPES)})"
            )
        start, end = (int(o) for o in table[key]["data_offsets"])
        infos[key] = TensorInfo(dtype, shape, start, end)
    return infos, metadata, 8 + n


class CheckpointReader(Mapping[str, Tensor]):
    """A read-only, lazy, memory-mapped view of a .safetensors file (key -> tensor).

    ``reader[key]`` returns a zero-copy CPU tensor in the file's dtype. ``reader.load(key, dtype,
    device)`` converts or moves it and releases the file pages it was read from.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.infos, self.metadata, self._data_start = read_header(self.path)
        needed = self._data_start + max((i.end for i in self.infos.values()), default=0)
        try:
            with open(self.path, "rb") as f:
                # Copy-on-write private mapping: tensors are writable views, the file is never modified.
                self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {self.path.name} cannot be memory-mapped ({exc})") from None
        if len(self._mmap) < needed:
            raise CheckpointError(f"{self.path.name} changed while being read: it is shorter than its header says")

    def __getitem__(self, key: str) -> Tensor:
        info = self.infos[key]
        if info.end == info.start:
            return torch.empty(info.shape, dtype=info.dtype)
        count = (info.end - info.start) // info.dtype.itemsize
        flat = torch.frombuffer(self._mmap, dtype=info.dtype, count=count, offset=self._data_start + info.start)
        return flat.view(info.shape)

    def __iter__(self) -> Iterator[str]:
        return iter(self.infos)

    def __len__(self) -> int:
        return len(self.infos)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: v.shape for k, v in self.infos.items()}

    def load(self, key: str, dtype: torch.dtype | None = None, device: torch.device | str = "cpu") -> Tensor:
        """The tensor as `dtype` on `device`; a copy is made only when dtype or device differ."""
        view = self[key]
        dtype = dtype or view.dtype
        device = torch.device(device)
        if dtype == view.dtype and device.type == "cpu":
            return view
        out = view.to(device=device, dtype=dtype, copy=True)
        self.release(key)
        return out

    def release(self, key: str) -> None:
        """Drop the file pages behind `key` from this process's resident memory (they stay on disk)."""
        info = self.infos[key]
        begin = self._data_start + info.start
        end = self._data_start + info.end
        first = -(-begin // _PAGE) * _PAGE  # round up: never drop a page shared with a neighbour
        last = end // _PAGE * _PAGE
        if self._mmap is not None and last > first and hasattr(self._mmap, "madvise"):
            self._mmap.madvise(mmap.MADV_DONTNEED, first, last - first)


def save_checkpoint(
    path: str | os.PathLike, state_dict: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None
) -> Path:
    """Write `state_dict` as .safetensors, streaming tensor by tensor, atomically (temp file + rename).

    Tensors that share memory are written once each under every key (safetensors has no aliasing).
    """
    path = Path(path)
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for key, t in state_dict.items():
        if t.dtype not in _NAMES:
            raise CheckpointError(f"cannot save {key!r}: dtype {t.dtype} has no safetensors name")
        nbytes = t.numel() * t.element_size()
        header[key] = {"dtype": _NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            for t in state_dict.values():
                if t.numel():
                    data = t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
                    f.write(memoryview(data.numpy()))

    replace_atomic(path, write)
    log.info("saved %d tensors (%.1f MB) to %s", len(state_dict), (offset + len(raw) + 8) / 1e6, path)
    return path
