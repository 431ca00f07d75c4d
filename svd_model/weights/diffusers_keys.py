"""Key conversion between diffusers / transformers SVD components and the sgm single-file layout.

Pure functions on state dicts (no model classes, no diffusers or transformers import):

- UNet: ``UNetSpatioTemporalConditionModel`` <-> sgm ``VideoUNet`` (keys without ``model.diffusion_model.``).
  The block layout (levels, res blocks per level, which levels have transformers) is inferred from the
  keys, so reduced test configs convert as well as the full-size model.
- VAE: ``AutoencoderKLTemporalDecoder`` <-> sgm first stage (see :mod:`.diffusers_vae_keys`).
- Image encoder: transformers ``CLIPVisionModelWithProjection`` <-> open_clip ``visual.*`` (keys without
  ``conditioner.embedders.0.open_clip.model.visual.``).
- :func:`diffusers_pipeline_to_sgm` assembles a full sgm single-file state dict.

Tensors are passed through as the same objects. New tensors are made only where the layout needs it:
the CLIP q/k/v split (views) and merge (``torch.cat``), the CLIP projection transpose (a contiguous
copy) and the VAE mid-attention 1x1-conv <-> linear reshape (views). A key that cannot be mapped raises
:class:`CheckpointError`; nothing is dropped silently except transformers' ``position_ids`` buffer.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

from ..config import COND_VAE_INDEX, Family
from ..errors import CheckpointError
from .detect import FIRST_STAGE_PREFIX, IMAGE_ENCODER_PREFIX, UNET_PREFIX, cond_vae_prefix_at
from .diffusers_vae_keys import (
    EXACT,
    Block,
    Pairs,
    convert_blocks,
    identity_quant_conv,
    indices,
    vae_diffusers_to_sgm,
    vae_sgm_to_diffusers,
)

__all__ = [
    "SGM_FIRST_STAGE_PREFIX",
    "SGM_UNET_PREFIX",
    "SGM_VISUAL_PREFIX",
    "clip_vision_hf_to_openclip",
    "clip_vision_openclip_to_hf",
    "diffusers_pipeline_to_sgm",
    "identity_quant_conv",
    "unet_diffusers_to_sgm",
    "unet_sgm_to_diffusers",
    "vae_diffusers_to_sgm",
    "vae_sgm_to_diffusers",
]

#: The official single-file prefixes (declared in detect.py, the one module that knows key names).
SGM_UNET_PREFIX = UNET_PREFIX
SGM_FIRST_STAGE_PREFIX = FIRST_STAGE_PREFIX
SGM_VISUAL_PREFIX = IMAGE_ENCODER_PREFIX

# ---------------------------------------------------------------------------------------------------
# UNet

_RES_LAYERS: Pairs = (
    ("in_layers.0", "norm1"),
    ("in_layers.2", "conv1"),
    ("emb_layers.1", "time_emb_proj"),
    ("out_layers.0", "norm2"),
    ("out_layers.3", "conv2"),
    ("skip_connection", "conv_shortcut"),
)
#: VideoResBlock <-> SpatioTemporalResBlock.
_VIDEO_RESBLOCK: Pairs = (
    *((s, f"spatial_res_block.{d}") for s, d in _RES_LAYERS),
    *((f"time_stack.{s}", f"temporal_res_block.{d}") for s, d in _RES_LAYERS),
    ("time_mixer.mix_factor", "time_mixer.mix_factor"),
)
#: SpatialVideoTransformer <-> TransformerSpatioTemporalModel (block internals share their names).
_VIDEO_TRANSFORMER: Pairs = (
    ("norm", "norm"),
    ("proj_in", "proj_in"),
    ("proj_out", "proj_out"),
    ("transformer_blocks", "transformer_blocks"),
    ("time_stack", "temporal_transformer_blocks"),
    ("time_pos_embed.0", "time_pos_embed.linear_1"),
    ("time_pos_embed.2", "time_pos_embed.linear_2"),
    ("time_mixer.mix_factor", "time_mixer.mix_factor"),
)
_UNET_FIXED = (
    Block("input_blocks.0.0", "conv_in"),
    Block("time_embed.0", "time_embedding.linear_1"),
    Block("time_embed.2", "time_embedding.linear_2"),
    Block("label_emb.0.0", "add_embedding.linear_1"),
    Block("label_emb.0.2", "add_embedding.linear_2"),
    Block("out.0", "conv_norm_out"),
    Block("out.2", "conv_out"),
    Block("middle_block.0", "mid_block.resnets.0", _VIDEO_RESBLOCK),
    Block("middle_block.1", "mid_block.attentions.0", _VIDEO_TRANSFORMER),
    Block("middle_block.2", "mid_block.resnets.1", _VIDEO_RESBLOCK),
)
WHAT_UNET = "UNet"


@dataclass(frozen=True)
class _UNetLayout:
    levels: int
    num_res_blocks: int
    down_attention: frozenset[int]  # levels (0 = full resolution) with transformers in input_blocks
    up_attention: frozenset[int]  # the same for output_blocks

    @property
    def stride(self) -> int:
        """input/output block indices per level: the res blocks (input: plus the downsample)."""
        return self.num_res_blocks + 1


def _unet_blocks(layout: _UNetLayout) -> list[Block]:
    blocks = list(_UNET_FIXED)
    levels, nrb, stride = layout.levels, layout.num_res_blocks, layout.stride
    for level in range(levels):
        for m in range(nrb):
            n = 1 + level * stride + m
            blocks.append(Block(f"input_blocks.{n}.0", f"down_blocks.{level}.resnets.{m}", _VIDEO_RESBLOCK))
            if level in layout.down_attention:
                blocks.append(Block(f"input_blocks.{n}.1", f"down_blocks.{level}.attentions.{m}", _VIDEO_TRANSFORMER))
        if level < levels - 1:
            blocks.append(
                Block(f"input_blocks.{(level + 1) * stride}.0.op", f"down_blocks.{level}.downsamplers.0.conv")
            )
    for k in range(levels):  # diffusers up_blocks.0 is the lowest resolution, like output_blocks 0..nrb
        attention = levels - 1 - k in layout.up_attention
        for m in range(stride):
            n = k * stride + m
            blocks.append(Block(f"output_blocks.{n}.0", f"up_blocks.{k}.resnets.{m}", _VIDEO_RESBLOCK))
            if attention:
                blocks.append(Block(f"output_blocks.{n}.1", f"up_blocks.{k}.attentions.{m}", _VIDEO_TRANSFORMER))
        if k < levels - 1:
            upsample = f"output_blocks.{k * stride + nrb}.{2 if attention else 1}.conv"
            blocks.append(Block(upsample, f"up_blocks.{k}.upsamplers.0.conv"))
    return blocks


def _layout_error(detail: str) -> CheckpointError:
    return CheckpointError(f"{WHAT_UNET}: the block indices fit no layout of levels x res blocks: {detail}")


def _sgm_unet_layout(keys: list[str]) -> _UNetLayout:
    inputs = indices(keys, r"input_blocks\.(\d+)\.") - {0}
    if not inputs:
        return _UNetLayout(0, 0, frozenset(), frozenset())
    downs = sorted(indices(keys, r"input_blocks\.(\d+)\.0\.op\."))
    stride = downs[0] if downs else max(inputs) + 1
    levels = len(downs) + 1
    if stride < 2 or downs != [(level + 1) * stride for level in range(levels - 1)]:
        raise _layout_error(f"downsamplers at input_blocks {downs}")
    if max(inputs) != levels * stride - 1:
        raise _layout_error(f"input_blocks go up to {max(inputs)}, expected {levels * stride - 1}")
    outputs = indices(keys, r"output_blocks\.(\d+)\.")
    if outputs and max(outputs) != levels * stride - 1:
        raise _layout_error(f"output_blocks go up to {max(outputs)}, expected {levels * stride - 1}")
    down = frozenset((n - 1) // stride for n in indices(keys, r"input_blocks\.(\d+)\.1\."))
    up = frozenset(levels - 1 - n // stride for n in indices(keys, r"output_blocks\.(\d+)\.1\.(?!conv\.)"))
    return _UNetLayout(levels, stride - 1, down, up)


def _diffusers_unet_layout(keys: list[str]) -> _UNetLayout:
    levels_found = indices(keys, r"(?:down|up)_blocks\.(\d+)\.")
    if not levels_found:
        return _UNetLayout(0, 0, frozenset(), frozenset())
    levels = max(levels_found) + 1
    down_res = indices(keys, r"down_blocks\.\d+\.resnets\.(\d+)\.")
    up_res = indices(keys, r"up_blocks\.\d+\.resnets\.(\d+)\.")
    nrb = max(down_res) + 1 if down_res else max(up_res, default=0)
    if up_res and max(up_res) != nrb:
        raise _layout_error(f"{nrb} resnets per down block but {max(up_res) + 1} per up block (expected {nrb + 1})")
    down = frozenset(indices(keys, r"down_blocks\.(\d+)\.attentions\."))
    up = frozenset(levels - 1 - k for k in indices(keys, r"up_blocks\.(\d+)\.attentions\."))
    return _UNetLayout(levels, nrb, down, up)


def unet_sgm_to_diffusers(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """sgm VideoUNet keys (no ``model.diffusion_model.`` prefix) -> UNetSpatioTemporalConditionModel keys."""
    return convert_blocks(sd, _unet_blocks(_sgm_unet_layout(list(sd))), True, WHAT_UNET)


def unet_diffusers_to_sgm(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """UNetSpatioTemporalConditionModel keys -> sgm VideoUNet keys (no ``model.diffusion_model.`` prefix)."""
    return convert_blocks(sd, _unet_blocks(_diffusers_unet_layout(list(sd))), False, WHAT_UNET)


# ---------------------------------------------------------------------------------------------------
# Image encoder (open_clip visual <-> transformers CLIPVisionModelWithProjection)

_CLIP_LAYER: Pairs = (
    ("ln_1", "layer_norm1"),
    ("ln_2", "layer_norm2"),
    ("attn.out_proj", "self_attn.out_proj"),
    ("mlp.c_fc", "mlp.fc1"),
    ("mlp.c_proj", "mlp.fc2"),
)
_HF_VISION_PARTS = ("embeddings", "encoder", "pre_layrnorm", "post_layernorm")
_HF_POSITION_IDS = "vision_model.embeddings.position_ids"
_HF_PROJ = "visual_projection.weight"
_HF_QKV = re.compile(r"vision_model\.encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$")
_OC_IN_PROJ = re.compile(r"transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$")
WHAT_CLIP = "image encoder"


def _clip_blocks(layers: int) -> list[Block]:
    blocks = [
        Block("conv1", "vision_model.embeddings.patch_embedding"),
        Block("class_embedding", "vision_model.embeddings.class_embedding", EXACT),
        Block("positional_embedding", "vision_model.embeddings.position_embedding.weight", EXACT),
        Block("ln_pre", "vision_model.pre_layrnorm"),
        Block("ln_post", "vision_model.post_layernorm"),
    ]
    blocks += [
        Block(f"transformer.resblocks.{i}", f"vision_model.encoder.layers.{i}", _CLIP_LAYER) for i in range(layers)
    ]
    return blocks


def _clip_layers(keys: Iterable[str]) -> int:
    found = indices(list(keys), r"(?:transformer\.resblocks|vision_model\.encoder\.layers)\.(\d+)\.")
    return max(found) + 1 if found else 0


def _split_in_proj(key: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    match = _OC_IN_PROJ.match(key)
    if match is None or tensor.shape[0] % 3:
        raise CheckpointError(
            f"{WHAT_CLIP}: cannot map key {key!r} (shape {tuple(tensor.shape)}): expected "
            "transformer.resblocks.N.attn.in_proj_{weight,bias} with a first dimension divisible by 3"
        )
    layer, kind = match.groups()
    q, k, v = tensor.chunk(3, dim=0)
    prefix = f"vision_model.encoder.layers.{layer}.self_attn"
    return {f"{prefix}.q_proj.{kind}": q, f"{prefix}.k_proj.{kind}": k, f"{prefix}.v_proj.{kind}": v}


def clip_vision_openclip_to_hf(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip ``visual.*`` keys (without the prefix) -> CLIPVisionModelWithProjection keys.

    ``attn.in_proj_{weight,bias}`` is split (q, k, v order) into views; ``proj`` [width, embed] becomes
    ``visual_projection.weight`` [embed, width] (a contiguous transposed copy).
    """
    rest = {k: v for k, v in sd.items() if k != "proj" and ".attn.in_proj_" not in k}
    out = convert_blocks(rest, _clip_blocks(_clip_layers(sd)), True, WHAT_CLIP)
    for key, tensor in sd.items():
        if ".attn.in_proj_" in key:
            out.update(_split_in_proj(key, tensor))
    if "proj" in sd:
        out[_HF_PROJ] = sd["proj"].t().contiguous()
    return out


