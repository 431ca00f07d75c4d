"""Keyframe interpolation with SVD: generate the frames between a first and a last frame.

Methods (``method=``):

- ``"fusion"``: Time Reversal Fusion, training-free on a stock image-to-video checkpoint (Feng et al.
  2024, "Explorative Inbetweening of Time and Space", ECCV 2024). At every step the shared noisy latent
  x is denoised forward, conditioned on the first keyframe, and time-reversed (frames flipped),
  conditioned on the last keyframe, the result flipped back. The two x0 estimates are fused per frame,
  w_i = 1 - i / (t - 1) for the forward one and 1 - w_i for the backward one, so frame 0 follows the
  first keyframe alone and frame t - 1 the last keyframe alone. (For a solver stepping from one shared x,
  fusing the x0 estimates is fusing the next latents, the paper's formulation.) Both paths run as one
  batched network call per step. ``renoise=k`` adds the paper's optional noise re-injection: after each
  step to sigma_next the latent is noised back to sigma and the step repeated, k more times (Euler).
- ``"bidirectional"``: the sequential bidirectional sampler of ViBiDSampler (Yang, Kwon & Ye 2024,
  ICLR 2025): each step is a forward Euler step conditioned on the first keyframe down to sigma_next,
  re-noising back to sigma with fresh noise, then a time-reversed Euler step conditioned on the last
  keyframe. The paper's CFG++ and DDS guidance are NOT implemented; plain per-frame CFG is used.
- ``"concat"``: a checkpoint finetuned for interpolation (:data:`KEYFRAME_LAYOUT`): its UNet takes 12
  input channels, noisy latent (4) + first-keyframe latent (4) + last-keyframe latent (4), detected
  from ``input_blocks.0.0.weight`` (``UNetConfig.concat_keyframes``); one ordinary guided sampling.
  :func:`expand_to_keyframe_model` makes such a UNet from an image-to-video one (zero new weights).
- ``"auto"``: ``"concat"`` for a 12-channel UNet, else ``"fusion"``.

End frames, two mechanisms: (1) latent anchoring during sampling (``anchor=True``): the denoiser's x0
estimate of frames 0 and t - 1 is replaced by the keyframes' VAE latents (encoder posterior mean), so
every sampler lands on them exactly; (2) exact replacement after decoding: :func:`decode_keyframe_video`
decodes and then writes the keyframes themselves into frames 0 and t - 1 (the VAE is lossy, so decoded
anchors are only close to them).

Shapes: keyframes (b, 3, H, W) in [-1, 1] at the params' size; latents (b, t, 4, H/8, W/8), 0.18215-scaled.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

import torch
from torch import Tensor, nn

from ..conditioning import Cond, check_image
from ..cpu_runtime import cpu_inference
from ..diffusion.denoiser import make_model_fn
from ..diffusion.guidance import cfg_denoiser, frame_scales
from ..diffusion.noise import initial_noise, randn, randn_like
from ..diffusion.sampling import Denoiser, StepInfo, euler_step, get_sampler
from ..diffusion.schedules import get_schedule
from ..errors import ConfigError, InputError
from ..nn.compile import ensure_compiled
from ..nn.model import SVDModel
from ..weights.loader import SVDBundle
from .checks import require_svd_family
from .decode import decode_latents, encode_frames
from .image_to_video import VideoParams, encode_condition

KEYFRAME_METHODS = ("auto", "fusion", "bidirectional", "concat")
#: Concat conditioning of a keyframe-interpolation checkpoint, in channel order after the noisy latent:
#: unscaled VAE posterior means of the noise-augmented first and last keyframes. Crossattn = the CLIP
#: embedding of the first keyframe; vector as image-to-video; uncond = zero crossattn and concat.
KEYFRAME_LAYOUT = ("noisy latent (4)", "first keyframe latent (4)", "last keyframe latent (4)")

Callback = Callable[[StepInfo], None]


def check_keyframes(first: Tensor, last: Tensor, params: VideoParams, multiple: int = 64) -> None:
    """Both (b, 3, H, W) in [-1, 1] of one size, the params' size; at least one frame between them."""
    for name, image in (("first", first), ("last", last)):
        if not isinstance(image, Tensor) or image.ndim != 4:
            raise InputError(f"the {name} keyframe must be a (b, 3, H, W) tensor, got {getattr(image, 'shape', image)}")
    if first.shape != last.shape:
        raise InputError(
            f"keyframes differ in size: first is {tuple(first.shape)} (b, c, H, W), last is {tuple(last.shape)}; "
            "resize both to the video size first"
        )
    check_image(first, multiple)
    check_image(last, multiple)
    if tuple(first.shape[-2:]) != (params.height, params.width):
        raise InputError(f"keyframes are {first.shape[-1]}x{first.shape[-2]}, params ask for "
                         f"{params.width}x{params.height}; resize first")
    if params.num_frames < 3:
        raise InputError(f"num_frames={params.num_frames} leaves no frame between the two keyframes; "
                         "keyframe interpolation needs num_frames >= 3 (the keyframes are frames 0 and t - 1)")


