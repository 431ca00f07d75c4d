"""Block streaming: a network's weights stay in (pinned) CPU memory and each block visits the compute device only
while it runs, the next block's copy overlapping the current block's compute on a side CUDA stream.

:func:`attach` splits a network into *units* run in a fixed order (for the VideoUNet: ``time_embed``,
``label_emb``, every input block, the middle block, every output block, ``out``: the order of its forward) and
hooks each unit:

* before a unit runs, its parameters and buffers are swapped for device copies: the entries of each submodule's
  ``_parameters`` / ``_buffers`` are replaced (the Parameter objects are not touched while streaming; on CUDA
  :func:`attach` replaces them once by pinned copies), read at that
  moment, so weights that a ComfyUI ``ModelPatcher`` patched (it replaces Parameters) are the ones streamed;
  the copy of the *next* unit is started at once (on CUDA on a side stream, waited for by an event when that
  unit starts), so one unit computes while the next one travels;
* after it ran, the original entries are put back and the device copies dropped (on CUDA ``record_stream``
  keeps the caching allocator from reusing their memory before the compute stream is done with them).

At most two units are on the device at any time (in use and prefetched). Nothing is carried from one call of the
network to the next: the first unit (``time_embed``, small) is fetched when a call starts, so weights patched
between two calls (a LoRA strength change in ComfyUI, in place or by replacement) are always the ones used.
A unit that runs out of order (another entry point of the network) is fetched when it starts. fp8-stored
weights travel as fp8 and are widened at use (:mod:`.cast`).

On a CPU target nothing is attached by the memory plans (the weights are already where they compute); the
mechanism itself works for any target device, which is how it is tested without a GPU (copies on the CPU, no
streams).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ..errors import ConfigError

log = logging.getLogger(__name__)

_ATTR = "_svd_lab_streamer"


def unet_units(unet: nn.Module) -> list[nn.Module]:
    """The VideoUNet's units in the order its forward runs them."""
    return [unet.time_embed, unet.label_emb, *unet.input_blocks, unet.middle_block, *unet.output_blocks, unet.out]


@dataclass
class _Fetched:
    """Device copies of one unit's tensors: (owner module, "_parameters" or "_buffers", name) -> copy."""

    copies: dict[tuple[nn.Module, str, str], Tensor]
    ready: torch.cuda.Event | None = None  # recorded on the side stream after the copies were issued


def _slots(unit: nn.Module) -> Iterator[tuple[nn.Module, str, str, Tensor]]:
    """(owner, table, name, tensor) for every parameter and buffer of `unit`, each owner's own tables."""
    for owner in unit.modules():
        for table in ("_parameters", "_buffers"):
            for name, tensor in getattr(owner, table).items():
                if tensor is not None:
                    yield owner, table, name, tensor


@dataclass
class BlockStreamer:
    """The hooks and state of one streamed network (see the module doc)."""

    units: Sequence[nn.Module]
    device: torch.device
    stream: torch.cuda.Stream | None = None
    handles: list[RemovableHandle] = field(default_factory=list)
    fetched: dict[int, _Fetched] = field(default_factory=dict)  # unit index -> copies on (or towards) the device
    saved: dict[int, dict[tuple[nn.Module, str, str], Tensor]] = field(default_factory=dict)  # swapped-out entries
    #: Units on the device at the same time, at most (a test and bench/memory.py read it).
    peak_resident: int = 0

    def _fetch(self, index: int) -> _Fetched:
        """Start copying unit `index` to the device (no-op when already fetched or in use)."""
        if index in self.fetched:
            return self.fetched[index]
        cuda = self.stream is not None
        context = torch.cuda.stream(self.stream) if cuda else contextlib.nullcontext()
        with torch.no_grad(), context:
            copies = {(owner, table, name): tensor.to(self.device, non_blocking=cuda, copy=True)
                      for owner, table, name, tensor in _slots(self.units[index])}
            ready = None
            if cuda:
                ready = torch.cuda.Event()
                ready.record(self.stream)
        self.fetched[index] = _Fetched(copies, ready)
        self.peak_resident = max(self.peak_resident, len(self.fetched))
        return self.fetched[index]

    def enter(self, index: int) -> None:
        if index in self.saved:  # re-entered while running (not expected): already on the device
            return
        if index == 0 and not self.saved:  # a new call: copies left from an earlier one may be stale
            self.fetched.clear()
        fetched = self._fetch(index)
        if fetched.ready is not None:
            compute = torch.cuda.current_stream(self.device)
            compute.wait_event(fetched.ready)
            for copy in fetched.copies.values():
                copy.record_stream(compute)
        saved = {}
        for (owner, table, name), copy in fetched.copies.items():
            entries = getattr(owner, table)
            saved[(owner, table, name)] = entries[name]
            entries[name] = copy
        self.saved[index] = saved
        if index + 1 < len(self.units):
            self._fetch(index + 1)

    def exit(self, index: int) -> None:
        saved = self.saved.pop(index, None)
        if saved is None:
            return
        for (owner, table, name), original in saved.items():
            getattr(owner, table)[name] = original
        self.fetched.pop(index, None)

    def restore(self) -> None:
        """Put back every swapped entry and drop all device copies (after an error inside a unit, or detach)."""
        for index in list(self.saved):
            self.exit(index)
        self.fetched.clear()

    def resident_bytes(self) -> int:
        return sum(c.numel() * c.element_size() for f in self.fetched.values() for c in f.copies.values())


