"""Long-video node: SVDLab_ExtendVideo (continue a clip segment by segment, drift correction, loop)."""

from __future__ import annotations

import logging
from typing import Any

from ..svd_model.conditioning import check_size
from ..svd_model.diffusion.sampling import StepInfo
from ..svd_model.errors import SVDError
from ..svd_model.pipelines.extend import (
    SEGMENT_KEYS,
    build_segments,
    check_svd_model,
    extend_video,
    extended_length,
    parse_segment_overrides,
)
from ..svd_model.pipelines.image_to_video import MAX_FRAMES, VideoParams
from ..svd_model.weights.loader import SVDBundle
from . import adapters, bridge, widgets
from .bridge.video import UNSET, frames_input, source_problem, video_from_frames
from .io_nodes import VIDEO_OUTPUT_TOOLTIP
from .types import number_problem
from .widgets import XT

log = logging.getLogger(__name__)

MAX_SEGMENTS = 64


class ExtendVideo:
    DESCRIPTION = (
        "Continues a clip for N more segments: each segment is an image-to-video run that starts from the frame "
        "`overlap` frames before the end; its first `overlap` frames are cross-faded into the clip's last ones "
        "and the rest appended (frames out = input + segments x (frames - overlap)). Drift correction re-anchors "
        "each segment's colour and brightness (CIE Lab mean/std) to the input clip. Loop adds a keyframe-"
        "interpolated transition from the last frame back to the first (frames - 2 more)."
    )
    CATEGORY = "SVD Lab/video"
    FUNCTION = "extend"
    RETURN_TYPES = ("IMAGE", "STRING", "VIDEO")
    RETURN_NAMES = ("images", "info", "video")
    OUTPUT_TOOLTIPS = ("The whole video: the input clip followed by the new segments.", "Frame count and settings.",
                       VIDEO_OUTPUT_TOOLTIP + " The rate: the input VIDEO's, else the fps widget.")

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": widgets.model("An SVD / SVD-XT checkpoint from SVD Lab Checkpoint Loader."),
                "segments": ("INT", {"default": 2, "min": 0, "max": MAX_SEGMENTS,
                                     "tooltip": "Segments to add (0 with loop: only close the loop)."}),
                "frames": ("INT", {"default": 0, "min": 0, "max": MAX_FRAMES,
                                   "tooltip": "Frames per segment; 0 = the loaded variant's (SVD 14, SVD-XT 25)."}),
                "overlap": ("INT", {"default": 1, "min": 1, "max": 16, "tooltip": (
                    "Frames each segment shares with the video so far (it starts from the first of them); they "
                    "are cross-faded.")}),
                "fps": ("INT", {**widgets.fps()[1], "tooltip": (
                    "Frame-rate conditioning of the segments; a connected VIDEO's frame rate (rounded) replaces "
                    "it.")}),
                "motion_bucket_id": widgets.motion_bucket(),
                "cond_aug": widgets.cond_aug("Noise added to each segment's start frame."),
                "seed": widgets.seed("Seed of segment 1; segment i uses seed + i - 1 unless set below."),
                "steps": widgets.steps(0, "Sampling steps per segment; 0 = the loaded variant's."),
                "min_cfg": widgets.cfg(XT.min_cfg, "Guidance of a segment's first frame."),
                "max_cfg": widgets.cfg(XT.max_cfg, "Guidance of a segment's last frame."),
                "drift_correction": ("BOOLEAN", {"default": True, "tooltip": (
                    "Re-anchor each segment's colours (CIE Lab mean/std) to the input clip's, against drift.")}),
                "loop": ("BOOLEAN", {"default": False, "tooltip": (
                    "End where the video started: a keyframe-interpolated transition from the last frame to the "
                    "first.")}),
            },
            "optional": {
                "images": ("IMAGE", {"tooltip": "The clip to continue (one frame per batch entry; one image works "
                                                "too). Its size must be a multiple of 64 for official models. "
                                                "Connect this or video."}),
                "video": ("VIDEO", {"tooltip": "The clip as a VIDEO (core Load Video); its frame rate becomes the "
                                               "fps conditioning. Connect this or images."}),
                "per_segment": ("STRING", {"default": "", "multiline": True, "tooltip": (
                    "Optional per-segment settings, one line per segment: key=value pairs with keys "
                    f"{', '.join(SEGMENT_KEYS)}, e.g. 'motion_bucket_id=180 seed=7'. A blank line keeps the above.")}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, segments: int | None, frames: int | None, overlap: int | None,
                        per_segment: str | None = "", cond_aug: float | None = None, min_cfg: float | None = None,
                        max_cfg: float | None = None, images: Any = UNSET, video: Any = UNSET) -> bool | str:
        problem = number_problem(cls, segments=segments, frames=frames, overlap=overlap, cond_aug=cond_aug,
                                 min_cfg=min_cfg, max_cfg=max_cfg)
        if problem:
            return problem
        if frames and overlap is not None and frames <= overlap:
            return f"frames ({frames}) must exceed overlap ({overlap}) for a segment to add anything"
        if per_segment and segments is not None:
            try:
                parse_segment_overrides(per_segment, segments)
            except SVDError as exc:
                return str(exc)
        return source_problem(images, video) or True

    def extend(self, model: SVDBundle, images: Any = None, segments: int = 2, frames: int = 0, overlap: int = 1,
               fps: int = XT.fps, motion_bucket_id: int = XT.motion_bucket_id, cond_aug: float = XT.cond_aug,
               seed: int = 0, steps: int = 0, min_cfg: float = XT.min_cfg, max_cfg: float = XT.max_cfg,
               drift_correction: bool = True, loop: bool = False, per_segment: str = "",
               video: Any = None) -> tuple[Any, str, Any]:
        check_svd_model(model)
        images, rate = frames_input(images, video, "SVD Lab Extend Video")
        if rate is not None:
            fps = min(max(round(rate), 1), 240)  # the fps widget's range
        clip = adapters.images_to_video(images)  # (1, t, 3, H, W) in [-1, 1]
        height, width = clip.shape[-2:]
        check_size(width, height, model.config.size_multiple)
        base = VideoParams.for_variant(
            model.variant, num_frames=frames or model.defaults.num_frames, width=width, height=height, fps=fps,
            motion_bucket_id=motion_bucket_id, cond_aug=cond_aug, steps=steps or model.defaults.steps,
            min_cfg=min_cfg, max_cfg=max_cfg,
        )
        plan = build_segments(base, seed, parse_segment_overrides(per_segment or "", segments))
        bar = bridge.Progress(len(plan) + int(loop))

        def on_step(info: StepInfo) -> None:  # interruption inside a segment
            bridge.check_interrupt()

        with bridge.on_device(model, bridge.PARTS):
            out = extend_video(
                model, clip, plan, overlap=overlap, drift_correction=1.0 if drift_correction else 0.0, loop=loop,
                loop_params=plan[-1].params if plan else base, loop_generator=adapters.generator(seed + len(plan)),
                step_callback=on_step, segment_callback=lambda done, total: bar.update(done, total),
            )
        t0 = clip.shape[1]
        expected = extended_length(t0, [s.params.num_frames for s in plan], overlap,
                                   (plan[-1].params if plan else base).num_frames if loop else 0)
        info = (f"{t0} input frames + {len(plan)} segments ({', '.join(str(s.params.num_frames) for s in plan)} "
                f"frames, overlap {overlap}){' + loop' if loop else ''} = {out.shape[1]} frames at {width}x{height}; "
                f"drift correction {'on' if drift_correction else 'off'}; fps {fps}"
                f"{' (from the VIDEO)' if rate is not None else ''}")
        if out.shape[1] != expected:
            log.warning("extend produced %d frames, expected %d", out.shape[1], expected)
        frames_out = adapters.video_to_images(out)
        return frames_out, info, video_from_frames(frames_out, rate or fps)


NODES: dict[str, tuple[type, str]] = {
    "SVDLab_ExtendVideo": (ExtendVideo, "SVD Lab Extend Video"),
}
