"""Inside ComfyUI the pack's networks are ComfyUI models: each network of a bundle is wrapped in its own
``comfy.model_patcher.ModelPatcher`` and loaded with ``comfy.model_management.load_models_gpu`` before a node
uses it, so ComfyUI's memory manager evicts other models first, loads partially when VRAM is short, offloads
after use, and ``/free {"unload_models": true}`` releases them. LoRAs are the UNet patcher's weight patches.

ComfyUI API used, all of it long-stable (the same in ComfyUI 0.33.0 and in a late-2024 0.3 source, so in 0.8 too):
``model_patcher.ModelPatcher(model, load_device, offload_device)``, ``.clone()``, ``.add_patches(patches,
strength)``, ``.patch_model(device)``, ``.unpatch_model(device)``, ``.patches``, ``.backup``, ``.model``;
``model_management.get_torch_device``, ``unet_offload_device``, ``vae_offload_device``,
``text_encoder_offload_device``, ``load_models_gpu``, ``free_memory``, ``minimum_inference_memory``,
``soft_empty_cache``, ``current_loaded_models`` (``LoadedModel.model``, ``.model_unload()``);
``lora.load_lora(tensors, to_load)``. The classic ``ModelPatcher`` is used on purpose, not ``CoreModelPatcher``
(ComfyUI >= 0.15 makes that the Dynamic-VRAM patcher, which needs ComfyUI's own ``comfy.ops`` layers): the
pack's layers follow the classic low-VRAM protocol (``comfy_cast_weights``, ``weight_function``,
``bias_function``; svd_model/nn/cast.py), and ComfyUI evicts classic models for dynamic ones like its own.

Parts (``PARTS``): ``unet``, ``first_stage`` (decode / encode frames), ``cond_vae`` and ``image_encoder`` (the
conditioning). Every patcher loads on ComfyUI's torch device (the pack computes all networks on one device,
``bundle.compute_device``); it offloads to ComfyUI's offload device of its kind (UNet, VAE, and for the image
encoder the text-encoder offload device, as ComfyUI's own CLIP vision model). A network starts unloaded on its
offload device. The patchers are held by the bundle (a strong reference in ``bundle._comfy_managed``); ComfyUI's
``LoadedModel`` keeps only a weak reference, so when ComfyUI drops the cached bundle its patchers and weights
go. A module-wide table maps a network to its patcher weakly, so bundles sharing a network (a LoRA-patched
bundle, a trained bundle sharing the VAEs) share its patcher.

Memory plans (svd_model.memory) inside ComfyUI: ``offload_encoders`` becomes "unload the image encoder and the
conditioning VAE from the device after each node that used them" (done through ComfyUI, so its accounting
stays right; svd_model.memory.on_compute then moves nothing). ``stream_unet`` (the UNet stays in CPU memory
and copies blocks to the device itself): the UNet patcher loads and offloads on the CPU, so ComfyUI lists it,
applies LoRA patches to the CPU weights and never moves it; before the UNet runs, ComfyUI is asked to free the
streaming working set (the largest block twice: in use and prefetched) plus its minimum inference memory on the
compute device (streaming must read the parameters at use: ComfyUI's patching replaces them). The loader's
"cpu between nodes" unloads every part after each node (ComfyUI would otherwise keep them until it needs room).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import weakref
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ...svd_model.errors import CheckpointError, ConfigError
from ...svd_model.lora import LoraReport
from ...svd_model.memory import move_module
from ...svd_model.weights.loader import SVDBundle
from .comfy import _comfy_lora, _mm, _model_patcher, in_comfyui

log = logging.getLogger(__name__)

PARTS = ("unet", "first_stage", "cond_vae", "image_encoder")
UNET = ("unet",)
FIRST_STAGE = ("first_stage",)
CONDITIONING = ("image_encoder", "cond_vae")
_ATTR = "_comfy_managed"

#: network -> weakref to its patcher (weak both ways: this table keeps nothing alive).
_patchers: weakref.WeakKeyDictionary[Any, weakref.ReferenceType] = weakref.WeakKeyDictionary()


@dataclass
class Managed:
    """The patchers of one bundle's networks (strong references), and what is unloaded after each use."""

    patchers: dict[str, Any]
    offload_after: set[str] = field(default_factory=set)
    streamed: bool = False  # the UNet streams its blocks itself (svd_model.memory stream_unet)
    taken: bool = False  # out of ComfyUI's management (a training run)


def active() -> bool:
    """Inside ComfyUI, with its memory manager and ModelPatcher importable."""
    return in_comfyui() and _mm() is not None and _model_patcher() is not None


