"""Multi-view (SV3D) nodes: orbit cameras, object image preparation, orbit conditioning, camera list saving.

The orbit runs through the ordinary SVD Lab Sampler and Decode: the conditioning carries the reference's triangle
guidance, which the sampler uses when its guidance is "auto".
"""

from __future__ import annotations

import logging
from typing import Any

from ..svd_model.conditioning import check_size
from ..svd_model.errors import SVDError
from ..svd_model.pipelines.image_to_video import MAX_FRAMES
from ..svd_model.pipelines.multiview import (
    DEFAULT_ELEVATION,
    ORBIT_PRESETS,
    SV3D_FRAMES,
    OrbitCameras,
    check_orbit_model,
    orbit_cameras,
    orbit_condition,
    orbit_params,
    parse_angles,
)
from ..svd_model.pipelines.object_image import alpha_from_mask, prepare_object_image
from ..svd_model.weights.loader import SVDBundle
from . import adapters, bridge, widgets
from .types import SVDLAB_CAMERAS, SVDLAB_CONDITIONING, VideoConditioning, number_problem, range_problem

log = logging.getLogger(__name__)

SV3D_SIZE = 576
CATEGORY = "SVD Lab/multiview"
SIZE_MIN = 64  # SV3D sides: multiples of 64 from 64


def _cameras(preset: str, frames: int, elevation: float, seed: int, elevations: str, azimuths: str) -> OrbitCameras:
    return orbit_cameras(preset, frames, elevation, rng=int(seed),
                         elevations=parse_angles(elevations, "elevations"), azimuths=parse_angles(azimuths, "azimuths"))


class OrbitCamerasNode:
    DESCRIPTION = (
        "The camera of every frame of an SV3D orbit (elevation and azimuth in degrees; the last frame is the input "
        "view). static: one elevation, evenly spaced azimuths (what SV3D_u always renders). dynamic: the elevation "
        "varies along a closed orbit, drawn from the seed as in the reference demo (SV3D_p only). custom: your own "
        "lists. Also returns the list as JSON for 3D reconstruction tools."
    )
    CATEGORY = CATEGORY
    FUNCTION = "make"
    RETURN_TYPES = (SVDLAB_CAMERAS, "STRING")
    RETURN_NAMES = ("cameras", "cameras_json")
    OUTPUT_TOOLTIPS = ("For SVD Lab Orbit Conditioning and SVD Lab Save Cameras.",
                       "Per-frame elevation/azimuth (degrees and radians) and camera positions, as JSON.")

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "preset": (list(ORBIT_PRESETS), {"default": "static", "tooltip": (
                "static: one elevation; dynamic: elevation varies along the orbit (SV3D_p); custom: the lists "
                "below.")}),
            "frames": ("INT", {"default": SV3D_FRAMES, "min": 1, "max": MAX_FRAMES,
                               "tooltip": "Views in the orbit; SV3D was trained on 21."}),
            "elevation": ("FLOAT", {"default": DEFAULT_ELEVATION, "min": -90.0, "max": 90.0, "step": 0.5, "tooltip": (
                "Elevation of the input view in degrees above the horizon (static and dynamic orbits; custom "
                "when its elevation list is empty).")}),
            "seed": widgets.seed("Seed of the dynamic orbit."),
            "elevations": ("STRING", {"default": "", "multiline": True, "tooltip": (
                "custom: elevations in degrees, 1 value (every frame) or one per frame, separated by commas.")}),
            "azimuths": ("STRING", {"default": "", "multiline": True, "tooltip": (
                "custom: azimuths in degrees, one per frame (the last is the input view); empty = evenly spaced.")}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, preset: str | None, frames: int | None, elevations: str | None,
                        azimuths: str | None, elevation: float | None = None) -> bool | str:
        problem = number_problem(cls, frames=frames, elevation=elevation)
        if problem:
            return problem
        if preset is not None and preset not in ORBIT_PRESETS:  # declared here, so ComfyUI skips its own check
            return f"preset {preset!r} is not one of {', '.join(ORBIT_PRESETS)}"
        if preset == "custom" and None not in (frames, elevations, azimuths):
            try:
                _cameras("custom", frames, DEFAULT_ELEVATION, 0, elevations, azimuths)
            except SVDError as exc:
                return str(exc)
        return True

    def make(self, preset: str, frames: int, elevation: float, seed: int, elevations: str,
             azimuths: str) -> tuple[OrbitCameras, str]:
        cameras = _cameras(preset, frames, elevation, seed, elevations, azimuths)
        return cameras, cameras.to_json()


