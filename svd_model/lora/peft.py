"""Convert diffusers / PEFT-named SVD LoRAs into ComfyUI naming (which stock ComfyUI and this pack load).

Accepted input keys, after an optional ``unet.`` / ``base_model.model.`` (PEFT ``save_pretrained``) prefix:
``<diffusers UNetSpatioTemporalConditionModel module>`` + a suffix of :mod:`.keys` (``.lora_A.weight`` /
``.lora_B.weight``, ``.lora.down.weight`` / ``.lora.up.weight``, ``.lora_A.default.weight``, …), the older
attention-processor form (``attn1.processor.to_q_lora.down.weight``, ``…to_out_lora…`` = ``to_out.0``) and
kohya-style ``lora_unet_<diffusers module with . replaced by _>``. Module names are mapped with
:mod:`..diffusers_keys` (``temporal_transformer_blocks`` -> ``time_stack``, ``temporal_res_block`` ->
``time_stack``, ``spatial_res_block.conv1`` -> ``in_layers.2`` ...), tensors are passed through (PEFT's
A / B matrices have kohya's down / up layouts, convolutions included).

Alpha: PEFT files usually hold no alpha; the scale lives in the adapter config (``lora_alpha``, ``r``,
``use_rslora``, ``alpha_pattern``), which diffusers >= 0.34 writes into the safetensors metadata under
``lora_adapter_metadata``. Order used per layer: an ``.alpha`` tensor in the file, the `alpha` argument,
that metadata (rsLoRA's lora_alpha/sqrt(r) scale is folded in), else alpha = rank (scale 1, what
ComfyUI assumes for alpha-less files and PEFT's scale when lora_alpha == r). Every output layer gets an
explicit ``.alpha``.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor

from ..config import UNetConfig
from ..errors import CheckpointError, ConfigError
from ..weights.checkpoint import CheckpointReader, save_checkpoint
from ..weights.diffusers_keys import unet_sgm_to_diffusers
from .format import LORA_FORMAT, pack_version
from .keys import KOHYA_PREFIX, UNET_PREFIX, parse_lora, unet_shapes

__all__ = ["ConvertResult", "convert_peft_lora", "convert_peft_lora_file", "diffusers_module_map"]

log = logging.getLogger(__name__)

STRIP_PREFIXES = ("base_model.model.unet.", "base_model.model.", "unet.")
METADATA_KEY = "lora_adapter_metadata"


@dataclass(frozen=True)
class ConvertResult:
    """state: ComfyUI-named LoRA; unmapped: input keys that name no SVD UNet layer; modules: layers
    converted; alpha_source: where the alphas came from."""

    state: dict[str, Tensor]
    unmapped: tuple[str, ...]
    modules: int
    alpha_source: str

    def summary(self) -> str:
        return (f"{self.modules} layers converted, {len(self.unmapped)} keys unmapped; alpha from "
                f"{self.alpha_source}")


@functools.lru_cache(maxsize=4)
def _default_shapes(config: UNetConfig) -> tuple[tuple[str, tuple[int, ...]], ...]:
    from ..nn.unet import VideoUNet

    with torch.device("meta"):
        unet = VideoUNet(config)
    return tuple((k, tuple(v.shape)) for k, v in unet.state_dict().items())


def diffusers_module_map(unet: Any = None) -> dict[str, str]:
    """diffusers module path -> UNet (sgm) module path for every weight of `unet` (an SVDBundle /
    SVDModel / UNet module or a shape table; default: the full-size SVD UNet, whose layout all SVD-family
    variants share). Non-weight parameters (``mix_factor``) map under their full names."""
    shapes = dict(_default_shapes(UNetConfig())) if unet is None else unet_shapes(unet)
    # unet_sgm_to_diffusers passes values through untouched, so the sgm names ride along as values.
    renamed = cast(dict[str, str], unet_sgm_to_diffusers(cast(dict[str, Tensor], {k: k for k in shapes})))
    table = {}
    for diffusers, sgm in renamed.items():
        if diffusers.endswith(".weight") and sgm.endswith(".weight"):
            table[diffusers[: -len(".weight")]] = sgm[: -len(".weight")]
        else:
            table[diffusers] = sgm
    return table


def _strip(key: str) -> str:
    for prefix in STRIP_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def _normalise(prefix: str) -> str:
    """Old attention-processor names -> module names: ``attn1.processor.to_q`` -> ``attn1.to_q``."""
    return prefix.replace(".processor.", ".")


def _lookup(prefix: str, table: Mapping[str, str], underscored: Mapping[str, str]) -> str | None:
    if prefix.startswith(KOHYA_PREFIX):
        return underscored.get(prefix[len(KOHYA_PREFIX):])
    name = _normalise(prefix)
    return table.get(name) or table.get(f"{name}.0")  # to_out_lora -> to_out.0


def _adapter_config(metadata: Mapping[str, str] | None) -> dict[str, Any]:
    raw = (metadata or {}).get(METADATA_KEY)
    if not raw:
        return {}
    try:
        config = json.loads(raw)
    except json.JSONDecodeError:
        log.warning("ignoring unreadable %s metadata", METADATA_KEY)
        return {}
    # Pipelines write one config per component, keys prefixed "unet." (or "transformer.").
    unet = {k[len("unet."):]: v for k, v in config.items() if k.startswith("unet.")}
    return unet or config


def _metadata_alpha(config: Mapping[str, Any], diffusers_module: str, rank: int) -> float | None:
    pattern = config.get("alpha_pattern") or {}
    alpha = next((float(v) for k, v in pattern.items()
                  if diffusers_module == k or diffusers_module.endswith("." + k)), None)
    if alpha is None and config.get("lora_alpha") is not None:
        alpha = float(config["lora_alpha"])
    if alpha is not None and config.get("use_rslora"):
        alpha *= math.sqrt(rank)  # rsLoRA scale lora_alpha / sqrt(r) == (lora_alpha * sqrt(r)) / r
    return alpha


def convert_peft_lora(
    state: Mapping[str, Tensor],
    *,
    unet: Any = None,
    alpha: float | None = None,
    metadata: Mapping[str, str] | None = None,
) -> ConvertResult:
    """diffusers / PEFT / kohya-diffusers names -> ``diffusion_model.<module>.lora_up.weight`` /
    ``.lora_down.weight`` / ``.alpha``. `unet` gives the layout (see :func:`diffusers_module_map`).
    Raises CheckpointError when the state is already ComfyUI-named or no key maps; keys that do not map
    (e.g. a text encoder's) are listed in the result."""
    if alpha is not None and not (math.isfinite(float(alpha)) and float(alpha) > 0):
        raise ConfigError(f"LoRA alpha must be a positive finite number (or None: from the file), got {alpha!r}")
    table = diffusers_module_map(unet)
    underscored = {k.replace(".", "_"): v for k, v in table.items()}
    stripped = {_strip(k): k for k in state}
    parsed = parse_lora(stripped)
    if parsed.groups and all(p.startswith(UNET_PREFIX) for p in parsed.groups):
        raise CheckpointError("this LoRA already uses ComfyUI naming (diffusion_model.*): nothing to convert")
    config = _adapter_config(metadata)
    out: dict[str, Tensor] = {}
    unmapped = [stripped[k] for k in (*parsed.unknown, *parsed.unsupported)]
    sources: set[str] = set()
    modules = 0
    for prefix, roles in parsed.groups.items():
        target = _lookup(prefix, table, underscored)
        up = next((r for r in roles if r.startswith("up") and f"down{r[2:]}" in roles), None)
        if target is None or up is None:
            unmapped += [stripped[k] for k in roles.values()]
            continue
        used = {up, f"down{up[2:]}", "alpha"}
        unmapped += [stripped[k] for r, k in roles.items() if r not in used]  # DoRA / mid / diff: not converted
        down_t, up_t = state[stripped[roles[f"down{up[2:]}"]]], state[stripped[roles[up]]]
        rank = int(down_t.shape[0])
        layer_alpha, source = _layer_alpha(state, stripped, roles, alpha, config, _normalise(prefix), rank)
        sources.add(source)
        key = f"{UNET_PREFIX}{target}"
        out[f"{key}.lora_up.weight"] = up_t
        out[f"{key}.lora_down.weight"] = down_t
        out[f"{key}.alpha"] = torch.tensor(layer_alpha, dtype=torch.float32)
        modules += 1
    if not out:
        example = ", ".join(repr(k) for k in list(state)[:3])
        raise CheckpointError(
            f"none of the {len(state)} keys names a layer of the diffusers SVD UNet (e.g. {example}); "
            "expected keys like unet.down_blocks.0.attentions.0.temporal_transformer_blocks.0.attn1.to_q.lora_A.weight"
        )
    if unmapped:
        log.warning("%d LoRA keys did not map to the SVD UNet, e.g. %s", len(unmapped), unmapped[0])
    return ConvertResult(out, tuple(unmapped), modules, ", ".join(sorted(sources)))


def _layer_alpha(state: Mapping[str, Tensor], stripped: Mapping[str, str], roles: Mapping[str, str],
                 alpha: float | None, config: Mapping[str, Any], module: str, rank: int) -> tuple[float, str]:
    if "alpha" in roles:
        return float(state[stripped[roles["alpha"]]]), "file"
    if alpha is not None:
        return float(alpha), "argument"
    from_meta = _metadata_alpha(config, module, rank)
    if from_meta is not None:
        return from_meta, "metadata"
    return float(rank), "default (alpha = rank)"


def convert_peft_lora_file(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    unet: Any = None,
    alpha: float | None = None,
    overwrite: bool = False,
) -> ConvertResult:
    """Read a diffusers / PEFT LoRA .safetensors, convert it (:func:`convert_peft_lora`, with the file's
    adapter metadata) and write the ComfyUI-named file `dst` atomically with svd_lab metadata."""
    src, dst = Path(src), Path(dst)
    if dst.exists() and not overwrite:
        raise CheckpointError(f"{dst} exists; choose another name or allow overwriting")
    if dst.resolve() == src.resolve():
        raise CheckpointError(f"the converted file would replace its source {src}; choose another name")
    reader = CheckpointReader(src)
    state = {k: reader[k] for k in reader}
    result = convert_peft_lora(state, unet=unet, alpha=alpha, metadata=reader.metadata)
    ranks = sorted({int(v.shape[0]) for k, v in result.state.items() if k.endswith(".lora_down.weight")})
    meta = {
        "format": "pt",
        "svd_lab.format": LORA_FORMAT,
        "svd_lab.version": pack_version(),
        "svd_lab.converted_from": src.name,
        "svd_lab.lora.rank": ",".join(map(str, ranks)),
        "svd_lab.lora.modules": str(result.modules),
        "svd_lab.lora.alpha_source": result.alpha_source,
        "svd_lab.lora.unmapped": str(len(result.unmapped)),
    }
    save_checkpoint(dst, result.state, meta)
    return result
