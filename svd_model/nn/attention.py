"""Multi-head attention for the VideoUNet transformers (sgm ``CrossAttention`` semantics).

One function, :func:`attention`, does the math for every attention layer in the UNet (spatial self-,
spatial cross-, temporal self- and temporal cross-attention). It is built on
``torch.nn.functional.scaled_dot_product_attention`` with the softmax scale ``1/sqrt(d_head)``.

Precision: SVD descends from SD 2.x, whose attention logits overflow in float16. The reference
(run under fp32 or with its xformers kernel) and ComfyUI (which forces fp32 attention for SVD) never
compute the softmax in float16, so when q/k/v arrive in float16 this module computes the attention in
float32 and casts the result back to float16. bfloat16 has the float32 exponent range and is left as is.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

#: Largest (batch * heads) handed to one SDPA call. Some CUDA kernels launch one block row per
#: (batch, head) pair and fail past 65535 of them; the temporal attention at 576x1024 with CFG reaches
#: ~92k. Chunking along the batch axis is exact (the batches are independent).
MAX_BATCH_HEADS = 65535


def _autocast_off(device_type: str) -> contextlib.AbstractContextManager[None]:
    """Disable autocast so the float32 upcast is not undone; a no-op where autocast does not exist."""
    try:
        return torch.autocast(device_type, enabled=False)
    except (RuntimeError, ValueError):
        return contextlib.nullcontext()


def _sdpa_chunked(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """SDPA on (b, heads, n, d) tensors, split along b so that b_chunk * heads <= MAX_BATCH_HEADS."""
    batch, heads = q.shape[0], q.shape[1]
    step = max(1, MAX_BATCH_HEADS // heads)
    if batch <= step:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    parts = [
        F.scaled_dot_product_attention(q[i : i + step], k[i : i + step], v[i : i + step], scale=scale)
        for i in range(0, batch, step)
    ]
    return torch.cat(parts, dim=0)  # (b, heads, n, d)


def attention(q: Tensor, k: Tensor, v: Tensor, heads: int, *, upcast_fp16: bool = True) -> Tensor:
    """Scaled dot-product attention over packed heads.

    q: (b, n, heads*d), k and v: (b, m, heads*d); returns (b, n, heads*d) in q's dtype.
    Softmax scale is 1/sqrt(d). With ``upcast_fp16`` (the default) float16 inputs are computed in
    float32 (see the module docstring).
    """
    dtype = q.dtype
    upcast = upcast_fp16 and dtype == torch.float16
    q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=heads) for t in (q, k, v))  # (b, h, n, d)
    scale = q.shape[-1] ** -0.5
    if upcast:
        with _autocast_off(q.device.type):
            out = _sdpa_chunked(q.float(), k.float(), v.float(), scale).to(dtype)  # (b, h, n, d)
    else:
        out = _sdpa_chunked(q, k, v, scale)  # (b, h, n, d)
    return rearrange(out, "b h n d -> b n (h d)")  # (b, n, h*d)


class CrossAttention(nn.Module):
    """sgm ``CrossAttention``: bias-free q/k/v projections, ``to_out.0`` Linear with bias.

    Keys: ``to_q``, ``to_k``, ``to_v``, ``to_out.0``. ``context_dim`` None means self-attention.
    """

    def __init__(self, query_dim: int, heads: int, dim_head: int, context_dim: int | None = None) -> None:
        super().__init__()
        inner = heads * dim_head
        context_dim = query_dim if context_dim is None else context_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        # index 1 of the reference is a Dropout(0.0), which has no weights.
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(0.0))

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """x: (b, n, query_dim), context: (b', m, context_dim) or None; returns (b, n, query_dim).

        b' may divide b: then context row i serves x rows i*b/b' .. (i+1)*b/b' - 1 (the temporal
        blocks pass one context per video for all its spatial positions, "(b s)" order).
        With a single context token (SVD's CLIP embedding) the softmax over one key is exactly 1, so the
        output is to_out(to_v(context)) for every query: at inference q, k and the attention call are
        skipped. With autograd on, the full path runs so every parameter takes part (their gradients
        are zero either way), which keeps gradient checkpointing and DDP simple.
        """
        context = x if context is None else context
        reps = x.shape[0] // context.shape[0]
        if context.shape[1] == 1 and not torch.is_grad_enabled():
            out = self.to_out(self.to_v(context))  # (b', 1, query_dim)
            return out.repeat_interleave(reps, dim=0).expand(-1, x.shape[1], -1)  # (b, n, query_dim)
        if reps > 1:
            context = context.repeat_interleave(reps, dim=0)  # (b, m, context_dim)
        out = attention(self.to_q(x), self.to_k(context), self.to_v(context), self.heads)  # (b, n, inner)
        return self.to_out(out)
