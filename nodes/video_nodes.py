"""Image-to-video nodes: conditioning, sampler, decode, encode. Widgets -> typed params -> one package call."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from ..svd_model.conditioning import check_size
from ..svd_model.diffusion.guidance import FRAME_GUIDANCE
from ..svd_model.diffusion.sampling import SAMPLERS
from ..svd_model.diffusion.schedules import SCHEDULES
from ..svd_model.diffusion.step_cache import CACHE_MODES, CacheStats
from ..svd_model.errors import InputError
from ..svd_model.pipelines.checks import check_input_view, require_image_to_video_model
from ..svd_model.pipelines.decode import DECODE_PRECISIONS, decode_latents, encode_frames
from ..svd_model.pipelines.image_to_video import MAX_FRAMES, VideoParams, encode_condition, sample_video
from ..svd_model.pipelines.multiview import with_input_view
from ..svd_model.weights.loader import SVDBundle
from . import adapters, bridge, widgets
from .bridge.video import UNSET, frames_input, latent_fps, source_problem, video_from_frames, with_latent_fps
from .types import SVDLAB_CONDITIONING, VideoConditioning, number_problem, range_problem, size_problem
from .widgets import XT

log = logging.getLogger(__name__)

#: Sampler choice that takes the recommendation: the conditioning's guidance shape (VideoConditioning.params.guidance),
#: the model variant's sampler and schedule (SVDBundle.defaults).
GUIDANCE_AUTO = "auto"

#: Key of the Sampler's LATENT output holding what the step cache did (CacheStats.as_metadata(): strings), for the
#: saved video's metadata.
LATENT_STEP_CACHE = "svd_lab_step_cache"


class ImageToVideoConditioning:
    DESCRIPTION = (
        "Encodes the first image of the batch as SVD's conditioning frame (CLIP embedding of the clean frame, VAE "
        "latent of the noise-augmented one) and returns an empty latent of the video's size. The image is scaled "
        "to cover width x height and centre-cropped. Defaults are SVD-XT's reference settings."
    )
    CATEGORY = "SVD Lab/video"
    FUNCTION = "encode"
    RETURN_TYPES = (SVDLAB_CONDITIONING, "LATENT", "STRING")
    RETURN_NAMES = ("conditioning", "latent", "info")
    OUTPUT_TOOLTIPS = ("Conditioning for SVD Lab Sampler.", "Empty latent (frames in the batch), like core SVD.",
                       "What was used (e.g. which image of a batch).")

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "model": widgets.model(),
            "image": ("IMAGE", {"tooltip": "Conditioning frame; of a batch only the first image is used."}),
            "width": widgets.size(XT.width, "Video width; official models need a multiple of 64 (checked against the "
                                            "model)."),
            "height": widgets.size(XT.height, "Video height; multiple of 64 for official models."),
            "frames": ("INT", {"default": XT.num_frames, "min": 0, "max": MAX_FRAMES,
                               "tooltip": "Frames to generate; 0 = the loaded variant's (SVD 14, SVD-XT 25)."}),
            "fps": widgets.fps(),
            "motion_bucket_id": widgets.motion_bucket(),
            "cond_aug": widgets.cond_aug("Noise added to the conditioning frame: higher follows it less."),
            "seed": widgets.seed("Seed of the noise augmentation."),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, width: int | None, height: int | None, cond_aug: float | None = None) -> bool | str:
        return range_problem(cls, "cond_aug", cond_aug) or size_problem(cls, width, height) or True

    def encode(self, model: SVDBundle, image: Any, width: int, height: int, frames: int, fps: int,
               motion_bucket_id: int, cond_aug: float, seed: int) -> tuple[VideoConditioning, dict, str]:
        require_image_to_video_model(model, "SVD Lab Image To Video Conditioning")
        check_size(width, height, model.config.size_multiple)
        frames = frames or model.defaults.num_frames
        frame, count = adapters.conditioning_frame(image, width, height)
        info = f"{width}x{height}, {frames} frames at fps {fps}, motion {motion_bucket_id}, cond_aug {cond_aug}"
        if count > 1:
            info = f"image batch has {count} images: used the first (SVD conditions on one frame); {info}"
            log.warning(info)
        params = VideoParams.for_variant(model.variant, num_frames=frames, width=width, height=height, fps=fps,
                                         motion_bucket_id=motion_bucket_id, cond_aug=cond_aug)
        with bridge.on_device(model, bridge.CONDITIONING):
            cond, uncond = encode_condition(model, frame, params, generator=adapters.generator(seed))
        conditioning = VideoConditioning(adapters.cond_to_cpu(cond), adapters.cond_to_cpu(uncond), params,
                                         (width, height), model.variant)
        latent = adapters.empty_latent(frames, width, height, model.config.unet.out_channels)
        return conditioning, latent, info


class Sampler:
    DESCRIPTION = (
        "Samples the video latents with per-frame classifier-free guidance (auto: the conditioning's shape, i.e. "
        "min_cfg on the first frame rising to max_cfg for SVD, a triangle for SV3D orbits, as the reference). "
        "With denoise < 1 it starts from the connected latent (video-to-video)."
    )
    CATEGORY = "SVD Lab/video"
    FUNCTION = "sample"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("Video latents, frames in the batch.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": widgets.model(),
                "conditioning": (SVDLAB_CONDITIONING, {"tooltip": "From SVD Lab Image To Video Conditioning."}),
                "sampler": ([GUIDANCE_AUTO, *SAMPLERS], {"default": "euler", "tooltip": (
                    "Sampling method. auto: the loaded model's recommendation (lcm for a few-step model such as "
                    "AnimateLCM-SVD-xt, else euler). lcm suits only few-step (consistency) models.")}),
                "schedule": ([GUIDANCE_AUTO, *SCHEDULES], {"default": "karras", "tooltip": (
                    "Noise schedule. auto: the model's (animatelcm for AnimateLCM-SVD-xt, else karras). ays: NVIDIA's "
                    "Align Your Steps levels for SVD, made for 10 steps (interpolated for others).")}),
                "steps": widgets.steps(XT.steps, "Steps; 0 = the loaded variant's (SVD 25, SVD-XT 30, few-step 4)."),
                "min_cfg": widgets.cfg(XT.min_cfg, "Guidance of the first frame."),
                "max_cfg": widgets.cfg(XT.max_cfg, "Guidance of the last frame."),
                "guidance": ([GUIDANCE_AUTO, *FRAME_GUIDANCE], {"default": GUIDANCE_AUTO, "tooltip": (
                    "Guidance over the frames: auto = the conditioning's (SVD linear, SV3D orbit triangle), "
                    "linear min->max, triangle (weakest at both ends), constant (max).")}),
                "seed": widgets.seed("Seed of the sampling noise."),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": (
                    "1: from pure noise. < 1: from the connected latent, noised part of the way (video-to-video); "
                    "0 returns it unchanged.")}),
            },
            "optional": {
                "latent": ("LATENT", {"tooltip": "Start video for denoise < 1 (SVD Lab Encode Frames)."}),
                "step_cache": (list(CACHE_MODES), {"default": "off", "tooltip": (
                    "Skip most of the UNet on steps where its output changes little: faster, but no longer the "
                    "exact result (the difference grows with cache_threshold). off: exact. deepcache: reuses the "
                    "deep blocks' features and runs the shallow ones (closer to exact). teacache: reuses the output "
                    "change of the last full step (faster, further from exact). The first and last steps always "
                    "run in full.")}),
                "cache_threshold": ("FLOAT", {"default": 0.1, "min": 0.0, "max": 3.0, "step": 0.01, "tooltip": (
                    "Step cache: the estimated relative change of the UNet output tolerated before it is computed "
                    "again. Higher skips more steps (faster) and drifts further from the uncached video; 0 skips "
                    "nothing. Unused when step_cache is off.")}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, min_cfg: float | None = None, max_cfg: float | None = None,
                        denoise: float | None = None, cache_threshold: float | None = None) -> bool | str:
        return number_problem(cls, min_cfg=min_cfg, max_cfg=max_cfg, denoise=denoise,
                              cache_threshold=cache_threshold) or True

    def sample(self, model: SVDBundle, conditioning: VideoConditioning, sampler: str, schedule: str, steps: int,
               min_cfg: float, max_cfg: float, guidance: str, seed: int, denoise: float,
               latent: dict | None = None, step_cache: str = "off", cache_threshold: float = 0.1) -> tuple[dict]:
        if denoise < 1.0 and latent is None:
            raise InputError(f"denoise {denoise} < 1 needs a start video: connect a LATENT (e.g. from SVD Lab "
                             "Encode Frames) to the latent input, or set denoise to 1")
        if denoise == 0.0:
            return (latent,)
        steps = steps or model.defaults.steps
        sampler = model.defaults.sampler if sampler == GUIDANCE_AUTO else sampler
        schedule = model.defaults.schedule if schedule == GUIDANCE_AUTO else schedule
        guidance = conditioning.params.guidance if guidance == GUIDANCE_AUTO else guidance
        params = replace(conditioning.params, sampler=sampler, schedule=schedule, steps=steps, min_cfg=min_cfg,
                         max_cfg=max_cfg, guidance=guidance, denoise=denoise, step_cache=step_cache,
                         cache_threshold=cache_threshold)
        init = adapters.comfy_to_latents(latent) if denoise < 1.0 else None
        stats = CacheStats()
        with bridge.on_device(model, bridge.UNET):
            latents = sample_video(model, conditioning.cond, conditioning.uncond, params, init_latents=init,
                                   generator=adapters.generator(seed), callback=bridge.step_callback(steps),
                                   cache_stats=stats)
        out = with_latent_fps(adapters.latents_to_comfy(latents), conditioning.params.fps)
        return ({**out, LATENT_STEP_CACHE: stats.as_metadata()},)


#: Decode node tile edges (latent pixels): below 8 the decoder sees too little context; 256 = 2048 image pixels.
MIN_DECODE_TILE, MAX_DECODE_TILE = 8, 256


class Decode:
    DESCRIPTION = ("Decodes video latents to frames (IMAGE, one frame per batch entry) with the temporal VAE, "
                   "chunk by chunk to bound memory; overlapping chunks are cross-faded to hide seams.")
    CATEGORY = "SVD Lab/video"
    FUNCTION = "decode"
    RETURN_TYPES = ("IMAGE", "VIDEO")
    RETURN_NAMES = ("images", "video")
    OUTPUT_TOOLTIPS = ("The frames, for Save Video, SaveAnimatedWEBP or VHS Video Combine.",
                       "The frames as a VIDEO at the conditioning's fps (of the connected conditioning, else the one "
                       "SVD Lab Sampler stored in the latent, else the model variant's default).")

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "model": widgets.model(),
            "latent": ("LATENT", {"tooltip": "Video latents from SVD Lab Sampler."}),
            "chunk_size": ("INT", {"default": 14, "min": 1, "max": 64, "tooltip": (
                "Frames decoded at once (the reference uses 14): more needs more memory, fewer seams.")}),
            "overlap": ("INT", {"default": 2, "min": 0, "max": 8, "tooltip": (
                "Frames shared by consecutive chunks, cross-faded (0 = exactly the reference's decoding).")}),
        }, "optional": {
            "conditioning": (SVDLAB_CONDITIONING, {"tooltip": (
                "Optional. From SVD Lab Orbit Conditioning: the orbit's last frame becomes the input view, as the "
                "reference writes SV3D orbits (the orbit ends where it started). Ignored for image-to-video.")}),
            "tile_size": ("INT", {"default": 0, "min": 0, "max": MAX_DECODE_TILE, "step": 8, "tooltip": (
                "Spatial tile edge in latent pixels (x8 = image pixels; 0 = untiled, or the tiling of the model's "
                "memory mode, e.g. 64 for low_vram). Smaller tiles need less memory but differ a little more "
                "from untiled decoding and take longer (the overlaps are decoded twice).")}),
            "tile_overlap": ("INT", {"default": 8, "min": 0, "max": MAX_DECODE_TILE // 2, "tooltip": (
                "Latent pixels shared by neighbouring tiles, blended smoothly so no seam shows: more hides "
                "seams better but costs time. Must be smaller than tile_size; unused when tile_size is 0.")}),
            "precision": (list(DECODE_PRECISIONS), {"default": "fp32", "tooltip": (
                "fp32: the reference's decode. bf16: the decoder computes in bfloat16 (group norms in fp32): faster "
                "and lighter on GPUs with bf16, about 2e-2 relative error on the frames; slower on CPUs without "
                "AMX.")}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, chunk_size: int | None, overlap: int | None, tile_size: int | None = None,
                        tile_overlap: int | None = None) -> bool | str:
        problem = number_problem(cls, chunk_size=chunk_size, overlap=overlap, tile_size=tile_size,
                                 tile_overlap=tile_overlap)
        if problem:
            return problem
        if chunk_size is not None and overlap is not None and overlap >= chunk_size:
            return f"overlap ({overlap}) must be smaller than chunk_size ({chunk_size})"
        if tile_size and tile_size < MIN_DECODE_TILE:
            return f"tile_size ({tile_size}) must be 0 (untiled) or at least {MIN_DECODE_TILE} latent pixels"
        if tile_size and tile_overlap is not None and tile_overlap >= tile_size:
            return f"tile_overlap ({tile_overlap}) must be smaller than tile_size ({tile_size})"
        return True

    def decode(self, model: SVDBundle, latent: dict, chunk_size: int, overlap: int,
               conditioning: VideoConditioning | None = None, tile_size: int = 0,
               tile_overlap: int = 8, precision: str = "fp32") -> tuple[Any]:
        latents = adapters.comfy_to_latents(latent, model.config.unet.out_channels)
        tiles = {"tile_size": tile_size, "tile_overlap": tile_overlap} if tile_size else {}  # 0: the model's plan
        with bridge.on_device(model, bridge.FIRST_STAGE):
            frames = decode_latents(model, latents, chunk_size=chunk_size, overlap=overlap, **tiles,
                                    compute_dtype=DECODE_PRECISIONS[precision],
                                    callback=bridge.chunk_callback(latents.shape[1]))
        view = conditioning.input_view if conditioning is not None else None
        if view is not None:
            check_input_view(frames, view)
            frames = with_input_view(frames, view)
        images = adapters.video_to_images(frames)
        return images, video_from_frames(images, _decoded_fps(model, latent, conditioning))


def _decoded_fps(model: SVDBundle, latent: dict, conditioning: VideoConditioning | None) -> float:
    """The frame rate of decoded frames: the conditioning's fps, else the latent's, else the variant's default."""
    if conditioning is not None:
        return conditioning.params.fps
    return latent_fps(latent) or model.defaults.fps