def resolve_method(bundle: SVDBundle, method: str) -> str:
    """The method to run on this checkpoint ("auto" resolved); a method the UNet cannot run raises ConfigError."""
    if method not in KEYFRAME_METHODS:
        raise ConfigError(f"unknown keyframe method {method!r}; choose from {list(KEYFRAME_METHODS)}")
    require_svd_family(bundle, "keyframe interpolation")
    unet = bundle.config.unet
    keyframe_model = unet.concat_keyframes
    if method == "auto":
        return "concat" if keyframe_model else "fusion"
    if method == "concat" and not keyframe_model:
        raise ConfigError(
            f"method 'concat' needs a keyframe-interpolation checkpoint (UNet input {3 * unet.out_channels} "
            f"channels); this one has {unet.in_channels} (image-to-video): use 'fusion' or 'bidirectional'"
        )
    if method != "concat" and unet.concat_channels != unet.out_channels:
        raise ConfigError(f"method {method!r} needs an image-to-video UNet (input {2 * unet.out_channels} channels); "
                          f"this one has {unet.in_channels}: use 'concat' (or 'auto')")
    return method


@torch.no_grad()
def keyframe_condition(
    bundle: SVDBundle, first: Tensor, last: Tensor, params: VideoParams, *,
    generator: torch.Generator | None = None,
) -> tuple[Cond, Cond]:
    """(cond, uncond) in :data:`KEYFRAME_LAYOUT`: concat (b, 8, h, w) = [first, last] latents."""
    cond_f, _ = encode_condition(bundle, first, params, generator=generator)
    cond_l, _ = encode_condition(bundle, last, params, generator=generator)
    cond = Cond(cond_f.crossattn, torch.cat([cond_f.concat, cond_l.concat], dim=1), cond_f.vector)
    return cond, cond.unconditional()


def anchored(denoiser: Denoiser, ends: Tensor) -> Denoiser:
    """Replace the x0 estimate of frames 0 and t - 1 by ends (b, 2, c, h, w): samplers then land on them."""

    def wrapped(x: Tensor, sigma: Tensor) -> Tensor:
        d = denoiser(x, sigma)  # (b, t, c, h, w)
        return torch.cat([ends[:, :1].to(d), d[:, 1:-1], ends[:, 1:].to(d)], dim=1)

    return wrapped


def _renoised(x: Tensor, sigma: float, sigma_next: float, generator: torch.Generator | None) -> Tensor:
    """x at sigma_next noised back up to sigma with fresh noise of std sqrt(sigma^2 - sigma_next^2)."""
    return x + math.sqrt(sigma**2 - sigma_next**2) * randn_like(x, generator, what="keyframe re-noising")


Step = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]


def _loop(step: Step, x: Tensor, sigmas: Tensor, renoise: int, generator: torch.Generator | None,
          callback: Callback | None) -> Tensor:
    """Run `step(x, sigma, sigma_next) -> (x_next, denoised)` (0-d sigmas) over the schedule, repeating each
    step after re-noising to sigma `renoise` more times (not the last step)."""
    n = sigmas.shape[0] - 1
    values = sigmas.tolist()
    for i in range(n):
        sigma, sigma_next = values[i], values[i + 1]
        x_in = x
        x, denoised = step(x_in, sigmas[i], sigmas[i + 1])
        for _ in range(renoise if sigma_next > 0 else 0):
            x_in = _renoised(x, sigma, sigma_next, generator)
            x, denoised = step(x_in, sigmas[i], sigmas[i + 1])
        if callback is not None:
            callback(StepInfo(i, n, x_in, sigma, sigma_next, denoised))
    return x


# ------------------------------------------------------------------------------ per-method sampling


@dataclass(frozen=True)
class _Sampling:
    """What every method shares: the start latent and schedule, the guidance, the anchors and the sampler."""

    x: Tensor  # (b, t, c, h, w) at sigmas[0]
    sigmas: Tensor
    model_fn: Callable
    scales: Tensor  # per-frame CFG scales
    ends: Tensor | None  # (b, 2, c, h, w) anchor latents, or None
    sampler: str
    device: torch.device | str
    generator: torch.Generator | None
    callback: Callback | None

    def guided(self, cond: Cond, uncond: Cond) -> Denoiser:
        return cfg_denoiser(self.model_fn, cond.to(self.device), uncond.to(self.device), self.scales, cat=Cond.cat)

    def pinned(self, denoiser: Denoiser) -> Denoiser:
        return anchored(denoiser, self.ends) if self.ends is not None else denoiser

    def sample(self, denoiser: Denoiser) -> Tensor:
        return get_sampler(self.sampler)(denoiser, self.x, self.sigmas, generator=self.generator,
                                         callback=self.callback)


