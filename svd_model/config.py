"""Typed, frozen configuration of every network in an SVD-family checkpoint.

Architecture fields are inferred from checkpoint shapes by :func:`svd_model.detect.infer_config`
(the only code that reads key names). Values that no weight determines (attention head width,
frame count, guidance) are documented defaults here or live in :data:`VARIANT_DEFAULTS`.
Defaults of the architecture dataclasses are the full-size official values.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from .errors import ConfigError, choose

#: Latent scale of the first-stage VAE: diffusion latents = SCALE_FACTOR * z.
SCALE_FACTOR = 0.18215


@dataclass(frozen=True)
class UNetConfig:
    """VideoUNet (sgm ``video_model.VideoUNet``). Comments name the key each field comes from."""

    # input_blocks.0.0.weight [C, in, 3, 3]: 4 noisy + 4 concat channels (image-to-video), or 12 = 4 noisy
    # + 4 first-keyframe + 4 last-keyframe channels (keyframe interpolation, see pipelines/keyframes.py)
    in_channels: int = 8
    out_channels: int = 4  # out.2.weight [out, C, 3, 3]
    model_channels: int = 320  # input_blocks.0.0.weight.shape[0]
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)  # widths of the res blocks of each level / model_channels
    num_res_blocks: int = 2  # res blocks per level in input_blocks
    attention_levels: tuple[bool, ...] = (True, True, True, False)  # level has `input_blocks.N.1` transformers
    transformer_depth: int = 1  # number of `transformer_blocks.K` per transformer
    context_dim: int = 1024  # transformer_blocks.0.attn2.to_k.weight.shape[1]
    adm_in_channels: int = 768  # label_emb.0.0.weight.shape[1]
    video_kernel_size: int = 3  # time_stack.in_layers.2.weight.shape[2]
    num_head_channels: int = 64  # not in the weights: sgm configs use 64 for every variant

    def __post_init__(self) -> None:
        if len(self.attention_levels) != len(self.channel_mult):
            raise ConfigError(
                f"attention_levels has {len(self.attention_levels)} entries, expected one per level "
                f"({len(self.channel_mult)})"
            )
        for mult in self.channel_mult:
            if (self.model_channels * mult) % self.num_head_channels:
                raise ConfigError(
                    f"channel width {self.model_channels * mult} is not a multiple of the head width "
                    f"{self.num_head_channels}"
                )

    @property
    def concat_channels(self) -> int:
        """Conditioning channels concatenated to the noisy latent: 4 (one frame) or 8 (two keyframes)."""
        return self.in_channels - self.out_channels

    @property
    def concat_keyframes(self) -> bool:
        """A keyframe-interpolation UNet: its concat conditioning holds the first and the last keyframe."""
        return self.in_channels == 3 * self.out_channels

    @property
    def time_embed_dim(self) -> int:
        """Width of the timestep / vector embedding (time_embed.0.weight.shape[0] = 4 * model_channels)."""
        return 4 * self.model_channels


@dataclass(frozen=True)
class VAEConfig:
    """KL-f8 autoencoder (LDM Encoder / Decoder, sgm temporal VideoDecoder)."""

    ch: int = 128  # encoder.conv_in / decoder.conv_out input width
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)  # widths per level / ch
    num_res_blocks: int = 2  # encoder res blocks per level (the decoder has one more)
    in_channels: int = 3  # encoder.conv_in.weight.shape[1]
    out_channels: int = 3  # decoder.conv_out.weight.shape[0]
    z_channels: int = 4  # decoder.conv_in.weight.shape[1]
    has_encoder: bool = True  # encoder.* keys; SV3D's first stage has none (sgm Identity encoder)
    has_quant_conv: bool = False  # quant_conv.* (conditioner VAE, image-decoder variants, diffusers VAE)
    has_post_quant_conv: bool = False  # post_quant_conv.* (conditioner VAE, image-decoder variants)
    has_decoder: bool = True  # decoder.* keys; absent for a conditioner VAE rebuilt from diffusers files
    temporal_decoder: bool = True  # VideoDecoder (time_stack / time_mix_conv keys) or plain image Decoder
    video_kernel_size: int = 3  # decoder ... time_stack.in_layers.2.weight.shape[2]

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


@dataclass(frozen=True)
class ImageEncoderConfig:
    """OpenCLIP ViT vision tower (``open_clip.model.visual``)."""

    image_size: int = 224  # sqrt(positional_embedding.shape[0] - 1) * patch_size
    patch_size: int = 14  # conv1.weight.shape[-1]
    width: int = 1280  # conv1.weight.shape[0]
    layers: int = 32  # number of transformer.resblocks.N
    mlp_width: int = 5120  # transformer.resblocks.0.mlp.c_fc.weight.shape[0]
    embed_dim: int = 1024  # proj.shape[1]
    # Not in the weights. open_clip's ViT-H-14 uses 80 (16 heads); every other open_clip ViT
    # uses its default of 64. detect.py applies that rule; override it here if needed.
    head_width: int = 80

    def __post_init__(self) -> None:
        if self.width % self.head_width:
            raise ConfigError(f"width {self.width} is not a multiple of head_width {self.head_width}")

    @property
    def heads(self) -> int:
        return self.width // self.head_width

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size


class Family(str, enum.Enum):
    """Model family, which fixes the conditioner layout. Detected from ``label_emb`` input width."""

    SVD = "svd"
    SV3D_U = "sv3d_u"
    SV3D_P = "sv3d_p"


#: Scalar inputs embedded into the UNet's vector ``y``, in conditioner order, with their widths.
VECTOR_LAYOUT: dict[Family, tuple[tuple[str, int], ...]] = {
    Family.SVD: (("fps_id", 256), ("motion_bucket_id", 256), ("cond_aug", 256)),
    Family.SV3D_U: (("cond_aug", 256),),
    Family.SV3D_P: (("cond_aug", 256), ("polars_rad", 512), ("azimuths_rad", 512)),
}

#: Index of the concat-path VAE encoder in ``conditioner.embedders``.
COND_VAE_INDEX: dict[Family, int] = {Family.SVD: 3, Family.SV3D_U: 1, Family.SV3D_P: 1}


def vector_width(family: Family) -> int:
    return sum(width for _, width in VECTOR_LAYOUT[family])


def family_from_vector_width(width: int) -> Family:
    for family in Family:
        if vector_width(family) == width:
            return family
    known = ", ".join(f"{vector_width(f)} ({f.value})" for f in Family)
    raise ConfigError(f"vector (label_emb) input width {width} matches no SVD-family model; known: {known}")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to build every network of one checkpoint."""

    family: Family = Family.SVD
    unet: UNetConfig = field(default_factory=UNetConfig)
    first_stage: VAEConfig = field(default_factory=VAEConfig)
    cond_vae: VAEConfig = field(
        default_factory=lambda: VAEConfig(has_quant_conv=True, has_post_quant_conv=True, temporal_decoder=False)
    )
    image_encoder: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    scale_factor: float = SCALE_FACTOR  # not in the weights; the constant of every SVD config

    def __post_init__(self) -> None:
        if self.unet.adm_in_channels != vector_width(self.family):
            raise ConfigError(
                f"{self.family.value} needs a vector width of {vector_width(self.family)}, "
                f"the UNet config says {self.unet.adm_in_channels}"
            )
        if self.unet.context_dim != self.image_encoder.embed_dim:
            raise ConfigError(
                f"UNet context_dim {self.unet.context_dim} != image embedding width {self.image_encoder.embed_dim}"
            )

    @property
    def cond_vae_index(self) -> int:
        return COND_VAE_INDEX[self.family]

    @property
    def size_multiple(self) -> int:
        """Pixel sizes must be multiples of this: VAE factor x UNet downsampling (64 for official models)."""
        return self.first_stage.downsample_factor * 2 ** (len(self.unet.channel_mult) - 1)