class PrepareObjectImage:
    DESCRIPTION = (
        "Prepares the input SV3D expects: the object cropped to its bounding box and centred on a square canvas, "
        "resized (576x576 for SV3D). With alpha (a 4-channel IMAGE or a MASK) the background becomes white, as in "
        "the reference; without, the plain background is estimated from the image border and kept."
    )
    CATEGORY = CATEGORY
    FUNCTION = "prepare"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("Square image(s), object centred.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "The object photo or render (RGBA uses its alpha)."}),
                "size": widgets.size(SV3D_SIZE, "Output side in pixels (SV3D: 576).", minimum=SIZE_MIN),
                "object_ratio": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": (
                    "Object size / frame size (e.g. 0.85). 0 keeps the input's framing (the reference default).")}),
            },
            "optional": {
                "mask": ("MASK", {"tooltip": "Alpha as a MASK (e.g. from Load Image or a background remover)."}),
                "mask_marks": (["background", "object"], {"default": "background", "tooltip": (
                    "What the mask's 1s are: background (Load Image's MASK = 1 - alpha) or object.")}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, object_ratio: float | None = None) -> bool | str:
        return range_problem(cls, "object_ratio", object_ratio) or True

    def prepare(self, image: Any, size: int, object_ratio: float, mask: Any = None,
                mask_marks: str = "background") -> tuple[Any]:
        rgb = adapters.images_to_video(image)[0]  # (b, 3, H, W) in [-1, 1]
        alpha = None
        if mask is not None:
            alpha = alpha_from_mask(mask, mask_marks)
        elif image.shape[-1] == 4:
            alpha = image[..., 3]  # the IMAGE's own alpha channel
        prepared = prepare_object_image(rgb, size, object_ratio or None, alpha=alpha)
        return (adapters.video_to_images(prepared[None]),)


class OrbitConditioning:
    DESCRIPTION = (
        "Encodes an object image for an SV3D orbit (SV3D_u: fixed orbit; SV3D_p: the given cameras) and returns an "
        "empty latent with one frame per camera. Connect to SVD Lab Sampler (guidance auto = the reference's "
        "triangle; reference cfg 1.0 -> 2.5, 50 steps) and SVD Lab Decode."
    )
    CATEGORY = CATEGORY
    FUNCTION = "encode"
    RETURN_TYPES = (SVDLAB_CONDITIONING, "LATENT", "STRING")
    RETURN_NAMES = ("conditioning", "latent", "info")
    OUTPUT_TOOLTIPS = ("Conditioning for SVD Lab Sampler.", "Empty latent, one frame per camera.",
                       "What was used and the reference's sampler settings.")

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "model": widgets.model("An SV3D checkpoint (sv3d_u or sv3d_p) from SVD Lab Checkpoint Loader."),
            "image": ("IMAGE", {"tooltip": "The object, square and centred (SVD Lab Prepare Object Image); "
                                           "of a batch only the first image is used."}),
            "cameras": (SVDLAB_CAMERAS, {"tooltip": "From SVD Lab Orbit Cameras."}),
            "size": widgets.size(SV3D_SIZE, "Orbit frame side (SV3D: 576); the image is scaled to cover it and "
                                            "centre-cropped.", minimum=SIZE_MIN),
            "seed": widgets.seed("Seed of the conditioning noise augmentation."),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, size: int | None) -> bool | str:
        problem = range_problem(cls, "size", size)
        if problem:
            return problem
        if size is not None and size % 8:
            return f"size = {size} is not a multiple of 8; SV3D needs a multiple of 64 (576)"
        return True

    def encode(self, model: SVDBundle, image: Any, cameras: OrbitCameras, size: int,
               seed: int) -> tuple[VideoConditioning, dict, str]:
        check_orbit_model(model)
        check_size(size, size, model.config.size_multiple)
        frame, count = adapters.conditioning_frame(image, size, size)
        params = orbit_params(model, cameras, width=size, height=size)
        with bridge.on_device(model, bridge.CONDITIONING):
            cond, uncond = orbit_condition(model, frame, cameras, params, generator=adapters.generator(seed))
        conditioning = VideoConditioning(adapters.cond_to_cpu(cond), adapters.cond_to_cpu(uncond), params,
                                         (size, size), model.variant, input_view=frame.detach().cpu())
        latent = adapters.empty_latent(cameras.num_frames, size, size, model.config.unet.out_channels)
        camera_note = "cameras ignored (fixed orbit)" if model.variant == "sv3d_u" else "camera per frame"
        info = (f"{model.variant} orbit: {cameras.num_frames} frames at {size}x{size}, {cameras.preset} orbit, "
                f"{camera_note}; reference sampling: guidance auto ({params.guidance}), min_cfg {params.min_cfg}, "
                f"max_cfg {params.max_cfg}, {params.steps} steps")
        if count > 1:
            info = f"image batch has {count} images: used the first; {info}"
        return conditioning, latent, info


class SaveCameras:
    DESCRIPTION = ("Writes an orbit's camera list (per-frame elevation, azimuth, polar angle, camera position) as "
                   "a JSON file in the output folder, for 3D reconstruction tools.")
    CATEGORY = CATEGORY
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES = ()

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "cameras": (SVDLAB_CAMERAS, {"tooltip": "From SVD Lab Orbit Cameras."}),
            "filename_prefix": ("STRING", {"default": "SVDLab/orbit_cameras",
                                           "tooltip": "File name prefix inside the output folder."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, filename_prefix: str | None) -> bool | str:
        return bridge.prefix_problem(filename_prefix) or True

    def save(self, cameras: OrbitCameras, filename_prefix: str) -> dict:
        path, subfolder, name = bridge.save_target(filename_prefix, "output", "json")
        path.write_text(cameras.to_json() + "\n")
        log.info("wrote %s", bridge.display(path))
        return {"ui": {"text": [f"{subfolder}/{name}" if subfolder else name]}, "result": ()}


NODES: dict[str, tuple[type, str]] = {
    "SVDLab_OrbitCameras": (OrbitCamerasNode, "SVD Lab Orbit Cameras"),
    "SVDLab_PrepareObjectImage": (PrepareObjectImage, "SVD Lab Prepare Object Image"),
    "SVDLab_OrbitConditioning": (OrbitConditioning, "SVD Lab Orbit Conditioning"),
    "SVDLab_SaveCameras": (SaveCameras, "SVD Lab Save Cameras"),
}
