"""Image-to-video, composed from the package's parts: conditioning -> guided EDM sampling -> latents.

Shapes: image (b, 3, H, W) in [-1, 1]; latents (b, t, 4, H/8, W/8) in the 0.18215-scaled space.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

from ..conditioning import Cond, check_image, check_size, encode_cond_frames, vector_conditioning
from ..config import Family
from ..configdict import check_finite
from ..cpu_runtime import cpu_inference
from ..diffusion.denoiser import make_model_fn
from ..diffusion.guidance import cfg_denoiser, frame_scales
from ..diffusion.noise import initial_noise, noise_latents, randn
from ..diffusion.sampling import StepInfo, get_sampler
from ..diffusion.schedules import get_schedule, sigmas_for_denoise
from ..diffusion.step_cache import CacheStats, StepCache, StepCacheOptions
from ..errors import ConfigError, InputError
from ..memory import on_compute
from ..nn.compile import ensure_compiled
from ..nn.image_encoder import encode_image
from ..weights.loader import SVDBundle

MAX_FRAMES = 128


@dataclass(frozen=True)
class VideoParams:
    """Per-run settings. `VideoParams.for_variant(name, **overrides)` fills the reference defaults."""

    num_frames: int = 14
    width: int = 1024
    height: int = 576
    fps: int = 7  # conditioning uses fps_id = fps - 1 (demo / diffusers / ComfyUI convention)
    motion_bucket_id: int = 127
    cond_aug: float = 0.02
    steps: int = 25
    min_cfg: float = 1.0
    max_cfg: float = 2.5
    guidance: str = "linear"  # per-frame guidance shape: linear | triangle | constant (max_cfg)
    sampler: str = "euler"
    schedule: str = "karras"
    sigma_min: float = 0.002
    sigma_max: float = 700.0
    rho: float = 7.0
    denoise: float = 1.0  # < 1 starts from given latents, noised to the matching sigma
    # Step caching (diffusion/step_cache.py): off | deepcache | teacache. Faster, at a bounded distance from the
    # uncached result that grows with the threshold; off by default.
    step_cache: str = "off"
    cache_threshold: float = 0.1  # accumulated relative change of the gate's signal before a full evaluation
    cache_start: float = 0.15  # fraction of the steps before which nothing is reused
    cache_end: float = 0.9  # fraction of the steps from which every evaluation runs in full

    def __post_init__(self) -> None:
        check_finite(self)  # NaN passes every range check below, and inf breaks sampling
        if not 1 <= self.num_frames <= MAX_FRAMES:
            raise ConfigError(f"num_frames must be in 1..{MAX_FRAMES}, got {self.num_frames}")
        if self.width % 8 or self.height % 8 or self.width <= 0 or self.height <= 0:
            raise ConfigError(f"width and height must be positive multiples of 8, got {self.width}x{self.height}")
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if not 0.0 < self.denoise <= 1.0:
            raise ConfigError(f"denoise must be in (0, 1], got {self.denoise}")
        if self.cond_aug < 0 or self.min_cfg < 0 or self.max_cfg < 0:
            raise ConfigError("cond_aug, min_cfg and max_cfg must be >= 0")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ConfigError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")
        get_sampler(self.sampler)
        get_schedule(self.schedule)
        frame_scales(self.guidance, self.min_cfg, self.max_cfg, 2)
        _ = self.cache_options  # validates the step cache fields (ConfigError)

    @property
    def cache_options(self) -> StepCacheOptions:
        return StepCacheOptions(self.step_cache, self.cache_threshold, self.cache_start, self.cache_end)

    @property
    def fps_id(self) -> int:
        return self.fps - 1

    @classmethod
    def for_variant(cls, variant: str, **overrides: object) -> VideoParams:
        from ..config import sampling_defaults

        d = sampling_defaults(variant)
        base = cls(
            num_frames=d.num_frames, width=d.width, height=d.height, fps=d.fps,
            motion_bucket_id=d.motion_bucket_id, cond_aug=d.cond_aug, steps=d.steps,
            min_cfg=d.min_cfg, max_cfg=d.max_cfg, guidance=d.guidance, sampler=d.sampler, schedule=d.schedule,
        )
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown video parameter(s) {sorted(unknown)}")
        return replace(base, **overrides)


@torch.no_grad()
def encode_condition(
    bundle: SVDBundle,
    image: Tensor,
    params: VideoParams,
    *,
    generator: torch.Generator | None = None,
    aug_noise: Tensor | None = None,
    camera: Mapping[str, Tensor | float] | None = None,
) -> tuple[Cond, Cond]:
    """(cond, uncond) for `image` (b, 3, H, W) in [-1, 1] at the target size.

    The CLIP embedding sees the clean frame, the VAE the noise-augmented one
    (:func:`~..conditioning.encode_cond_frames`; noise from `generator`, or `aug_noise` (b, 3, H, W) when
    given: one of the two is required). SV3D_p needs `camera` with polars_rad and azimuths_rad ((t,) radians).
    """
    check_image(image, bundle.config.size_multiple)
    if tuple(image.shape[-2:]) != (params.height, params.width):
        raise InputError(
            f"image is {image.shape[-1]}x{image.shape[-2]}, params ask for {params.width}x{params.height}; resize first"
        )
    if bundle.family is Family.SV3D_P and not camera:
        raise InputError("an SV3D_p model needs a camera: polars_rad and azimuths_rad per frame")
    model = bundle.model
    b, t = image.shape[0], params.num_frames
    device = bundle.device
    clean = image.to(device, torch.float32)
    # offloaded encoders visit the device
    with on_compute(bundle, model.image_encoder, model.cond_vae), cpu_inference(device):
        crossattn = encode_image(model.image_encoder, clean.to(bundle.dtype)).float()[:, None]  # (b, 1, ctx)
        concat = encode_cond_frames(model.cond_vae, clean, params.cond_aug, device=device, generator=generator,
                                    noise=aug_noise)  # (b, 4, h, w), unscaled
    values: dict[str, Tensor | float] = {
        "fps_id": params.fps_id, "motion_bucket_id": params.motion_bucket_id, "cond_aug": params.cond_aug,
    }
    values.update(camera or {})
    vector = vector_conditioning(bundle.family, values, b, t).to(device)  # (b, t, adm)
    cond = Cond(crossattn, concat, vector)
    return cond, cond.unconditional()


@torch.no_grad()
def sample_video(
    bundle: SVDBundle,
    cond: Cond,
    uncond: Cond,
    params: VideoParams,
    *,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    init_latents: Tensor | None = None,
    callback: Callable[[StepInfo], None] | None = None,
    cache_stats: CacheStats | None = None,
) -> Tensor:
    """Guided sampling -> latents (b, t, 4, h, w), 0.18215-scaled.

    noise: optional (b, t, 4, h, w) N(0, 1) draw (else from `generator`, required then). With denoise < 1,
    `init_latents` (b, t, 4, h, w) is noised to the first kept sigma instead of starting from pure noise.
    With ``params.step_cache`` on, a new :class:`~..diffusion.step_cache.StepCache` serves this run; what it reused is
    logged and written into `cache_stats` when given (e.g. for the video's metadata).
    """
    check_size(params.width, params.height, bundle.config.size_multiple)
    b, t = cond.crossattn.shape[0], params.num_frames
    shape = (b, t, bundle.config.unet.out_channels, params.height // 8, params.width // 8)
    if noise is None:
        noise = randn(shape, generator, what="sample_video without a noise tensor")
    if tuple(noise.shape) != shape:
        raise InputError(f"noise must have shape {shape}, got {tuple(noise.shape)}")
    sigmas = get_schedule(params.schedule)(params.steps, params.sigma_min, params.sigma_max, params.rho)
    device = bundle.device
    if params.denoise < 1.0:
        if init_latents is None or tuple(init_latents.shape) != shape:
            raise InputError(f"denoise < 1 needs init_latents of shape {shape}")
        sigmas = sigmas_for_denoise(sigmas, params.denoise)
        x = noise_latents(init_latents.to(device, torch.float32), noise.to(device), sigmas[0])
    else:
        x = initial_noise(noise.to(device), sigmas[0])
    scales = frame_scales(params.guidance, params.min_cfg, params.max_cfg, t).to(device)
    unet = bundle.model.unet
    ensure_compiled(unet)  # a copy of a compiled UNet (apply_lora's) runs eager until compiled again
    cache = StepCache.for_sigmas(params.cache_options, sigmas, cache_stats)
    model_fn = make_model_fn(cache.bind(unet) if cache.active else unet)  # type: ignore[arg-type]
    denoiser = cfg_denoiser(model_fn, cond.to(device), uncond.to(device), scales, cat=Cond.cat)
    with cpu_inference(device):
        out = get_sampler(params.sampler)(denoiser, x, sigmas.to(device), generator=generator, callback=callback)
    cache.log_summary()
    return out
