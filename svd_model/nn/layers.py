"""Layers the UNet and the VAE share: the float32 GroupNorm and the nearest-x2 upsampler (key ``conv``)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 and cast back to the input dtype, as the reference does. Any rank >= 3."""

    def forward(self, x: Tensor) -> Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv (key ``conv``). (n, c, h, w) -> (n, c, 2h, 2w)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))
