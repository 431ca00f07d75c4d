"""LoRA adapters on the VideoUNet's layers: trainable wrappers, injecting, merging and their state dicts.

Adapter math (Hu et al. 2021; kohya / ComfyUI conventions): a layer with weight W (out, in, *kernel)
gets ``lora_down`` D (rank, in, *kernel) and ``lora_up`` U (out, rank, *1s) and computes
``base(x) + (alpha / rank) * U(D(dropout(x)))``, which equals the layer with the merged weight
``W + (alpha / rank) * (U.flatten(1) @ D.flatten(1)).reshape(W.shape)``. D starts kaiming-uniform (from
a passed generator), U starts at zero, so an injected model computes exactly what the base model does.

State dicts (:func:`lora_state_dict`, :func:`load_lora_state`) use ComfyUI's generic LoRA naming
(``diffusion_model.<module path>.lora_up.weight`` / ``.lora_down.weight`` / ``.alpha``, see :mod:`.format`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import CheckpointError, ConfigError
from .keys import UNET_PREFIX
from .targets import lora_targets

__all__ = [
    "LoRAConv",
    "LoRAConv2d",
    "LoRAConv3d",
    "LoRALayer",
    "LoRALinear",
    "inject_lora",
    "load_lora_state",
    "lora_layers",
    "lora_parameters",
    "lora_state_dict",
    "merge_lora",
    "remove_lora",
]

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ layers


class LoRALayer(nn.Module):
    """Mixin for a Linear / Conv layer with a low-rank adapter. It *is* the base layer (same ``weight`` and
    ``bias`` Parameters, same state-dict keys) plus ``lora_down``, ``lora_up`` and ``lora_dropout``."""

    rank: int
    alpha: float
    lora_down: nn.Module
    lora_up: nn.Module
    lora_dropout: nn.Module
    weight: nn.Parameter

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def _setup_lora(self, base: nn.Module, down: nn.Module, up: nn.Module, rank: int, alpha: float,
                    dropout: float, generator: torch.Generator, dtype: torch.dtype) -> None:
        self.weight = base.weight
        self.bias = base.bias
        self.rank, self.alpha = rank, float(alpha)
        init = torch.empty(down.weight.shape, dtype=torch.float32)
        nn.init.kaiming_uniform_(init, a=math.sqrt(5), generator=generator)  # PEFT / kohya default for D
        device = base.weight.device
        down.weight = nn.Parameter(init.to(device=device, dtype=dtype))
        up.weight = nn.Parameter(torch.zeros(up.weight.shape, device=device, dtype=dtype))
        self.lora_down, self.lora_up = down, up
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def delta_weight(self) -> Tensor:
        """(alpha/rank) * U @ D reshaped to the weight's shape, float32."""
        up = self.lora_up.weight.float().flatten(1)  # (out, rank)
        down = self.lora_down.weight.float().flatten(1)  # (rank, in * prod(kernel))
        return (self.scale * (up @ down)).reshape(self.weight.shape)

    def forward(self, x: Tensor) -> Tensor:
        out = super().forward(x)  # the base layer (next class in the MRO)
        h = self.lora_dropout(x).to(self.lora_down.weight.dtype)
        return out + (self.scale * self.lora_up(self.lora_down(h))).to(out.dtype)

    def plain(self) -> nn.Module:
        """The base layer without the adapter, sharing this layer's weight and bias Parameters."""
        raise NotImplementedError


class LoRALinear(LoRALayer, nn.Linear):
    """nn.Linear + LoRA: D is Linear(in, rank), U is Linear(rank, out), no biases."""

    @classmethod
    def wrap(cls, base: nn.Linear, rank: int, alpha: float, dropout: float, generator: torch.Generator,
             dtype: torch.dtype) -> LoRALinear:
        layer = cls(base.in_features, base.out_features, bias=base.bias is not None, device="meta")
        down = nn.Linear(base.in_features, rank, bias=False, device="meta")
        up = nn.Linear(rank, base.out_features, bias=False, device="meta")
        layer._setup_lora(base, down, up, rank, alpha, dropout, generator, dtype)
        return layer

    def plain(self) -> nn.Linear:
        layer = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        layer.weight, layer.bias = self.weight, self.bias
        return layer


