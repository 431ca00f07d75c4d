"""OpenCLIP ViT image encoder of the SVD conditioner (sgm ``FrozenOpenCLIPImageEmbedder``).

Two parts:

* :func:`preprocess` turns a clean conditioning frame in [-1, 1] (any resolution) into the normalised
  ``image_size`` x ``image_size`` CLIP input, exactly as sgm does with kornia: a Gaussian antialias blur
  (reflect padding), a bicubic resize with ``align_corners=True`` that squashes the frame (no crop, no aspect
  preservation), ``(x + 1) / 2`` and the CLIP mean / std normalisation.
* :class:`OpenCLIPVisionTower` is open_clip's ``VisionTransformer`` (``model.visual``). Its attribute names are the
  checkpoint's, so the keys under ``conditioner.embedders.0.open_clip.model.visual.`` load with ``strict=True``
  after the prefix is stripped. The output is the projected CLS token, (n, embed_dim), **not** L2-normalised.

The open_clip text-tower leftovers (``token_embedding``, ``positional_embedding``, ``ln_final``, ``text_projection``,
``logit_scale`` directly under ``open_clip.model.``) are not modelled.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ImageEncoderConfig
from ..errors import InputError, ShapeError
from .clip_transformer import LN_EPS, SelfAttention, Transformer

#: CLIP normalisation constants (open_clip OPENAI_DATASET_MEAN / STD), per RGB channel.
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

#: LayerNorm epsilon of every open_clip LayerNorm (torch default).


# ---------------------------------------------------------------------------------------------------------------
# Preprocessing
# ---------------------------------------------------------------------------------------------------------------


def _check_image(image: Tensor, name: str = "image") -> None:
    if not isinstance(image, Tensor):
        raise InputError(f"{name} must be a torch.Tensor of shape (n, 3, H, W), got {type(image).__name__}")
    if image.dim() != 4:
        raise ShapeError(
            f"{name} must have shape (n, 3, H, W) (a batch of RGB frames), got {tuple(image.shape)} "
            f"with {image.dim()} dims; add a batch dim with image[None] for a single frame"
        )
    if image.shape[1] != 3:
        raise ShapeError(
            f"{name} must have 3 (RGB) channels in dim 1, got shape {tuple(image.shape)}; "
            "convert channels-last (n, H, W, 3) images with .permute(0, 3, 1, 2) and drop alpha channels"
        )
    if image.shape[2] < 1 or image.shape[3] < 1:
        raise ShapeError(f"{name} must have a non-empty spatial size, got shape {tuple(image.shape)}")
    if not image.is_floating_point():
        raise InputError(f"{name} must be a floating-point tensor with values in [-1, 1], got dtype {image.dtype}")


def _check_image_any_channels(x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ShapeError(f"expected a (n, c, H, W) tensor, got {shape}")
    if not x.is_floating_point():
        raise InputError(f"expected a floating-point tensor, got dtype {x.dtype}")
    if x.shape[2] < 1 or x.shape[3] < 1:
        raise ShapeError(f"expected a non-empty spatial size, got shape {tuple(x.shape)}")


def _gaussian_kernel1d(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Normalised Gaussian taps exp(-n^2 / 2 sigma^2) at the integer offsets n of an odd window; (size,)."""
    offsets = torch.arange(size, dtype=dtype, device=device) - float(size // 2)  # (size,)
    sigma_t = torch.tensor(sigma, dtype=dtype, device=device)
    taps = torch.exp(-offsets.pow(2) / (2 * sigma_t.pow(2)))  # (size,)
    return taps / taps.sum()


def _blur_axis(x: Tensor, kernel: Tensor, dim: int) -> Tensor:
    """Depthwise correlation of x (n, c, h, w) with a 1-D odd kernel along dim (2 = H, 3 = W), reflect padding."""
    k = kernel.numel()
    if k == 1:
        return x * kernel[0]
    c = x.shape[1]
    half = k // 2
    if dim == 3:
        x = F.pad(x, (half, half, 0, 0), mode="reflect")  # (n, c, h, w + 2*half)
        weight = kernel.view(1, 1, 1, k).expand(c, 1, 1, k)
    else:
        x = F.pad(x, (0, 0, half, half), mode="reflect")  # (n, c, h + 2*half, w)
        weight = kernel.view(1, 1, k, 1).expand(c, 1, k, 1)
    return F.conv2d(x, weight, groups=c)  # (n, c, h, w)


def resize_antialiased(x: Tensor, size: tuple[int, int]) -> Tensor:
    """kornia ``resize(x, size, interpolation='bicubic', align_corners=True, antialias=True)`` in plain torch.

    x: (n, c, H, W) floating point; returns (n, c, size[0], size[1]) in x's dtype. If either axis shrinks, both
    axes are first blurred with a Gaussian (reflect padding) of sigma = max((in/out - 1) / 2, 0.001) and
    kernel size int(max(4 sigma, 3)) rounded up to odd (1 for a singleton axis); then a bicubic interpolation
    with ``align_corners=True``. Pure upscaling skips the blur. Half-precision inputs are computed in float32.
    """
    _check_image_any_channels(x)
    out_h, out_w = int(size[0]), int(size[1])
    if out_h < 1 or out_w < 1:
        raise InputError(f"resize target size must be positive, got {size}")
    orig_dtype = x.dtype
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    in_h, in_w = x.shape[-2:]
    factors = (in_h / out_h, in_w / out_w)
    if max(factors) > 1:
        sigmas = [max((f - 1.0) / 2.0, 0.001) for f in factors]
        sizes = [int(max(4.0 * s, 3)) for s in sigmas]
        sizes = [k if k % 2 else k + 1 for k in sizes]
        sizes = [1 if n == 1 else k for n, k in zip((in_h, in_w), sizes, strict=True)]
        for n, k in zip((in_h, in_w), sizes, strict=True):
            if k // 2 >= n:
                raise ShapeError(f"image of spatial size {(in_h, in_w)} is too small to blur with a {k}-tap kernel")
        kernel_w = _gaussian_kernel1d(sizes[1], sigmas[1], x.dtype, x.device)  # (kw,)
        kernel_h = _gaussian_kernel1d(sizes[0], sigmas[0], x.dtype, x.device)  # (kh,)
        x = _blur_axis(x, kernel_w, dim=3)  # (n, c, H, W)
        x = _blur_axis(x, kernel_h, dim=2)  # (n, c, H, W)
    x = F.interpolate(x, size=(out_h, out_w), mode="bicubic", align_corners=True)  # (n, c, out_h, out_w)
    return x.to(orig_dtype)


def preprocess(image: Tensor, size: int = 224) -> Tensor:
    """sgm ``FrozenOpenCLIPImageEmbedder.preprocess``: frame in [-1, 1] -> normalised CLIP input.

    image: (n, 3, H, W) clean conditioning frame in [-1, 1] at any resolution (no noise augmentation).
    Returns (n, 3, size, size) in image's dtype (half precision is computed in float32): the frame squashed to
    size x size by :func:`resize_antialiased`, mapped to [0, 1] by (x + 1) / 2, then (x - mean) / std with the
    CLIP mean / std.
    """
    _check_image(image)
    x = resize_antialiased(image, (size, size))  # (n, 3, S, S)
    dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    x = (x.to(dtype) + 1.0) / 2.0  # (n, 3, S, S) in [0, 1]
    mean = torch.tensor(CLIP_MEAN, dtype=dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=dtype, device=x.device).view(1, 3, 1, 1)
    return ((x - mean) / std).to(image.dtype)  # (n, 3, S, S)


# ---------------------------------------------------------------------------------------------------------------
# Vision tower
# ---------------------------------------------------------------------------------------------------------------


class OpenCLIPVisionTower(nn.Module):
    """open_clip ``VisionTransformer`` with CLS pooling; state-dict keys = checkpoint keys after the prefix
    ``conditioner.embedders.0.open_clip.model.visual.``.

    forward: (n, 3, S, S) normalised CLIP input (see :func:`preprocess`), S = config.image_size
    -> (n, config.embed_dim), the projected CLS token after ``ln_post`` (not L2-normalised).
    The input is cast to the tower's parameter dtype.
    """

    def __init__(self, config: ImageEncoderConfig | None = None) -> None:
        super().__init__()
        config = config if config is not None else ImageEncoderConfig()
        self.config = config
        width = config.width
        grid = config.grid_size
        self.conv1 = nn.Conv2d(3, width, kernel_size=config.patch_size, stride=config.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.empty(width))  # (width,)
        self.positional_embedding = nn.Parameter(torch.empty(grid * grid + 1, width))  # (1 + grid^2, width)
        self.ln_pre = nn.LayerNorm(width, eps=LN_EPS)
        self.transformer = Transformer(width, config.layers, config.heads, config.mlp_width)
        self.ln_post = nn.LayerNorm(width, eps=LN_EPS)
        self.proj = nn.Parameter(torch.empty(width, config.embed_dim))  # (width, embed_dim)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """open_clip-like random init (only useful for tests; real use loads a checkpoint)."""
        width = self.config.width
        scale = width**-0.5
        nn.init.normal_(self.class_embedding, std=scale)
        nn.init.normal_(self.positional_embedding, std=scale)
        nn.init.normal_(self.proj, std=scale)
        nn.init.normal_(self.conv1.weight, std=1.0 / math.sqrt(3 * self.config.patch_size**2))
        for module in self.modules():
            if isinstance(module, SelfAttention):
                nn.init.normal_(module.in_proj_weight, std=scale)
                nn.init.zeros_(module.in_proj_bias)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv1.weight.dtype

    def forward(self, x: Tensor) -> Tensor:
        """x: (n, 3, S, S) normalised CLIP input -> (n, embed_dim) image embedding."""
        size = self.config.image_size
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != 3 or tuple(x.shape[2:]) != (size, size):
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ShapeError(
                f"vision tower input must have shape (n, 3, {size}, {size}), got {shape}; "
                "run preprocess() on (n, 3, H, W) frames in [-1, 1] first (or use encode_image)"
            )
        if not x.is_floating_point():
            raise InputError(f"vision tower input must be floating point, got dtype {x.dtype}")
        x = x.to(self.dtype)
        x = self.conv1(x)  # (n, width, grid, grid)
        x = x.flatten(2).transpose(1, 2)  # (n, grid^2, width)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # (n, 1, width)
        x = torch.cat([cls, x], dim=1)  # (n, 1 + grid^2, width)
        x = x + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x)
        x = self.transformer(x)  # (n, 1 + grid^2, width)
        pooled = self.ln_post(x[:, 0])  # (n, width): LayerNorm is per token, so pooling first is equivalent
        return pooled @ self.proj  # (n, embed_dim)


def encode_image(tower: OpenCLIPVisionTower, image: Tensor) -> Tensor:
    """CLIP image embedding of clean frames: image (n, 3, H, W) in [-1, 1] -> (n, embed_dim), not normalised.

    sgm's conditioner reshapes this to the cross-attention context (n, 1, embed_dim).
    """
    return tower(preprocess(image, tower.config.image_size))