class EncodeFrames:
    DESCRIPTION = ("Encodes frames (IMAGE batch = one video, or a VIDEO) to latents with the VAE encoder (posterior "
                   "mean), as the start video of SVD Lab Sampler with denoise < 1. Sizes must fit the "
                   "conditioning's.")
    CATEGORY = "SVD Lab/video"
    FUNCTION = "encode"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("Video latents, frames in the batch.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "model": widgets.model(),
        }, "optional": {
            "images": ("IMAGE", {"tooltip": "The video's frames (e.g. from SVD Lab Load Video). Connect this or "
                                            "video."}),
            "video": ("VIDEO", {"tooltip": "The video as a VIDEO (core Load Video); its frame rate is kept in the "
                                           "latent. Connect this or images."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, images: Any = UNSET, video: Any = UNSET) -> bool | str:
        return source_problem(images, video) or True

    def encode(self, model: SVDBundle, images: Any = None, video: Any = None) -> tuple[dict]:
        images, fps = frames_input(images, video, "SVD Lab Encode Frames")
        with bridge.on_device(model, bridge.FIRST_STAGE):
            latents = encode_frames(model, adapters.images_to_video(images))
        return (with_latent_fps(adapters.latents_to_comfy(latents), fps),)


NODES: dict[str, tuple[type, str]] = {
    "SVDLab_ImageToVideoConditioning": (ImageToVideoConditioning, "SVD Lab Image To Video Conditioning"),
    "SVDLab_Sampler": (Sampler, "SVD Lab Sampler"),
    "SVDLab_Decode": (Decode, "SVD Lab Decode"),
    "SVDLab_EncodeFrames": (EncodeFrames, "SVD Lab Encode Frames"),
}
