"""UNet loading: SVDLab_UNetLoader puts a UNet-only file (a finetune such as the few-step AnimateLCM-SVD-xt) into a
loaded model, in place of its UNet. Files are listed from ComfyUI's models/unet and models/diffusion_models folders,
then models/svd (headless: the model folders)."""

from __future__ import annotations

import logging
from typing import Any

from ..svd_model.config import VARIANT_DEFAULTS
from ..svd_model.weights.unet_file import with_unet
from . import bridge, widgets
from .types import SVDLAB_MODEL

log = logging.getLogger(__name__)

VARIANT_AUTO = "auto"


class UNetLoader:
    DESCRIPTION = (
        "Replaces the UNet of an SVD Lab model by one from a UNet-only file (models/unet, models/diffusion_models or "
        "models/svd): official names with or without the model.diffusion_model. prefix, diffusers names (as "
        "AnimateLCM-SVD-xt is published), or a full checkpoint's UNet. The VAEs and image encoder stay the model's "
        "(load a base SVD-XT checkpoint first). Returns a new model; the input model is not changed. For a few-step "
        "model (AnimateLCM-SVD-xt) its recommended settings become the model's defaults: in SVD Lab Sampler set "
        "steps 0, sampler auto and schedule auto, and min_cfg / max_cfg as the info output says."
    )
    CATEGORY = "SVD Lab/loaders"
    FUNCTION = "load"
    RETURN_TYPES = (SVDLAB_MODEL, "STRING")
    RETURN_NAMES = ("model", "info")
    OUTPUT_TOOLTIPS = ("The model with the file's UNet (VAEs and image encoder shared with the input model).",
                       "The file's key layout, the sampling variant and its recommended steps, sampler, schedule "
                       "and guidance.")

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": widgets.model("A loaded model (e.g. SVD-XT from SVD Lab Checkpoint Loader) that lends its "
                                       "VAEs and image encoder."),
                "unet_name": (bridge.list_unets(), {
                    "tooltip": "UNet file in models/unet or models/diffusion_models (or models/svd: a full checkpoint "
                               "lends its UNet). It must fit the model: same family and latent channels."}),
                "variant": ([VARIANT_AUTO, *VARIANT_DEFAULTS], {
                    "default": VARIANT_AUTO,
                    "tooltip": "Sampling defaults the file is meant for. auto: the file's svd_lab.variant metadata, "
                               "else the few-step variant when its name contains \"lcm\" (AnimateLCM-SVD-xt: 4 steps, "
                               "lcm sampler, animatelcm schedule, cfg 1.0-1.2), else the input model's."}),
            },
            "optional": {
                "allow_non_finite": ("BOOLEAN", {
                    "default": False,
                    "tooltip": "Load a file even if some weights are NaN or Inf (a damaged file; its videos are "
                               "usually flat grey). Off: such a file is refused with the tensors named."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, unet_name: str | None) -> bool | str:
        if unet_name is None or bridge.find_unet(unet_name) is not None:
            return True
        return bridge.missing_unet_message(unet_name)

    def load(self, model: Any, unet_name: str, variant: str, allow_non_finite: bool = False) -> tuple[Any, str]:
        path = bridge.resolve_unet(unet_name)
        managed = bridge.comfy_managed()
        device = bridge.load_device(bridge.device()) if managed else None  # inside ComfyUI: its offload device
        bridge.free_memory(path.stat().st_size, device or next(model.model.unet.parameters()).device)
        new, done = with_unet(model, path, variant=None if variant == VARIANT_AUTO else variant,
                              allow_non_finite=bool(allow_non_finite), device=device)
        if not managed:
            bridge.inherit_offload(model, new)
        bridge.soft_empty_cache()
        info = f"{done.summary()}; sizes must be multiples of {new.config.size_multiple}"
        log.info(info)
        return new, info


NODES: dict[str, tuple[type, str]] = {
    "SVDLab_UNetLoader": (UNetLoader, "SVD Lab UNet Loader"),
}