def check_parts(parts: Iterable[str]) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(parts))
    unknown = [p for p in chosen if p not in PARTS]
    if unknown or not chosen:
        raise ConfigError(f"unknown model part(s) {unknown or '(none)'}; choose from {', '.join(PARTS)}")
    return chosen


def _offload_device(mm: Any, part: str) -> Any:
    if part == "unet":
        return mm.unet_offload_device()
    if part == "image_encoder":
        return mm.text_encoder_offload_device()
    return mm.vae_offload_device()


def _patcher_for(module: Any, load: Any, offload: Any) -> Any:
    """The patcher of the network `module` for torch devices `load` / `offload`: the one other bundles already
    share, or a new one (the network first moved to `offload`)."""
    ref = _patchers.get(module)
    patcher = ref() if ref is not None else None
    if patcher is not None and patcher.load_device == load and patcher.offload_device == offload:
        return patcher
    first = next(module.parameters(), None)
    if first is not None and first.device != offload:  # a network starts unloaded on its offload device
        log.debug("moving %s to its offload device %s before handing it to ComfyUI", type(module).__name__, offload)
        move_module(module, offload)
    patcher = _model_patcher().ModelPatcher(module, load_device=load, offload_device=offload)
    _patchers[module] = weakref.ref(patcher)
    return patcher


def manage(bundle: SVDBundle) -> Managed:
    """The bundle's patchers, created the first time (inside ComfyUI only; see the module doc)."""
    holder = bundle.__dict__.get(_ATTR)
    if holder is not None:
        return holder
    mm = _mm()
    compute = bundle.compute_device or mm.get_torch_device()
    plan = bundle.memory
    streamed = plan.stream_unet and compute.type != "cpu"
    patchers = {}
    for part in PARTS:
        if part == "unet" and streamed:  # in CPU memory, where svd_model.memory.apply_plan keeps it
            load = offload = next(bundle.model.unet.parameters()).device
        else:
            load, offload = compute, _offload_device(mm, part)
        patchers[part] = _patcher_for(getattr(bundle.model, part), load, offload)
    holder = Managed(patchers, set(CONDITIONING) if plan.offload_encoders else set(), streamed)
    if plan.offload_encoders:  # ComfyUI offloads them now (above); on_compute must not move them behind its back
        bundle.memory = dataclasses.replace(plan, offload_encoders=False)
    bundle.compute_device = compute
    bundle.__dict__[_ATTR] = holder
    return holder


@contextlib.contextmanager
def loaded_network(module: Any, compute: Any) -> Iterator[Any]:
    """A network outside any bundle (a text tower) as a ComfyUI model for the block: its own ModelPatcher (held by
    the module, so it lives as long as the network), loaded with load_models_gpu on `compute`, offloaded to the
    text-encoder offload device when ComfyUI needs the room."""
    mm = _mm()
    patcher = _patcher_for(module, compute, mm.text_encoder_offload_device())
    module.__dict__[_ATTR] = patcher
    mm.load_models_gpu([patcher])
    yield module


def offload_between_nodes(bundle: SVDBundle) -> None:
    """The loader's "cpu between nodes": every part leaves the device after each node that used it."""
    manage(bundle).offload_after.update(PARTS)


def _stream_working_set(unet: Any) -> int:
    """Device bytes a streamed UNet needs besides activations: the largest block twice (in use + prefetched)."""
    blocks = [*unet.input_blocks, unet.middle_block, *unet.output_blocks]
    sizes = [sum(t.numel() * t.element_size() for t in (*b.parameters(), *b.buffers())) for b in blocks]
    return 2 * max(sizes, default=0)


@contextlib.contextmanager
def loaded(bundle: SVDBundle, parts: Iterable[str], memory_required: int = 0) -> Iterator[SVDBundle]:
    """ComfyUI loads the patchers of `parts` (evicting or partially loading as it sees fit) for the block."""
    chosen = check_parts(parts)
    holder = manage(bundle)
    if holder.taken:  # a training run owns the networks
        yield bundle
        return
    mm = _mm()
    if holder.streamed and "unet" in chosen:  # ComfyUI frees room for the blocks in flight and the activations
        needed = _stream_working_set(bundle.model.unet) + mm.minimum_inference_memory() + memory_required
        mm.free_memory(needed, bundle.compute_device)
    mm.load_models_gpu([holder.patchers[p] for p in chosen], memory_required=memory_required)
    try:
        yield bundle
    finally:
        after = [p for p in chosen if p in holder.offload_after]
        if after:
            release(bundle, after)


