"""Cast-on-use layers: one forward path for weights that live elsewhere (CPU memory, fp8) than the compute.

:func:`convert` turns every Linear, Conv1d/2d/3d, GroupNorm (and the pack's float32 :class:`~.layers.GroupNorm32`),
LayerNorm and Embedding of a built network into its cast-on-use subclass, in place, by swapping the layer's
``__class__``: parameters, state-dict keys and numerics stay exactly what they were. ``SVDModel`` converts every
network it builds; a separately built network (the curation text tower) converts with the same call.
:func:`store_fp8` keeps a network's linear and conv weights in fp8 and computes them in bf16 / fp16 / fp32.

The layer protocol. ``svd_model`` imports nothing from ComfyUI; it only honours the attribute names that
ComfyUI's ``ModelPatcher`` uses to load a model partially ("lowvram"), so a patcher can manage these layers like
its own ``comfy.ops`` layers:

* ``comfy_cast_weights`` (bool, False by default): cast the weights at use. A patcher sets it (keeping the old
  value in ``prev_comfy_cast_weights``) on the layers whose weights it leaves in CPU memory; :func:`store_fp8`
  sets it on the layers it stores in fp8. Its presence marks a module a patcher may leave offloaded; other
  modules with parameters are moved whole.
* ``weight_function`` / ``bias_function``: lists of callables ``f(tensor) -> tensor`` applied in order to the
  cast weight / bias (a patcher's LoRA patches, computed on the compute device at use). Each layer has its own
  lists (a patcher appends to them). A function never receives the stored parameter itself: when the cast made
  no copy, it gets a clone (patches may work in place).
* When the flag is set or a list is non-empty, forward moves weight and bias to the input's device first
  (``non_blocking`` towards CUDA; fp8 weights travel as fp8), then casts them to the compute dtype: the input's
  dtype, except float32 for GroupNorm32 (it normalises in float32) and the weight's own dtype for Embedding
  (its input is integer ids). Otherwise forward is the plain torch layer's: the same kernel on the same tensors.

Subclasses of the converted types (the VAE's ``AE3DConv``, LoRA wrappers) convert to a derived class placed
above the cast layer in the MRO; their forward reaches the cast through ``super()`` (conv layers cast in
``_conv_forward``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .layers import GroupNorm32

log = logging.getLogger(__name__)

WeightFn = Callable[[Tensor], Tensor]


class CastLayer:
    """The protocol attributes and the cast itself; mixed into each cast-on-use layer class below."""

    comfy_cast_weights: bool = False
    weight_function: list[WeightFn]
    bias_function: list[WeightFn]
    weight: Tensor
    bias: Tensor | None

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # the torch layer's constructor (next in the MRO)
        _init_protocol(self)

    def casts(self) -> bool:
        """True when forward casts (the flag is set or a weight / bias function is present)."""
        return self.comfy_cast_weights or bool(self.weight_function) or bool(self.bias_function)

    def cast_weight_bias(self, like: Tensor, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor | None]:
        """(weight, bias) on `like`'s device in `dtype` (default: `like`'s dtype), each function applied."""
        dtype = like.dtype if dtype is None else dtype
        weight = _cast(self.weight, like.device, dtype, self.weight_function)
        bias = None if self.bias is None else _cast(self.bias, like.device, dtype, self.bias_function)
        return weight, bias  # type: ignore[return-value]


def _init_protocol(layer: object) -> None:
    vars(layer).setdefault("comfy_cast_weights", False)
    vars(layer).setdefault("weight_function", [])
    vars(layer).setdefault("bias_function", [])


def _cast(tensor: Tensor, device: torch.device, dtype: torch.dtype, functions: list[WeightFn]) -> Tensor:
    out = tensor.to(device=device, non_blocking=device.type == "cuda")  # the stored bytes travel, then widen
    out = out.to(dtype)
    if functions:
        if out is tensor:
            out = tensor.clone()
        for function in functions:
            out = function(out)
    return out


class CastLinear(CastLayer, nn.Linear):
    def forward(self, x: Tensor) -> Tensor:
        if not self.casts():
            return F.linear(x, self.weight, self.bias)
        return F.linear(x, *self.cast_weight_bias(x))


class _CastConv(CastLayer):
    def _conv_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if self.casts():
            weight, bias = self.cast_weight_bias(x)
        return super()._conv_forward(x, weight, bias)  # type: ignore[misc]


class CastConv1d(_CastConv, nn.Conv1d):
    pass


class CastConv2d(_CastConv, nn.Conv2d):
    pass


class CastConv3d(_CastConv, nn.Conv3d):
    pass


class CastGroupNorm32(CastLayer, GroupNorm32):
    def forward(self, x: Tensor) -> Tensor:
        if not self.casts():
            return super().forward(x)
        weight, bias = (None, None) if self.weight is None else self.cast_weight_bias(x, torch.float32)
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


class CastGroupNorm(CastLayer, nn.GroupNorm):
    def forward(self, x: Tensor) -> Tensor:
        if not self.casts():
            return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        weight, bias = (None, None) if self.weight is None else self.cast_weight_bias(x)
        return F.group_norm(x, self.num_groups, weight, bias, self.eps)


class CastLayerNorm(CastLayer, nn.LayerNorm):
    def forward(self, x: Tensor) -> Tensor:
        if not self.casts():
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        weight, bias = (None, None) if self.weight is None else self.cast_weight_bias(x)
        return F.layer_norm(x, self.normalized_shape, weight, bias, self.eps)


class CastEmbedding(CastLayer, nn.Embedding):
    bias = None

    def forward(self, ids: Tensor) -> Tensor:
        weight = self.cast_weight_bias(ids, self.weight.dtype)[0] if self.casts() else self.weight
        return F.embedding(ids, weight, self.padding_idx, self.max_norm, self.norm_type, self.scale_grad_by_freq,
                           self.sparse)


#: torch layer type -> its cast-on-use class (subclasses first: GroupNorm32 before GroupNorm).
CAST_CLASSES: dict[type[nn.Module], type[nn.Module]] = {
    nn.Linear: CastLinear,
    nn.Conv1d: CastConv1d,
    nn.Conv2d: CastConv2d,
    nn.Conv3d: CastConv3d,
    GroupNorm32: CastGroupNorm32,
    nn.GroupNorm: CastGroupNorm,
    nn.LayerNorm: CastLayerNorm,
    nn.Embedding: CastEmbedding,
}


@functools.cache
def _derived(cls: type[nn.Module], cast: type[nn.Module]) -> type[nn.Module]:
    """`cls` (a subclass of a converted type) with the cast layer inserted below it: cls -> cast -> torch layer."""
    return type(f"Cast{cls.__name__}", (cls, cast), {"__module__": cls.__module__,
                                                      "__qualname__": f"Cast{cls.__qualname__}"})


def cast_class(cls: type[nn.Module]) -> type[nn.Module] | None:
    """The cast-on-use class for layer type `cls` (itself when it already is one), or None for other modules."""
    if issubclass(cls, CastLayer):
        return cls
    for base in cls.__mro__:
        cast = CAST_CLASSES.get(base)
        if cast is not None:
            return cast if cls is base else _derived(cls, cast)
    return None


def convert(module: nn.Module) -> nn.Module:
    """Make every supported layer of `module` (itself included) cast-on-use, in place; returns `module`.

    Idempotent. Parameters, buffers and state-dict keys are untouched, and so is the output while no layer casts.
    """
    for layer in module.modules():
        cls = cast_class(type(layer))
        if cls is None:
            continue
        if type(layer) is not cls:
            layer.__class__ = cls
        _init_protocol(layer)
    return module


def cast_layers(module: nn.Module) -> Iterator[tuple[str, CastLayer]]:
    """(path, layer) of every cast-on-use layer in `module`."""
    for path, layer in module.named_modules():
        if isinstance(layer, CastLayer):
            yield path, layer


# -------------------------------------------------------------------------------------------------- fp8

#: Storage names (loader option, ``load_bundle(weight_storage=...)``) -> fp8 dtype.
FP8_STORAGE: dict[str, torch.dtype] = {"fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}
_WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def fp8_dtype(storage: str) -> torch.dtype:
    try:
        return FP8_STORAGE[storage]
    except KeyError:
        raise ConfigError(f"unknown weight storage {storage!r}; choose from {', '.join(FP8_STORAGE)}") from None


def store_fp8(module: nn.Module, storage: str = "fp8_e4m3fn") -> int:
    """Keep the weights of every Linear and Conv layer of `module` in fp8 (`storage`, a :data:`FP8_STORAGE` name),
    computed in the input's dtype: half the weight memory of fp16 / bf16. Biases, norms and everything else
    keep their dtype. The cast is plain round-to-nearest without a scale (values beyond the format's range
    saturate), the layout of ComfyUI's fp8 checkpoints, so the state dict saves as an fp8 file that this loader
    and ComfyUI read back. Returns the number of weights stored in fp8. `module` must be converted
    (:func:`convert`); the caller records the compute dtype (VideoUNet ``compute_dtype``)."""
    dtype = fp8_dtype(storage)
    finfo = torch.finfo(dtype)
    stored = 0
    with torch.no_grad():
        for _, layer in cast_layers(module):
            if not isinstance(layer, _WEIGHT_LAYERS):
                continue
            weight = layer.weight
            if weight.dtype != dtype:
                narrow = weight.detach().clamp(finfo.min, finfo.max).to(dtype)
                layer._parameters["weight"] = nn.Parameter(narrow, requires_grad=False)
            layer.comfy_cast_weights = True
            stored += 1
    if not stored:
        raise ConfigError(f"{type(module).__name__} has no cast-on-use Linear or Conv layer to store in {storage}")
    return stored