class LoRAConv(LoRALayer):
    """Conv + LoRA (kohya LoCon layout): D is a conv with the base kernel, stride, padding and dilation into
    `rank` channels, U a 1x1 conv to the output channels. Concrete classes: LoRAConv2d, LoRAConv3d."""

    _conv: type[nn.Conv2d] | type[nn.Conv3d]

    @classmethod
    def wrap(cls, base: nn.Conv2d | nn.Conv3d, rank: int, alpha: float, dropout: float,
             generator: torch.Generator, dtype: torch.dtype) -> LoRAConv:
        geometry = {"stride": base.stride, "padding": base.padding, "dilation": base.dilation}
        layer = cls(base.in_channels, base.out_channels, base.kernel_size, **geometry,
                    bias=base.bias is not None, device="meta")
        down = cls._conv(base.in_channels, rank, base.kernel_size, **geometry, bias=False, device="meta")
        up = cls._conv(rank, base.out_channels, 1, bias=False, device="meta")
        layer._setup_lora(base, down, up, rank, alpha, dropout, generator, dtype)
        return layer

    def plain(self) -> nn.Module:
        layer = self._conv(self.in_channels, self.out_channels, self.kernel_size, stride=self.stride,
                           padding=self.padding, dilation=self.dilation, bias=self.bias is not None, device="meta")
        layer.weight, layer.bias = self.weight, self.bias
        return layer


class LoRAConv2d(LoRAConv, nn.Conv2d):
    _conv = nn.Conv2d


class LoRAConv3d(LoRAConv, nn.Conv3d):
    _conv = nn.Conv3d


_WRAPPERS: tuple[tuple[type[nn.Module], Any], ...] = (
    (nn.Linear, LoRALinear), (nn.Conv2d, LoRAConv2d), (nn.Conv3d, LoRAConv3d),
)


def lora_layers(unet: nn.Module) -> list[tuple[str, LoRALayer]]:
    """(path, layer) of every injected adapter, in module order."""
    return [(path, m) for path, m in unet.named_modules() if isinstance(m, LoRALayer)]


