"""The only module in ``nodes/`` with tensor layout code: ComfyUI values <-> package tensors.

ComfyUI side: IMAGE (B, H, W, C) float32 in [0, 1] on CPU, frames of a video in the batch; LATENT
{"samples": ((b t), 4, h, w)} with the frames in the batch, as core ComfyUI's SVD nodes do.
Package side: frames (b, 3, H, W) / videos (b, t, 3, H, W) in [-1, 1]; latents (b, t, 4, h, w).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from einops import rearrange
from PIL import Image
from torch import Tensor

from ..svd_model.conditioning import Cond
from ..svd_model.errors import InputError, ShapeError
from ..svd_model.media.resize import resize_cover

#: Latent -> RGB projection of SD-VAE latents (ComfyUI latent_formats.SD15), rows = latent channels.
SD_LATENT_RGB = ((0.3512, 0.2297, 0.3227), (0.3250, 0.4974, 0.2350), (-0.2829, 0.1762, 0.2721),
                 (-0.2120, -0.2616, -0.7177))


def _check_image(image: Tensor, what: str = "image") -> None:
    if not isinstance(image, Tensor) or image.ndim != 4 or image.shape[-1] not in (1, 3, 4):
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ShapeError(f"{what} must be an IMAGE (batch, height, width, channels 1/3/4), got {shape}")
    if image.shape[0] == 0:
        raise InputError(f"{what} batch is empty: connect at least one image")


def _rgb(image: Tensor) -> Tensor:
    """(B, H, W, C) -> (B, 3, H, W) in [-1, 1]: grey is repeated, alpha dropped."""
    c = image.shape[-1]
    rgb = image.expand(*image.shape[:-1], 3) if c == 1 else image[..., :3]
    return rgb.movedim(-1, 1).float() * 2.0 - 1.0  # (B, 3, H, W)


def conditioning_frame(image: Tensor, width: int, height: int) -> tuple[Tensor, int]:
    """The FIRST image of an IMAGE batch as a (1, 3, height, width) frame in [-1, 1] (cover-resized),
    and the batch size (so the caller can say that the others were ignored)."""
    _check_image(image)
    return resize_cover(_rgb(image[:1]), width, height), image.shape[0]


def images_to_video(images: Tensor) -> Tensor:
    """IMAGE (t, H, W, C) in [0, 1] -> one video (1, t, 3, H, W) in [-1, 1]."""
    _check_image(images, "images")
    return _rgb(images)[None]  # (1, t, 3, H, W)


def video_to_images(frames: Tensor) -> Tensor:
    """(b, t, 3, H, W) in [-1, 1] -> IMAGE ((b t), H, W, 3) float32 in [0, 1] on CPU."""
    if frames.ndim != 5 or frames.shape[2] != 3:
        raise ShapeError(f"frames must be (b, t, 3, H, W), got {tuple(frames.shape)}")
    images = rearrange(frames.float(), "b t c h w -> (b t) h w c")  # ((b t), H, W, 3)
    return ((images + 1.0) / 2.0).clamp(0.0, 1.0).cpu().contiguous()


def array_to_images(frames: Any) -> Tensor:
    """A (t, H, W, 3) float array in [0, 1] (numpy or torch) -> IMAGE tensor, float32 on CPU."""
    images = torch.as_tensor(np.asarray(frames, dtype=np.float32) if not isinstance(frames, Tensor) else frames)
    _check_image(images, "decoded frames")
    return images.float().cpu().contiguous()


def images_to_array(images: Tensor) -> np.ndarray:
    """IMAGE (t, H, W, C) -> (t, H, W, 3) float32 numpy array in [0, 1] (for the video writer)."""
    _check_image(images, "images")
    rgb = images.expand(*images.shape[:-1], 3) if images.shape[-1] == 1 else images[..., :3]
    return rgb.detach().float().clamp(0.0, 1.0).cpu().numpy()


def latents_to_comfy(latents: Tensor) -> dict[str, Tensor]:
    """(b, t, 4, h, w) -> LATENT {"samples": ((b t), 4, h, w)} on CPU (frames in the batch, like core SVD)."""
    if latents.ndim != 5:
        raise ShapeError(f"latents must be (b, t, c, h, w), got {tuple(latents.shape)}")
    return {"samples": rearrange(latents.float(), "b t c h w -> (b t) c h w").cpu().contiguous()}


def comfy_to_latents(latent: dict[str, Tensor], channels: int = 4) -> Tensor:
    """LATENT {"samples": (frames, 4, h, w)} -> one video's latents (1, frames, 4, h, w)."""
    samples = latent.get("samples") if isinstance(latent, dict) else None
    if samples is None or samples.ndim != 4 or samples.shape[1] != channels:
        shape = tuple(samples.shape) if isinstance(samples, Tensor) else None
        raise ShapeError(
            f"expected an SVD LATENT with samples (frames, {channels}, h, w), got {shape}; "
            "video latents of other model families (5-D samples) do not fit"
        )
    if samples.shape[0] == 0:
        raise InputError("the LATENT has no frames")
    return samples.float()[None]  # (1, t, c, h, w)


def empty_latent(frames: int, width: int, height: int, channels: int = 4) -> dict[str, Tensor]:
    """LATENT of zeros (frames, channels, height/8, width/8), as core SVD_img2vid_Conditioning returns."""
    return {"samples": torch.zeros(frames, channels, height // 8, width // 8)}


def cond_to_cpu(cond: Cond) -> Cond:
    return cond.to(torch.device("cpu"))


def generator(seed: int) -> torch.Generator:
    """A CPU generator (the package draws noise on the generator's device, so a seed gives the same
    video on CPU and GPU)."""
    return torch.Generator(device="cpu").manual_seed(int(seed))


def latent_preview(denoised: Tensor, max_frames: int = 4) -> Image.Image:
    """A cheap RGB preview of (b, t, 4, h, w) SD-VAE latents (diffusion-scaled): up to `max_frames`
    evenly spaced frames of the first video side by side, at latent resolution."""
    x = denoised[0].detach().float()  # (t, 4, h, w)
    pick = torch.linspace(0, x.shape[0] - 1, min(max_frames, x.shape[0])).round().long()
    factors = torch.tensor(SD_LATENT_RGB, dtype=torch.float32, device=x.device)  # (4, 3)
    rgb = torch.einsum("tchw,cr->thwr", x[pick.to(x.device), :4], factors)  # (n, h, w, 3) in ~[-1, 1]
    strip = rearrange(rgb, "n h w r -> h (n w) r")
    pixels = ((strip + 1.0) / 2.0).clamp(0, 1).mul(255).round().to(torch.uint8).cpu().numpy()
    return Image.fromarray(pixels)
