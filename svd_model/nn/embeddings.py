"""Sinusoidal embeddings shared by the UNet (timesteps, frame index) and the conditioner (scalars)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Cosine-first sinusoidal embedding of raw scalar values.

    t: (n,) any float or int dtype; returns (n, dim) float32. Frequencies are
    exp(-ln(max_period) * i / half) for i < half = dim // 2; an odd dim gets one zero column.
    The values are cast to float32 before multiplying, as the reference does.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.reshape(-1, 1).to(torch.float32) * freqs[None]  # (n, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (n, 2*half)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb
