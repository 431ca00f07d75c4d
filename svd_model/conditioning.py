"""Conditioning: the clean frame's CLIP embedding, the noise-augmented frame's VAE latent, and
the per-frame vector of sinusoidally embedded scalars (fps_id, motion_bucket_id, cond_aug; SV3D:
cond_aug, polar and azimuth angles), exactly as sgm's GeneralConditioner produces them.

The conditioning frame's latent (noise augmentation, then the conditioner's VAE encoder) is made in one
place, :func:`encode_cond_frames`, for inference, training batches, validation and the latent cache alike;
the CLIP embedding is :func:`.nn.image_encoder.encode_image` and the vector :func:`vector_conditioning`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .config import VECTOR_LAYOUT, Family
from .diffusion.noise import randn
from .errors import InputError, ShapeError
from .nn.embeddings import timestep_embedding


@dataclass(frozen=True)
class Cond:
    """One branch (conditional or unconditional) of the conditioning, per video.

    crossattn: (b, 1, context_dim) CLIP image embedding (not normalised).
    concat:    (b, 4, h, w) VAE posterior mean of the noise-augmented frame, NOT scaled by 0.18215.
    vector:    (b, t, adm_in_channels) one row per frame.
    """

    crossattn: Tensor
    concat: Tensor
    vector: Tensor

    def __post_init__(self) -> None:
        b = self.crossattn.shape[0]
        if self.crossattn.ndim != 3 or self.concat.ndim != 4 or self.vector.ndim != 3:
            raise InputError(
                "Cond expects crossattn (b, n, d), concat (b, c, h, w), vector (b, t, d); got "
                f"{tuple(self.crossattn.shape)}, {tuple(self.concat.shape)}, {tuple(self.vector.shape)}"
            )
        if self.concat.shape[0] != b or self.vector.shape[0] != b:
            raise InputError(
                f"Cond batch sizes differ: crossattn {b}, concat {self.concat.shape[0]}, vector {self.vector.shape[0]}"
            )

    @property
    def num_frames(self) -> int:
        return self.vector.shape[1]

    def unconditional(self) -> Cond:
        """sgm's negative branch: zero crossattn and concat (not the embedding of a black frame), same vector."""
        return Cond(torch.zeros_like(self.crossattn), torch.zeros_like(self.concat), self.vector)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Cond:
        return Cond(*(x.to(device=device, dtype=dtype) for x in (self.crossattn, self.concat, self.vector)))

    @staticmethod
    def cat(first: Cond, second: Cond) -> Cond:
        """Stack two conditionings along the batch axis ([first, second])."""
        return Cond(
            torch.cat([first.crossattn, second.crossattn]),
            torch.cat([first.concat, second.concat]),
            torch.cat([first.vector, second.vector]),
        )


def _per_frame(name: str, value: float | Tensor, b: int, t: int) -> Tensor:
    """A scalar, (t,), (b,) or (b, t) value as a float64 (b, t) tensor (float64 keeps integer ids exact)."""
    v = torch.as_tensor(value, dtype=torch.float64)
    if v.ndim == 0:
        return v.expand(b, t)
    if v.ndim == 1 and v.shape[0] == t:
        return v[None].expand(b, t)
    if v.ndim == 1 and v.shape[0] == b:
        return v[:, None].expand(b, t)
    if v.shape == (b, t):
        return v
    raise InputError(f"{name} must be a number or have {t} (frames) or {b} (videos) entries, got {tuple(v.shape)}")


def vector_conditioning(family: Family, values: Mapping[str, float | Tensor], b: int, t: int) -> Tensor:
    """(b, t, adm) vector: the family's scalars embedded (cosine first, max period 10000) in layout order."""
    parts = []
    for name, width in VECTOR_LAYOUT[family]:
        if name not in values:
            needed = [n for n, _ in VECTOR_LAYOUT[family]]
            raise InputError(f"{family.value} conditioning needs {needed}; {name!r} is missing")
        v = _per_frame(name, values[name], b, t)  # (b, t)
        parts.append(timestep_embedding(v.reshape(-1), width).reshape(b, t, width))  # (b, t, width)
    return torch.cat(parts, dim=-1)  # (b, t, adm)


