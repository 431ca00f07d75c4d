"""Infer a :class:`ModelConfig` from checkpoint key names and shapes.

This is the only module that reads key names. Every field names the key it comes from; values
the weights cannot tell are documented defaults in :mod:`svd_model.config`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from ..config import (
    COND_VAE_INDEX,
    FEW_STEP_VARIANT,
    Family,
    ImageEncoderConfig,
    ModelConfig,
    UNetConfig,
    VAEConfig,
    family_from_vector_width,
)
from ..errors import CheckpointError

Shapes = Mapping[str, Sequence[int]]

UNET_PREFIX = "model.diffusion_model."
FIRST_STAGE_PREFIX = "first_stage_model."
CLIP_PREFIX = "conditioner.embedders.0.open_clip.model."
IMAGE_ENCODER_PREFIX = CLIP_PREFIX + "visual."


#: open_clip vision towers whose attention heads are not 64 wide, by tower width (``conv1`` output channels):
#: ViT-H-14 (SVD's image encoder) has 16 heads of 80. Any other width gets open_clip's default head width.
CLIP_HEAD_WIDTH = {1280: 80}
CLIP_DEFAULT_HEAD_WIDTH = 64


def cond_vae_prefix(family: Family) -> str:
    """The prefix of the conditioning (concat-path) VAE encoder of a ``family`` checkpoint."""
    return cond_vae_prefix_at(COND_VAE_INDEX[family])


def cond_vae_prefix_at(index: int) -> str:
    """The prefix of a conditioning VAE encoder that is the conditioner's embedder number ``index``."""
    return f"conditioner.embedders.{index}.encoder."


def is_ignored_key(key: str) -> bool:
    """Keys the official files carry but no SVD network uses: open_clip's text-tower leftovers
    (token_embedding, positional_embedding, ln_final, text_projection, logit_scale; sgm deletes only
    the text transformer) and, if a file kept it, the text transformer itself."""
    return key.startswith(CLIP_PREFIX) and not key.startswith(IMAGE_ENCODER_PREFIX)


# (pattern that identifies a foreign model, what it is). Checked only when the SVD keys are absent.
_FOREIGN = (
    (rf"^({re.escape(UNET_PREFIX)})?double_blocks\.", "a Flux checkpoint"),
    (rf"^({re.escape(UNET_PREFIX)})?joint_blocks\.", "a Stable Diffusion 3 checkpoint"),
    (r"^conditioner\.embedders\.1\.model\.", "an SDXL checkpoint"),
    (r"^cond_stage_model\.", "a Stable Diffusion 1.x/2.x checkpoint"),
    (r"^(down_blocks|up_blocks|mid_block)\.", "a diffusers-format component (load the folder, not one file)"),
    (r"^(vision_model|text_model)\.", "a transformers CLIP model"),
    (r"^(encoder|decoder)\.(down|up|conv_in)", "a standalone VAE"),
)


#: The top-level parts of a first-stage VAE's keys, in sgm and diffusers names alike.
VAE_PARTS = ("encoder", "decoder", "quant_conv", "post_quant_conv")
#: Keys that VAE files carry but no network uses: training leftovers (the LPIPS / discriminator loss, EMA counters).
VAE_LEFTOVER_PREFIXES = ("loss.", "model_ema.")
#: How a VAE-only file names its keys (see :func:`vae_file_layout`), for messages.
VAE_LAYOUTS = {
    "prefixed": f"official names with the {FIRST_STAGE_PREFIX!r} prefix",
    "sgm": "official names without prefix (encoder.*, decoder.*, as in ComfyUI's models/vae)",
    "diffusers": "diffusers AutoencoderKL / AutoencoderKLTemporalDecoder names",
}
_DIFFUSERS_VAE = re.compile(r"^(encoder|decoder)\.(down_blocks|up_blocks|mid_block|conv_norm_out|time_conv_out)\.")


