"""Applying a LoRA file to a model: its tensors merged into the UNet weights the way ComfyUI does, as a patched
copy that shares every untouched tensor, or in place with an undo handle. What applies is decided by
:func:`.keys.validate_lora`; a file that does not fit is refused with the reason (another model, another
naming, unsupported adapter types).
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import CheckpointError, ConfigError
from ..nn import streaming
from .keys import LoraEntry, LoraReport, unet_module, validate_lora

__all__ = ["LoraPatch", "apply_lora", "check_usable"]

log = logging.getLogger(__name__)


def check_usable(report: LoraReport, strict: bool = False) -> None:
    """Raise CheckpointError when a LoRA does not fit the model (the reason and a hint); warn about (or with
    `strict` refuse) unmatched keys. What :func:`apply_lora` checks first, for callers that patch otherwise."""
    hint = {
        "diffusers/peft": "its keys use diffusers/PEFT module names (down_blocks..., lora_A/lora_B): convert it "
                          "with SVDLab_LoraConvert (svd_model.lora.convert_peft_lora) first",
        "kohya": "its lora_unet_* names fit no layer of this SVD UNet: a LoRA for another model (SD 1.x/2.x/SDXL "
                 "kohya names), or an SVD LoRA in diffusers names (then convert it with SVDLab_LoraConvert)",
        "text encoder": "it adapts a text encoder; SVD has none",
        "comfyui": "its diffusion_model.* layers do not exist in this UNet: a LoRA for another architecture",
    }.get(report.format, "its key names follow no known LoRA naming for this model")
    if not report.modules and not report.shape_mismatch:
        example = (report.unmatched or report.incomplete or report.unsupported or ("(no keys)",))[0]
        raise CheckpointError(f"the LoRA matches none of this model's weights ({report.summary()}): {hint}. "
                              f"First key: {example!r}")
    if report.shape_mismatch:
        raise CheckpointError(
            f"the LoRA was made for a different model: {len(report.shape_mismatch)} tensor(s) do not fit this "
            f"UNet, e.g. {report.shape_mismatch[0]}. Use a LoRA trained on this model family / variant"
        )
    if report.incomplete or report.unsupported:
        problem = (report.incomplete or report.unsupported)[0]
        raise CheckpointError(
            f"the LoRA has {len(report.incomplete)} incomplete layer(s) and {len(report.unsupported)} unsupported "
            f"tensor(s) (LoCon mid / DoRA / LoHa / LoKr are not applied by this loader), e.g. {problem}"
        )
    if report.unmatched:
        message = (f"{len(report.unmatched)} LoRA key(s) match no weight of this model and are ignored, e.g. "
                   f"{report.unmatched[0]!r}")
        if strict:
            raise CheckpointError(message)
        log.warning(message)


def _merged_params(unet: nn.Module, state: Mapping[str, Tensor], report: LoraReport,
                   strength: float) -> dict[str, Tensor]:
    """{parameter name: patched tensor}, each computed in float32 from the base value and cast back."""
    params = dict(unet.named_parameters())
    by_param: dict[str, list[LoraEntry]] = {}
    for entry in report.entries:
        by_param.setdefault(entry.param, []).append(entry)
    out = {}
    for name, entries in by_param.items():
        base = params[name].detach()
        value = base.to(torch.float32, copy=True)
        for entry in entries:
            if entry.kind == "set":
                value = state[entry.keys["set"]].to(device=base.device, dtype=torch.float32).reshape(base.shape)
                continue
            if entry.kind == "diff":
                delta = state[entry.keys["diff"]].to(device=base.device, dtype=torch.float32)
            else:
                up = state[entry.keys["up"]].to(device=base.device, dtype=torch.float32).flatten(1)  # (out, r)
                down = state[entry.keys["down"]].to(device=base.device, dtype=torch.float32).flatten(1)  # (r, in*k)
                alpha = state.get(entry.keys.get("alpha", ""))
                scale = 1.0 if alpha is None else float(alpha) / down.shape[0]
                delta = scale * (up @ down)
            value += strength * delta.reshape(base.shape)
        out[name] = value.to(base.dtype)
    return out


class LoraPatch:
    """Undo handle of an in-place :func:`apply_lora`: ``undo()`` restores the exact original tensors.
    Usable as a context manager (undone on exit)."""

    def __init__(self, saved: list[tuple[nn.Parameter, Tensor]], report: LoraReport) -> None:
        self._saved = saved
        self.report = report

    def undo(self) -> None:
        for param, original in reversed(self._saved):
            param.data = original
        self._saved = []

    def __enter__(self) -> LoraPatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.undo()


def _shared_copy(module: nn.Module) -> nn.Module:
    """A structural copy of `module` that shares every parameter and buffer (no weight memory). A UNet that
    streams its blocks (nn.streaming) is copied without its hooks, and the copy streams to the same device."""
    streamer = streaming.streamer_of(module)
    if streamer is not None:
        streaming.detach(module)
    try:
        memo: dict[int, Any] = {id(t): t for t in itertools.chain(module.parameters(), module.buffers())}
        clone = copy.deepcopy(module, memo)
    finally:
        if streamer is not None:
            streaming.attach(module, streamer.device)
    if streamer is not None:
        streaming.attach(clone, streamer.device)
    return clone


def _with_unet(target: Any, unet: nn.Module) -> Any:
    """A copy of `target` (SVDBundle / SVDModel / UNet) whose UNet is `unet`; other networks shared."""
    holder = getattr(target, "model", None)
    if isinstance(target, nn.Module) and not hasattr(target, "unet"):
        return unet
    model = holder if holder is not None else target
    new_model = copy.copy(model)
    new_model._modules = dict(model._modules)
    new_model._parameters = dict(model._parameters)
    new_model._buffers = dict(model._buffers)
    new_model.unet = unet
    if holder is None:
        return new_model
    return replace(target, model=new_model)


@torch.no_grad()
def apply_lora(target: Any, state: Mapping[str, Tensor], strength: float = 1.0, *, inplace: bool = False,
               strict: bool = False) -> Any:
    """Merge a LoRA into the UNet weights as ComfyUI does: W += strength * (alpha/rank) * up @ down (conv
    factors flattened, the product reshaped to W), ``diff`` / ``diff_b`` added, ``set_weight`` replacing;
    computed in float32 from W and cast back to W's dtype.

    target: an SVDBundle, SVDModel or UNet module. Default: returns a patched copy of the same type that
    shares every unpatched tensor (and the VAEs / image encoder) with `target`, which is left unchanged.
    inplace=True patches `target` itself and returns a :class:`LoraPatch` whose ``undo()`` restores it.
    Raises CheckpointError when nothing matches, on shape mismatches (a LoRA for another model),
    incomplete or unsupported layers, and with strict=True on any unmatched key (else a warning).
    """
    if not math.isfinite(float(strength)):
        raise ConfigError(f"LoRA strength must be a finite number, got {strength!r}")
    unet = unet_module(target)
    report = validate_lora(unet, state)
    check_usable(report, strict)
    merged = _merged_params(unet, state, report, float(strength))
    if inplace:
        params = dict(unet.named_parameters())
        saved = []
        for name, value in merged.items():
            saved.append((params[name], params[name].data))
            params[name].data = value
        return LoraPatch(saved, report)
    clone = _shared_copy(unet)
    for name, value in merged.items():
        path, _, leaf = name.rpartition(".")
        setattr(clone.get_submodule(path), leaf, nn.Parameter(value, requires_grad=False))
    log.info("LoRA applied at strength %g: %s", strength, report.summary())
    return _with_unet(target, clone)