def _time_reversed(denoiser: Denoiser, x: Tensor, sigma: Tensor) -> Tensor:
    """`denoiser` run on the frames in reverse order, its estimate flipped back."""
    return denoiser(x.flip(1), sigma).flip(1)


def _rows(sigma: Tensor, x: Tensor) -> Tensor:
    """A 0-d sigma as one value per batch row of x."""
    return torch.full((x.shape[0],), float(sigma), device=x.device)


def _bidirectional_step(forward: Denoiser, backward: Denoiser, generator: torch.Generator | None, x: Tensor,
                        sigma: Tensor, sigma_next: Tensor) -> tuple[Tensor, Tensor]:
    """Forward Euler step to sigma_next, re-noise back to sigma, time-reversed Euler step to sigma_next."""
    rows = _rows(sigma, x)
    x = euler_step(x, forward(x, rows), sigma, sigma_next)
    x = _renoised(x, float(sigma), float(sigma_next), generator)  # back to sigma
    d = backward(x, rows)
    return euler_step(x, d, sigma, sigma_next), d


def _batched_paths(both: Denoiser, x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
    """Both fusion paths in one call: rows forward (first keyframe) then reversed (last keyframe)."""
    d_fwd, d_rev = both(torch.cat([x, x.flip(1)]), torch.cat([sigma, sigma])).chunk(2)
    return d_fwd, d_rev


def _separate_paths(forward: Denoiser, reverse: Denoiser, x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
    """The two fusion paths one after the other (half the activations)."""
    return forward(x, sigma), reverse(x.flip(1), sigma)


def _fused(paths: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]], w: Tensor, x: Tensor, sigma: Tensor) -> Tensor:
    """Per-frame fusion of the forward estimate (weight w) and the flipped-back reversed one (1 - w)."""
    d_fwd, d_rev = paths(x, sigma)
    return w * d_fwd + (1.0 - w) * d_rev.flip(1)


def _euler_denoised_step(denoiser: Denoiser, x: Tensor, sigma: Tensor, sigma_next: Tensor) -> tuple[Tensor, Tensor]:
    d = denoiser(x, _rows(sigma, x))
    return euler_step(x, d, sigma, sigma_next), d


def _sample_concat(run: _Sampling, cond: Cond, uncond: Cond) -> Tensor:
    return run.sample(run.pinned(run.guided(cond, uncond)))


def _sample_bidirectional(run: _Sampling, first: tuple[Cond, Cond], last: tuple[Cond, Cond]) -> Tensor:
    forward = run.pinned(run.guided(*first))
    backward = run.pinned(partial(_time_reversed, run.guided(*last)))
    return _loop(partial(_bidirectional_step, forward, backward, run.generator), run.x, run.sigmas, 0,
                 run.generator, run.callback)


def _sample_fusion(run: _Sampling, first: tuple[Cond, Cond], last: tuple[Cond, Cond], *, renoise: int,
                   batch_paths: bool) -> Tensor:
    t = run.x.shape[1]
    w = torch.linspace(1.0, 0.0, t, device=run.device).reshape(1, t, 1, 1, 1)
    if batch_paths:
        both = run.guided(Cond.cat(first[0], last[0]), Cond.cat(first[1], last[1]))  # rows: forward, reversed
        paths = partial(_batched_paths, both)
    else:
        paths = partial(_separate_paths, run.guided(*first), run.guided(*last))
    fused = run.pinned(partial(_fused, paths, w))
    if renoise == 0:
        return run.sample(fused)
    return _loop(partial(_euler_denoised_step, fused), run.x, run.sigmas, renoise, run.generator, run.callback)


def _check_options(method: str, params: VideoParams, renoise: int) -> None:
    if params.denoise != 1.0:
        raise ConfigError(f"keyframe interpolation starts from noise: denoise must be 1, got {params.denoise}")
    if renoise < 0 or (renoise and method != "fusion"):
        raise ConfigError(f"renoise must be >= 0 and only applies to method 'fusion'; got {renoise} for {method!r}")
    needs_euler = method == "bidirectional" or renoise > 0
    if needs_euler and params.sampler != "euler":
        raise ConfigError(f"{method!r} with renoise={renoise} steps with Euler; set sampler='euler' "
                          f"(got {params.sampler!r})")


