"""Latents <-> frames through the first-stage VAE, in bounded memory.

latents: (b, t, 4, h, w) in the 0.18215-scaled diffusion space; frames: (b, t, 3, 8h, 8w) in [-1, 1].
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from einops import rearrange
from torch import Tensor

from ..cpu_runtime import cpu_inference
from ..errors import InputError, ShapeError
from ..memory import on_compute
from ..nn.vae import decode_chunked
from ..weights.loader import SVDBundle

#: Decode precisions a host offers -> decode_latents' compute_dtype (None: float32, the reference; bf16: the
#: decoder in bfloat16 with its group norms in float32, ~2e-2 relative error, for GPUs with bf16).
DECODE_PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}


@torch.no_grad()
def decode_latents(
    bundle: SVDBundle,
    latents: Tensor,
    *,
    chunk_size: int | None = None,
    overlap: int = 0,
    tile_size: int | None = None,
    tile_overlap: int | None = None,
    out_device: torch.device | str | None = "cpu",
    callback: Callable[[int, int], None] | None = None,
    compute_dtype: torch.dtype | None = None,
) -> Tensor:
    """Decode (b, t, 4, h, w) scaled latents to (b, t, 3, H, W) frames in [-1, 1] (not clamped).

    Each video is decoded in chunks of `chunk_size` frames (default: the variant's decoding_t, 14, as the
    reference scripts), so peak memory grows with the chunk size, not the frame count. A memory plan's
    decode_chunk (``bundle.memory``; 1 in low_vram) caps the chunk, and `overlap` is then cut to fit it.
    The temporal decoder sees each chunk alone, so a seam can show between chunks; with `overlap` > 0
    consecutive chunks share that many frames, cross-faded linearly. overlap=0 is the reference.

    `tile_size` (latent pixels; x8 = image pixels) also cuts every chunk into spatial tiles sharing
    `tile_overlap` latent pixels, blended linearly (:func:`~..nn.vae.decode_chunked`): peak memory then
    follows the tile, not the frame size, at a small difference from untiled decoding. None takes the
    plan's decode_tile / decode_tile_overlap (``bundle.memory``; untiled in the default plan); 0 is
    untiled. callback(frames_done, frames_total) runs after each chunk. `compute_dtype` (opt-in, e.g.
    torch.bfloat16; None = the VAE's float32, the reference): the decoder computes in that dtype under autocast
    (:meth:`~..nn.vae.AutoencoderKL.decode`), faster where the hardware has it, at a measured error.
    """
    if latents.ndim != 5:
        raise ShapeError(f"latents must be (b, t, c, h, w), got {tuple(latents.shape)}")
    plan = bundle.memory
    if tile_size is None:
        tile_size = plan.decode_tile
    if tile_overlap is None:
        tile_overlap = plan.decode_tile_overlap
    if tile_size is not None and tile_size < 0:
        raise InputError(f"tile_size must be >= 0 latent pixels (0 = untiled), got {tile_size}")
    chunk = chunk_size or bundle.defaults.decoding_t
    if plan.decode_chunk is not None and plan.decode_chunk < chunk:
        chunk, overlap = plan.decode_chunk, min(overlap, plan.decode_chunk - 1)
    b, t = latents.shape[:2]
    vae = bundle.model.first_stage
    z = rearrange(latents, "b t c h w -> (b t) c h w").to(bundle.device, vae.dtype) / bundle.config.scale_factor
    with cpu_inference(z.device):
        frames = decode_chunked(
            vae, z, chunk, num_frames_per_video=t,
            overlap=overlap, tile=tile_size or None, tile_overlap=tile_overlap if tile_size else 0,
            out_device=out_device, callback=callback, compute_dtype=compute_dtype,
        )  # (b t) 3 H W
    return rearrange(frames.float(), "(b t) c h w -> b t c h w", b=b)


@torch.no_grad()
def encode_frames(bundle: SVDBundle, frames: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    """Encode (b, t, 3, H, W) frames in [-1, 1] to scaled latents (b, t, 4, H/8, W/8).

    With a generator the posterior is sampled (as the reference's encode_first_stage does for
    training); without one its mean is used (deterministic, for video-to-video).
    """
    if frames.ndim != 5 or frames.shape[2] != 3:
        raise ShapeError(f"frames must be (b, t, 3, H, W), got {tuple(frames.shape)}")
    model = bundle.model
    vae = model.first_stage if model.first_stage.encoder is not None else model.cond_vae
    if vae.encoder is None:
        raise InputError("this checkpoint has no VAE encoder")
    b = frames.shape[0]
    x = rearrange(frames, "b t c h w -> (b t) c h w").to(bundle.device, vae.dtype)
    offloaded = (vae,) if vae is model.cond_vae else ()  # the first stage stays on the compute device
    with on_compute(bundle, *offloaded):
        z = vae.encode_sample(x, generator) if generator is not None else vae.encode_mode(x)
    return rearrange(z.float() * bundle.config.scale_factor, "(b t) c h w -> b t c h w", b=b)
