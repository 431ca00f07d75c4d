"""Multi-head attention for the VideoUNet transformers (sgm ``CrossAttention`` semantics).

One function, :func:`attention`, does the math for every attention layer in the UNet (spatial self-,
spatial cross-, temporal self- and temporal cross-attention). It is built on
``torch.nn.functional.scaled_dot_product_attention`` with the softmax scale ``1/sqrt(d_head)``.

Precision. SVD descends from SD 2.x, whose attention logits overflow float16 when they are materialised in
float16 (a plain ``q @ k.T`` in half precision: |q.k| > 65504 becomes inf). The reference (fp32 or its xformers
kernel) and ComfyUI (which forces fp32 attention for SVD) never compute the softmax in float16. The fused SDPA
kernels (flash, memory-efficient, cuDNN on CUDA; the CPU flash kernel) accumulate q.k and the softmax in float32
and never materialise half-precision logits, so they do not overflow either; what they round to half precision
is their inputs (already half) and the softmax weights before the product with v. Each layer computes in one of
these modes (:data:`ATTENTION_PRECISIONS`, chosen per UNet with :func:`set_attention_precision`):

* ``"fp32"`` (the default, the reference's behaviour): float16 q/k/v are computed in float32 and the result
  cast back; bfloat16 (float32's exponent range) and float32 as they are. Rules out the fused half kernels.
* ``"prescale"``: float16 q is multiplied by the softmax scale (1/8 for SVD's 64-wide heads: a power of two, so
  exact) and SDPA runs in float16 with scale 1: the fused half kernels run, and even a kernel that materialises
  the logits in float16 holds them, since they are then the softmax input itself (|.| > 65504 would be a
  degenerate softmax anyway). bfloat16 as it is.
* ``"half"``: SDPA in the input dtype as it is (float16 or bfloat16).
* ``"auto"``: bfloat16 as it is; float16 ``"prescale"``, except the layers a measurement found at risk
  (:func:`overflow_layers` over :func:`record_attention_stats`), which compute in float32.

:func:`record_attention_stats` is the measuring hook (forward pre-hooks, not in the forward path): per layer the
largest |q.k| (what a float16 ``q @ k.T`` would hold), the largest |q.k * scale| and the largest softmax input,
and whether float16 SDPA gives non-finite values (bench/attention_precision.py prints them).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..errors import ConfigError

#: Largest (batch * heads) handed to one SDPA call. Some CUDA kernels launch one block row per
#: (batch, head) pair and fail past 65535 of them; the temporal attention at 576x1024 with CFG reaches
#: ~92k. Chunking along the batch axis is exact (the batches are independent).
MAX_BATCH_HEADS = 65535

#: Attention precision modes (see the module doc). "fp32" is the default.
ATTENTION_PRECISIONS = ("fp32", "prescale", "half", "auto")
DEFAULT_PRECISION = "fp32"
FP16_MAX = torch.finfo(torch.float16).max  # 65504


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


def check_precision(mode: str) -> str:
    if mode not in ATTENTION_PRECISIONS:
        raise ConfigError(f"unknown attention precision {mode!r}; choose from {', '.join(ATTENTION_PRECISIONS)}")
    return mode


def effective_mode(mode: str, dtype: torch.dtype) -> str:
    """What a layer set to `mode` does for inputs of `dtype`: "fp32" (upcast), "prescale" or "half" (as is)."""
    if dtype == torch.float16:
        return "prescale" if mode == "auto" else mode
    return "half"  # bfloat16 has float32's range, float32 is float32: computed as they are in every mode


def attention(q: Tensor, k: Tensor, v: Tensor, heads: int, *, precision: str = DEFAULT_PRECISION) -> Tensor:
    """Scaled dot-product attention over packed heads.

    q: (b, n, heads*d), k and v: (b, m, heads*d); returns (b, n, heads*d) in q's dtype.
    Softmax scale is 1/sqrt(d). `precision`: one of :data:`ATTENTION_PRECISIONS` (see the module doc).
    """
    dtype = q.dtype
    mode = effective_mode(precision, dtype)
    q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=heads) for t in (q, k, v))  # (b, h, n, d)
    scale = q.shape[-1] ** -0.5
    if mode == "fp32":
        with _autocast_off(q.device.type):
            out = _sdpa_chunked(q.float(), k.float(), v.float(), scale).to(dtype)  # (b, h, n, d)
    elif mode == "prescale":
        out = _sdpa_chunked(q * scale, k, v, 1.0)  # (b, h, n, d): softmax input = (q scale) . k
    else:
        out = _sdpa_chunked(q, k, v, scale)  # (b, h, n, d)
    return rearrange(out, "b h n d -> b n (h d)")  # (b, n, h*d)


class CrossAttention(nn.Module):
    """sgm ``CrossAttention``: bias-free q/k/v projections, ``to_out.0`` Linear with bias.

    Keys: ``to_q``, ``to_k``, ``to_v``, ``to_out.0``. ``context_dim`` None means self-attention.
    ``precision``: this layer's attention precision mode (:func:`set_attention_precision` sets it per UNet).
    """

    precision: str = DEFAULT_PRECISION

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

    def attends(self, x: Tensor, context: Tensor) -> bool:
        """False where forward skips the attention (one context token at inference: the softmax is 1)."""
        return not (context.shape[1] == 1 and not torch.is_grad_enabled())

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
        if not self.attends(x, context):
            out = self.to_out(self.to_v(context))  # (b', 1, query_dim)
            return out.repeat_interleave(reps, dim=0).expand(-1, x.shape[1], -1)  # (b, n, query_dim)
        if reps > 1:
            context = context.repeat_interleave(reps, dim=0)  # (b, m, context_dim)
        out = attention(self.to_q(x), self.to_k(context), self.to_v(context), self.heads,
                        precision=self.precision)  # (b, n, inner)
        return self.to_out(out)


# ------------------------------------------------------------------------------------- choosing per model

_MODE_ATTR = "attention_precision"


def attention_layers(network: nn.Module) -> Iterator[tuple[str, CrossAttention]]:
    """(path, layer) of every CrossAttention in `network`."""
    for path, module in network.named_modules():
        if isinstance(module, CrossAttention):
            yield path, module


def set_attention_precision(network: nn.Module, mode: str, fp32_layers: Iterable[str] = ()) -> int:
    """Set the attention precision of every CrossAttention in `network` (a VideoUNet) to `mode`; with "auto",
    the layers named in `fp32_layers` (paths as in ``named_modules``, e.g. from :func:`overflow_layers`) compute
    float16 in float32. Recorded on the network (:func:`attention_precision`). Returns the number of layers.
    Instance attributes only: other networks (another bundle's UNet) are not affected."""
    check_precision(mode)
    upcast = set(fp32_layers)
    layers = dict(attention_layers(network))
    unknown = upcast - set(layers)
    if unknown:
        raise ConfigError(f"no attention layer {sorted(unknown)[0]!r} in {type(network).__name__}")
    if upcast and mode != "auto":
        raise ConfigError(f"fp32_layers only apply to attention precision 'auto', not {mode!r}")
    for path, layer in layers.items():
        layer.precision = "fp32" if path in upcast else mode
    network.__dict__[_MODE_ATTR] = mode
    return len(layers)


def attention_precision(network: nn.Module) -> str:
    """The mode :func:`set_attention_precision` set on `network` ("fp32", the default, when never set)."""
    return network.__dict__.get(_MODE_ATTR, DEFAULT_PRECISION)


# ------------------------------------------------------------------------------------------- measuring


@dataclass
class LogitStats:
    """Largest attention logits one layer saw (over every call while recording). Logits are computed in
    float32 from q and k as the layer computes them (in its dtype).

    max_abs_qk: max |q.k| (unscaled; what a float16 ``q @ k.T`` would hold, overflowing past 65504).
    max_abs_logit: max |q.k * scale| (the softmax input's magnitude; what "prescale" materialises).
    max_logit: the largest softmax input (signed). fp16_nonfinite: float16 SDPA on the float16-rounded
    q/k/v gave inf/NaN. fp16_rel_err: largest relative L2 of that float16 SDPA vs float32 SDPA.
    """

    path: str
    kind: str
    tokens: int = 0  # keys per query (m)
    max_abs_qk: float = 0.0
    max_abs_logit: float = 0.0
    max_logit: float = -math.inf
    fp16_nonfinite: bool = False
    fp16_rel_err: float = 0.0
    calls: int = 0


def _kind(path: str, layer: CrossAttention) -> str:
    where = "temporal" if ".time_stack." in f".{path}" else "spatial"
    what = "self" if path.endswith("attn1") else "cross"
    return f"{where} {what}"


@torch.no_grad()
def _measure(stats: LogitStats, layer: CrossAttention, x: Tensor, context: Tensor | None) -> None:
    context = x if context is None else context
    if not layer.attends(x, context):
        return  # one key: the softmax is exactly 1, no logit matters
    context = context.repeat_interleave(x.shape[0] // context.shape[0], dim=0)
    heads = layer.heads
    q, k, v = (rearrange(f(t), "b n (h d) -> (b h) n d", h=heads)
               for f, t in ((layer.to_q, x), (layer.to_k, context), (layer.to_v, context)))  # ((b h), n|m, d)
    scale = q.shape[-1] ** -0.5
    stats.tokens = k.shape[1]
    stats.calls += 1
    # bound the (rows, n, m) float32 logits of one chunk to about 64 MB
    rows = max(1, (16 * 2**20) // max(1, q.shape[1] * k.shape[1]))
    for i in range(0, q.shape[0], rows):
        qc, kc, vc = q[i : i + rows].float(), k[i : i + rows].float(), v[i : i + rows].float()
        qk = qc @ kc.transpose(-1, -2)  # (rows, n, m)
        stats.max_abs_qk = max(stats.max_abs_qk, float(qk.abs().max()))
        stats.max_abs_logit = max(stats.max_abs_logit, float(qk.abs().max()) * scale)
        stats.max_logit = max(stats.max_logit, float(qk.max()) * scale)
        del qk
        ref = F.scaled_dot_product_attention(qc, kc, vc, scale=scale)
        half = F.scaled_dot_product_attention(qc.half(), kc.half(), vc.half(), scale=scale).float()
        finite = bool(torch.isfinite(half).all())
        stats.fp16_nonfinite |= not finite
        if finite:
            err = float((half - ref).norm() / ref.norm().clamp_min(1e-30))
            stats.fp16_rel_err = max(stats.fp16_rel_err, err)


@contextlib.contextmanager
def record_attention_stats(network: nn.Module) -> Iterator[list[LogitStats]]:
    """While the context is open, every attention layer of `network` records :class:`LogitStats` through a
    forward pre-hook (the forward itself is unchanged; the hook adds a float32 recomputation of q.k per call,
    so it is for measurement only). Yields the list, one entry per layer in module order; the hooks are removed
    on exit. Layers that never attend (a single context token at inference) keep ``calls == 0``."""
    entries: list[LogitStats] = []
    handles = []
    for path, layer in attention_layers(network):
        stats = LogitStats(path, _kind(path, layer))
        entries.append(stats)

        def hook(module: nn.Module, args: tuple, s: LogitStats = stats) -> None:
            _measure(s, module, args[0], args[1] if len(args) > 1 else None)

        handles.append(layer.register_forward_pre_hook(hook))
    try:
        yield entries
    finally:
        for handle in handles:
            handle.remove()


def overflow_layers(stats: Iterable[LogitStats], margin: float = 4.0) -> list[str]:
    """Paths of the layers whose float16 attention is at risk even with "prescale": the largest |softmax input|
    within `margin` of float16's maximum, or float16 SDPA gave non-finite values. For "auto"'s fp32_layers."""
    limit = FP16_MAX / margin
    return [s.path for s in stats if s.calls and (s.max_abs_logit > limit or s.fp16_nonfinite)]