def check_size(width: int, height: int, multiple: int = 64) -> None:
    """Width and height must be multiples of the model's size multiple (64 for every official model:
    the VAE's factor 8 times the UNet's three x2 downsamplings)."""
    if width % multiple or height % multiple or width <= 0 or height <= 0:
        m = multiple
        raise InputError(
            f"size {width}x{height} is not a multiple of {m} (latent factor 8 x the UNet's downsamplings); "
            f"resize or crop to e.g. {max(m, round(width / m) * m)}x{max(m, round(height / m) * m)}"
        )


def check_image(image: Tensor, multiple: int = 64) -> None:
    """image: (b, 3, H, W) float in [-1, 1] with H and W multiples of `multiple`."""
    if image.ndim != 4 or image.shape[1] != 3:
        raise InputError(f"image must be (b, 3, H, W), got {tuple(image.shape)}")
    if image.shape[0] == 0:
        raise InputError("image batch is empty: at least one conditioning frame is needed")
    if not image.is_floating_point():
        raise InputError(f"image must be a float tensor in [-1, 1], got {image.dtype}")
    check_size(image.shape[-1], image.shape[-2], multiple)
    lo, hi = image.min().item(), image.max().item()
    if lo < -1.001 or hi > 1.001:
        raise InputError(f"image values must lie in [-1, 1], found [{lo:.3g}, {hi:.3g}] (map [0, 1] with 2x - 1)")


def augment(image: Tensor, cond_aug: float | Tensor, *, generator: torch.Generator | None = None,
            noise: Tensor | None = None) -> Tensor:
    """The reference's pixel-space noise augmentation: image + cond_aug * N(0, I).

    image: (n, 3, H, W) float; cond_aug: the noise std, a number (or 0-d tensor) or (n,) one per image;
    noise: a ready (n, 3, H, W) N(0, 1) draw, else drawn from `generator` (required then) by
    :func:`.noise.randn`. The sum is computed in image's dtype on image's device.
    """
    if noise is None:
        noise = randn(image.shape, generator, what="noise augmentation of the conditioning frame")
    if tuple(noise.shape) != tuple(image.shape):
        raise ShapeError(f"augmentation noise {tuple(noise.shape)} does not match the frames {tuple(image.shape)}")
    aug: float | Tensor = cond_aug
    if isinstance(cond_aug, Tensor):
        if cond_aug.ndim == 1 and cond_aug.shape[0] == image.shape[0]:
            aug = cond_aug.reshape(-1, *([1] * (image.ndim - 1)))  # (n, 1, 1, 1): one std per image
        elif cond_aug.ndim != 0:
            raise ShapeError(f"cond_aug must be a number or have one entry per frame ({image.shape[0]}), "
                             f"got shape {tuple(cond_aug.shape)}")
        aug = aug.to(image.device, image.dtype)
    return image + aug * noise.to(image.device, image.dtype)


def encode_cond_frames(
    vae: nn.Module,
    frames: Tensor,
    cond_aug: float | Tensor,
    *,
    device: torch.device | str,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
) -> Tensor:
    """THE conditioning-frame latent ("concat" branch): the conditioner VAE's posterior mean of the
    noise-augmented frames, as sgm's ``VideoPredictionEmbedderWithEncoder`` makes it.

    vae: the conditioner's VAE (``model.cond_vae``), already on `device`; frames: (n, 3, H, W) float in
    [-1, 1], any float dtype and device (copied to float32 on `device`); cond_aug: the augmentation std >= 0,
    a number, a 0-d tensor or (n,) one per frame; noise: a ready (n, 3, H, W) N(0, 1) draw, else drawn from
    `generator` (required then; one float32 draw of frames' shape on the generator's device).
    noisy = frames + cond_aug * noise is computed in float32 on `device` and encoded in the VAE's dtype.
    Returns (n, z, H/8, W/8) float32 on `device`, unscaled (NOT multiplied by the 0.18215 scale factor).
    """
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ShapeError(f"conditioning frames must be (n, 3, H, W), got {tuple(frames.shape)}")
    clean = frames.to(device, torch.float32)
    noisy = augment(clean, cond_aug, generator=generator, noise=noise)
    dtype = next(vae.parameters()).dtype
    return vae.encode_mode(noisy.to(dtype)).float()  # (n, z, h, w)
