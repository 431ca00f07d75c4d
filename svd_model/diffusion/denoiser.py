"""The EDM v-scaling denoiser around the VideoUNet (sgm ``Denoiser`` + ``VScalingWithEDMcNoise`` +
``OpenAIWrapper``), as a closure over the network: ``model(x, sigma, cond) -> denoised``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from einops import rearrange, repeat
from torch import Tensor, nn

from ..conditioning import Cond
from ..errors import ShapeError
from .scalings import v_scalings_edm_cnoise

#: model(x (b, t, c, h, w), sigma (b,) or (b, t), cond) -> denoised (b, t, c, h, w)
ModelFn = Callable[[Tensor, Tensor, Cond], Tensor]


def _frame_sigma(sigma: Tensor, b: int, t: int) -> Tensor:
    """sigma (b,) [one per video] or (b, t) [one per frame, the reference's training convention] -> (b, t)."""
    sigma = sigma.to(torch.float32)
    if sigma.ndim == 0:
        return sigma.expand(b, t)
    if sigma.shape == (b,):
        return sigma[:, None].expand(b, t)
    if sigma.shape == (b, t):
        return sigma
    raise ShapeError(f"sigma must have shape ({b},) or ({b}, {t}), got {tuple(sigma.shape)}")


def make_model_fn(unet: nn.Module, *, image_only_indicator: Tensor | None = None) -> ModelFn:
    """Wrap `unet` into D(x, sigma, cond) = c_skip * x + c_out * F(c_in * x ++ concat, c_noise, ...).

    The network runs in its own parameter dtype; sigma arithmetic and the output stay float32.
    image_only_indicator: optional (b, t); zeros (all frames temporal) by default.
    """

    def model(x: Tensor, sigma: Tensor, cond: Cond) -> Tensor:
        if x.ndim != 5:
            raise ShapeError(f"x must be (b, t, c, h, w), got {tuple(x.shape)}")
        b, t = x.shape[:2]
        if cond.crossattn.shape[0] != b or cond.num_frames != t:
            raise ShapeError(
                f"cond is for {cond.crossattn.shape[0]} videos x {cond.num_frames} frames, x has {b} x {t}"
            )
        dtype = getattr(unet, "dtype", None) or next(unet.parameters()).dtype  # compute dtype (fp8 weights: bf16)
        c_skip, c_out, c_in, c_noise = v_scalings_edm_cnoise(_frame_sigma(sigma, b, t))  # each (b, t)
        x = x.to(torch.float32)
        scaled = x * c_in[..., None, None, None]  # b t c h w
        concat = repeat(cond.concat, "b c h w -> b t c h w", t=t).to(scaled)
        inp = rearrange(torch.cat([scaled, concat], dim=2), "b t c h w -> (b t) c h w")
        indicator = image_only_indicator if image_only_indicator is not None else x.new_zeros(b, t)
        out = unet(
            inp.to(dtype),
            rearrange(c_noise, "b t -> (b t)"),
            context=repeat(cond.crossattn, "b n d -> (b t) n d", t=t).to(dtype),
            y=rearrange(cond.vector, "b t d -> (b t) d").to(dtype),
            num_video_frames=t,
            image_only_indicator=indicator.to(dtype),
        )  # (b t) c h w
        out = rearrange(out.to(torch.float32), "(b t) c h w -> b t c h w", b=b)
        return x * c_skip[..., None, None, None] + out * c_out[..., None, None, None]

    return model
