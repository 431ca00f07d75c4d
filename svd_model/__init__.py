"""svd_model: Stable Video Diffusion (SVD, SVD-XT, SV3D) in plain PyTorch. No ComfyUI, no diffusers.

The public API lives in :mod:`svd_model.api` and is re-exported here.
"""

from .api import (
    StepInfo,
    SVDBundle,
    VideoParams,
    decode_latents,
    encode_condition,
    encode_frames,
    extend_video,
    image_to_video,
    interpolate_keyframes,
    load_bundle,
    orbit_cameras,
    orbit_video,
    sample_video,
    save_bundle,
)
from .errors import CheckpointError, ConfigError, InputError, ShapeError, SVDError

__all__ = [
    "CheckpointError",
    "ConfigError",
    "InputError",
    "SVDBundle",
    "SVDError",
    "ShapeError",
    "StepInfo",
    "VideoParams",
    "decode_latents",
    "encode_condition",
    "encode_frames",
    "extend_video",
    "image_to_video",
    "interpolate_keyframes",
    "load_bundle",
    "orbit_cameras",
    "orbit_video",
    "sample_video",
    "save_bundle",
]