def attach(network: nn.Module, device: torch.device | str, units: Sequence[nn.Module] | None = None, *,
           pin: bool = True) -> BlockStreamer:
    """Stream `network`'s weights to `device` unit by unit (see the module doc); `units` default to the
    VideoUNet's (:func:`unet_units`). Every parameter and buffer must belong to exactly one unit. On CUDA the
    CPU weights are pinned first (`pin`) so that copies are asynchronous. Replaces an earlier attachment."""
    detach(network)
    device = torch.device(device)
    units = list(unet_units(network) if units is None else units)
    covered = {id(t) for u in units for *_, t in _slots(u)}
    stray = [n for n, t in [*network.named_parameters(), *network.named_buffers()] if id(t) not in covered]
    if stray:
        raise ConfigError(f"cannot stream {type(network).__name__}: {len(stray)} tensor(s) outside its blocks, "
                          f"e.g. {stray[0]!r}")
    cuda = device.type == "cuda"
    if cuda and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if cuda and pin:
        _pin(network)
    streamer = BlockStreamer(units, device, torch.cuda.Stream(device) if cuda else None)
    for index, unit in enumerate(units):
        streamer.handles.append(unit.register_forward_pre_hook(lambda _m, _a, i=index: streamer.enter(i)))
        streamer.handles.append(unit.register_forward_hook(lambda _m, _a, _o, i=index: streamer.exit(i),
                                                           always_call=True))
    setattr(network, _ATTR, streamer)
    log.debug("streaming %s: %d units to %s", type(network).__name__, len(units), device)
    return streamer


def detach(network: nn.Module) -> None:
    """Stop streaming `network` (no-op when it does not stream): hooks removed, entries restored."""
    streamer = network.__dict__.pop(_ATTR, None)
    if streamer is None:
        return
    for handle in streamer.handles:
        handle.remove()
    streamer.restore()


def streamer_of(network: nn.Module) -> BlockStreamer | None:
    return network.__dict__.get(_ATTR)


def unit_bytes(units: Sequence[nn.Module]) -> list[int]:
    """Bytes of each unit's parameters and buffers (what one unit needs on the device)."""
    return [sum(t.numel() * t.element_size() for *_, t in _slots(u)) for u in units]


def _pin(network: nn.Module) -> None:
    """Page-lock the CPU tensors of `network`: each entry replaced by a pinned copy (a new Parameter for a
    parameter; replacing works in and out of inference mode, where assigning ``.data`` may not)."""
    with torch.no_grad():
        for owner in network.modules():
            for table in ("_parameters", "_buffers"):
                entries = getattr(owner, table)
                for name, tensor in list(entries.items()):
                    if tensor is None or tensor.device.type != "cpu" or tensor.is_pinned():
                        continue
                    pinned = tensor.pin_memory()
                    if isinstance(tensor, nn.Parameter):
                        pinned = nn.Parameter(pinned, requires_grad=tensor.requires_grad)
                    entries[name] = pinned
