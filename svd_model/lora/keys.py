"""LoRA files against a model: key parsing and validation reports (applying them: :mod:`.apply`).

A LoRA file is a flat ``{key: tensor}`` table. Each key is ``<prefix><suffix>``: the suffix names the
tensor's role, the prefix the layer. Suffixes understood (the ones ComfyUI's loader accepts,
comfy/weight_adapter/lora.py and comfy/lora.py ``load_lora``):

- up / down pairs: ``.lora_up.weight`` / ``.lora_down.weight`` (kohya, ComfyUI), ``.lora_B.weight`` /
  ``.lora_A.weight`` (PEFT), ``.lora.up.weight`` / ``.lora.down.weight`` and ``_lora.up.weight`` /
  ``_lora.down.weight`` (diffusers), ``.lora_linear_layer.up.weight`` / ``….down.weight``,
  ``.lora_B.default.weight`` / ``.lora_A.default.weight``, ``.lora_B`` / ``.lora_A``;
- ``.alpha`` (scale alpha/rank; absent means scale 1, as in ComfyUI), ``.diff`` (full weight delta),
  ``.diff_b`` (bias delta), ``.set_weight`` (replacement);
- recognised but not applied here: ``.lora_mid.weight`` (Tucker LoCon), ``.dora_scale``,
  ``.reshape_weight``, ``.w_norm`` / ``.b_norm``, LoHa / LoKr / OFT tensors.

Prefixes resolve onto the UNet the way ComfyUI's ``model_lora_keys_unet`` maps them for an SVD model:
``diffusion_model.<X>`` for a weight ``<X>.weight`` (or any other parameter ``<X>``), and
``lora_unet_<X with . replaced by _>``. Diffusers / PEFT module names (``unet.down_blocks…``) need
:func:`.peft.convert_peft_lora` first.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..weights.detect import UNET_PREFIX as OFFICIAL_UNET_PREFIX  # the checkpoint's: detect.py owns those prefixes
from .targets import is_temporal

__all__ = [
    "KOHYA_PREFIX",
    "OFFICIAL_UNET_PREFIX",
    "UNET_PREFIX",
    "LoraEntry",
    "LoraReport",
    "ParsedLora",
    "parse_lora",
    "unet_module",
    "unet_shapes",
    "validate_lora",
]

UNET_PREFIX = "diffusion_model."  # ComfyUI's LoRA key convention, not a checkpoint prefix
KOHYA_PREFIX = "lora_unet_"
#: (up suffix, down suffix), each pair one naming style.
PAIRS = (
    (".lora_up.weight", ".lora_down.weight"),
    ("_lora.up.weight", "_lora.down.weight"),
    (".lora_B.weight", ".lora_A.weight"),
    (".lora.up.weight", ".lora.down.weight"),
    (".lora_linear_layer.up.weight", ".lora_linear_layer.down.weight"),
    (".lora_B.default.weight", ".lora_A.default.weight"),
    (".lora_B", ".lora_A"),
)
SINGLES = {".alpha": "alpha", ".diff": "diff", ".diff_b": "diff_b", ".set_weight": "set"}
UNSUPPORTED = {".lora_mid.weight": "mid", ".dora_scale": "dora", ".lora_magnitude_vector": "dora",
               ".reshape_weight": "reshape", ".w_norm": "w_norm", ".b_norm": "b_norm"}
UNSUPPORTED_MARKERS = (".hada_", ".lokr_", ".oft_", ".oft_blocks", ".a1.weight", ".b1.weight")
_SUFFIXES = sorted(
    [(up, f"up{i}") for i, (up, _) in enumerate(PAIRS)] + [(down, f"down{i}") for i, (_, down) in enumerate(PAIRS)]
    + list(SINGLES.items()) + list(UNSUPPORTED.items()),
    key=lambda item: -len(item[0]),
)
_DIFFUSERS_HINTS = ("down_blocks.", "up_blocks.", "mid_block.")

Shape = tuple[int, ...]


def _shape(value: Any) -> Shape:
    return tuple(value.shape) if hasattr(value, "shape") else tuple(value)


@dataclass(frozen=True)
class ParsedLora:
    """File keys grouped by layer prefix: groups[prefix][role] = key; `unknown` keys have no LoRA suffix."""

    groups: dict[str, dict[str, str]]
    unknown: list[str]
    unsupported: list[str]

    def format(self) -> str:
        """The naming style most prefixes follow: comfyui, kohya, diffusers/peft, text encoder, or unknown."""
        votes: dict[str, int] = {}
        for prefix in self.groups:
            votes[_prefix_format(prefix)] = votes.get(_prefix_format(prefix), 0) + 1
        return max(votes, key=lambda k: votes[k]) if votes else "unknown"

    def describe_foreign(self) -> str:
        """What a file without LoRA tensors looks like (for error messages)."""
        keys = self.unknown
        if any(k.startswith(OFFICIAL_UNET_PREFIX) for k in keys):
            return ("it holds full model weights (model.diffusion_model.* keys): a checkpoint, not a LoRA. "
                    "Load it with SVDLab_CheckpointLoader")
        if any(k.startswith(UNET_PREFIX) and k.endswith(".weight") for k in keys):
            return "it holds full UNet weights (diffusion_model.*.weight keys), not LoRA tensors"
        if self.unsupported:
            return f"its adapter type is not supported here (LoHa / LoKr / OFT keys such as {self.unsupported[0]!r})"
        example = ", ".join(repr(k) for k in keys[:3]) or "none"
        return (f"none of its {len(keys)} keys ends in a LoRA suffix (.lora_up.weight, .lora_down.weight, "
                f".lora_A.weight, .lora_B.weight, .alpha, ...); first keys: {example}")


def _prefix_format(prefix: str) -> str:
    if prefix.startswith(UNET_PREFIX):
        return "comfyui"
    if prefix.startswith(("lora_te", "text_encoder", "te_", "lora_te1", "lora_te2")):
        return "text encoder"
    if prefix.startswith(KOHYA_PREFIX):
        return "kohya"
    if prefix.startswith(("unet.", "base_model.model.")) or any(h in prefix for h in _DIFFUSERS_HINTS):
        return "diffusers/peft"
    return "unknown"


def parse_lora(state: Mapping[str, Any] | Iterable[str]) -> ParsedLora:
    """Group the keys of a LoRA state (or of a shape table, or a key list) by layer and role."""
    groups: dict[str, dict[str, str]] = {}
    unknown, unsupported = [], []
    for key in state:
        if any(marker in key for marker in UNSUPPORTED_MARKERS):
            unsupported.append(key)
            continue
        suffix, role = next(((s, r) for s, r in _SUFFIXES if key.endswith(s)), ("", ""))
        if not role:
            unknown.append(key)
            continue
        groups.setdefault(key[: -len(suffix)], {})[role] = key
    return ParsedLora(groups, unknown, unsupported)


# ------------------------------------------------------------------------------------------ resolve


def unet_shapes(model: Any) -> dict[str, Shape]:
    """Parameter shapes of the UNet of an SVDBundle / SVDModel / UNet module, or from a shape table
    (UNet-relative keys, or official keys from which the ``model.diffusion_model.`` ones are taken)."""
    if isinstance(model, Mapping):
        if any(k.startswith(OFFICIAL_UNET_PREFIX) for k in model):
            n = len(OFFICIAL_UNET_PREFIX)
            return {k[n:]: _shape(v) for k, v in model.items() if k.startswith(OFFICIAL_UNET_PREFIX)}
        return {k: _shape(v) for k, v in model.items()}
    return {k: tuple(v.shape) for k, v in unet_module(model).state_dict().items() if ".lora_" not in k}


def unet_module(model: Any) -> nn.Module:
    model = getattr(model, "model", model)  # SVDBundle -> SVDModel
    unet = getattr(model, "unet", model)  # SVDModel -> VideoUNet
    if not isinstance(unet, nn.Module):
        raise TypeError(f"expected an SVDBundle, SVDModel or UNet module, got {type(model).__name__}")
    return unet


@dataclass(frozen=True)
class LoraEntry:
    """One resolved layer of a LoRA file: the model parameter it patches and how."""

    param: str  # UNet parameter name, e.g. "input_blocks.1.1.time_stack.0.attn1.to_q.weight"
    kind: str  # "lora", "diff", "set"
    keys: dict[str, str]  # role -> file key


def _resolver(shapes: Mapping[str, Shape]) -> dict[str, str]:
    """File prefix -> UNet module path (for weights) or parameter name (others), ComfyUI's rule."""
    table: dict[str, str] = {}
    for name in shapes:
        if name.endswith(".weight"):
            module = name[: -len(".weight")]
            table[UNET_PREFIX + module] = module
            table[KOHYA_PREFIX + module.replace(".", "_")] = module
        else:
            table[UNET_PREFIX + name] = name
    return table


