"""Device and memory: the compute device, ComfyUI's memory manager when present, and the pack's own
"offload to the CPU between nodes" option.

:func:`on_device` is how a node gets the networks it uses onto the compute device. Inside ComfyUI it hands
them to ComfyUI's manager (:mod:`.managed`: one ModelPatcher per network, ``load_models_gpu`` with the parts the
node names). Headless the package places its own weights (svd_model.memory plans); with "cpu between nodes"
the whole model visits the compute device while a node works, as before.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterable, Iterator

import torch

from ...svd_model.memory import MemoryPlan, apply_plan, plan_for
from ...svd_model.weights.loader import SVDBundle
from . import managed
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


def load_device(compute: torch.device, offload_between_nodes: bool = False) -> torch.device:
    """Where a loader puts freshly loaded weights: inside ComfyUI the UNet's offload device (ComfyUI moves each
    network to `compute` when a node needs it); headless `compute`, or the CPU when offloading between nodes."""
    if managed.active():
        return _mm().unet_offload_device()
    return cpu_device() if offload_between_nodes else compute


def manage(bundle: SVDBundle) -> SVDBundle:
    """Inside ComfyUI: hand the bundle's networks to ComfyUI's memory manager now (one ModelPatcher each, on their
    offload devices); :func:`on_device` would do it at first use. Headless: nothing. Returns `bundle`."""
    if managed.active():
        managed.manage(bundle)
    return bundle


def place(bundle: SVDBundle, plan: MemoryPlan | str | None, compute: torch.device) -> SVDBundle:
    """Give a freshly loaded bundle its memory plan (svd_model.memory). Headless: ``apply_plan`` (the package puts
    its weights on `compute` or keeps them in CPU memory as the plan says). Inside ComfyUI: the plan is recorded,
    a streamed UNet is attached for streaming, and every network goes to ComfyUI on its offload device
    (:func:`manage`; ComfyUI moves each to `compute` when a node needs it). Returns `bundle`."""
    if not managed.active():
        return apply_plan(bundle, plan, compute)
    plan = plan_for(plan)
    if plan.stream_unet and compute.type != "cpu":
        apply_plan(bundle, plan, compute)  # the UNet stays in CPU memory with its blocks streamed
    else:
        bundle.memory, bundle.compute_device = plan, compute
    return manage(bundle)


def set_offload(bundle: SVDBundle, target: torch.device) -> None:
    """Keep `bundle` on the CPU between nodes; :func:`on_device` moves it to `target` while it works. Inside
    ComfyUI: ComfyUI unloads every network of the bundle after each node that used it."""
    _offloaded[bundle.model] = target
    if managed.active():
        managed.offload_between_nodes(bundle)


def inherit_offload(source: SVDBundle, copy: SVDBundle) -> None:
    """Give a derived bundle (e.g. a LoRA-patched copy) the offload setting of the one it came from."""
    target = _offloaded.get(source.model)
    if target is not None:
        _offloaded[copy.model] = target


@contextlib.contextmanager
def on_device(bundle: SVDBundle, parts: Iterable[str] = managed.PARTS, *,
              memory_required: int = 0) -> Iterator[SVDBundle]:
    """The networks a node uses, on the compute device for the block.

    Inside ComfyUI: ComfyUI loads the patchers of `parts` (``bridge.UNET``, ``bridge.FIRST_STAGE``,
    ``bridge.CONDITIONING`` or ``bridge.PARTS``; `memory_required`: working memory beyond the weights, bytes),
    evicting or partially loading as it needs. Headless: for a model loaded with "cpu between nodes", free
    ComfyUI memory, move the whole model to the compute device, and back to the CPU after; otherwise nothing.
    """
    if managed.active():
        with managed.loaded(bundle, parts, memory_required):
            yield bundle
        return
    managed.check_parts(parts)
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


@contextlib.contextmanager
def network_on_device(module: torch.nn.Module, compute: torch.device) -> Iterator[torch.nn.Module]:
    """A network no bundle holds (a text tower) for the block: inside ComfyUI loaded on `compute` by ComfyUI's
    manager as a model of its own (it stays until ComfyUI needs the room); headless nothing, the package moves
    it there and back itself (svd_model.memory.moved)."""
    if managed.active():
        with managed.loaded_network(module, compute):
            yield module
        return
    yield module


@contextlib.contextmanager
def unmanaged(bundle: SVDBundle) -> Iterator[SVDBundle]:
    """For a training run: inside ComfyUI the bundle's networks leave ComfyUI's management for the block (unloaded,
    a LoRA carried as patches merged in) and return to it after, also on error; headless nothing happens."""
    if not managed.active():
        yield bundle
        return
    with managed.taken_out(bundle):
        yield bundle


def resting_device(bundle: SVDBundle) -> torch.device:
    """Where the bundle's UNet weights live between nodes: inside ComfyUI its offload device, headless the
    bundle's device (a UNet trained from it is placed there)."""
    if managed.active():
        return managed.manage(bundle).patchers["unet"].offload_device
    return bundle.device


def unet_state(bundle: SVDBundle) -> dict[str, torch.Tensor]:
    """The UNet's state dict as the checkpoint holds it (inside ComfyUI without the weight patches ComfyUI may have
    applied to the shared weights)."""
    if managed.active():
        return managed.unpatched_unet_state(bundle)
    return bundle.model.unet.state_dict()


def comfy_managed() -> bool:
    """Whether ComfyUI manages the pack's models (inside ComfyUI): LoRAs are then ComfyUI weight patches
    (:func:`.managed.with_lora`) instead of merged copies (svd_model.lora.apply_lora)."""
    return managed.active()


def release(bundle: SVDBundle, parts: Iterable[str] = managed.PARTS) -> int:
    """Inside ComfyUI: unload the bundle's `parts` from the device now (returns how many were loaded); headless 0."""
    return managed.release(bundle, parts) if managed.active() else 0
