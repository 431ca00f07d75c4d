"""Convolutional building blocks of the VideoUNet (sgm ``openaimodel`` / ``video_model``).

Attribute names follow the official checkpoint keys: ``in_layers``, ``emb_layers``, ``out_layers``,
``skip_connection``, ``time_stack``, ``time_mixer.mix_factor``, ``op`` (Downsample), ``conv`` (Upsample).
Inside the network frames are folded into the batch axis: ``(b t) c h w``.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from .layers import GroupNorm32


def normalization(channels: int) -> GroupNorm32:
    """openaimodel ``normalization``: 32 groups, eps 1e-5, computed in float32."""
    return GroupNorm32(32, channels, eps=1e-5)


class AlphaBlender(nn.Module):
    """Learned spatial/temporal blend (sgm ``AlphaBlender``, merge strategy ``learned_with_images``).

    alpha = 1 where ``image_only_indicator`` is nonzero, else sigmoid(mix_factor);
    out = alpha * x_spatial + (1 - alpha) * x_temporal (the UNet's direction; the VAE's is the opposite).
    ``pattern`` is the einops pattern that maps alpha (b, t) onto the blended tensors' layout.
    """

    def __init__(self, pattern: str, merge_factor: float = 0.5) -> None:
        super().__init__()
        self.pattern = pattern
        self.mix_factor = nn.Parameter(torch.tensor([merge_factor]))

    def alpha(self, image_only_indicator: Tensor) -> Tensor:
        """image_only_indicator: (b, t); returns float32 alpha rearranged by ``pattern``."""
        learned = torch.sigmoid(self.mix_factor.float())  # (1,)
        one = torch.ones((), dtype=torch.float32, device=learned.device)
        alpha = torch.where(image_only_indicator.bool(), one, learned)  # (b, t)
        return rearrange(alpha, self.pattern)

    def forward(self, x_spatial: Tensor, x_temporal: Tensor, image_only_indicator: Tensor) -> Tensor:
        alpha = self.alpha(image_only_indicator)
        dtype = x_spatial.dtype
        return alpha.to(dtype) * x_spatial + (1.0 - alpha).to(dtype) * x_temporal


def _conv(dims: int, c_in: int, c_out: int, kernel: int | tuple[int, ...], padding: int | tuple[int, ...]) -> nn.Module:
    if dims == 2:
        return nn.Conv2d(c_in, c_out, kernel, padding=padding)
    return nn.Conv3d(c_in, c_out, kernel, padding=padding)


class ResBlock(nn.Module):
    """sgm ``ResBlock`` without scale-shift norm, up/down sampling or dropout (SVD uses none of them).

    dims 2: x (n, c_in, h, w), emb (n, emb_channels), 3x3 convs.
    dims 3 (the temporal ``time_stack``): x (b, c_in, t, h, w), emb (b, t, emb_channels), convs with
    kernel (k, 1, 1) and padding (k // 2, 0, 0); the GroupNorms then pool statistics over all t frames.
    The projected embedding is added after ``in_layers`` (not a scale-shift).
    """

    def __init__(
        self, channels: int, emb_channels: int, out_channels: int | None = None, dims: int = 2, kernel_size: int = 3
    ) -> None:
        super().__init__()
        out_channels = channels if out_channels is None else out_channels
        self.dims = dims
        if dims == 2:
            kernel: int | tuple[int, ...] = kernel_size
            padding: int | tuple[int, ...] = kernel_size // 2
        else:
            kernel, padding = (kernel_size, 1, 1), (kernel_size // 2, 0, 0)
        self.in_layers = nn.Sequential(
            normalization(channels), nn.SiLU(), _conv(dims, channels, out_channels, kernel, padding)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            normalization(out_channels),
            nn.SiLU(),
            nn.Dropout(0.0),
            _conv(dims, out_channels, out_channels, kernel, padding),
        )
        if out_channels == channels:
            self.skip_connection: nn.Module = nn.Identity()
        else:
            self.skip_connection = _conv(dims, channels, out_channels, 1, 0)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.in_layers(x)
        emb_out = self.emb_layers(emb).to(h.dtype)
        if self.dims == 2:
            emb_out = emb_out[:, :, None, None]  # (n, c, 1, 1)
        else:
            emb_out = rearrange(emb_out, "b t c -> b c t 1 1")  # (b, c, t, 1, 1)
        h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class VideoResBlock(ResBlock):
    """sgm ``VideoResBlock``: a spatial ResBlock per frame, then a temporal ResBlock, blended.

    forward(x ((b t), c_in, h, w), emb ((b t), emb_channels), num_frames, image_only_indicator (b, t))
    returns ((b t), c_out, h, w).
    """

    def __init__(self, channels: int, emb_channels: int, out_channels: int | None = None, video_kernel_size: int = 3):
        super().__init__(channels, emb_channels, out_channels)
        out_channels = channels if out_channels is None else out_channels
        self.time_stack = ResBlock(out_channels, emb_channels, out_channels, dims=3, kernel_size=video_kernel_size)
        self.time_mixer = AlphaBlender("b t -> b 1 t 1 1")

    def forward(  # type: ignore[override]
        self, x: Tensor, emb: Tensor, num_frames: int, image_only_indicator: Tensor
    ) -> Tensor:
        x = super().forward(x, emb)  # ((b t), c, h, w)
        x_spatial = rearrange(x, "(b t) c h w -> b c t h w", t=num_frames)  # (b, c, t, h, w)
        emb_video = rearrange(emb, "(b t) e -> b t e", t=num_frames)  # (b, t, e)
        x_temporal = self.time_stack(x_spatial, emb_video)  # (b, c, t, h, w)
        x = self.time_mixer(x_spatial, x_temporal, image_only_indicator)  # (b, c, t, h, w)
        return rearrange(x, "b c t h w -> (b t) c h w")  # ((b t), c, h, w)


class Downsample(nn.Module):
    """3x3 conv, stride 2, symmetric padding 1 (key ``op``). (n, c, h, w) -> (n, c, h/2, w/2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


