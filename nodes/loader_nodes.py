"""Model loading: SVDLab_CheckpointLoader."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ..svd_model.config import VARIANT_DEFAULTS
from ..svd_model.weights.loader import DTYPES, load_bundle, resolve_dtype
from . import bridge
from .types import SVDLAB_MODEL

log = logging.getLogger(__name__)

OFFLOAD_NONE = "none"
OFFLOAD_CPU = "cpu between nodes"


def _estimate_bytes(path: Path) -> int:
    """On-disk size as the memory estimate (file or diffusers folder)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*.safetensors"))


class CheckpointLoader:
    DESCRIPTION = (
        "Loads an SVD-family checkpoint (svd, svd_xt, svd_xt_1_1, sv3d_u, sv3d_p; official single-file "
        ".safetensors or a diffusers-format folder) from models/svd or models/checkpoints. The architecture is "
        "read from the weights; the variant only picks sampling defaults."
    )
    CATEGORY = "SVD Lab/loaders"
    FUNCTION = "load"
    RETURN_TYPES = (SVDLAB_MODEL, "STRING")
    RETURN_NAMES = ("model", "info")
    OUTPUT_TOOLTIPS = ("The loaded model (networks + sampling variant).", "What was detected and where it lives.")

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "ckpt_name": (bridge.list_checkpoints(), {
                    "tooltip": "Checkpoint in models/svd (listed first) or models/checkpoints."}),
                "dtype": (["auto", *DTYPES], {
                    "default": "auto",
                    "tooltip": "Weights of the UNet and image encoder (the VAEs stay fp32). auto: fp16 on CUDA, "
                               "fp32 on CPU."}),
                "variant": (["auto", *VARIANT_DEFAULTS], {
                    "default": "auto",
                    "tooltip": "Sampling defaults to use. auto: from the weights and the file name "
                               "(\"xt\" -> svd_xt, \"xt_1_1\" -> svd_xt_1_1)."}),
                "offload": ([OFFLOAD_NONE, OFFLOAD_CPU], {
                    "default": OFFLOAD_NONE,
                    "tooltip": "none: keep the model on the GPU. cpu between nodes: keep it in RAM and move it "
                               "to the GPU only while a node of this pack runs (slower, frees VRAM for others)."}),
            },
            "optional": {
                "allow_non_finite": ("BOOLEAN", {
                    "default": False,
                    "tooltip": "Load a checkpoint even if some weights are NaN or Inf (a damaged file; its videos "
                               "are usually flat grey). Off: such a file is refused with the tensors named."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, ckpt_name: str | None) -> bool | str:
        if ckpt_name is None or bridge.find_checkpoint(ckpt_name) is not None:
            return True
        return bridge.missing_checkpoint_message(ckpt_name)

    def load(self, ckpt_name: str, dtype: str, variant: str, offload: str,
             allow_non_finite: bool = False) -> tuple[Any, str]:
        path = bridge.resolve_checkpoint(ckpt_name)
        compute = bridge.device()
        load_device = compute if offload == OFFLOAD_NONE else bridge.cpu_device()
        weights_dtype = resolve_dtype(dtype, compute)  # "auto" follows the compute device, not the CPU
        bridge.free_memory(_estimate_bytes(path), load_device)
        bundle = load_bundle(path, device=load_device, dtype=weights_dtype,
                             variant=None if variant == "auto" else variant,
                             allow_non_finite=bool(allow_non_finite))
        if offload != OFFLOAD_NONE:
            bridge.set_offload(bundle, compute)
        bridge.soft_empty_cache()
        moved = f" between nodes, on {compute} while working" if load_device != compute else ""
        info = (f"{os.path.basename(path)}: {bundle.family.value} model, variant {bundle.variant}, "
                f"{str(weights_dtype).removeprefix('torch.')} on {load_device}{moved}; "
                f"sizes must be multiples of {bundle.config.size_multiple}")
        log.info(info)
        return bundle, info


NODES: dict[str, tuple[type, str]] = {
    "SVDLab_CheckpointLoader": (CheckpointLoader, "SVD Lab Checkpoint Loader"),
}
