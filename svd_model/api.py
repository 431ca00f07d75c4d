"""The package's public API in one place (re-exported by ``svd_model``).

    bundle = load_bundle("svd_xt.safetensors", device="cuda")   # vae="other_vae.safetensors": another first stage
    # a UNet-only finetune, e.g. the few-step AnimateLCM-SVD-xt: its variant's defaults (4 lcm steps) follow
    # bundle, _ = with_unet(bundle, "AnimateLCM-SVD-xt.safetensors")
    params = VideoParams.for_variant(bundle.variant, num_frames=25)
    cond, uncond = encode_condition(bundle, image, params, generator=gen)   # image (1, 3, H, W) in [-1, 1]
    latents = sample_video(bundle, cond, uncond, params, generator=gen, callback=print)
    frames = decode_latents(bundle, latents, chunk_size=8)                  # (1, t, 3, H, W) in [-1, 1]

Beyond one clip: ``orbit_video`` (SV3D, cameras from ``orbit_cameras``), ``interpolate_keyframes`` (first and
last frame), ``extend_video`` (more segments, drift-corrected). Curation and training live in
``svd_model.curation`` and ``svd_model.training`` (they need OpenCV / pyarrow, so they are not imported here).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .diffusion.sampling import StepInfo
from .pipelines.checks import require_image_to_video_model
from .pipelines.decode import decode_latents, encode_frames
from .pipelines.extend import extend_video
from .pipelines.image_to_video import VideoParams, encode_condition, sample_video
from .pipelines.keyframes import interpolate_keyframes
from .pipelines.multiview import orbit_cameras, orbit_video
from .weights.loader import SVDBundle, load_bundle, save_bundle
from .weights.unet_file import UNetReplacement, with_unet
from .weights.vae_file import VAEReplacement, replace_vae

__all__ = [
    "SVDBundle",
    "StepInfo",
    "UNetReplacement",
    "VAEReplacement",
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
    "replace_vae",
    "sample_video",
    "save_bundle",
    "with_unet",
]


def image_to_video(
    bundle: SVDBundle,
    image: Tensor,
    params: VideoParams,
    *,
    generator: torch.Generator | None = None,
    callback: Callable[[StepInfo], None] | None = None,
) -> Tensor:
    """image (b, 3, H, W) in [-1, 1] -> scaled latents (b, t, 4, H/8, W/8). One generator seeds both
    the conditioning noise augmentation and the sampling noise, so a seed fixes the whole video."""
    require_image_to_video_model(bundle, "image_to_video")
    cond, uncond = encode_condition(bundle, image, params, generator=generator)
    return sample_video(bundle, cond, uncond, params, generator=generator, callback=callback)