def vae_file_layout(keys: Sequence[str]) -> str | None:
    """A key of :data:`VAE_LAYOUTS` when every key (training leftovers aside) belongs to a first-stage VAE: all
    under ``first_stage_model.`` ("prefixed"), or without prefix in sgm ("sgm") or diffusers ("diffusers") names.
    None when some key belongs to something else (a full checkpoint, a UNet) or there are none."""
    used = [k for k in keys if not k.startswith(VAE_LEFTOVER_PREFIXES)]
    prefixed = bool(used) and all(k.startswith(FIRST_STAGE_PREFIX) for k in used)
    rests = [k[len(FIRST_STAGE_PREFIX):] for k in used] if prefixed else used
    if not rests or any(r.split(".")[0] not in VAE_PARTS for r in rests):
        return None
    if prefixed:
        return "prefixed"
    return "diffusers" if any(_DIFFUSERS_VAE.match(r) for r in rests) else "sgm"


def vae_only_message(layout: str) -> str:
    """Why a VAE-only file does not load as a model, and how to use it instead."""
    return (f"this is a VAE-only file ({VAE_LAYOUTS[layout]}): it has no UNet, so it is not a model on its own. "
            "Load a full SVD checkpoint and use this file as its VAE: load_bundle(checkpoint, vae=path) in Python, "
            "the SVD Lab Checkpoint Loader's vae_name input in ComfyUI (files in models/vae)")


#: The top-level parts of a VideoUNet's keys in sgm names, and in diffusers ``UNetSpatioTemporalConditionModel`` names.
UNET_PARTS = ("input_blocks", "middle_block", "output_blocks", "time_embed", "label_emb", "out")
DIFFUSERS_UNET_PARTS = ("conv_in", "time_embedding", "add_embedding", "down_blocks", "mid_block", "up_blocks",
                        "conv_norm_out", "conv_out")
#: How a UNet-only file names its keys (see :func:`unet_file_layout`), for messages.
UNET_LAYOUTS = {
    "prefixed": f"official names with the {UNET_PREFIX!r} prefix",
    "sgm": "official names without prefix (input_blocks.*, middle_block.*, ...)",
    "diffusers": "diffusers UNetSpatioTemporalConditionModel names (down_blocks.*, mid_block.*, ...), as "
                 "AnimateLCM-SVD-xt's file",
    "checkpoint": "the UNet of a full checkpoint",
}
#: The key every SVD-family UNet has and an image model's UNet lacks (a temporal res block), without prefix.
UNET_TEMPORAL_MARKER = "input_blocks.1.0.time_stack.in_layers.2.weight"
_LORA_KEY = re.compile(r"\.(lora_up|lora_down|lora_A|lora_B|lora\.up|lora\.down)\.|\.alpha$|\.lokr_|\.hada_")


def unet_file_layout(keys: Sequence[str]) -> str | None:
    """A key of :data:`UNET_LAYOUTS` for a file that holds a UNet: every key under ``model.diffusion_model.``
    ("prefixed"); every key a top-level UNet part in sgm ("sgm") or diffusers ("diffusers") names; or a full
    checkpoint, whose ``model.diffusion_model.*`` keys are taken ("checkpoint"). None otherwise (a VAE, a LoRA,
    another model, no tensors)."""
    if not keys or any(_LORA_KEY.search(k) for k in keys):
        return None
    under = [k.startswith(UNET_PREFIX) for k in keys]
    if all(under):
        return "prefixed"
    if any(under):
        return "checkpoint"
    tops = {k.split(".")[0] for k in keys}
    if tops <= set(UNET_PARTS):
        return "sgm"
    if tops <= set(DIFFUSERS_UNET_PARTS):
        return "diffusers"
    return None


