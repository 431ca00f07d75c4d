"""Reading and writing single-file ``.safetensors`` checkpoints without unpickling or double copies.

Reading parses the safetensors header itself (so a wrong or truncated file gets a specific error)
and memory-maps the data: a tensor of the requested dtype on the CPU is a zero-copy view of the
file; a converted or moved tensor is copied and the file pages it came from are released at once,
so a load never holds two copies of the weights. Writing streams one tensor at a time into a
temporary file next to the target, then renames it (an interrupted save leaves the old file intact).
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
from torch import Tensor

from .errors import CheckpointError
from .fsutil import replace_atomic

log = logging.getLogger(__name__)

_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_NAMES = {v: k for k, v in _DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024
_PAGE = mmap.PAGESIZE


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


def read_header(path: str | os.PathLike) -> tuple[dict[str, TensorInfo], dict[str, str], int]:
    """Parse a safetensors header: ({key: TensorInfo}, metadata, byte offset of the data section).

    Raises CheckpointError naming the problem for a missing, non-safetensors or truncated file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path} is {size} bytes long: too short to be a .safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER or n + 8 > size:
            kind = _sniff_format(head)
            if kind:
                raise CheckpointError(
                    f"{path} is {kind}, not .safetensors. Weights load from safetensors only (pickles can "
                    "run code); convert the file with a trusted tool first."
                )
            raise CheckpointError(
                f"{path} is not a .safetensors file (header length field says {n} bytes, file has {size})"
                if n > _MAX_HEADER
                else f"{path} is truncated: its header needs {n + 8} bytes, the file has {size}"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not a .safetensors file: its header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is not a .safetensors file: the header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + n
    infos: dict[str, TensorInfo] = {}
    data_end = 0
    for key, entry in header.items():
        try:
            dtype = _DTYPES[entry["dtype"]]
            shape = tuple(int(s) for s in entry["shape"])
            start, end = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: malformed header entry for {key!r}: {entry!r}") from None
        numel = 1
        for s in shape:
            numel *= s
        if end - start != numel * dtype.itemsize:
            raise CheckpointError(
                f"{path}: tensor {key!r} {list(shape)} {entry['dtype']} should take {numel * dtype.itemsize} "
                f"bytes, the header gives {end - start}"
            )
        infos[key] = TensorInfo(dtype, shape, start, end)
        data_end = max(data_end, end)
    if data_start + data_end > size:
        raise CheckpointError(
            f"{path} is truncated: the header describes {data_start + data_end} bytes, the file has {size} "
            f"({data_start + data_end - size} missing). Download or copy it again."
        )
    return infos, dict(metadata), data_start


class CheckpointReader(Mapping[str, Tensor]):
    """A read-only, lazy, memory-mapped view of a .safetensors file (key -> tensor).

    ``reader[key]`` returns a zero-copy CPU tensor in the file's dtype. ``reader.load(key, dtype,
    device)`` converts or moves it and releases the file pages it was read from.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.infos, self.metadata, self._data_start = read_header(self.path)
        with open(self.path, "rb") as f:
            size = self.path.stat().st_size
            # Copy-on-write private mapping: tensors are writable views, the file is never modified.
            self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if size else None

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