@dataclass(frozen=True)
class SamplingDefaults:
    """Per-variant sampling settings of the reference scripts (the weights do not carry them)."""

    num_frames: int
    width: int
    height: int
    steps: int
    min_cfg: float
    max_cfg: float
    guidance: str  # "linear" | "triangle"
    fps: int  # the user-facing fps; fps_id = fps - 1 (demo / diffusers / ComfyUI convention)
    motion_bucket_id: int
    cond_aug: float
    decoding_t: int
    sampler: str = "euler"  # a name of svd_model.diffusion.sampling.SAMPLERS
    schedule: str = "karras"  # a name of svd_model.diffusion.schedules.SCHEDULES


#: The few-step variant: AnimateLCM-SVD-xt (Wang et al. 2024, "AnimateLCM"), an SVD-XT UNet distilled into a
#: consistency model, published as a UNet-only file (weights.unet_file). Its demo's settings: 4 steps (the
#: model card: good results in 4, and 2-8 work), guidance 1.0 on the first frame to 1.2 on the last, motion bucket
#: 80, its scheduler's stochastic consistency steps ("lcm") on a 40-level Karras grid (sigma 0.002-700, rho 7;
#: the "animatelcm" schedule). Conditioning fps 7 (the demo leaves diffusers' default), noise augmentation 0.02.
FEW_STEP_VARIANT = "animatelcm_svd_xt"

#: Keys are variant names; image-decoder variants share their base model's sampling settings.
VARIANT_DEFAULTS: dict[str, SamplingDefaults] = {
    "svd": SamplingDefaults(14, 1024, 576, 25, 1.0, 2.5, "linear", 7, 127, 0.02, 14),
    "svd_xt": SamplingDefaults(25, 1024, 576, 30, 1.5, 3.0, "linear", 7, 127, 0.02, 14),
    "svd_xt_1_1": SamplingDefaults(25, 1024, 576, 30, 1.5, 3.0, "linear", 7, 127, 0.02, 14),
    "sv3d_u": SamplingDefaults(21, 576, 576, 50, 1.0, 2.5, "triangle", 7, 127, 1e-5, 14),
    "sv3d_p": SamplingDefaults(21, 576, 576, 50, 1.0, 2.5, "triangle", 7, 127, 1e-5, 14),
    FEW_STEP_VARIANT: SamplingDefaults(25, 1024, 576, 4, 1.0, 1.2, "linear", 7, 80, 0.02, 14, "lcm", "animatelcm"),
}

VARIANT_FAMILY: dict[str, Family] = {
    "svd": Family.SVD,
    "svd_xt": Family.SVD,
    "svd_xt_1_1": Family.SVD,
    "sv3d_u": Family.SV3D_U,
    "sv3d_p": Family.SV3D_P,
    FEW_STEP_VARIANT: Family.SVD,
}


def sampling_defaults(variant: str) -> SamplingDefaults:
    return choose(VARIANT_DEFAULTS, variant, "variant")