def _replace(unet: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = unet.get_submodule(parent_path) if parent_path else unet
    setattr(parent, name, module)


# ------------------------------------------------------------------------------- inject / merge


def inject_lora(
    unet: nn.Module,
    *,
    rank: int,
    alpha: float | None = None,
    preset: str = "temporal",
    patterns: Sequence[str] = (),
    dropout: float = 0.0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> list[str]:
    """Wrap the layers chosen by :func:`~.targets.lora_targets` in place; returns their paths.

    alpha None means alpha = rank (scale 1). Afterwards only the LoRA parameters require grad.
    `generator` (CPU) seeds the D matrices (default: seed 0); `dtype` is the adapters' dtype (float32
    keeps optimizer updates exact with a half-precision base; the forward casts at the boundary).
    """
    if rank < 1:
        raise ConfigError(f"LoRA rank must be >= 1, got {rank}")
    if alpha is not None and not alpha > 0:
        raise ConfigError(f"LoRA alpha must be > 0, got {alpha} (None means alpha = rank)")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"LoRA dropout must be in [0, 1), got {dropout}")
    if lora_layers(unet):
        raise ConfigError("this UNet already has LoRA adapters; merge_lora or remove_lora them first")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    paths = lora_targets(unet, preset, patterns)
    unet.requires_grad_(False)
    for path in paths:
        base = unet.get_submodule(path)
        wrapper = next(w for kind, w in _WRAPPERS if isinstance(base, kind))
        layer = wrapper.wrap(base, rank, float(rank if alpha is None else alpha), dropout, generator, dtype)
        layer.train(base.training)
        _replace(unet, path, layer)
        layer.lora_down.weight.requires_grad_(True)
        layer.lora_up.weight.requires_grad_(True)
    log.info("LoRA rank %d alpha %s on %d layers (preset %s, patterns %s)", rank, alpha or rank, len(paths),
             preset, list(patterns))
    return paths


def lora_parameters(unet: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of every injected LoRA matrix (``<path>.lora_down.weight`` / ``.lora_up.weight``)."""
    return [(f"{path}.{part}.weight", getattr(layer, part).weight)
            for path, layer in lora_layers(unet) for part in ("lora_down", "lora_up")]


@torch.no_grad()
def merge_lora(unet: nn.Module) -> int:
    """Fold every adapter into its base weight (computed in float32, cast back to the weight's dtype) and
    replace the wrapper by the plain layer, so the UNet saves in the official layout. Returns the count."""
    layers = lora_layers(unet)
    for path, layer in layers:
        merged = layer.weight.float() + layer.delta_weight().to(layer.weight.device)
        layer.weight.data = merged.to(layer.weight.dtype)
        _replace(unet, path, layer.plain())
    return len(layers)


def remove_lora(unet: nn.Module) -> int:
    """Drop every adapter without merging (the base weights are untouched). Returns the count."""
    layers = lora_layers(unet)
    for path, layer in layers:
        _replace(unet, path, layer.plain())
    return len(layers)


# ------------------------------------------------------------------------------------ state dicts


def lora_state_dict(
    unet: nn.Module, *, prefix: str = UNET_PREFIX, dtype: torch.dtype | None = None
) -> dict[str, Tensor]:
    """The injected adapters in ComfyUI naming: ``<prefix><path>.lora_up.weight`` (out, rank, *1s),
    ``.lora_down.weight`` (rank, in, *kernel), ``.alpha`` (0-dim float32). Detached tensors on their
    device, in `dtype` (default: the adapters' dtype)."""
    layers = lora_layers(unet)
    if not layers:
        raise ConfigError("this UNet has no LoRA adapters (call inject_lora first)")
    state: dict[str, Tensor] = {}
    for path, layer in layers:
        key = f"{prefix}{path}"
        for part in ("lora_up", "lora_down"):
            weight = getattr(layer, part).weight.detach()
            state[f"{key}.{part}.weight"] = weight if dtype is None else weight.to(dtype)
        state[f"{key}.alpha"] = torch.tensor(layer.alpha, dtype=torch.float32)
    return state


@torch.no_grad()
def load_lora_state(unet: nn.Module, state: Mapping[str, Tensor], *, prefix: str = UNET_PREFIX) -> int:
    """Copy a ComfyUI-named LoRA state (e.g. a checkpoint to resume from) into the injected adapters.

    Every adapter must be present with the same rank and alpha, and the state may hold nothing else.
    Returns the number of layers loaded.
    """
    layers = dict(lora_layers(unet))
    expected = set()
    problems = []
    for path, layer in layers.items():
        key = f"{prefix}{path}"
        expected |= {f"{key}.lora_up.weight", f"{key}.lora_down.weight", f"{key}.alpha"}
        for part in ("lora_up", "lora_down"):
            source = state.get(f"{key}.{part}.weight")
            target = getattr(layer, part).weight
            if source is None or tuple(source.shape) != tuple(target.shape):
                found = "missing" if source is None else list(source.shape)
                problems.append(f"{key}.{part}.weight: {found}, adapter {list(target.shape)}")
                continue
            target.copy_(source)
        alpha = state.get(f"{key}.alpha")
        if alpha is not None and not math.isclose(float(alpha), layer.alpha, rel_tol=1e-6):
            problems.append(f"{key}.alpha: {float(alpha)}, adapter {layer.alpha}")
    problems += [f"{k}: not an injected adapter" for k in sorted(set(state) - expected)]
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise CheckpointError(
            f"the LoRA state does not fit the injected adapters: {'; '.join(problems[:5])}{more}. "
            "Inject with the same rank, alpha, preset and patterns as the run that saved it"
        )
    return len(layers)
