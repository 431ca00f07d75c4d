"""Frame interpolation nodes: flow-based retiming (no model) and SVD keyframe in-betweening."""

from __future__ import annotations

import logging
from typing import Any

from ..svd_model.conditioning import check_size
from ..svd_model.diffusion.guidance import FRAME_GUIDANCE
from ..svd_model.errors import InputError
from ..svd_model.pipelines.flow_interp import FLOW_METHODS, FlowSettings, interpolate_images
from ..svd_model.pipelines.image_to_video import MAX_FRAMES, VideoParams
from ..svd_model.pipelines.keyframes import KEYFRAME_METHODS, decode_keyframe_video, interpolate_keyframes
from ..svd_model.weights.loader import SVDBundle
from . import adapters, bridge, widgets
from .bridge.video import UNSET, frames_input, source_problem, video_from_frames, with_latent_fps
from .io_nodes import VIDEO_OUTPUT_TOOLTIP, frames_inputs
from .types import MAX_SIZE, number_problem, range_problem
from .widgets import XT

log = logging.getLogger(__name__)


class FlowInterpolate:
    DESCRIPTION = (
        "Raises the frame rate with dense optical flow (OpenCV DIS or Farnebaeck), no model and no download: "
        "flow both ways between neighbouring frames, warping from both sides, occlusion-aware blending. x2, x4, "
        "any factor, or a target frame rate. Works pair by pair, so long videos only need the output's memory."
    )
    CATEGORY = "SVD Lab/interpolation"
    FUNCTION = "interpolate"
    RETURN_TYPES = ("IMAGE", "FLOAT", "INT", "VIDEO")
    RETURN_NAMES = ("images", "fps", "frame_count", "video")
    OUTPUT_TOOLTIPS = ("The retimed frames.", "Their frame rate (for Save Video).", "How many frames.",
                       VIDEO_OUTPUT_TOOLTIP)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "factor": ("FLOAT", {"default": 2.0, "min": 1.0, "max": 16.0, "step": 0.5, "tooltip": (
                "Frame-rate multiplier (2 = one new frame between each pair). Ignored when target_fps > 0.")}),
            "target_fps": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 240.0, "step": 0.01, "tooltip": (
                "Resample to this frame rate by timestamps instead (0 = use factor).")}),
            "source_fps": ("FLOAT", {"default": 8.0, "min": 0.01, "max": 240.0, "step": 0.01, "tooltip": (
                "Frame rate of IMAGE frames (connect SVD Lab Load Video's fps); a connected VIDEO brings its own.")}),
            "flow": (list(FLOW_METHODS), {"default": "dis_medium", "tooltip": (
                "Flow estimator: DIS medium (best), fast, ultrafast, or Farnebaeck.")}),
            "flow_max_side": ("INT", {"default": FlowSettings().max_flow_side, "min": 0, "max": MAX_SIZE,
                                      "step": 16, "tooltip": (
                "Estimate flow on a copy at most this large (longer side); 0 = full size (slower).")}),
        }, "optional": frames_inputs("The video's frames, in order (at least two).", "source_fps")}

    @classmethod
    def VALIDATE_INPUTS(cls, factor: float | None, target_fps: float | None, source_fps: float | None,
                        flow_max_side: int | None, images: Any = UNSET, video: Any = UNSET) -> bool | str:
        for name, value in (("factor", factor), ("target_fps", target_fps), ("source_fps", source_fps),
                            ("flow_max_side", flow_max_side)):
            problem = range_problem(cls, name, value)
            if problem:
                return problem
        if flow_max_side is not None and 0 < flow_max_side < 16:
            return f"flow_max_side = {flow_max_side}: use 0 (full size) or at least 16"
        return source_problem(images, video) or True

    def interpolate(self, images: Any = None, factor: float = 2.0, target_fps: float = 0.0, source_fps: float = 8.0,
                    flow: str = "dis_medium", flow_max_side: int = FlowSettings().max_flow_side,
                    video: Any = None) -> tuple[Any, float, int, Any]:
        images, rate = frames_input(images, video, "SVD Lab Flow Interpolate")
        source_fps = rate or source_fps
        settings = FlowSettings(method=flow, max_flow_side=flow_max_side)
        if images.shape[0] < 2:
            raise InputError(f"the IMAGE batch has {images.shape[0]} frame: interpolation needs at least two "
                             "frames (connect a video, e.g. SVD Lab Load Video)")
        frames = adapters.images_to_array(images)  # (t, H, W, 3) float32 in [0, 1]
        bar = bridge.Progress(1)
        out, fps = interpolate_images(
            adapters.array_to_images(frames), factor=None if target_fps > 0 else factor, source_fps=source_fps,
            target_fps=target_fps if target_fps > 0 else None, settings=settings, callback=bar.update)
        return out, float(fps), int(out.shape[0]), video_from_frames(out, fps)


