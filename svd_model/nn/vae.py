"""KL-f8 autoencoder of the SVD family: LDM Encoder, image Decoder, sgm temporal VideoDecoder, chunked decoding.

Module and attribute names follow the official checkpoint keys below ``first_stage_model.`` (and below
``conditioner.embedders.N.encoder.`` for the concat-path VAE), so ``load_state_dict(strict=True)`` works on the
stripped keys without renaming.

Numerics: the reference runs both VAEs in float32 outside autocast (``disable_first_stage_autocast``), and so
should callers: build :class:`AutoencoderKL` in float32 and keep it there. Inputs are cast to the parameter dtype
and every GroupNorm runs in float32 regardless (see :class:`~.vae_blocks.GroupNorm32`); lower-precision weights
work mechanically but are not parity-tested. On CUDA, PyTorch's default ``torch.backends.cudnn.allow_tf32 = True``
runs the convolutions in TF32 (as sgm itself does there): about 7e-4 relative against the CPU fp32 golden,
against 2e-6 with TF32 off (H100).

Shapes: ``n`` = number of frames (``b * t`` for videos, videos stacked one after the other), ``z`` = z_channels,
``f`` = downsample factor (8), ``h = H / f``, ``w = W / f``. Latents here are UNSCALED (the diffusion latents are
``SCALE_FACTOR * z``; divide by it before decoding).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from ..config import VAEConfig
from ..diffusion.noise import randn, require_generator
from ..errors import CheckpointError, InputError, ShapeError
from .layers import Upsample
from .vae_blocks import (
    AE3DConv,
    AttnBlock,
    Downsample,
    ResnetBlock,
    VideoResnetBlock,
    swish,
    vae_norm,
)
from .vae_tiling import blend_weights, chunk_ranges, tile_ranges

#: Clamp of the posterior log-variance (sgm ``DiagonalGaussianDistribution``).
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0


class _MidBlock(nn.Module):
    """``mid.block_1`` -> ``mid.attn_1`` -> ``mid.block_2`` (the caller runs them; the blocks differ in signature)."""

    def __init__(self, block_1: ResnetBlock, attn_1: AttnBlock, block_2: ResnetBlock) -> None:
        super().__init__()
        self.block_1 = block_1
        self.attn_1 = attn_1
        self.block_2 = block_2


class _Level(nn.Module):
    """One resolution level: ``block.M`` res blocks and an optional ``downsample`` / ``upsample``."""

    def __init__(self, blocks: list[ResnetBlock], resample: nn.Module | None, resample_name: str) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.resample_name = resample_name
        setattr(self, resample_name, resample)

    @property
    def resample(self) -> nn.Module | None:
        return getattr(self, self.resample_name)


class Encoder(nn.Module):
    """LDM KL-f8 encoder: (n, in_channels, H, W) in [-1, 1] -> (n, 2z, H/f, W/f) moments [mean | logvar].

    conv_in, then per level ``num_res_blocks`` ResnetBlocks and (except on the last level) an asymmetric-pad
    stride-2 Downsample; mid block_1 / attn_1 / block_2; norm_out, swish, conv_out.
    """

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        widths = [config.ch * mult for mult in config.ch_mult]
        self.conv_in = nn.Conv2d(config.in_channels, config.ch, 3, padding=1)
        levels = []
        width = config.ch
        for index, out_width in enumerate(widths):
            blocks = []
            for _ in range(config.num_res_blocks):
                blocks.append(ResnetBlock(width, out_width))
                width = out_width
            last = index == len(widths) - 1
            levels.append(_Level(blocks, None if last else Downsample(width), "downsample"))
        self.down = nn.ModuleList(levels)
        self.mid = _MidBlock(ResnetBlock(width, width), AttnBlock(width), ResnetBlock(width, width))
        self.norm_out = vae_norm(width)
        self.conv_out = nn.Conv2d(width, 2 * config.z_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                h = block(h)
            if level.resample is not None:
                h = level.resample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    """LDM image decoder: (n, z, h, w) -> (n, out_channels, h*f, w*f).

    conv_in; mid block_1 / attn_1 / block_2; ``up.N`` with ``num_res_blocks + 1`` ResnetBlocks and (except on
    level 0) a nearest-x2 Upsample, run from the deepest level down to ``up.0`` (the highest resolution, as the
    official keys store it); norm_out, swish, conv_out. ``num_frames`` is accepted and ignored.
    """

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.video_kernel_size = config.video_kernel_size
        widths = [config.ch * mult for mult in config.ch_mult]
        width = widths[-1]
        self.conv_in = nn.Conv2d(config.z_channels, width, 3, padding=1)
        self.mid = _MidBlock(self._resblock(width, width), AttnBlock(width), self._resblock(width, width))
        levels: list[_Level] = []
        for index in reversed(range(len(widths))):
            blocks = []
            for _ in range(config.num_res_blocks + 1):
                blocks.append(self._resblock(width, widths[index]))
                width = widths[index]
            levels.insert(0, _Level(blocks, Upsample(width) if index else None, "upsample"))
        self.up = nn.ModuleList(levels)
        self.norm_out = vae_norm(width)
        self.conv_out = self._conv_out(width, config.out_channels)

    def _resblock(self, in_channels: int, out_channels: int) -> ResnetBlock:
        return ResnetBlock(in_channels, out_channels)

    def _conv_out(self, in_channels: int, out_channels: int) -> nn.Conv2d:
        return nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def _run_resblock(self, block: nn.Module, h: Tensor, num_frames: int) -> Tensor:
        return block(h)

    def _run_conv_out(self, h: Tensor, num_frames: int) -> Tensor:
        return self.conv_out(h)

    def forward(self, z: Tensor, num_frames: int | None = None) -> Tensor:
        num_frames = z.shape[0] if num_frames is None else num_frames
        h = self.conv_in(z)  # (n, C_max, h, w)
        h = self._run_resblock(self.mid.block_1, h, num_frames)
        h = self.mid.attn_1(h)
        h = self._run_resblock(self.mid.block_2, h, num_frames)
        for level in reversed(self.up):
            for block in level.block:
                h = self._run_resblock(block, h, num_frames)
            if level.resample is not None:
                h = level.resample(h)
        return self._run_conv_out(swish(self.norm_out(h)), num_frames)  # (n, out, H, W)


class VideoDecoder(Decoder):
    """sgm ``VideoDecoder`` (time_mode "conv-only"): the image decoder with temporal layers.

    Every ResnetBlock (mid and up) is a :class:`~.vae_blocks.VideoResnetBlock`; conv_out is an
    :class:`~.vae_blocks.AE3DConv`. Attention and resampling stay spatial. (b*t, z, h, w) with
    t = ``num_frames`` -> (b*t, out, H, W). The temporal layers see only these t frames: they zero-pad at the
    edges and their GroupNorm statistics pool over the t frames, so the result depends on how a long clip is
    cut into chunks (see :func:`decode_chunked`).
    """

    def _resblock(self, in_channels: int, out_channels: int) -> ResnetBlock:
        return VideoResnetBlock(in_channels, out_channels, self.video_kernel_size)

    def _conv_out(self, in_channels: int, out_channels: int) -> nn.Conv2d:
        return AE3DConv(in_channels, out_channels, self.video_kernel_size)

    def _run_resblock(self, block: nn.Module, h: Tensor, num_frames: int) -> Tensor:
        return block(h, num_frames)

    def _run_conv_out(self, h: Tensor, num_frames: int) -> Tensor:
        return self.conv_out(h, num_frames)


class AutoencoderKL(nn.Module):
    """The KL autoencoder with the parts a checkpoint has (``config.has_*`` / ``temporal_decoder`` flags).

    Children: ``encoder`` (:class:`Encoder`), ``quant_conv`` (1x1, 2z -> 2z), ``post_quant_conv`` (1x1, z -> z),
    ``decoder`` (:class:`Decoder` or :class:`VideoDecoder`); absent parts are ``None``.

    - SVD first stage: VAEConfig() (encoder + VideoDecoder, no quant convs).
    - concat-path (conditioner) VAE: has_quant_conv, has_post_quant_conv, temporal_decoder=False.
    - SV3D first stage: has_encoder=False, temporal_decoder=False.
    """

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        two_z = 2 * config.z_channels
        self.encoder = Encoder(config) if config.has_encoder else None
        self.quant_conv = nn.Conv2d(two_z, two_z, 1) if config.has_quant_conv else None
        self.post_quant_conv = (
            nn.Conv2d(config.z_channels, config.z_channels, 1) if config.has_post_quant_conv else None
        )
        decoder_cls = VideoDecoder if config.temporal_decoder else Decoder
        self.decoder = decoder_cls(config) if config.has_decoder else None

    #: Decode in channels-last memory format: None = on the CPU only (measured faster there: oneDNN's convolutions
    #: skip the NCHW <-> blocked reorders and the temporal rearrangements become views); True / False forces it.
    channels_last: bool | None = None

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    # ---------------------------------------------------------------- encoding

    def encode_moments(self, x: Tensor) -> Tensor:
        """(n, in_channels, H, W) in [-1, 1] -> (n, 2z, H/f, W/f) = [mean | logvar] (encoder, then quant_conv)."""
        if self.encoder is None:
            raise InputError(
                "this VAE has no encoder (e.g. the SV3D first stage); encode with the conditioner VAE instead"
            )
        self._check_image(x)
        moments = self.encoder(x.to(self.dtype))
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        return moments

    def encode_mode(self, x: Tensor) -> Tensor:
        """Posterior mean (= mode): (n, in_channels, H, W) -> (n, z, H/f, W/f), unscaled."""
        mean, _ = self.encode_moments(x).chunk(2, dim=1)
        return mean

    def encode_sample(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Posterior sample mean + std * eps, logvar clamped to [-30, 20]. (n, 3, H, W) -> (n, z, H/f, W/f).

        eps is drawn only from ``generator`` (on the generator's device, then moved), so a seeded generator
        gives the same latents on every call.
        """
        require_generator(generator, "encode_sample")  # before the encoder runs
        mean, logvar = self.encode_moments(x).chunk(2, dim=1)
        std = torch.exp(0.5 * logvar.clamp(LOGVAR_MIN, LOGVAR_MAX))
        eps = randn(mean.shape, generator, what="encode_sample", dtype=mean.dtype, device=mean.device)
        return mean + std * eps

    # ---------------------------------------------------------------- decoding

    def decode(
        self, z: Tensor, num_frames: int | None = None, *, compute_dtype: torch.dtype | None = None
    ) -> Tensor:
        """Unscaled latents of ONE chunk -> frames: (n, z, h, w) -> (n, out_channels, h*f, w*f), contiguous.

        For the temporal decoder the n frames are n / num_frames videos of ``num_frames`` frames each (None: one
        video of n frames); an image decoder ignores ``num_frames``. post_quant_conv runs first when present.

        The decoder runs in channels-last where :attr:`channels_last` says so (default: on the CPU, where
        oneDNN's convolutions need no layout reorders then; same values up to float32 summation order).
        ``compute_dtype`` (opt-in, e.g. ``torch.bfloat16``): the convolutions, attention and activations run in
        that dtype under autocast (GroupNorm stays float32), the result is returned in the parameter dtype.
        Not the reference's numerics: bench/decode_vs_comfyui.py ``--dtype bf16`` reports the error.
        """
        if self.decoder is None:
            raise InputError("this VAE has no decoder (a conditioner VAE built from encoder-only weights)")
        if z.ndim != 4 or z.shape[1] != self.config.z_channels:
            raise ShapeError(f"latents must be (n, {self.config.z_channels}, h, w), got {tuple(z.shape)}")
        channels_last = z.device.type == "cpu" if self.channels_last is None else self.channels_last
        z = z.to(self.dtype, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        autocast = (torch.autocast(z.device.type, dtype=compute_dtype)
                    if compute_dtype is not None and compute_dtype != self.dtype else contextlib.nullcontext())
        with autocast:
            if self.post_quant_conv is not None:
                z = self.post_quant_conv(z)
            frames = self.decoder(z, num_frames)
        return frames.to(self.dtype).contiguous()

    # ---------------------------------------------------------------- weights

    def load_weights(self, state_dict: Mapping[str, Tensor], prefix: str = "") -> None:
        """Strictly load the keys below ``prefix`` (e.g. ``"first_stage_model."``); other keys are ignored.

        Raises CheckpointError naming missing / unexpected keys or mismatched shapes. Values are copied into
        the existing parameters (whose dtype is kept).
        """
        weights = {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}
        expected = set(self.state_dict())
        missing = sorted(expected - weights.keys())
        unexpected = sorted(weights.keys() - expected)
        if missing or unexpected:
            raise CheckpointError(
                f"VAE weights under {prefix!r} do not match {self.config}: "
                f"{len(missing)} missing (first: {missing[:5]}), {len(unexpected)} unexpected "
                f"(first: {unexpected[:5]}); check the has_* / temporal_decoder flags"
            )
        try:
            self.load_state_dict(weights, strict=True)
        except RuntimeError as error:
            raise CheckpointError(f"VAE weights under {prefix!r} have the wrong shapes: {error}") from None

    def _check_image(self, x: Tensor) -> None:
        factor = self.config.downsample_factor
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ShapeError(f"images must be (n, {self.config.in_channels}, H, W), got {tuple(x.shape)}")
        if x.shape[-2] % factor or x.shape[-1] % factor:
            raise ShapeError(f"image size {tuple(x.shape[-2:])} is not a multiple of the VAE factor {factor}")


# -------------------------------------------------------------------- chunked decoding


def decode_chunked(
    vae: AutoencoderKL,
    z: Tensor,
    chunk_size: int,
    *,
    num_frames_per_video: int | None = None,
    overlap: int = 0,
    tile: int | None = None,
    tile_overlap: int = 0,
    out_device: torch.device | str | None = None,
    callback: Callable[[int, int], None] | None = None,
    compute_dtype: torch.dtype | None = None,
) -> Tensor:
    """Decode unscaled latents chunk by chunk, as sgm's ``decode_first_stage`` with ``decoding_t = chunk_size``.

    z: (n, z, h, w) unscaled (diffusion latents / SCALE_FACTOR) -> (n, out_channels, h*f, w*f) on ``out_device``
    (default: z's device). Each chunk of :func:`chunk_ranges` is decoded independently with num_frames = its
    length. The temporal layers therefore zero-pad at every chunk edge and pool GroupNorm statistics per chunk:
    the output depends on ``chunk_size`` (a seam can appear between chunks), exactly as in the reference.
    With ``overlap`` > 0 consecutive chunks of a video share that many frames, cross-faded linearly (hides the
    seams; overlap 0 is the reference).

    With ``tile`` (latent pixels), each chunk is also cut into spatial tiles of at most ``tile`` x ``tile``
    (:func:`.vae_tiling.tile_ranges`) sharing ``tile_overlap`` latent pixels with their neighbours; every tile
    is decoded with all the frames of its chunk (the temporal layers mix frames, not positions) and the
    tiles are blended with linear ramps over the ``tile_overlap * f`` shared output pixels. The decoder's
    GroupNorm statistics and its mid-block attention then see one tile, not the frame, so the result
    differs slightly from untiled decoding (exactly equal when one tile covers the latents).

    Each piece is added into a preallocated output and freed, so peak working memory grows with
    ``chunk_size`` x the tile area (the frame area when untiled), not with n (``out_device="cpu"`` keeps
    the full clip off the accelerator). ``callback(frames_done, frames_total)`` runs after each chunk,
    counting the frames decoded (overlapping frames twice). ``compute_dtype``: see :meth:`AutoencoderKL.decode`
    (opt-in lower-precision decode; None = the parameter dtype, the reference). Call under
    ``torch.inference_mode()`` for inference; with autograd enabled the activations of every piece are kept.
    """
    if z.ndim != 4:
        raise ShapeError(f"latents must be (n, z, h, w), got {tuple(z.shape)}")
    total, (h, w) = z.shape[0], z.shape[-2:]
    ranges = chunk_ranges(total, chunk_size, num_frames_per_video, overlap)
    frame_weights = blend_weights(ranges, total, num_frames_per_video or total) if overlap else None
    rows, cols = (tile_ranges(h, tile, tile_overlap), tile_ranges(w, tile, tile_overlap)) if tile else (
        [(0, h)], [(0, w)])
    f = vae.config.downsample_factor
    row_weights = blend_weights([(f * a, f * b) for a, b in rows], f * h)  # each (f * tile rows,)
    col_weights = blend_weights([(f * a, f * b) for a, b in cols], f * w)
    blend = frame_weights is not None or len(rows) * len(cols) > 1
    out: Tensor | None = None
    done, work = 0, sum(stop - start for start, stop in ranges)
    for i, (start, stop) in enumerate(ranges):
        for (y0, y1), wy in zip(rows, row_weights, strict=True):
            for (x0, x1), wx in zip(cols, col_weights, strict=True):
                piece = vae.decode(z[start:stop, :, y0:y1, x0:x1], num_frames=stop - start,
                                   compute_dtype=compute_dtype)  # (k, out, fy, fx)
                if out is None:
                    device = z.device if out_device is None else torch.device(out_device)
                    out = (torch.zeros if blend else torch.empty)(
                        (total, piece.shape[1], f * h, f * w), dtype=piece.dtype, device=device)
                target = out[start:stop, :, f * y0 : f * y1, f * x0 : f * x1]
                if blend:
                    weight = wy[:, None] * wx[None, :]  # (fy, fx)
                    if frame_weights is not None:
                        weight = frame_weights[i][:, None, None, None] * weight  # (k, 1, fy, fx)
                    target += (piece * weight.to(piece)).to(out.device)
                else:
                    target.copy_(piece)
                del piece
        done += stop - start
        if callback is not None:
            callback(done, work)
    if out is None:
        raise ShapeError("decode_chunked got no frames (z has 0 rows)")
    return out