@dataclass(frozen=True)
class LoraReport:
    """How a LoRA state fits a model. Key lists hold file keys; `modules` the UNet parameters it patches."""

    matched: tuple[str, ...]
    unmatched: tuple[str, ...]
    shape_mismatch: tuple[str, ...]
    modules: tuple[str, ...]
    incomplete: tuple[str, ...] = ()
    unsupported: tuple[str, ...] = ()
    format: str = "unknown"
    entries: tuple[LoraEntry, ...] = field(default=(), repr=False, compare=False)

    @property
    def ok(self) -> bool:
        """Everything in the file applies to the model."""
        return bool(self.modules) and not (self.unmatched or self.shape_mismatch or self.incomplete
                                           or self.unsupported)

    def summary(self) -> str:
        return (f"{len(self.matched)} matched keys -> {len(self.modules)} weights, {len(self.unmatched)} unmatched, "
                f"{len(self.shape_mismatch)} shape mismatches, {len(self.incomplete)} incomplete, "
                f"{len(self.unsupported)} unsupported (naming: {self.format})")

    def text(self, limit: int = 20) -> str:
        """A multi-line report for people (lists cut after `limit` entries)."""
        lines = [("OK: " if self.ok else "PROBLEMS: ") + self.summary()]
        if self.format == "diffusers/peft":
            lines.append("hint: diffusers/PEFT module names; convert the file with SVDLab_LoraConvert first")
        for title, items in (("unmatched keys (no such layer in this model)", self.unmatched),
                             ("shape mismatches (a LoRA for a different model?)", self.shape_mismatch),
                             ("incomplete layers (up without down, or the reverse)", self.incomplete),
                             ("unsupported adapter tensors", self.unsupported)):
            if items:
                lines.append(f"{title}: {len(items)}")
                lines += [f"  {item}" for item in items[:limit]]
                if len(items) > limit:
                    lines.append(f"  ... and {len(items) - limit} more")
        temporal = sum(is_temporal(m) for m in self.modules)
        lines.append(f"patched weights: {len(self.modules)} ({temporal} temporal)")
        return "\n".join(lines)