def _hf_key(key: str) -> str:
    """Add ``vision_model.`` to keys saved from the inner CLIPVisionTransformer."""
    return f"vision_model.{key}" if key.split(".")[0] in _HF_VISION_PARTS else key


def _merge_qkv(parts: dict[tuple[str, str], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    out = {}
    for (layer, kind), found in sorted(parts.items()):
        missing = [n for n in "qkv" if n not in found]
        if missing:
            names = ", ".join(f"self_attn.{n}_proj.{kind}" for n in missing)
            raise CheckpointError(
                f"{WHAT_CLIP}: encoder layer {layer} lacks {names} (needed to build attn.in_proj_{kind})"
            )
        out[f"transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat([found[n] for n in "qkv"], dim=0)
    return out


def clip_vision_hf_to_openclip(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CLIPVisionModelWithProjection keys (with or without ``vision_model.``) -> open_clip ``visual.*`` keys.

    q/k/v projections are concatenated (q, k, v) into ``attn.in_proj_*``; ``visual_projection.weight`` is
    transposed into ``proj``. The ``embeddings.position_ids`` buffer of older transformers files is dropped.
    """
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    rest: dict[str, torch.Tensor] = {}
    proj = None
    for key, tensor in sd.items():
        name = _hf_key(key)
        match = _HF_QKV.match(name)
        if match:
            layer, which, kind = match.groups()
            qkv.setdefault((layer, kind), {})[which] = tensor
        elif name == _HF_PROJ:
            proj = tensor
        elif name != _HF_POSITION_IDS:
            rest[name] = tensor
    out = convert_blocks(rest, _clip_blocks(_clip_layers(map(_hf_key, sd))), False, WHAT_CLIP)
    out.update(_merge_qkv(qkv))
    if proj is not None:
        out["proj"] = proj.t().contiguous()
    return out


# ---------------------------------------------------------------------------------------------------
# Whole pipeline


def _prefixed(prefix: str, sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in sd.items()}


def diffusers_pipeline_to_sgm(
    unet_sd: Mapping[str, torch.Tensor],
    vae_sd: Mapping[str, torch.Tensor],
    image_encoder_sd: Mapping[str, torch.Tensor],
    *,
    cond_vae_index: int = COND_VAE_INDEX[Family.SVD],
) -> dict[str, torch.Tensor]:
    """The three diffusers/transformers component state dicts -> one sgm single-file state dict.

    - ``model.diffusion_model.*``: the UNet.
    - ``first_stage_model.*``: the VAE, including diffusers' ``quant_conv`` (VAEConfig.has_quant_conv).
    - ``conditioner.embedders.0.open_clip.model.visual.*``: the image encoder.
    - ``conditioner.embedders.{cond_vae_index}.encoder.{encoder,quant_conv}.*``: the concat-path VAE encoder,
      holding the *same tensor objects* as ``first_stage_model.encoder`` / ``quant_conv``. A diffusers
      pipeline has no separate conditioner VAE, so its ``decoder`` and ``post_quant_conv`` are absent
      (VAEConfig ``has_decoder=False, has_post_quant_conv=False``), and so are open_clip's unused text
      leftovers. Because tensors are shared, clone them before ``safetensors.torch.save_file``.
    """
    vae = vae_diffusers_to_sgm(vae_sd)
    for needed in ("encoder.conv_in.weight", "quant_conv.weight"):
        if needed not in vae:
            raise CheckpointError(f"VAE: the diffusers VAE lacks {needed!r}, which the conditioner VAE encoder needs")
    out = _prefixed(SGM_UNET_PREFIX, unet_diffusers_to_sgm(unet_sd))
    out.update(_prefixed(SGM_FIRST_STAGE_PREFIX, vae))
    cond_prefix = cond_vae_prefix_at(cond_vae_index)
    out.update({cond_prefix + k: v for k, v in vae.items() if k.startswith(("encoder.", "quant_conv."))})
    out.update(_prefixed(SGM_VISUAL_PREFIX, clip_vision_hf_to_openclip(image_encoder_sd)))
    return out
