"""LoRA files: ComfyUI-loadable .safetensors with svd_lab metadata, and the fingerprint of the base model.

Files (:func:`save_lora`, :func:`load_lora`) use ComfyUI's generic LoRA naming, which its stock
``LoraLoaderModelOnly`` maps onto an SVD model's weights (comfy/lora.py ``model_lora_keys_unet``):
``diffusion_model.<module path>.lora_up.weight``, ``.lora_down.weight`` and ``.alpha`` (0-dim float32),
temporal layers included. Metadata keys are listed in :func:`lora_metadata`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import CheckpointError
from ..weights.checkpoint import CheckpointReader, save_checkpoint
from .keys import parse_lora, unet_module

__all__ = ["LORA_FORMAT", "base_model_hash", "load_lora", "lora_metadata", "pack_version", "save_lora"]

LORA_FORMAT = "svd_lab.comfyui_lora.v1"


def base_model_hash(model: Any) -> str:
    """Fingerprint of the base UNet weights: ``sha256:<hex>`` over every tensor of its state dict in
    sorted key order (adapter tensors excluded): the key, its shape, and its values cast to little-endian
    float16. Casting makes fp32 and fp16 copies of the same weights (fp16 made by rounding) hash alike;
    a bf16 copy hashes differently. Cost: one pass over the weights (~2 s for the full SVD UNet on CPU).
    `model`: an SVDBundle, SVDModel, UNet module, or a UNet state dict.
    """
    state = model if isinstance(model, Mapping) else unet_module(model).state_dict()
    digest = hashlib.sha256()
    for key in sorted(state):
        if ".lora_" in key:
            continue
        tensor = state[key].detach()
        digest.update(f"{key}:{list(tensor.shape)};".encode())
        half = tensor.to(torch.float16).contiguous().cpu()
        digest.update(half.reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def pack_version() -> str:
    """This pack's version: the installed distribution's, else pyproject.toml's, else "unknown"."""
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("comfyui_svd_lab")
    except (ImportError, PackageNotFoundError):
        pass
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    match = re.search(r'^version\s*=\s*"([^"]+)"', pyproject.read_text(), re.M) if pyproject.is_file() else None
    return match.group(1) if match else "unknown"


def lora_metadata(
    *,
    rank: int,
    alpha: float,
    preset: str,
    patterns: Sequence[str] = (),
    modules: int,
    steps: int,
    base_model_hash: str = "",
    extra: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """The metadata :func:`save_lora` writes (all strings, as safetensors requires):

    ``svd_lab.format`` (``svd_lab.comfyui_lora.v1``), ``svd_lab.version``, ``svd_lab.base_model_hash``
    (:func:`base_model_hash` of the UNet trained on), ``svd_lab.lora.rank``, ``svd_lab.lora.alpha``,
    ``svd_lab.lora.preset``, ``svd_lab.lora.patterns`` (JSON list), ``svd_lab.lora.modules`` (adapted
    layer count), ``svd_lab.steps``; kohya's ``ss_network_dim`` / ``ss_network_alpha`` for LoRA
    managers. `extra` entries are added as given (non-strings JSON-encoded).
    """
    meta = {
        "svd_lab.format": LORA_FORMAT,
        "svd_lab.version": pack_version(),
        "svd_lab.base_model_hash": base_model_hash,
        "svd_lab.lora.rank": str(rank),
        "svd_lab.lora.alpha": repr(float(alpha)),
        "svd_lab.lora.preset": preset,
        "svd_lab.lora.patterns": json.dumps(list(patterns)),
        "svd_lab.lora.modules": str(modules),
        "svd_lab.steps": str(steps),
        "ss_network_dim": str(rank),
        "ss_network_alpha": repr(float(alpha)),
    }
    for key, value in (extra or {}).items():
        meta[str(key)] = value if isinstance(value, str) else json.dumps(value)
    return meta


# ---------------------------------------------------------------------------------------- files


def save_lora(path: str | os.PathLike, state: Mapping[str, Tensor], *, metadata: Mapping[str, Any]) -> Path:
    """Write a LoRA state (ComfyUI naming) atomically as .safetensors with `metadata` (see lora_metadata;
    non-string values are JSON-encoded). Refuses a state whose keys are not all LoRA tensors."""
    parsed = parse_lora(state)
    if parsed.unknown or not parsed.groups:
        bad = parsed.unknown[:3] if parsed.unknown else ["(no LoRA tensors)"]
        raise CheckpointError(f"refusing to save a LoRA with non-LoRA keys: {bad}")
    meta = {"format": "pt", "svd_lab.format": LORA_FORMAT}
    meta.update({str(k): v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()})
    return save_checkpoint(path, dict(state), meta)


def load_lora(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, str]]:
    """(state, metadata) of a LoRA .safetensors file, copied into memory (any naming ComfyUI or diffusers
    uses). Raises CheckpointError for a non-safetensors file or one that holds no LoRA tensors (e.g. a
    full model checkpoint), naming what the file looks like."""
    reader = CheckpointReader(path)
    parsed = parse_lora(reader.shapes())
    if not parsed.groups:
        raise CheckpointError(f"{Path(path).name} is not a LoRA file: {parsed.describe_foreign()}")
    return {key: reader[key].clone() for key in reader}, dict(reader.metadata)
