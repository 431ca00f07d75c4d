"""How a loaded model uses device memory: one :class:`MemoryPlan` per bundle, applied by :func:`apply_plan`.

The default plan keeps every network resident on the compute device (today's behaviour). ``LOW_VRAM`` is the
plan for small GPUs (SVD-XT, 25 frames 1024x576 in about 8 GB):

* ``stream_unet``: the UNet's weights stay in (pinned) CPU memory and each block is copied to the device just
  ahead of its use on a side stream (:mod:`.nn.streaming`); on a CPU device this is a no-op.
* ``offload_encoders``: the image encoder and the conditioning VAE live on the CPU and visit the compute
  device only while they encode (:func:`on_compute`).
* ``decode_chunk`` / ``decode_tile``: the temporal decoder runs on this many frames at a time, on spatial tiles
  of this many latent pixels with ``decode_tile_overlap`` latent pixels of blended overlap
  (:func:`.pipelines.decode.decode_latents`).

Pipelines read the plan from ``bundle.memory``; the compute device and dtype of a bundle whose weights do not
all live there (streaming, fp8 storage) are ``bundle.compute_device`` / ``bundle.compute_dtype``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from .errors import ConfigError

if TYPE_CHECKING:
    from .weights.loader import SVDBundle


@dataclass(frozen=True)
class MemoryPlan:
    stream_unet: bool = False
    offload_encoders: bool = False
    decode_chunk: int | None = None  # frames per decoder call; None: the variant's decoding_t (14 for SVD-XT)
    decode_tile: int | None = None  # spatial tile edge in latent pixels (x8 = image pixels); None: untiled
    decode_tile_overlap: int = 8  # latent pixels shared by neighbouring tiles, blended linearly

    def __post_init__(self) -> None:
        if self.decode_chunk is not None and self.decode_chunk < 1:
            raise ConfigError(f"decode_chunk must be >= 1, got {self.decode_chunk}")
        if self.decode_tile is not None and self.decode_tile < 8:
            raise ConfigError(f"decode_tile must be >= 8 latent pixels, got {self.decode_tile}")
        if self.decode_tile is not None and not 0 <= self.decode_tile_overlap < self.decode_tile:
            raise ConfigError(f"decode_tile_overlap must be in [0, decode_tile), got {self.decode_tile_overlap}")


DEFAULT = MemoryPlan()
LOW_VRAM = MemoryPlan(stream_unet=True, offload_encoders=True, decode_chunk=1, decode_tile=64, decode_tile_overlap=8)

#: The modes a user picks by name (loader node, ``svd-lab``): name -> plan.
MODES: dict[str, MemoryPlan] = {"normal": DEFAULT, "low_vram": LOW_VRAM}


def plan_for(mode: str | MemoryPlan | None) -> MemoryPlan:
    if mode is None:
        return DEFAULT
    if isinstance(mode, MemoryPlan):
        return mode
    try:
        return MODES[mode]
    except KeyError:
        raise ConfigError(f"unknown memory mode {mode!r}; choose from {', '.join(MODES)}") from None


def encoders(bundle: SVDBundle) -> tuple[nn.Module, ...]:
    """The networks used once per video before sampling: image encoder and conditioning VAE."""
    return bundle.model.image_encoder, bundle.model.cond_vae


def apply_plan(bundle: SVDBundle, plan: MemoryPlan | str | None, device: torch.device | str) -> SVDBundle:
    """Place `bundle`'s networks on `device` (or the CPU) as `plan` says; returns the bundle (changed in place)."""
    from .nn import streaming

    plan = plan_for(plan)
    device = torch.device(device)
    cpu = torch.device("cpu")
    model = bundle.model
    streaming.detach(model.unet)
    if plan.stream_unet and device.type != "cpu":
        model.unet.to(cpu)
        streaming.attach(model.unet, device)
    else:
        model.unet.to(device)
    for module in encoders(bundle):
        module.to(cpu if plan.offload_encoders else device)
    model.first_stage.to(device)
    bundle.memory = plan
    bundle.compute_device = device
    return bundle


@contextlib.contextmanager
def on_compute(bundle: SVDBundle, *modules: nn.Module) -> Iterator[None]:
    """While the block runs, `modules` are on the bundle's compute device; offloaded ones go back to the CPU
    after (only under a plan with ``offload_encoders``; otherwise this does nothing)."""
    if not bundle.memory.offload_encoders:
        yield
        return
    device = bundle.device
    for module in modules:
        module.to(device)
    try:
        yield
    finally:
        for module in modules:
            module.to("cpu")
        if device.type == "cuda":
            torch.cuda.empty_cache()


def move_module(module: nn.Module, device: torch.device | str) -> None:
    """module.to(device), skipped when already there; weights loaded under torch.inference_mode (ComfyUI runs
    every node in it) are moved inside it too, since their data cannot be replaced outside."""
    first = next(module.parameters(), None)
    if first is None or first.device == torch.device(device):
        return
    with torch.inference_mode(first.is_inference()):
        module.to(device)


@contextlib.contextmanager
def moved(modules: list[nn.Module | None], device: torch.device | str) -> Iterator[None]:
    """`modules` (None entries skipped) on `device` for the block, then back where each was, also on error; the
    CUDA cache is emptied after modules left a GPU. How a network visits a device and returns: a text tower, the
    trainer's and the cache builder's networks (an offload plan's encoders: :func:`on_compute`)."""
    device = torch.device(device)
    homes = [(m, first.device) for m in modules if m is not None and (first := next(m.parameters(), None)) is not None]
    for m, _ in homes:
        move_module(m, device)
    try:
        yield
    finally:
        for m, home in homes:
            move_module(m, home)
        if device.type == "cuda" and any(home != device for _, home in homes):
            torch.cuda.empty_cache()
