"""First-stage VAE key conversion (sgm <-> diffusers), plus the table helpers shared with diffusers_keys.

sgm side: keys of the first stage *without* the ``first_stage_model.`` prefix
(``encoder.*``, ``decoder.*``, ``quant_conv.*``, ``post_quant_conv.*``).
diffusers side: ``AutoencoderKLTemporalDecoder`` keys when the decoder is the temporal VideoDecoder
(``decoder.conv_out.time_mix_conv`` present), otherwise ``AutoencoderKL`` names for a plain image decoder.

Renames reuse the tensor objects; only the mid-block attention weights are reshaped (sgm stores 1x1
Conv2d weights [C, C, 1, 1], diffusers Linear weights [C, C]), which gives views, not copies.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

from ..errors import CheckpointError

#: (sgm name, diffusers name) pairs. A name matches a key part equal to it or starting with it plus ".".
Pairs = tuple[tuple[str, str], ...]


def rename(rest: str, pairs: Pairs, to_diffusers: bool, key: str, what: str) -> str:
    """Rename the leading part of ``rest`` by the longest matching entry of ``pairs``."""
    table = pairs if to_diffusers else tuple((b, a) for a, b in pairs)
    for src, dst in sorted(table, key=lambda p: -len(p[0])):
        if rest == src or rest.startswith(src + "."):
            return dst + rest[len(src) :]
    expected = ", ".join(src for src, _ in table)
    raise CheckpointError(f"{what}: cannot map key {key!r}: sub-key {rest!r} starts with none of: {expected}")


#: The parameters of a plain layer (conv, linear, norm).
PARAMS: Pairs = (("weight", "weight"), ("bias", "bias"))
#: The key is the parameter itself (``class_embedding``, ``proj``).
EXACT: Pairs = ()


@dataclass(frozen=True)
class Block:
    """One module at a fixed prefix on both sides.

    ``pairs`` renames what follows the prefix: a table, :data:`PARAMS` (default), :data:`EXACT`, or
    None (anything below the prefix keeps its name: transformer blocks whose names agree).
    """

    sgm: str
    diffusers: str
    pairs: Pairs | None = PARAMS
    conv1x1_linear: bool = False  # sgm 1x1 Conv2d weights <-> diffusers Linear weights


def _find_block(key: str, index: Mapping[str, Block], what: str) -> tuple[Block, str]:
    parts = key.split(".")
    for cut in range(len(parts), 0, -1):
        block = index.get(".".join(parts[:cut]))
        if block is not None:
            return block, ".".join(parts[cut:])
    known = ", ".join(sorted({p.split(".")[0] for p in index}))
    raise CheckpointError(f"{what}: cannot map key {key!r}: expected it to start with one of: {known}")


def _rename_rest(key: str, rest: str, block: Block, to_diffusers: bool, what: str) -> str:
    if block.pairs is None:
        return rest
    if not rest and block.pairs is not EXACT:
        raise CheckpointError(f"{what}: key {key!r} names a whole module, expected a parameter below it")
    if rest and block.pairs is EXACT:
        raise CheckpointError(f"{what}: cannot map key {key!r}: expected {key[: -len(rest) - 1]!r} itself")
    return rename(rest, block.pairs, to_diffusers, key, what) if rest else rest


def convert_blocks(
    sd: Mapping[str, torch.Tensor], blocks: Iterable[Block], to_diffusers: bool, what: str
) -> dict[str, torch.Tensor]:
    """Rename every key of ``sd`` through the block whose prefix is its longest matching prefix."""
    index = {(b.sgm if to_diffusers else b.diffusers): b for b in blocks}
    out: dict[str, torch.Tensor] = {}
    for key, tensor in sd.items():
        block, rest = _find_block(key, index, what)
        rest = _rename_rest(key, rest, block, to_diffusers, what)
        target = block.diffusers if to_diffusers else block.sgm
        new_key = f"{target}.{rest}" if rest else target
        if block.conv1x1_linear:
            tensor = _conv1x1_to_linear(tensor) if to_diffusers else _linear_to_conv1x1(tensor)
        if new_key in out:
            raise CheckpointError(f"{what}: two keys map to {new_key!r} (the second is {key!r})")
        out[new_key] = tensor
    return out


def indices(keys: Iterable[str], pattern: str) -> set[int]:
    """The integers captured by ``pattern`` (one group, matched at the start) over ``keys``."""
    regex = re.compile(pattern)
    return {int(m.group(1)) for k in keys if (m := regex.match(k))}


def _conv1x1_to_linear(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.ndim == 4:
        if tuple(tensor.shape[2:]) != (1, 1):
            raise CheckpointError(f"expected a 1x1 conv weight, got shape {tuple(tensor.shape)}")
        return tensor.reshape(tensor.shape[0], tensor.shape[1])
    return tensor


def _linear_to_conv1x1(tensor: torch.Tensor) -> torch.Tensor:
    return tensor[:, :, None, None] if tensor.ndim == 2 else tensor


# ---------------------------------------------------------------------------------------------------
# VAE tables

_RESNET: Pairs = (
    ("norm1", "norm1"),
    ("conv1", "conv1"),
    ("norm2", "norm2"),
    ("conv2", "conv2"),
    ("nin_shortcut", "conv_shortcut"),
)
_VIDEO_RESNET: Pairs = tuple((s, f"spatial_res_block.{d}") for s, d in _RESNET) + (
    ("time_stack.in_layers.0", "temporal_res_block.norm1"),
    ("time_stack.in_layers.2", "temporal_res_block.conv1"),
    ("time_stack.out_layers.0", "temporal_res_block.norm2"),
    ("time_stack.out_layers.3", "temporal_res_block.conv2"),
    ("mix_factor", "time_mixer.mix_factor"),
)
_ATTENTION: Pairs = (
    ("norm", "group_norm"),
    ("q", "to_q"),
    ("k", "to_k"),
    ("v", "to_v"),
    ("proj_out", "to_out.0"),
)
#: Attention names of diffusers files saved before diffusers 0.14 (read-only aliases).
_LEGACY_ATTENTION: Pairs = (("q", "query"), ("k", "key"), ("v", "value"), ("proj_out", "proj_attn"))

WHAT_VAE = "VAE"


def _encoder_blocks(levels: int, nres: int, attention: Pairs) -> list[Block]:
    blocks = [
        Block("encoder.conv_in", "encoder.conv_in"),
        Block("encoder.norm_out", "encoder.conv_norm_out"),
        Block("encoder.conv_out", "encoder.conv_out"),
        Block("encoder.mid.block_1", "encoder.mid_block.resnets.0", _RESNET),
        Block("encoder.mid.attn_1", "encoder.mid_block.attentions.0", attention, conv1x1_linear=True),
        Block("encoder.mid.block_2", "encoder.mid_block.resnets.1", _RESNET),
    ]
    for level in range(levels):
        src, dst = f"encoder.down.{level}", f"encoder.down_blocks.{level}"
        blocks += [Block(f"{src}.block.{m}", f"{dst}.resnets.{m}", _RESNET) for m in range(nres)]
        blocks.append(Block(f"{src}.downsample.conv", f"{dst}.downsamplers.0.conv"))
    return blocks


def _decoder_blocks(levels: int, nres: int, attention: Pairs, temporal: bool) -> list[Block]:
    resnet = _VIDEO_RESNET if temporal else _RESNET
    blocks = [
        Block("decoder.conv_in", "decoder.conv_in"),
        Block("decoder.norm_out", "decoder.conv_norm_out"),
        Block("decoder.conv_out", "decoder.conv_out"),
        Block("decoder.mid.block_1", "decoder.mid_block.resnets.0", resnet),
        Block("decoder.mid.attn_1", "decoder.mid_block.attentions.0", attention, conv1x1_linear=True),
        Block("decoder.mid.block_2", "decoder.mid_block.resnets.1", resnet),
    ]
    if temporal:
        blocks.append(Block("decoder.conv_out.time_mix_conv", "decoder.time_conv_out"))
    for level in range(levels):  # sgm up.{level} (0 = full resolution) is diffusers up_blocks.{levels-1-level}
        src, dst = f"decoder.up.{level}", f"decoder.up_blocks.{levels - 1 - level}"
        blocks += [Block(f"{src}.block.{m}", f"{dst}.resnets.{m}", resnet) for m in range(nres)]
        blocks.append(Block(f"{src}.upsample.conv", f"{dst}.upsamplers.0.conv"))
    return blocks


def _vae_blocks(keys: Iterable[str], to_diffusers: bool) -> list[Block]:
    keys = list(keys)
    if to_diffusers:
        levels = _count(keys, r"encoder\.down\.(\d+)\.", r"decoder\.up\.(\d+)\.")
        nres = _count(keys, r"encoder\.down\.\d+\.block\.(\d+)\.", r"decoder\.up\.\d+\.block\.(\d+)\.")
        temporal = "decoder.conv_out.time_mix_conv.weight" in keys
        attention = _ATTENTION
    else:
        levels = _count(keys, r"encoder\.down_blocks\.(\d+)\.", r"decoder\.up_blocks\.(\d+)\.")
        nres = _count(keys, r"(?:encoder\.down|decoder\.up)_blocks\.\d+\.resnets\.(\d+)\.")
        temporal = "decoder.time_conv_out.weight" in keys
        attention = _ATTENTION + _LEGACY_ATTENTION
    return [
        *_encoder_blocks(levels, nres, attention),
        *_decoder_blocks(levels, nres, attention, temporal),
        Block("quant_conv", "quant_conv"),
        Block("post_quant_conv", "post_quant_conv"),
    ]


def _count(keys: list[str], *patterns: str) -> int:
    """1 + the largest index captured by any pattern (0 when none matches)."""
    found = set().union(*(indices(keys, p) for p in patterns))
    return max(found) + 1 if found else 0


def vae_sgm_to_diffusers(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """sgm first-stage keys -> ``AutoencoderKLTemporalDecoder`` keys (``AutoencoderKL`` for an image decoder).

    When the sgm dict has an encoder but no ``quant_conv`` (the official SVD first stage), an identity
    1x1 ``quant_conv`` (2*z -> 2*z, weight = eye, bias = 0) is added so that the diffusers model loads
    and encodes exactly as the sgm first stage; it has the dtype and device of ``encoder.conv_out.weight``.
    """
    out = convert_blocks(sd, _vae_blocks(sd, True), True, WHAT_VAE)
    if "encoder.conv_out.weight" in sd and "quant_conv.weight" not in sd:
        out.update(identity_quant_conv(sd["encoder.conv_out.weight"]))
    return out


def vae_diffusers_to_sgm(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``AutoencoderKLTemporalDecoder`` (or ``AutoencoderKL``) keys -> sgm first-stage keys.

    diffusers' top-level ``quant_conv`` is kept as ``quant_conv.*`` (sgm ``has_quant_conv``), even when it
    is an identity. Legacy attention names (query/key/value/proj_attn) are accepted.
    """
    return convert_blocks(sd, _vae_blocks(sd, False), False, WHAT_VAE)


def identity_quant_conv(conv_out_weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """An identity 1x1 conv over the encoder's output channels, as diffusers ``quant_conv`` keys."""
    channels = conv_out_weight.shape[0]
    kwargs = {"dtype": conv_out_weight.dtype, "device": conv_out_weight.device}
    weight = torch.eye(channels, **kwargs).reshape(channels, channels, 1, 1)
    return {"quant_conv.weight": weight, "quant_conv.bias": torch.zeros(channels, **kwargs)}