def unet_file_keys(keys: Sequence[str], layout: str) -> dict[str, str]:
    """{file key: key without prefix} for the UNet keys of a file of `layout` (:func:`unet_file_layout`); the names
    stay in the file's naming (diffusers names are converted by :mod:`.diffusers_keys`)."""
    if layout in ("prefixed", "checkpoint"):
        return {k: k[len(UNET_PREFIX):] for k in keys if k.startswith(UNET_PREFIX)}
    return {k: k for k in keys}


def not_a_unet_message(keys: Sequence[str]) -> str:
    """What a file with no usable UNet holds, and where it belongs instead."""
    if any(_LORA_KEY.search(k) for k in keys):
        return "it is a LoRA (lora_up / lora_down keys): load it with SVD Lab LoRA Loader (models/loras)"
    layout = vae_file_layout(keys)
    if layout is not None:
        return f"it is a VAE-only file ({VAE_LAYOUTS[layout]}): choose it as the checkpoint loader's vae_name"
    return f"it looks like {_describe_foreign(keys)}"


def has_temporal_layers(keys: Sequence[str]) -> bool:
    """Whether UNet keys without prefix (sgm names) include the temporal layers every SVD-family UNet has."""
    return UNET_TEMPORAL_MARKER in keys


def _describe_foreign(keys: Sequence[str]) -> str:
    for pattern, what in _FOREIGN:
        if any(re.match(pattern, k) for k in keys):
            return what
    if any(k.startswith(UNET_PREFIX) for k in keys):
        return "a UNet without temporal layers (an image model, not SVD)"
    prefixes = sorted({k.split(".")[0] for k in keys})[:6]
    return f"an unknown model (top-level prefixes: {', '.join(prefixes) or 'none'})"


def _need(shapes: Shapes, key: str, what: str) -> Sequence[int]:
    try:
        return shapes[key]
    except KeyError:
        raise CheckpointError(
            f"missing {key!r} ({what}); the checkpoint is incomplete or not an SVD-family model"
        ) from None


def _dim(shapes: Shapes, key: str, what: str, axis: int) -> int:
    """shapes[key][axis] as a positive width, or a CheckpointError naming the key, its shape and what is wrong."""
    shape = _need(shapes, key, what)
    rank = axis + 1 if axis >= 0 else -axis
    if len(shape) < rank:
        raise CheckpointError(
            f"{key!r} ({what}) has shape {list(shape)}: expected at least {rank} dimension(s)"
        )
    value = int(shape[axis])
    if value <= 0:
        raise CheckpointError(f"{key!r} ({what}) has shape {list(shape)}: a width of 0 where a size is expected")
    return value


def _indices(shapes: Shapes, prefix: str) -> list[int]:
    """Sorted distinct integers N of keys '<prefix>N.*'."""
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in shapes if (m := pat.match(k))})


