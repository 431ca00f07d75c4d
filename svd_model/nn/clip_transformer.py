"""The pre-LN transformer of open_clip, shared by the vision tower (image_encoder.py) and the text tower
(text_encoder.py). Attribute names are open_clip's, so ``transformer.resblocks.N.*`` keys load with strict=True:
``ln_1, attn.in_proj_weight, attn.in_proj_bias, attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj``.

The towers differ only in the attention mask (the text tower is causal) and, for OpenAI's original CLIPs, the
MLP activation (quick_gelu).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LN_EPS = 1e-5  # torch's LayerNorm default, as open_clip
ACTIVATIONS = ("gelu", "quick_gelu")


class SelfAttention(nn.Module):
    """nn.MultiheadAttention's parameter layout (packed q, k, v in-projection) computed with SDPA;
    `causal`: position i attends to positions <= i only."""

    def __init__(self, width: int, heads: int, *, causal: bool = False) -> None:
        super().__init__()
        self.heads = heads
        self.causal = causal
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))  # rows: q, k, v
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        """x: (n, L, width) -> (n, L, width)."""
        n, length, width = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # (n, L, 3*width)
        qkv = qkv.view(n, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)  # (3, n, h, L, d)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=self.causal)  # (n, h, L, d)
        out = out.transpose(1, 2).reshape(n, length, width)  # (n, L, width)
        return self.out_proj(out)


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the activation of OpenAI's original CLIP models."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class MLP(nn.Module):
    def __init__(self, width: int, mlp_width: int, activation: str = "gelu") -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, mlp_width)
        self.gelu = nn.GELU() if activation == "gelu" else QuickGELU()  # nn.GELU: exact (erf) GELU
        self.c_proj = nn.Linear(mlp_width, width)

    def forward(self, x: Tensor) -> Tensor:
        """x: (n, L, width) -> (n, L, width)."""
        return self.c_proj(self.gelu(self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    """Pre-LN transformer block (open_clip ``ResidualAttentionBlock`` without layer scale)."""

    def __init__(self, width: int, heads: int, mlp_width: int, *, causal: bool = False,
                 activation: str = "gelu") -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=LN_EPS)
        self.attn = SelfAttention(width, heads, causal=causal)
        self.ln_2 = nn.LayerNorm(width, eps=LN_EPS)
        self.mlp = MLP(width, mlp_width, activation)

    def forward(self, x: Tensor) -> Tensor:
        """x: (n, L, width) -> (n, L, width)."""
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_width: int, *, causal: bool = False,
                 activation: str = "gelu") -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, mlp_width, causal=causal, activation=activation)
            for _ in range(layers)
        )

    def forward(self, x: Tensor) -> Tensor:
        """x: (n, L, width) -> (n, L, width)."""
        for block in self.resblocks:
            x = block(x)
        return x
