"""Which UNet layers a finetune trains (LoRA adapters or full weights): named presets plus user glob / regex
patterns.

Module paths are relative to the UNet and equal the official checkpoint keys without the
``model.diffusion_model.`` prefix and the parameter name, e.g. ``input_blocks.1.1.time_stack.0.attn1.to_q``.
Selection works on *parameter-owning modules* (Linear, Conv2d/3d, GroupNorm, LayerNorm and the
``time_mixer`` AlphaBlenders); LoRA adapters go on the Linear and Conv layers among them.

Presets (derived from the module tree of sgm's VideoUNet):

``temporal`` (default)
    The layers SVD added to the Stable Diffusion 2.1 image UNet. A module is temporal when a component
    of its path is one of

    - ``time_stack``: the temporal ResBlock inside each VideoResBlock (``….0.time_stack.*``: its
      GroupNorms, the (3,1,1) Conv3d ``in_layers.2`` / ``out_layers.3`` and the embedding Linear
      ``emb_layers.1``) and the VideoTransformerBlock inside each SpatialVideoTransformer
      (``….1.time_stack.0.*``: ``norm_in``, ``ff_in``, ``attn1``, ``attn2``, ``ff``, ``norm1..3``);
    - ``time_pos_embed``: the frame-index embedding MLP of each SpatialVideoTransformer;
    - ``time_mixer``: the learned spatial/temporal blend factor (``mix_factor``) of every block.

    ``time_embed`` (the diffusion-timestep embedding) is *not* temporal: it comes from the image model.
``spatial``
    Every other module (the image model's layers, embeddings, in/out convs).
``all``
    Every module.
``attention``
    The attention projections ``attn1`` / ``attn2`` (``to_q``, ``to_k``, ``to_v``, ``to_out.0``) of the
    spatial and the temporal transformer blocks (what diffusers-based SVD LoRA scripts target).
``temporal_attention``
    The attention projections inside ``time_stack`` only.

Patterns narrow the preset. Each is a glob (``fnmatch``; ``*`` also crosses dots) matched against the
module path *or any of its ancestors* (so ``middle_block.1`` selects everything below it), or, with a
``re:`` prefix, a regular expression searched in the path. A leading ``!`` excludes. With include
patterns a module must match one of them; exclusions then remove modules. A pattern that matches no
module of the preset raises :class:`ConfigError` (a typo never silently trains nothing).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Sequence

from torch import nn

from ..errors import ConfigError, choose

__all__ = [
    "ADAPTER_TYPES",
    "PRESETS",
    "TEMPORAL_PARTS",
    "is_temporal",
    "lora_targets",
    "select_modules",
    "set_trainable",
    "trainable_parameters",
]

#: Path components that mark a layer SVD added to the image model.
TEMPORAL_PARTS = frozenset({"time_stack", "time_mixer", "time_pos_embed"})
ATTENTION_PARTS = frozenset({"attn1", "attn2"})
#: Layer types that take LoRA adapters.
ADAPTER_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d, nn.Conv3d)
#: Children of an injected LoRA layer (never selected themselves).
_LORA_CHILDREN = ("lora_down", "lora_up", "lora_dropout")


def is_temporal(path: str) -> bool:
    """True for a module path inside a layer SVD added to the image UNet (see the module docstring)."""
    return not TEMPORAL_PARTS.isdisjoint(path.split("."))


def _is_attention(path: str) -> bool:
    return not ATTENTION_PARTS.isdisjoint(path.split("."))


PRESETS: dict[str, Callable[[str], bool]] = {
    "temporal": is_temporal,
    "spatial": lambda path: not is_temporal(path),
    "all": lambda path: True,
    "attention": _is_attention,
    "temporal_attention": lambda path: is_temporal(path) and _is_attention(path),
}


def _owning_modules(unet: nn.Module) -> list[tuple[str, nn.Module]]:
    """(path, module) for every module that holds parameters directly, LoRA internals excluded."""
    found = []
    for path, module in unet.named_modules():
        if not path or any(part in _LORA_CHILDREN for part in path.split(".")):
            continue
        if next(module.parameters(recurse=False), None) is not None:
            found.append((path, module))
    return found


def _matcher(pattern: str) -> Callable[[str], bool]:
    if pattern.startswith("re:"):
        try:
            regex = re.compile(pattern[3:])
        except re.error as exc:
            raise ConfigError(f"pattern {pattern!r} is not a valid regular expression: {exc}") from None
        return lambda path: regex.search(path) is not None

    def glob(path: str) -> bool:
        parts = path.split(".")
        return any(fnmatch.fnmatchcase(".".join(parts[:n]), pattern) for n in range(len(parts), 0, -1))

    return glob


def _apply_patterns(paths: list[str], patterns: Sequence[str], preset: str) -> list[str]:
    if isinstance(patterns, str):
        raise ConfigError(f"patterns must be a list of strings, got the string {patterns!r}; wrap it in a list")
    cleaned = [p.strip() for p in patterns if p and p.strip()]
    includes = [p for p in cleaned if not p.startswith("!")]
    excludes = [p[1:].strip() for p in cleaned if p.startswith("!")]
    for pattern in includes + excludes:
        match = _matcher(pattern)
        if not any(match(path) for path in paths):
            example = paths[0] if paths else "(none)"
            raise ConfigError(
                f"pattern {pattern!r} matches none of the {len(paths)} modules of preset {preset!r} "
                f"(paths look like {example!r}; globs match a path or an ancestor, 're:' for regex)"
            )
    if includes:
        matchers = [_matcher(p) for p in includes]
        paths = [path for path in paths if any(m(path) for m in matchers)]
    for pattern in excludes:
        match = _matcher(pattern)
        paths = [path for path in paths if not match(path)]
    return paths


def select_modules(unet: nn.Module, preset: str = "temporal", patterns: Sequence[str] = ()) -> list[str]:
    """Paths (module order) of the parameter-owning modules chosen by `preset`, narrowed by `patterns`.

    Raises ConfigError for an unknown preset, a pattern that matches nothing, or an empty selection.
    """
    keep = choose(PRESETS, preset, "training preset")
    paths = [path for path, _ in _owning_modules(unet) if keep(path)]
    paths = _apply_patterns(paths, patterns, preset)
    if not paths:
        raise ConfigError(f"preset {preset!r} with patterns {list(patterns)} selects no module of this UNet")
    return paths


def lora_targets(unet: nn.Module, preset: str = "temporal", patterns: Sequence[str] = ()) -> list[str]:
    """The Linear / Conv2d / Conv3d layers among :func:`select_modules` (the layers LoRA adapts).

    Convolutions with groups != 1 or non-zero padding modes are left out (SVD has none).
    """
    modules = dict(unet.named_modules())
    targets = []
    for path in select_modules(unet, preset, patterns):
        module = modules[path]
        if not isinstance(module, ADAPTER_TYPES):
            continue
        if isinstance(module, nn.Conv2d | nn.Conv3d) and (module.groups != 1 or module.padding_mode != "zeros"):
            continue
        targets.append(path)
    if not targets:
        raise ConfigError(
            f"preset {preset!r} with patterns {list(patterns)} selects only norms / mix factors, no Linear or "
            "Conv layer a LoRA could adapt; widen the selection or train those weights fully"
        )
    return targets


def trainable_parameters(
    unet: nn.Module, preset: str = "temporal", patterns: Sequence[str] = ()
) -> list[tuple[str, nn.Parameter]]:
    """(name relative to the UNet, parameter) of every parameter of the selected modules (no side effects)."""
    modules = dict(unet.named_modules())
    return [
        (f"{path}.{name}", param)
        for path in select_modules(unet, preset, patterns)
        for name, param in modules[path].named_parameters(recurse=False)
    ]


def set_trainable(
    unet: nn.Module, preset: str = "temporal", patterns: Sequence[str] = ()
) -> list[tuple[str, nn.Parameter]]:
    """Full finetuning: requires_grad on the selected parameters only; returns them (see trainable_parameters)."""
    chosen = trainable_parameters(unet, preset, patterns)
    unet.requires_grad_(False)
    for _, param in chosen:
        param.requires_grad_(True)
    return chosen
