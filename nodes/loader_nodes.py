"""Model loading: SVDLab_CheckpointLoader."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ..svd_model.config import VARIANT_DEFAULTS
from ..svd_model.errors import InputError
from ..svd_model.memory import MODES, plan_for
from ..svd_model.nn.attention import ATTENTION_PRECISIONS, DEFAULT_PRECISION, set_attention_precision
from ..svd_model.nn.cast import FP8_STORAGE
from ..svd_model.nn.compile import COMPILE_MODES, compile_unet
from ..svd_model.weights.loader import DTYPES, load_bundle, resolve_dtype
from ..svd_model.weights.vae_file import replace_vae
from . import bridge
from .types import SVDLAB_MODEL

log = logging.getLogger(__name__)

OFFLOAD_NONE = "none"
OFFLOAD_CPU = "cpu between nodes"
VAE_NONE = "none"  # vae_name: the checkpoint's own first stage
WEIGHTS_AS_LOADED = "as dtype"  # weight_storage: every weight in `dtype`


def _estimate_bytes(path: Path) -> int:
    """On-disk size as the memory estimate (file or diffusers folder)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*.safetensors"))


class CheckpointLoader:
    DESCRIPTION = (
        "Loads an SVD-family checkpoint (svd, svd_xt, svd_xt_1_1, sv3d_u, sv3d_p; official single-file "
        ".safetensors or a diffusers-format folder) from models/svd or models/checkpoints. The architecture is "
        "read from the weights; the variant only picks sampling defaults. Optionally a separate VAE file "
        "(models/vae, or another checkpoint's first stage) replaces the checkpoint's decoder."
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
                    "tooltip": "Weights of the UNet and image encoder (the VAEs stay fp32). auto: bf16 on CUDA GPUs "
                               "with native bf16 (RTX 30xx / A100 and later: fast fused attention, no overflow), "
                               "fp16 on older GPUs, fp32 on CPU."}),
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
                "vae_name": ([VAE_NONE, *bridge.list_vaes()], {
                    "default": VAE_NONE,
                    "tooltip": "none: the checkpoint's own VAE. Else a VAE file from models/vae (or models/svd: a "
                               "full checkpoint lends its first stage) that replaces the decoder, and the encoder "
                               "when the file has one: official, ComfyUI or diffusers key names; temporal or image "
                               "decoder. It must work in SVD's latent space (4 channels, factor 8)."}),
                "memory": (list(MODES), {
                    "default": "normal",
                    "tooltip": "normal: every network stays on the GPU while used. low_vram (small GPUs; SVD-XT 25 "
                               "frames 1024x576 in about 8 GB): the UNet stays in CPU memory and streams block by "
                               "block to the GPU, the image encoder and conditioning VAE leave the GPU after use, "
                               "and SVD Lab Decode decodes one frame at a time on 512-pixel tiles (its tile_size "
                               "overrides). On a CPU only the decode tiling changes anything."}),
                "weight_storage": ([WEIGHTS_AS_LOADED, *FP8_STORAGE], {
                    "default": WEIGHTS_AS_LOADED,
                    "tooltip": "as dtype: the UNet's weights in dtype. fp8_e4m3fn / fp8_e5m2: its linear and conv "
                               "weights kept in fp8 (half the memory of fp16), computed in dtype; small quality "
                               "loss (e4m3fn is the closer of the two). An fp8 checkpoint loads either way."}),
                "attention": (list(ATTENTION_PRECISIONS), {
                    "default": DEFAULT_PRECISION,
                    "tooltip": "Attention precision; changes only fp16 (bf16 and fp32 always run as they are). fp32: "
                               "fp16 attention computed in fp32 as the reference does: exact, but the fast fused "
                               "fp16 kernels cannot run. prescale: q pre-multiplied by the softmax scale, fused fp16 "
                               "kernels (faster on GPU; about 1e-3 relative difference in the attention). half: "
                               "fused fp16 kernels as they are. auto: prescale for fp16."}),
                "compile": (list(COMPILE_MODES), {
                    "default": "off",
                    "tooltip": "off: eager PyTorch. regional: torch.compile the UNet's repeated blocks; the first "
                               "run pays the compile time (a minute or more on GPU, several minutes on CPU), later "
                               "runs and other resolutions reuse it; faster sampling, same results within rounding. "
                               "regional+cudagraphs: also CUDA graphs (GPU only, less launch overhead, more memory; "
                               "not with memory low_vram). Where compiling is unavailable (no Triton, no C++ "
                               "compiler) a warning is logged and the model runs eager."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, ckpt_name: str | None) -> bool | str:
        # vae_name is not named here, so ComfyUI (and the headless validator) check it against its choices: names
        # listed from the model folders; load() resolves it confined like a checkpoint
        if ckpt_name is None or bridge.find_checkpoint(ckpt_name) is not None:
            return True
        return bridge.missing_checkpoint_message(ckpt_name)

    def load(self, ckpt_name: str, dtype: str, variant: str, offload: str,
             allow_non_finite: bool = False, vae_name: str = VAE_NONE, memory: str = "normal",
             weight_storage: str = WEIGHTS_AS_LOADED, attention: str = DEFAULT_PRECISION,
             compile: str = "off") -> tuple[Any, str]:
        plan = plan_for(memory)
        if compile == "regional+cudagraphs" and plan.stream_unet:
            raise InputError(f"compile {compile!r} cannot run with memory {memory!r} (the UNet streams its blocks, "
                             "CUDA graphs replay fixed weight addresses); use compile 'regional'")
        if offload != OFFLOAD_NONE and memory != "normal":
            raise InputError(f"offload {offload!r} and memory {memory!r} both decide where the weights live; pick "
                             f"one (memory {memory!r} already keeps the UNet in CPU memory and offloads the encoders)")
        path = bridge.resolve_checkpoint(ckpt_name)
        vae_path = bridge.resolve_vae(vae_name) if vae_name != VAE_NONE else None
        compute = bridge.device()
        keep_in_ram = offload != OFFLOAD_NONE or plan.stream_unet or plan.offload_encoders
        load_device = bridge.load_device(compute, keep_in_ram)  # inside ComfyUI: its offload device
        weights_dtype = resolve_dtype(dtype, compute)  # "auto" follows the compute device, not the CPU
        bridge.free_memory(_estimate_bytes(path), load_device)
        bundle = load_bundle(path, device=load_device, dtype=weights_dtype,
                             variant=None if variant == "auto" else variant,
                             allow_non_finite=bool(allow_non_finite),
                             weight_storage=None if weight_storage == WEIGHTS_AS_LOADED else weight_storage)
        vae = replace_vae(bundle, vae_path, allow_non_finite=bool(allow_non_finite)) if vae_path else None
        if offload != OFFLOAD_NONE:
            bridge.set_offload(bundle, compute)
        else:
            bridge.place(bundle, plan, compute)
        set_attention_precision(bundle.model.unet, attention)
        compiled = compile_unet(bundle.model.unet, compile, device=compute) if compile != "off" else None
        bridge.soft_empty_cache()
        moved = f" between nodes, on {compute} while working" if offload != OFFLOAD_NONE else ""
        stored = f", UNet weights in {weight_storage}" if weight_storage != WEIGHTS_AS_LOADED else ""
        mode = f", memory {memory} (computes on {compute})" if memory != "normal" else ""
        info = (f"{os.path.basename(path)}: {bundle.family.value} model, variant {bundle.variant}, "
                f"{str(weights_dtype).removeprefix('torch.')}{stored} on {load_device}{moved}{mode}; "
                f"sizes must be multiples of {bundle.config.size_multiple}"
                f"{'; attention ' + attention if attention != DEFAULT_PRECISION else ''}"
                f"{'; ' + compiled.summary() if compiled else ''}"
                f"{'; ' + vae.summary() if vae else ''}")
        log.info(info)
        return bundle, info


NODES: dict[str, tuple[type, str]] = {
    "SVDLab_CheckpointLoader": (CheckpointLoader, "SVD Lab Checkpoint Loader"),
}