def validate_lora(model: Any, state: Mapping[str, Any]) -> LoraReport:
    """Match a LoRA state's keys against a model (SVDBundle, SVDModel, UNet module or a shape table such
    as an official key list) by ComfyUI's rules, and check every tensor's shape against the parameter it
    patches. Only shapes are read (meta tensors or a ``{key: shape}`` table work as `state` too)."""
    shapes = unet_shapes(model)
    resolve = _resolver(shapes)
    parsed = parse_lora(state)
    matched: list[str] = []
    unmatched = list(parsed.unknown)
    mismatch: list[str] = []
    incomplete: list[str] = []
    unsupported = list(parsed.unsupported)
    entries: list[LoraEntry] = []
    for prefix, roles in parsed.groups.items():
        keys = sorted(roles.values())
        target = resolve.get(prefix)
        if target is None:
            unmatched += keys
            continue
        if bad := sorted(roles[r] for r in roles if r in UNSUPPORTED.values()):
            unsupported += bad
            continue
        param = f"{target}.weight" if f"{target}.weight" in shapes else target
        found = _layer_entries(prefix, roles, param, shapes, incomplete)
        problems = [p for e in found if (p := _shape_problem(e, state, shapes))]
        if problems:
            mismatch += problems
        elif found:
            entries += found
            matched += keys
    modules = tuple(dict.fromkeys(e.param for e in entries))
    return LoraReport(tuple(matched), tuple(unmatched), tuple(mismatch), modules, tuple(incomplete),
                      tuple(unsupported), parsed.format(), tuple(entries))


def _layer_entries(prefix: str, roles: dict[str, str], param: str, shapes: Mapping[str, Shape],
                   incomplete: list[str]) -> list[LoraEntry]:
    """The patches one resolved layer prefix describes; an unpaired up/down goes to `incomplete`."""
    found: list[LoraEntry] = []
    halves = sorted(r for r in roles if r.startswith(("up", "down")))
    up = next((u for u in halves if u.startswith("up") and f"down{u[2:]}" in roles), None)
    if up is not None:
        keys = {"up": roles[up], "down": roles[f"down{up[2:]}"]}
        if "alpha" in roles:
            keys["alpha"] = roles["alpha"]
        found.append(LoraEntry(param, "lora", keys))
    elif halves or ("alpha" in roles and not {"diff", "diff_b", "set"} & set(roles)):
        incomplete.append(f"{prefix}: only {', '.join(roles[r] for r in sorted(roles))}")
        return []
    for role, kind in (("diff", "diff"), ("set", "set")):
        if role in roles:
            found.append(LoraEntry(param, kind, {kind: roles[role]}))
    if "diff_b" in roles:
        bias = param[: -len("weight")] + "bias" if param.endswith(".weight") else param + ".bias"
        found.append(LoraEntry(bias, "diff", {"diff": roles["diff_b"]}))
    return found


def _shape_problem(entry: LoraEntry, state: Mapping[str, Any], shapes: Mapping[str, Shape]) -> str | None:
    if entry.param not in shapes:
        return f"{entry.keys['diff']}: the layer has no parameter {entry.param}"
    target = shapes[entry.param]
    if entry.kind == "lora":
        up, down = _shape(state[entry.keys["up"]]), _shape(state[entry.keys["down"]])
        rank = down[0] if down else 0
        in_numel = math.prod(down[1:]) if len(down) > 1 else 0
        if len(up) >= 2 and math.prod(up[1:]) == rank and up[0] == target[0] and in_numel * up[0] == math.prod(target):
            return None
        return f"{entry.keys['up']}: up {list(up)} x down {list(down)} does not make {entry.param} {list(target)}"
    got = _shape(state[entry.keys[entry.kind]])
    if got == target:
        return None
    return f"{entry.keys[entry.kind]}: {list(got)} does not fit {entry.param} {list(target)}"
