"""Building blocks of the KL-f8 autoencoder (LDM Encoder / Decoder and sgm's temporal VideoDecoder).

Attribute names follow the official checkpoint keys (``norm1``, ``conv1``, ``nin_shortcut``, ``q``/``k``/``v``/
``proj_out``, ``time_stack.in_layers.{0,2}``, ``time_stack.out_layers.{0,3}``, ``mix_factor``,
``conv_out.time_mix_conv``), so a state dict loads strictly without renaming.

Tensor layout: 2-D blocks see ``(n, C, H, W)`` where ``n = b * t`` frames are stacked video by video
(frame index fastest); temporal layers rearrange to ``(b, C, t, H, W)`` with ``t = num_frames``. Every block
works in either memory format; in channels-last (what :meth:`.vae.AutoencoderKL.decode` uses on the CPU) both
rearrangements are views, as is the attention's ``(n, 1, H*W, C)``. Under no-grad / inference mode the blocks
update their own fresh intermediates in place (:func:`swish_`, :func:`mix`, the residual adds) instead of
allocating new ones; with autograd on they do not. The values are the same either way.

Every normalisation runs in float32 whatever the parameter dtype (:class:`GroupNorm32`), as the reference does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..errors import ShapeError
from .layers import GroupNorm32 as GroupNorm32  # shared with the UNet (layers.py)

#: GroupNorm settings of the 2-D VAE layers (sgm ``Normalize``).
VAE_NORM_GROUPS = 32
VAE_NORM_EPS = 1e-6
#: GroupNorm eps of the 3-D ``time_stack`` blocks (openaimodel ``normalization`` = GroupNorm32 default eps).
TIME_STACK_NORM_EPS = 1e-5


def vae_norm(channels: int) -> GroupNorm32:
    """The 2-D VAE normalisation: 32 groups, eps 1e-6, affine."""
    return GroupNorm32(VAE_NORM_GROUPS, channels, eps=VAE_NORM_EPS)


def swish(x: Tensor) -> Tensor:
    return F.silu(x)


def swish_(x: Tensor) -> Tensor:
    """SiLU of a tensor nothing else holds (a norm's fresh output): in place when autograd is off.

    With autograd on it is :func:`swish` (SiLU's backward needs its input). Same values either way.
    """
    return F.silu(x, inplace=not torch.is_grad_enabled())


def mix(temporal: Tensor, spatial: Tensor, alpha: Tensor) -> Tensor:
    """alpha * temporal + (1 - alpha) * spatial, written into ``temporal`` when autograd is off.

    ``temporal`` must be a fresh tensor nothing else holds; ``alpha`` a 1-element tensor. In place this saves
    two full-size temporaries per block (the decoder's activations are hundreds of MB at video sizes).
    """
    if torch.is_grad_enabled():
        return alpha * temporal + (1.0 - alpha) * spatial
    return temporal.mul_(alpha).addcmul_(spatial, 1.0 - alpha)


def frames_to_video(x: Tensor, num_frames: int) -> Tensor:
    """(b*t, C, H, W) -> (b, C, t, H, W); raises ShapeError when b*t is not a multiple of num_frames."""
    if num_frames < 1 or x.shape[0] % num_frames:
        raise ShapeError(
            f"the temporal decoder got {x.shape[0]} frames, which is not a whole number of videos of "
            f"num_frames={num_frames}; pass num_frames = the chunk length"
        )
    return rearrange(x, "(b t) c h w -> b c t h w", t=num_frames)


def video_to_frames(x: Tensor) -> Tensor:
    """(b, C, t, H, W) -> (b*t, C, H, W)."""
    return rearrange(x, "b c t h w -> (b t) c h w")


class ResnetBlock(nn.Module):
    """LDM 2-D residual block without timestep embedding: norm-swish-conv twice, 1x1 ``nin_shortcut`` on width change.

    (n, in_channels, H, W) -> (n, out_channels, H, W). Dropout is 0 in every SVD config and is left out.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1 = vae_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = vae_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(swish_(self.norm1(x)))
        h = self.conv2(swish_(self.norm2(h)))
        return h.add_(x if self.nin_shortcut is None else self.nin_shortcut(x))  # h: the conv's fresh output


class TimeStackResBlock(nn.Module):
    """openaimodel ``ResBlock`` with dims=3, kernel [k, 1, 1], no timestep embedding (``skip_t_emb``), same width.

    (b, C, t, H, W) -> (b, C, t, H, W). GroupNorm32 (eps 1e-5) pools over all t frames of the chunk; the
    temporal convs zero-pad at the chunk edges. Indices 0/2 and 0/3 match the official ``Sequential`` keys
    (1 = SiLU, 2 of out_layers = dropout 0).
    """

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        kernel = (kernel_size, 1, 1)
        padding = (kernel_size // 2, 0, 0)
        self.in_layers = nn.Sequential(
            GroupNorm32(VAE_NORM_GROUPS, channels, eps=TIME_STACK_NORM_EPS),
            nn.SiLU(),
            nn.Conv3d(channels, channels, kernel, padding=padding),
        )
        self.out_layers = nn.Sequential(
            GroupNorm32(VAE_NORM_GROUPS, channels, eps=TIME_STACK_NORM_EPS),
            nn.SiLU(),
            nn.Dropout(0.0),
            nn.Conv3d(channels, channels, kernel, padding=padding),
        )

    def forward(self, x: Tensor) -> Tensor:
        # The Sequentials' layers are called one by one so that SiLU can run in place (swish_); same result.
        norm, _, conv = self.in_layers
        h = conv(swish_(norm(x)))
        norm, _, _, conv = self.out_layers  # dropout 0: identity
        return conv(swish_(norm(h))).add_(x)


class VideoResnetBlock(ResnetBlock):
    """sgm ``VideoResBlock``: 2-D :class:`ResnetBlock`, then a temporal ``time_stack``, blended by a learned alpha.

    x = alpha * temporal + (1 - alpha) * spatial with alpha = sigmoid(mix_factor). This is the OPPOSITE
    direction of the UNet's AlphaBlender. (b*t, in, H, W) -> (b*t, out, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, video_kernel_size: int) -> None:
        super().__init__(in_channels, out_channels)
        self.time_stack = TimeStackResBlock(out_channels, video_kernel_size)
        self.mix_factor = nn.Parameter(torch.zeros(1))  # official init alpha=0.0 -> sigmoid 0.5

    def forward(self, x: Tensor, num_frames: int) -> Tensor:  # type: ignore[override]
        spatial = frames_to_video(super().forward(x), num_frames)  # (b, C, t, H, W)
        temporal = self.time_stack(spatial)  # (b, C, t, H, W)
        return video_to_frames(mix(temporal, spatial, torch.sigmoid(self.mix_factor)))  # (b*t, C, H, W)


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1x1-conv q/k/v/proj_out and a residual. (n, C, H, W) -> same."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = vae_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm(x)
        height, width = x.shape[-2:]
        q, k, v = (rearrange(layer(h), "n c h w -> n 1 (h w) c") for layer in (self.q, self.k, self.v))
        attended = F.scaled_dot_product_attention(q, k, v)  # (n, 1, h*w, C); scale C^-0.5
        attended = rearrange(attended, "n 1 (h w) c -> n c h w", h=height, w=width)
        return x + self.proj_out(attended)


class Downsample(nn.Module):
    """Pad right and bottom by one (asymmetric), then a 3x3 stride-2 conv. (n, C, H, W) -> (n, C, H/2, W/2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class AE3DConv(nn.Conv2d):
    """sgm ``AE3DConv``: a 2-D conv whose output goes through ``time_mix_conv`` (Conv3d, kernel [k, 1, 1]).

    There is no blend and no residual: the Conv3d output is the result. (b*t, in, H, W) -> (b*t, out, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, video_kernel_size: int) -> None:
        super().__init__(in_channels, out_channels, 3, padding=1)
        self.time_mix_conv = nn.Conv3d(
            out_channels, out_channels, (video_kernel_size, 1, 1), padding=(video_kernel_size // 2, 0, 0)
        )

    def forward(self, x: Tensor, num_frames: int) -> Tensor:  # type: ignore[override]
        h = frames_to_video(super().forward(x), num_frames)  # (b, out, t, H, W)
        return video_to_frames(self.time_mix_conv(h))  # (b*t, out, H, W)
