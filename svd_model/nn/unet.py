"""The SVD VideoUNet (sgm ``video_model.VideoUNet``), numerically identical to the reference.

Attribute names are the official checkpoint keys with the prefix ``model.diffusion_model.`` removed,
so ``VideoUNet(config).load_state_dict(sub_state_dict, strict=True)`` loads official files unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..config import UNetConfig
from ..errors import ShapeError
from .blocks import Downsample, VideoResBlock, normalization
from .embeddings import timestep_embedding
from .layers import Upsample
from .transformer import SpatialVideoTransformer

if TYPE_CHECKING:
    from ..diffusion.step_cache import StepCache


class UNetBlock(nn.Sequential):
    """sgm ``TimestepEmbedSequential``: runs its layers in order, handing each the inputs it needs.

    x ((b t), c, h, w), emb ((b t), e), context ((b t), m, d), image_only_indicator (b, t).
    """

    def forward(  # type: ignore[override]
        self, x: Tensor, emb: Tensor, context: Tensor, num_frames: int, image_only_indicator: Tensor
    ) -> Tensor:
        for layer in self:
            if isinstance(layer, VideoResBlock):
                x = layer(x, emb, num_frames, image_only_indicator)
            elif isinstance(layer, SpatialVideoTransformer):
                x = layer(x, context, num_frames, image_only_indicator)
            else:
                x = layer(x)
        return x


class VideoUNet(nn.Module):
    """SVD denoising network.

    Set ``gradient_checkpointing = True`` to recompute each block in the backward pass while training
    (``torch.utils.checkpoint``, non-reentrant); it has no effect in eval mode or without grad.
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        self.gradient_checkpointing = False
        mc, emb_dim = config.model_channels, config.time_embed_dim
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_emb = nn.Sequential(
            nn.Sequential(nn.Linear(config.adm_in_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        )
        self.input_blocks = nn.ModuleList([UNetBlock(nn.Conv2d(config.in_channels, mc, 3, padding=1))])
        skip_channels = [mc]
        ch = mc
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                layers = self._level_layers(ch, mc * mult, level)
                ch = mc * mult
                self.input_blocks.append(UNetBlock(*layers))
                skip_channels.append(ch)
            if level != len(config.channel_mult) - 1:
                self.input_blocks.append(UNetBlock(Downsample(ch)))
                skip_channels.append(ch)
        self.middle_block = UNetBlock(
            VideoResBlock(ch, emb_dim, ch, config.video_kernel_size),
            self._transformer(ch),
            VideoResBlock(ch, emb_dim, ch, config.video_kernel_size),
        )
        self.output_blocks = nn.ModuleList()
        for level in reversed(range(len(config.channel_mult))):
            for i in range(config.num_res_blocks + 1):
                layers = self._level_layers(ch + skip_channels.pop(), mc * config.channel_mult[level], level)
                ch = mc * config.channel_mult[level]
                if level and i == config.num_res_blocks:
                    layers.append(Upsample(ch))
                self.output_blocks.append(UNetBlock(*layers))
        self.out = nn.Sequential(normalization(ch), nn.SiLU(), nn.Conv2d(mc, config.out_channels, 3, padding=1))

    def _transformer(self, ch: int) -> SpatialVideoTransformer:
        heads = ch // self.config.num_head_channels
        return SpatialVideoTransformer(
            ch, heads, self.config.num_head_channels, self.config.context_dim, self.config.transformer_depth
        )

    def _level_layers(self, ch_in: int, ch_out: int, level: int) -> list[nn.Module]:
        layers: list[nn.Module] = [
            VideoResBlock(ch_in, self.config.time_embed_dim, ch_out, self.config.video_kernel_size)
        ]
        if self.config.attention_levels[level]:
            layers.append(self._transformer(ch_out))
        return layers

    #: The dtype the network computes in when its weights are stored narrower (fp8, :func:`.cast.store_fp8`).
    compute_dtype: torch.dtype | None = None

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype: inputs are cast to it (the weights' dtype unless stored in fp8)."""
        return self.compute_dtype or self.time_embed[0].weight.dtype

    def _check(self, x: Tensor, timesteps: Tensor, context: Tensor, y: Tensor, num_frames: int, ind: Tensor) -> None:
        rows = x.shape[0]
        factor = 2 ** (len(self.config.channel_mult) - 1)
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ShapeError(f"x has shape {tuple(x.shape)}, expected ((b t), {self.config.in_channels}, h, w)")
        if x.shape[2] % factor or x.shape[3] % factor:
            raise ShapeError(f"latent size {tuple(x.shape[2:])} is not a multiple of {factor}; use pixel sizes /64")
        if num_frames < 1 or rows % num_frames:
            raise ShapeError(f"{rows} rows are not a whole number of videos of num_video_frames={num_frames}")
        expected = {
            "timesteps": (timesteps, (rows,)),
            "y": (y, (rows, self.config.adm_in_channels)),
            "image_only_indicator": (ind, (rows // num_frames, num_frames)),
        }
        for name, (tensor, shape) in expected.items():
            if tuple(tensor.shape) != shape:
                raise ShapeError(f"{name} has shape {tuple(tensor.shape)}, expected {shape}")
        if context.ndim != 3 or context.shape[0] != rows or context.shape[2] != self.config.context_dim:
            raise ShapeError(
                f"context has shape {tuple(context.shape)}, expected ({rows}, m, {self.config.context_dim})"
            )

    def _run(self, block: UNetBlock, h: Tensor, *args: object) -> Tensor:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, h, *args, use_reentrant=False)
        return block(h, *args)

    def forward(
        self,
        x: Tensor,
        timesteps: Tensor,
        context: Tensor,
        y: Tensor,
        num_video_frames: int,
        image_only_indicator: Tensor | None = None,
        *,
        step_cache: StepCache | None = None,
    ) -> Tensor:
        """Predict the network output for a batch of videos folded into rows.

        x: ((b t), in_channels, h, w), h and w multiples of 2**(levels-1); timesteps: ((b t),) float
        (c_noise); context: ((b t), m, context_dim); y: ((b t), adm_in_channels);
        image_only_indicator: (b, t), nonzero marks frames that skip the temporal layers (None: zeros).
        step_cache: a sampling run's :class:`~..diffusion.step_cache.StepCache` (inference only), which may let
        this call reuse the deep blocks' feature or the whole output of an earlier call; None runs every block.
        Inputs are cast to the weights' dtype; returns ((b t), out_channels, h, w) in x's dtype.
        """
        if image_only_indicator is None:
            image_only_indicator = x.new_zeros(x.shape[0] // max(num_video_frames, 1), num_video_frames)
        self._check(x, timesteps, context, y, num_video_frames, image_only_indicator)
        if step_cache is not None and not step_cache.active:
            step_cache = None
        dtype = self.dtype
        t_emb = timestep_embedding(timesteps, self.config.model_channels).to(dtype)  # ((b t), mc)
        emb = self.time_embed(t_emb) + self.label_emb(y.to(dtype))  # ((b t), 4 mc)
        h = x.to(dtype)
        context = context.to(dtype)
        args = (emb, context, num_video_frames, image_only_indicator)
        skips = [self._run(self.input_blocks[0], h, *args)]  # ((b t), mc, h, w)
        reuse = None if step_cache is None else step_cache.decide(self, h, skips[0], timesteps, num_video_frames)
        if reuse is not None and reuse.value == "teacache":  # everything after the first block reused
            return step_cache.reused_output(h).to(x.dtype)  # type: ignore[union-attr]
        if reuse is not None and reuse.value == "deepcache":  # the deep blocks' feature of the last full call
            h = step_cache.deep_feature()  # type: ignore[union-attr]
            h = self._run(self.output_blocks[-1], torch.cat([h, skips.pop()], dim=1), *args)
        else:
            h = skips[0]
            for block in self.input_blocks[1:]:
                h = self._run(block, h, *args)
                skips.append(h)
            h = self._run(self.middle_block, h, *args)
            for block in self.output_blocks:
                if step_cache is not None and block is self.output_blocks[-1]:
                    step_cache.store_deep(h)
                h = self._run(block, torch.cat([h, skips.pop()], dim=1), *args)  # ((b t), c + c_skip, h, w)
        # The reference casts back to the input dtype before `out` (a no-op unless autocast changed it).
        h = h.to(dtype)
        out = self.out(h)
        if step_cache is not None:
            step_cache.store_output(x.to(dtype), out, num_video_frames)
        return out.to(x.dtype)
