"""A separate first-stage VAE file in place of a loaded bundle's own (another temporal decoder, an image decoder).

A VAE file is one ``.safetensors`` file whose keys all belong to a first-stage VAE, named one of three ways
(:data:`.detect.VAE_LAYOUTS`): official names under ``first_stage_model.``; official names without prefix
(``encoder.*``, ``decoder.*``, ``quant_conv.*``, ``post_quant_conv.*``: the files of ComfyUI's models/vae); or
diffusers ``AutoencoderKLTemporalDecoder`` / ``AutoencoderKL`` names (converted by :mod:`.diffusers_vae_keys`).
The first stage of a full checkpoint (``first_stage_model.*`` next to other keys) is used the same way, so e.g. the
image decoder of ``svd_xt_image_decoder.safetensors`` can decode an ``svd_xt`` model's latents.

The architecture comes from the shapes (:func:`.detect.infer_vae_config`: widths, levels, temporal decoder or image
decoder, quant convs), the file is validated by the safetensors library (:class:`.checkpoint.CheckpointReader`), its
keys and shapes are checked against the network built from them, and every weight is checked for NaN / Inf like
:func:`.loader.load_bundle` does. It must fit the bundle: the same latent channels and the same spatial factor
(8 for SD-family VAEs). The latent *scale* (0.18215 for SD 1.x / SVD) is not stored in any weight: a VAE of the
same shapes trained for another latent space (SDXL's, scale 0.13025) loads, and decodes with wrong colours.

What is replaced: the decoder (and ``post_quant_conv``) always; the encoder (and ``quant_conv``) when the file has
one. A file without an encoder keeps the bundle's first-stage encoder when its layout (widths, levels, latent
channels) is the decoder's; otherwise the first stage has no encoder afterwards and encoding (Encode Frames,
video-to-video) uses the conditioning VAE's encoder, as for SV3D.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..config import VAEConfig
from ..errors import CheckpointError, SVDError, shorten
from ..nn.vae import AutoencoderKL
from .checkpoint import CheckpointReader
from .detect import (
    FIRST_STAGE_PREFIX,
    UNET_PREFIX,
    VAE_LAYOUTS,
    VAE_LEFTOVER_PREFIXES,
    VAE_PARTS,
    _describe_foreign,
    infer_vae_config,
    vae_file_layout,
)
from .diffusers_vae_keys import vae_diffusers_to_sgm
from .weight_checks import checked_state

if TYPE_CHECKING:
    from .loader import SVDBundle

log = logging.getLogger(__name__)

#: The layout name of the first stage taken out of a full checkpoint.
FULL_CHECKPOINT = "checkpoint"
_KEPT_PARTS = ("encoder.", "quant_conv.")  # what a file without an encoder keeps of the bundle's first stage


@dataclass(frozen=True)
class VAEReplacement:
    """What :func:`replace_vae` did: the file, how it names its keys, the new first stage's config, and where
    the encoder came from ("file", "kept": the bundle's, or "none": encoding falls back to the conditioning VAE)."""

    source: str
    layout: str
    config: VAEConfig
    encoder: str
    ignored: int = 0

    def summary(self) -> str:
        decoder = "temporal decoder" if self.config.temporal_decoder else "image decoder"
        encoder = {"file": "with its encoder",
                   "kept": "no encoder in the file: the checkpoint's encoder is kept",
                   "none": "no encoder: encoding uses the conditioning VAE"}[self.encoder]
        naming = "the first stage of a full checkpoint" if self.layout == FULL_CHECKPOINT else VAE_LAYOUTS[self.layout]
        ignored = f", {self.ignored} other keys ignored" if self.ignored else ""
        return f"VAE {self.source}: {decoder}, {encoder} ({naming}{ignored})"


def _not_a_vae(name: str, keys: list[str]) -> CheckpointError:
    if any(k.startswith((UNET_PREFIX, "diffusion_model.")) for k in keys):
        what = "a UNet (diffusion model) file"
    else:
        what = _describe_foreign(keys)
    return CheckpointError(
        f"{name} is not a VAE file: it looks like {what}, with none of the first-stage keys "
        f"({FIRST_STAGE_PREFIX}*, or {', '.join(p + '.*' for p in VAE_PARTS)}). Choose a VAE (models/vae) or a full "
        "checkpoint as the VAE, and this file as the checkpoint if it is one")


def _sgm_tensors(reader: CheckpointReader, name: str) -> tuple[dict[str, Tensor], str, int]:
    """(first-stage tensors in sgm names without prefix, the file's layout, how many keys were ignored)."""
    keys = list(reader)
    if not keys:
        raise CheckpointError(f"{name} holds no tensors: not a VAE file")
    layout = vae_file_layout(keys)
    if layout is None and any(k.startswith(FIRST_STAGE_PREFIX) for k in keys):
        layout = FULL_CHECKPOINT
    if layout is None:
        raise _not_a_vae(name, keys)
    if layout in ("prefixed", FULL_CHECKPOINT):
        tensors = {k[len(FIRST_STAGE_PREFIX):]: reader[k] for k in keys if k.startswith(FIRST_STAGE_PREFIX)}
    else:
        tensors = {k: reader[k] for k in keys if not k.startswith(VAE_LEFTOVER_PREFIXES)}
    if layout == "diffusers":
        try:
            tensors = vae_diffusers_to_sgm(tensors)  # renames; the mid-attention weights become views
        except CheckpointError as exc:
            raise CheckpointError(f"{name}: {exc}") from None
    return tensors, layout, len(keys) - len(tensors)


def _architecture(name: str, tensors: Mapping[str, Tensor]) -> VAEConfig:
    shapes = {k: tuple(t.shape) for k, t in tensors.items()}
    try:
        config = infer_vae_config(shapes, "")
    except CheckpointError as exc:
        raise CheckpointError(f"{name}: {exc}") from None
    if not config.has_decoder:
        raise CheckpointError(f"{name} has no decoder (no decoder.* keys): a VAE file replaces the decoder, so it "
                              "must have one")
    return config


def _check_fit(name: str, new: VAEConfig, old: VAEConfig, unet_channels: int) -> None:
    """The file's VAE works in the bundle's latent space: latent channels, spatial factor, RGB in and out."""
    if new.z_channels != unet_channels or new.z_channels != old.z_channels:
        raise CheckpointError(
            f"{name} is a VAE for another latent space: {new.z_channels} latent channels, the checkpoint's UNet "
            f"works on {unet_channels} (SD 1.x / SVD VAEs have 4; SD3 and Flux VAEs 16)")
    if new.downsample_factor != old.downsample_factor:
        raise CheckpointError(
            f"{name} scales images by {new.downsample_factor} ({len(new.ch_mult)} levels), the checkpoint's VAE by "
            f"{old.downsample_factor}: its latents would not fit the UNet")
    if new.out_channels != 3 or (new.has_encoder and new.in_channels != 3):
        raise CheckpointError(f"{name}: the VAE maps {new.in_channels} to {new.out_channels} image channels, "
                              "expected RGB (3)")


def _same_layout(a: VAEConfig, b: VAEConfig) -> bool:
    return (a.ch, a.ch_mult, a.num_res_blocks, a.z_channels) == (b.ch, b.ch_mult, b.num_res_blocks, b.z_channels)


def replace_vae(
    bundle: SVDBundle,
    path: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    allow_non_finite: bool = False,
) -> VAEReplacement:
    """Replace ``bundle``'s first-stage VAE by the one in the file at ``path`` (in place); returns what was done.

    The new weights take ``dtype`` / ``device`` (None: those of the bundle's current first stage, fp32 unless the
    loader was told otherwise). Raises CheckpointError naming the file for a file that is not a VAE (a UNet, another
    model), a VAE of another latent space, a damaged or truncated file, or NaN / Inf weights (unless
    ``allow_non_finite``: then a logged warning). Replace the VAE before the bundle is handed to anything that holds
    its networks (a memory manager, an offload hook).
    """
    path = Path(path)
    name = path.name
    old_module = bundle.model.first_stage
    current = next(old_module.parameters())
    dtype = dtype or current.dtype
    device = torch.device(device) if device is not None else current.device
    reader = CheckpointReader(path)  # the safetensors library validates the file
    tensors, layout, ignored = _sgm_tensors(reader, name)
    config = _architecture(name, tensors)
    old = old_module.config
    _check_fit(name, config, old, bundle.config.unet.out_channels)
    kept: dict[str, Tensor] = {}
    encoder = "file" if config.has_encoder else "none"
    if not config.has_encoder and old.has_encoder and _same_layout(config, old):
        config = replace(config, has_encoder=True, has_quant_conv=old.has_quant_conv, in_channels=old.in_channels)
        kept = {k: v.to(device=device, dtype=dtype) for k, v in old_module.state_dict().items()
                if k.startswith(_KEPT_PARTS)}
        encoder = "kept"
    try:
        with torch.device("meta"):
            module = AutoencoderKL(config)
    except (SVDError, ValueError, RuntimeError, ZeroDivisionError) as exc:
        raise CheckpointError(f"{name}: the VAE read from its tensor shapes cannot be built "
                              f"({shorten(str(exc), 200)})") from None
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items() if k not in kept}
    state = checked_state(name, tensors, expected, dtype=dtype, device=device, allow_non_finite=allow_non_finite,
                          what="VAE file", node="the loader node's")
    module.load_state_dict({**state, **kept}, strict=True, assign=True)
    bundle.model.first_stage = module.eval().requires_grad_(False)
    bundle.model.config = replace(bundle.model.config, first_stage=config)
    done = VAEReplacement(name, layout, config, encoder, ignored)
    log.info("%s", done.summary())
    return done