def infer_unet_config(shapes: Shapes, prefix: str = UNET_PREFIX) -> UNetConfig:
    conv_in = prefix + "input_blocks.0.0.weight"
    model_channels, in_channels = (_dim(shapes, conv_in, "UNet input conv", axis) for axis in (0, 1))
    out_channels = _dim(shapes, prefix + "out.2.weight", "UNet output conv", 0)
    adm = _dim(shapes, prefix + "label_emb.0.0.weight", "UNet vector embedding", 1)
    # input_blocks: [conv_in, (res[, transformer]) x num_res_blocks, downsample, ...]; the last level has no downsample.
    levels: list[list[int]] = [[]]
    for n in _indices(shapes, prefix + "input_blocks.")[1:]:
        if prefix + f"input_blocks.{n}.0.op.weight" in shapes:
            levels.append([])
        else:
            levels[-1].append(n)
    num_res = len(levels[0])
    if num_res == 0 or any(len(level) != num_res for level in levels):
        raise CheckpointError(f"unexpected UNet layout: res blocks per level {[len(lv) for lv in levels]}")
    mult = []
    attention = []
    for level in levels:
        width = _dim(shapes, prefix + f"input_blocks.{level[0]}.0.out_layers.3.weight", "res block conv", 0)
        mult.append(width // model_channels)
        attention.append(prefix + f"input_blocks.{level[0]}.1.proj_in.weight" in shapes)
    transformer = prefix + "middle_block.1."
    depth = len(_indices(shapes, transformer + "transformer_blocks."))
    context_dim = _dim(shapes, transformer + "transformer_blocks.0.attn2.to_k.weight", "cross-attention", 1)
    kernel = _dim(shapes, prefix + "input_blocks.1.0.time_stack.in_layers.2.weight", "temporal res block conv", 2)
    return UNetConfig(
        in_channels=in_channels,
        out_channels=out_channels,
        model_channels=model_channels,
        channel_mult=tuple(mult),
        num_res_blocks=num_res,
        attention_levels=tuple(attention),
        transformer_depth=depth,
        context_dim=context_dim,
        adm_in_channels=adm,
        video_kernel_size=kernel,
    )


def infer_vae_config(shapes: Shapes, prefix: str) -> VAEConfig:
    has_encoder = prefix + "encoder.conv_in.weight" in shapes
    has_decoder = prefix + "decoder.conv_in.weight" in shapes
    if not (has_encoder or has_decoder):
        raise CheckpointError(f"missing VAE under {prefix!r}: neither encoder.conv_in nor decoder.conv_in found")
    if has_encoder:
        ch = _dim(shapes, prefix + "encoder.conv_in.weight", "VAE encoder input conv", 0)
        in_channels = _dim(shapes, prefix + "encoder.conv_in.weight", "VAE encoder input conv", 1)
        z = _dim(shapes, prefix + "encoder.conv_out.weight", "VAE encoder output", 0) // 2
        levels = _indices(shapes, prefix + "encoder.down.")
        mult = [_dim(shapes, prefix + f"encoder.down.{i}.block.0.conv2.weight", "VAE encoder block", 0) // ch
                for i in levels]
        num_res = len(_indices(shapes, prefix + "encoder.down.0.block."))
    else:
        ch = _dim(shapes, prefix + "decoder.conv_out.weight", "VAE decoder output conv", 1)
        in_channels = 3
        z = _dim(shapes, prefix + "decoder.conv_in.weight", "VAE decoder input conv", 1)
        levels = _indices(shapes, prefix + "decoder.up.")
        mult = [_dim(shapes, prefix + f"decoder.up.{i}.block.0.conv2.weight", "VAE decoder block", 0) // ch
                for i in levels]
        num_res = len(_indices(shapes, prefix + "decoder.up.0.block.")) - 1
    if not levels:
        part = "encoder.down" if has_encoder else "decoder.up"
        raise CheckpointError(f"the VAE under {prefix!r} is incomplete: it has {part.split('.')[0]}.conv_in but no "
                              f"{part}.N.* keys (its resolution levels)")
    out_channels = _dim(shapes, prefix + "decoder.conv_out.weight", "VAE decoder output conv", 0) if has_decoder else 3
    time_mix = prefix + "decoder.conv_out.time_mix_conv.weight"
    return VAEConfig(
        ch=ch,
        ch_mult=tuple(mult),
        num_res_blocks=num_res,
        in_channels=in_channels,
        out_channels=out_channels,
        z_channels=z,
        has_encoder=has_encoder,
        has_quant_conv=prefix + "quant_conv.weight" in shapes,
        has_post_quant_conv=prefix + "post_quant_conv.weight" in shapes,
        has_decoder=has_decoder,
        temporal_decoder=time_mix in shapes,
        video_kernel_size=_dim(shapes, time_mix, "VAE temporal mixing conv", 2) if time_mix in shapes else 3,
    )


def infer_image_encoder_config(shapes: Shapes, prefix: str = IMAGE_ENCODER_PREFIX) -> ImageEncoderConfig:
    conv1 = prefix + "conv1.weight"
    width, patch = _dim(shapes, conv1, "CLIP patch embedding", 0), _dim(shapes, conv1, "CLIP patch embedding", -1)
    tokens = _dim(shapes, prefix + "positional_embedding", "CLIP positional embedding", 0)
    grid = round((tokens - 1) ** 0.5)
    if grid * grid + 1 != tokens:
        raise CheckpointError(f"CLIP positional_embedding has {tokens} rows, expected a square grid + 1 class token")
    return ImageEncoderConfig(
        image_size=grid * patch,
        patch_size=patch,
        width=width,
        layers=len(_indices(shapes, prefix + "transformer.resblocks.")),
        mlp_width=_dim(shapes, prefix + "transformer.resblocks.0.mlp.c_fc.weight", "CLIP MLP", 0),
        embed_dim=_dim(shapes, prefix + "proj", "CLIP projection", 1),
        head_width=CLIP_HEAD_WIDTH.get(width, CLIP_DEFAULT_HEAD_WIDTH),  # not in the weights: by tower width
    )


def infer_config(shapes: Shapes) -> ModelConfig:
    """Infer every network's config from an official single-file state dict's key -> shape table."""
    keys = list(shapes)
    marker = UNET_PREFIX + "input_blocks.1.0.time_stack.in_layers.2.weight"
    if marker not in shapes:
        layout = vae_file_layout(keys)
        if layout is not None:
            raise CheckpointError(vae_only_message(layout))
        raise CheckpointError(
            f"this is not an SVD-family checkpoint: it looks like {_describe_foreign(keys)}. "
            f"Expected the temporal UNet key {marker!r} (svd, svd_xt, svd_xt_1_1, sv3d_u or sv3d_p)."
        )
    unet = infer_unet_config(shapes)
    family = family_from_vector_width(unet.adm_in_channels)
    image_encoder = infer_image_encoder_config(shapes)
    if not any(k.startswith(FIRST_STAGE_PREFIX) for k in keys):
        raise CheckpointError(f"missing the first-stage VAE (no {FIRST_STAGE_PREFIX!r} keys): the file is incomplete")
    cond_prefix = cond_vae_prefix(family)
    if not any(k.startswith(cond_prefix) for k in keys):
        raise CheckpointError(
            f"missing the conditioning VAE encoder (no {cond_prefix!r} keys) expected in a {family.value} checkpoint"
        )
    first_stage = infer_vae_config(shapes, FIRST_STAGE_PREFIX)
    if not first_stage.has_decoder:  # every official file decodes with it; the encoder is optional (SV3D has none)
        raise CheckpointError(f"the first-stage VAE is incomplete: no {FIRST_STAGE_PREFIX + 'decoder'!r} keys (it "
                              "decodes the video)")
    cond_vae = infer_vae_config(shapes, cond_prefix)
    for part, present in (("encoder", cond_vae.has_encoder), ("quant_conv", cond_vae.has_quant_conv)):
        if not present:  # both encode the conditioning frame; decoder and post_quant_conv are optional (diffusers)
            raise CheckpointError(f"the conditioning VAE encoder is incomplete: no {cond_prefix + part!r} keys")
    return ModelConfig(family=family, unet=unet, first_stage=first_stage, cond_vae=cond_vae,
                       image_encoder=image_encoder)


def guess_variant(family: Family, name: str = "") -> str:
    """Sampling-defaults variant. SVD and SVD-XT have identical shapes, so the file name decides
    ("lcm" -> the few-step variant, e.g. AnimateLCM-SVD-xt; "xt" -> svd_xt, "1_1"/"1.1" -> svd_xt_1_1), else svd;
    SV3D variants follow from the family."""
    if family is not Family.SVD:
        return family.value
    lowered = name.lower()
    if "lcm" in lowered:
        return FEW_STEP_VARIANT
    if "xt" in lowered:
        return "svd_xt_1_1" if re.search(r"1[._-]1", lowered) else "svd_xt"
    return "svd"