class KeyframeInterpolate:
    DESCRIPTION = (
        "Generates the frames between a first and a last image with an SVD checkpoint. Stock SVD / SVD-XT: "
        "training-free time-reversal fusion (forward from the first frame, backward from the last, fused each step) "
        "or bidirectional sampling; a checkpoint finetuned with both keyframes in its concat conditioning (12 "
        "input channels) is used directly. The returned frames start and end exactly with the two images."
    )
    CATEGORY = "SVD Lab/interpolation"
    FUNCTION = "interpolate"
    RETURN_TYPES = ("IMAGE", "LATENT")
    RETURN_NAMES = ("images", "latent")
    OUTPUT_TOOLTIPS = ("The video, first and last frame = the keyframes.", "Its latents (frames in the batch).")

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "model": widgets.model(),
            "first": ("IMAGE", {"tooltip": "First keyframe (of a batch, the first image)."}),
            "last": ("IMAGE", {"tooltip": "Last keyframe (of a batch, the first image); same aspect ratio."}),
            "width": widgets.size(XT.width, "Video width; both keyframes are scaled to cover it and centre-cropped."),
            "height": widgets.size(XT.height, "Video height."),
            "frames": ("INT", {"default": XT.num_frames, "min": 0, "max": MAX_FRAMES, "tooltip": (
                "Frames including both keyframes (at least 3); 0 = the loaded variant's (SVD 14, SVD-XT 25).")}),
            "steps": widgets.steps(XT.steps, "Sampling steps; 0 = the loaded variant's."),
            "min_cfg": widgets.cfg(XT.min_cfg, "Guidance next to each keyframe."),
            "max_cfg": widgets.cfg(XT.max_cfg, "Guidance farthest from it."),
            "guidance": (list(FRAME_GUIDANCE), {"default": "linear", "tooltip": (
                "Guidance over the frames, counted from the keyframe each path starts at.")}),
            "fps": widgets.fps(),
            "motion_bucket_id": widgets.motion_bucket(),
            "cond_aug": widgets.cond_aug("Noise added to the keyframes for conditioning."),
            "seed": widgets.seed("Seed of all noise (augmentation, sampling, re-noising)."),
            "method": (list(KEYFRAME_METHODS), {"default": "auto", "tooltip": (
                "auto: concat for a keyframe checkpoint, else fusion. fusion: time-reversal fusion (Feng et al. "
                "2024). bidirectional: forward step, re-noise, backward step (ViBiDSampler, without CFG++/DDS). "
                "concat: a checkpoint finetuned for interpolation.")}),
            "renoise": ("INT", {"default": 0, "min": 0, "max": 8, "tooltip": (
                "fusion only: noise re-injection rounds per step (smoother, each costs one more step).")}),
            "chunk_size": ("INT", {"default": 14, "min": 1, "max": 64, "tooltip": "Frames decoded at once."}),
            "overlap": ("INT", {"default": 2, "min": 0, "max": 8, "tooltip": "Frames shared by decode chunks."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, width: int | None, height: int | None, frames: int | None, chunk_size: int | None,
                        overlap: int | None, min_cfg: float | None = None, max_cfg: float | None = None,
                        cond_aug: float | None = None) -> bool | str:
        problem = number_problem(cls, width=width, height=height, frames=frames, chunk_size=chunk_size,
                                 overlap=overlap, min_cfg=min_cfg, max_cfg=max_cfg, cond_aug=cond_aug)
        if problem:
            return problem
        for name, value in (("width", width), ("height", height)):
            if value is not None and value % 8:
                return f"{name} = {value} is not a multiple of 8; official SVD models need multiples of 64"
        if frames in (1, 2):
            return f"frames = {frames} leaves no frame between the keyframes: use at least 3 (or 0 for the default)"
        if chunk_size is not None and overlap is not None and overlap >= chunk_size:
            return f"overlap ({overlap}) must be smaller than chunk_size ({chunk_size})"
        return True

    def interpolate(self, model: SVDBundle, first: Any, last: Any, width: int, height: int, frames: int, steps: int,
                    min_cfg: float, max_cfg: float, guidance: str, fps: int, motion_bucket_id: int, cond_aug: float,
                    seed: int, method: str, renoise: int, chunk_size: int, overlap: int) -> tuple[Any, dict]:
        check_size(width, height, model.config.size_multiple)
        (h0, w0), (h1, w1) = first.shape[1:3], last.shape[1:3]
        if abs(w0 / h0 - w1 / h1) > 0.01 * w0 / h0:
            raise InputError(f"the keyframes have different aspect ratios: first {w0}x{h0}, last {w1}x{h1}; "
                             f"cropping both to {width}x{height} would frame them differently. Crop them to one "
                             "aspect ratio first")
        frame_a, count_a = adapters.conditioning_frame(first, width, height)
        frame_b, count_b = adapters.conditioning_frame(last, width, height)
        if count_a > 1 or count_b > 1:
            log.warning("keyframe batches of %d and %d images: used the first image of each", count_a, count_b)
        frames, steps = frames or model.defaults.num_frames, steps or model.defaults.steps
        params = VideoParams.for_variant(
            model.variant, num_frames=frames, width=width, height=height, fps=fps, motion_bucket_id=motion_bucket_id,
            cond_aug=cond_aug, steps=steps, min_cfg=min_cfg, max_cfg=max_cfg, guidance=guidance)
        with bridge.on_device(model, bridge.PARTS):
            latents = interpolate_keyframes(model, frame_a, frame_b, params, generator=adapters.generator(seed),
                                            callback=bridge.step_callback(steps), method=method, renoise=renoise)
            video = decode_keyframe_video(model, latents, frame_a, frame_b, chunk_size=chunk_size,
                                          overlap=min(overlap, chunk_size - 1), callback=bridge.chunk_callback(frames))
        return adapters.video_to_images(video), with_latent_fps(adapters.latents_to_comfy(latents), fps)


NODES: dict[str, tuple[type, str]] = {
    "SVDLab_FlowInterpolate": (FlowInterpolate, "SVD Lab Flow Interpolate"),
    "SVDLab_KeyframeInterpolate": (KeyframeInterpolate, "SVD Lab Keyframe Interpolate"),
}
