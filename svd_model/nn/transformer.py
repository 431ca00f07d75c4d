"""Transformer blocks of the VideoUNet (sgm ``attention`` / ``video_attention``).

Attribute names follow the official checkpoint keys: ``norm``, ``proj_in``, ``proj_out``,
``transformer_blocks.K``, ``time_stack.K`` (``norm_in``, ``ff_in``, ``norm1..3``, ``attn1``, ``attn2``,
``ff``), ``time_pos_embed.{0,2}``, ``time_mixer.mix_factor``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .attention import CrossAttention
from .blocks import AlphaBlender
from .embeddings import timestep_embedding

#: Period of the sinusoidal frame-index embedding (sgm ``max_ddpm_temb_period``).
FRAME_EMBED_PERIOD = 10000.0


class GEGLU(nn.Module):
    """Linear to 2*dim_out, split into [value | gate], value * GELU(gate) with the exact (erf) GELU."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: Tensor) -> Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        if torch.is_grad_enabled():
            return value * F.gelu(gate)
        return value.mul_(F.gelu(gate))  # inference: reuse the projection's buffer (one less big temporary)


class FeedForward(nn.Module):
    """GEGLU feed-forward, inner width 4*dim (keys ``net.0.proj``, ``net.2``). (..., dim) -> (..., dim_out)."""

    def __init__(self, dim: int, dim_out: int | None = None, mult: int = 4) -> None:
        super().__init__()
        inner = dim * mult
        self.net = nn.Sequential(
            GEGLU(dim, inner), nn.Dropout(0.0), nn.Linear(inner, dim if dim_out is None else dim_out)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Spatial block: self-attention, cross-attention to the context, GEGLU FF; pre-LayerNorm (eps 1e-5).

    x: (n, s, dim), context: (n, m, context_dim); returns (n, s, dim).
    """

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int) -> None:
        super().__init__()
        self.attn1 = CrossAttention(dim, heads, dim_head)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, heads, dim_head, context_dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        # Residuals are added into the sublayers' fresh outputs (safe for autograd: Linear keeps its input).
        x = self.attn1(self.norm1(x)).add_(x)
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)).add_(x)


class VideoTransformerBlock(nn.Module):
    """Temporal block (sgm ``VideoTransformerBlock`` with ``ff_in``): attention along the frame axis.

    x: ((b t), s, dim) with t = ``num_frames``; context: ((b s), m, context_dim), one row per video and
    spatial position. Returns ((b t), s, dim). ``ff_in`` is always present in SVD checkpoints.
    """

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int) -> None:
        super().__init__()
        self.norm_in = nn.LayerNorm(dim)
        self.ff_in = FeedForward(dim, dim_out=dim)
        self.attn1 = CrossAttention(dim, heads, dim_head)
        self.ff = FeedForward(dim, dim_out=dim)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = CrossAttention(dim, heads, dim_head, context_dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: Tensor, context: Tensor, num_frames: int) -> Tensor:
        s = x.shape[1]
        x = rearrange(x, "(b t) s c -> (b s) t c", t=num_frames)  # ((b s), t, c)
        x = self.ff_in(self.norm_in(x)).add_(x)
        x = self.attn1(self.norm1(x)).add_(x)
        x = self.attn2(self.norm2(x), context) + x  # context: (b, m, d), one row per video (see CrossAttention)
        x = self.ff(self.norm3(x)).add_(x)
        return rearrange(x, "(b s) t c -> (b t) s c", s=s, t=num_frames)  # ((b t), s, c)


class SpatialVideoTransformer(nn.Module):
    """sgm ``SpatialVideoTransformer`` with linear projections and ``use_spatial_context``.

    forward(x ((b t), c, h, w), context ((b t), m, context_dim), num_frames, image_only_indicator (b, t))
    returns ((b t), c, h, w). Per depth step: spatial block, then a temporal block on the spatial output
    plus a frame-index embedding, blended by ``time_mixer`` (alpha weights the spatial branch).
    """

    def __init__(self, channels: int, heads: int, dim_head: int, context_dim: int, depth: int = 1) -> None:
        super().__init__()
        inner = heads * dim_head
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(inner, heads, dim_head, context_dim) for _ in range(depth)]
        )
        self.proj_out = nn.Linear(inner, channels)
        self.time_stack = nn.ModuleList(
            [VideoTransformerBlock(inner, heads, dim_head, context_dim) for _ in range(depth)]
        )
        self.time_pos_embed = nn.Sequential(
            nn.Linear(channels, 4 * channels), nn.SiLU(), nn.Linear(4 * channels, channels)
        )
        self.time_mixer = AlphaBlender("b t -> (b t) 1 1")
        self.channels = channels

    def frame_embedding(self, batch: int, num_frames: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """time_pos_embed of the frame indices 0..t-1, tiled over the videos: ((b t), 1, c)."""
        frames = torch.arange(num_frames, device=device).repeat(batch)  # ((b t),)
        sinusoid = timestep_embedding(frames, self.channels, max_period=FRAME_EMBED_PERIOD)  # ((b t), c) fp32
        return self.time_pos_embed(sinusoid.to(dtype))[:, None, :]  # ((b t), 1, c)

    def forward(self, x: Tensor, context: Tensor, num_frames: int, image_only_indicator: Tensor) -> Tensor:
        _, _, h, w = x.shape
        x_in = x
        # The temporal cross-attention sees the context of each video's first frame at every position;
        # CrossAttention broadcasts this one row per video over the video's h*w positions.
        time_context = context[::num_frames]  # (b, m, d)
        x = rearrange(self.norm(x), "n c h w -> n (h w) c")  # ((b t), s, c)
        x = self.proj_in(x)  # ((b t), s, inner)
        frame_emb = self.frame_embedding(x.shape[0] // num_frames, num_frames, x.device, x.dtype)  # ((b t), 1, inner)
        for block, time_block in zip(self.transformer_blocks, self.time_stack, strict=True):
            x = block(x, context)
            x_temporal = time_block(x + frame_emb, time_context, num_frames)
            x = self.time_mixer(x, x_temporal, image_only_indicator)
        x = self.proj_out(x)
        # contiguous(): the rearranged view is channels-last, which would make every following conv
        # re-layout its weights on each call.
        return rearrange(x, "n (h w) c -> n c h w", h=h, w=w).contiguous() + x_in  # ((b t), c, h, w)
