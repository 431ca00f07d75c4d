"""Device and memory: the compute device, ComfyUI's memory manager when present, and the pack's own
"offload to the CPU between nodes" option."""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator

import torch

from ...svd_model.weights.loader import SVDBundle
from .comfy import _mm

#: Models loaded with offload "cpu between nodes": model -> compute device.
_offloaded: weakref.WeakKeyDictionary[torch.nn.Module, torch.device] = weakref.WeakKeyDictionary()


def device() -> torch.device:
    mm = _mm()
    if mm is not None:
        return mm.get_torch_device()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_device() -> torch.device:
    return torch.device("cpu")


def free_memory(num_bytes: int, target: torch.device) -> None:
    """Ask ComfyUI to evict its own models until `num_bytes` fit on `target` (no-op headless)."""
    mm = _mm()
    if mm is not None:
        mm.free_memory(num_bytes, target)
        mm.soft_empty_cache()


def soft_empty_cache() -> None:
    mm = _mm()
    if mm is not None:
        mm.soft_empty_cache()
    elif torch.cuda.is_available():
        torch.cuda.empty_cache()


def model_bytes(bundle: SVDBundle) -> int:
    return sum(t.numel() * t.element_size() for t in (*bundle.model.parameters(), *bundle.model.buffers()))


def set_offload(bundle: SVDBundle, target: torch.device) -> None:
    """Keep `bundle` on the CPU between nodes; :func:`on_device` moves it to `target` while it works."""
    _offloaded[bundle.model] = target


def inherit_offload(source: SVDBundle, copy: SVDBundle) -> None:
    """Give a derived bundle (e.g. a LoRA-patched copy) the offload setting of the one it came from."""
    target = _offloaded.get(source.model)
    if target is not None:
        _offloaded[copy.model] = target


@contextlib.contextmanager
def on_device(bundle: SVDBundle) -> Iterator[SVDBundle]:
    """For an offloaded model: free ComfyUI memory, move to the compute device, and back to the CPU after."""
    target = _offloaded.get(bundle.model)
    if target is None or target.type == "cpu":
        yield bundle
        return
    free_memory(model_bytes(bundle), target)
    bundle.model.to(target)
    try:
        yield bundle
    finally:
        bundle.model.to("cpu")
        soft_empty_cache()