def release(bundle: SVDBundle, parts: Iterable[str] = PARTS) -> int:
    """Unload `parts` of `bundle` from ComfyUI (whichever patcher of those networks it holds, LoRA clones
    included): weight patches removed, weights back on the offload device. Returns how many were unloaded."""
    mm = _mm()
    modules = {id(getattr(bundle.model, p)) for p in check_parts(parts)}
    unloaded = 0
    for i in range(len(mm.current_loaded_models) - 1, -1, -1):
        entry = mm.current_loaded_models[i]
        patcher = entry.model
        if patcher is not None and id(patcher.model) in modules:
            entry.model_unload()
            mm.current_loaded_models.pop(i)
            unloaded += 1
    if unloaded:
        mm.soft_empty_cache()
    return unloaded


# ------------------------------------------------------------------------------------------------- LoRA


def comfy_patches(state: Mapping[str, Any], report: LoraReport) -> list[dict]:
    """ComfyUI weight patches for the entries `report` resolved (UNet state-dict key -> patch), made by
    ComfyUI's own ``comfy.lora.load_lora`` from the file's tensors under its standard names (``<key>.lora_up
    .weight``, ``.lora_down.weight``, ``.alpha``, ``.diff``, ``.set_weight``). One dict per round, so two
    entries on one weight (a LoRA pair and a diff) both apply, in file order, as the pack's apply_lora does."""
    rounds: list[tuple[dict[str, Any], dict[str, str]]] = []
    seen: dict[str, int] = {}
    for entry in report.entries:
        n = seen[entry.param] = seen.get(entry.param, -1) + 1
        if n == len(rounds):
            rounds.append(({}, {}))
        tensors, to_load = rounds[n]
        key = entry.param
        to_load[key] = key
        if entry.kind == "lora":
            tensors[f"{key}.lora_up.weight"] = state[entry.keys["up"]]
            tensors[f"{key}.lora_down.weight"] = state[entry.keys["down"]]
            if "alpha" in entry.keys:
                tensors[f"{key}.alpha"] = state[entry.keys["alpha"]]
        else:
            tensors[f"{key}.{'diff' if entry.kind == 'diff' else 'set_weight'}"] = state[entry.keys[entry.kind]]
    lora = _comfy_lora()
    return [lora.load_lora(tensors, to_load) for tensors, to_load in rounds]


def with_lora(bundle: SVDBundle, state: Mapping[str, Any], report: LoraReport, strength: float) -> SVDBundle:
    """A new bundle sharing every network of `bundle` whose UNet patcher is a clone carrying the LoRA as weight
    patches at `strength` (no second UNet: ComfyUI patches the weights when it loads the clone)."""
    holder = manage(bundle)
    clone = holder.patchers["unet"].clone()
    for patches in comfy_patches(state, report):
        added = set(clone.add_patches(patches, float(strength)))
        if missing := sorted(set(patches) - added):
            raise CheckpointError(f"ComfyUI did not accept {len(missing)} LoRA patch(es), e.g. {missing[0]!r}")
    out = dataclasses.replace(bundle)
    out.__dict__[_ATTR] = Managed({**holder.patchers, "unet": clone}, set(holder.offload_after), holder.streamed)
    return out


def unpatched_unet_state(bundle: SVDBundle) -> dict[str, Any]:
    """The UNet's state dict without the weight patches ComfyUI may have applied to the shared module (the
    checkpoint's weights, e.g. for the base-model hash)."""
    state = bundle.model.unet.state_dict()
    for key, saved in manage(bundle).patchers["unet"].backup.items():
        if key in state:
            state[key] = saved.weight
    return state


# -------------------------------------------------------------------------------------------- training


@contextlib.contextmanager
def taken_out(bundle: SVDBundle) -> Iterator[SVDBundle]:
    """For a training run: ComfyUI unloads the bundle's networks and forgets them, so it cannot offload or
    unpatch weights while the run uses them; a LoRA carried as patches is merged into the weights for the run
    (ComfyUI's own patching, on the offload device). After the block, also on error or interrupt, the patches
    are removed again and every network is back on its offload device, ComfyUI's to load on the next use."""
    holder = manage(bundle)
    release(bundle)
    patched = [p for p in holder.patchers.values() if p.patches]
    holder.taken = True
    try:
        for patcher in patched:
            patcher.patch_model(patcher.offload_device)
        yield bundle
    finally:
        holder.taken = False
        for patcher in patched:
            patcher.unpatch_model(patcher.offload_device)
        for part, patcher in holder.patchers.items():
            move_module(getattr(bundle.model, part), patcher.offload_device)
        _mm().soft_empty_cache()