@torch.no_grad()
def interpolate_keyframes(
    bundle: SVDBundle,
    first: Tensor,
    last: Tensor,
    params: VideoParams,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    method: str = "auto",
    renoise: int = 0,
    anchor: bool = True,
    noise: Tensor | None = None,
    batch_paths: bool = True,
) -> Tensor:
    """first, last (b, 3, H, W) in [-1, 1] -> latents (b, t, 4, H/8, W/8) with t = params.num_frames.

    One generator seeds everything (noise augmentation of both keyframes, the starting noise, re-noising).
    method: see the module docstring; renoise: extra re-noised repetitions per step ("fusion", Euler);
    anchor: pin frames 0 and t - 1 to the keyframes' latents; noise: optional (b, t, 4, h, w) N(0, 1) start;
    batch_paths ("fusion"): both paths in one network call (False: one after the other, half the activations).
    callback(StepInfo) once per step (raise in it to stop).
    """
    method = resolve_method(bundle, method)
    check_keyframes(first, last, params, bundle.config.size_multiple)
    _check_options(method, params, renoise)
    device = bundle.device
    b, t = first.shape[0], params.num_frames
    shape = (b, t, bundle.config.unet.out_channels, params.height // 8, params.width // 8)
    if method == "concat":
        conds = keyframe_condition(bundle, first, last, params, generator=generator)
    else:
        conds_f = encode_condition(bundle, first, params, generator=generator)
        conds_l = encode_condition(bundle, last, params, generator=generator)
    if noise is None:
        noise = randn(shape, generator, what="interpolate_keyframes without a noise tensor")
    if tuple(noise.shape) != shape:
        raise InputError(f"noise must have shape {shape}, got {tuple(noise.shape)}")
    sigmas = get_schedule(params.schedule)(params.steps, params.sigma_min, params.sigma_max, params.rho).to(device)
    x = initial_noise(noise.to(device, torch.float32), sigmas[0])
    scales = frame_scales(params.guidance, params.min_cfg, params.max_cfg, t).to(device)
    ensure_compiled(bundle.model.unet)  # a copy of a compiled UNet (apply_lora's) runs eager until compiled again
    model_fn = make_model_fn(bundle.model.unet)
    ends = encode_frames(bundle, torch.stack([first, last], dim=1)).to(device) if anchor else None
    run = _Sampling(x, sigmas, model_fn, scales, ends, params.sampler, device, generator, callback)
    with cpu_inference(device):
        if method == "concat":
            return _sample_concat(run, *conds)
        if method == "bidirectional":
            return _sample_bidirectional(run, conds_f, conds_l)
        return _sample_fusion(run, conds_f, conds_l, renoise=renoise, batch_paths=batch_paths)


@torch.no_grad()
def decode_keyframe_video(
    bundle: SVDBundle, latents: Tensor, first: Tensor, last: Tensor, *, chunk_size: int | None = None,
    overlap: int = 0, callback: Callable[[int, int], None] | None = None,
) -> Tensor:
    """Decode (b, t, 4, h, w) latents to (b, t, 3, H, W) frames in [-1, 1] (CPU) whose frames 0 and t - 1
    ARE the keyframes (b, 3, H, W): exact replacement after decoding."""
    frames = decode_latents(bundle, latents, chunk_size=chunk_size, overlap=overlap, callback=callback)
    if first.shape != frames[:, 0].shape or last.shape != frames[:, -1].shape:
        raise InputError(f"keyframes {tuple(first.shape)} / {tuple(last.shape)} do not fit the decoded frames "
                         f"{tuple(frames[:, 0].shape)}")
    frames[:, 0] = first.to(frames)
    frames[:, -1] = last.to(frames)
    return frames


# ----------------------------------------------------------------------- keyframe-interpolation UNets


@torch.no_grad()
def expand_to_keyframe_model(model: SVDModel) -> SVDModel:
    """Turn an image-to-video model (UNet input 8 channels) into a keyframe one (12), in place.

    The input conv gets 4 more input channels for the last keyframe's latent with zero weights, so the
    expanded model computes exactly what the original did whatever the last keyframe is, until trained.
    """
    unet = model.config.unet
    if unet.concat_keyframes:
        raise ConfigError("the model already has a keyframe-interpolation UNet (12 input channels)")
    if unet.concat_channels != unet.out_channels:
        raise ConfigError(f"expected an image-to-video UNet with {2 * unet.out_channels} input channels, "
                          f"got {unet.in_channels}")
    old = model.unet.input_blocks[0][0]
    new = nn.Conv2d(unet.in_channels + unet.out_channels, old.out_channels, old.kernel_size, padding=old.padding,
                    device=old.weight.device, dtype=old.weight.dtype)
    new.weight.zero_()
    new.weight[:, : unet.in_channels] = old.weight
    new.bias.copy_(old.bias)
    model.unet.input_blocks[0][0] = new
    config = replace(model.config, unet=replace(unet, in_channels=unet.in_channels + unet.out_channels))
    model.config = config
    model.unet.config = config.unet
    return model
