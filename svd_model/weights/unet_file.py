"""A UNet-only file in place of a loaded bundle's UNet (a finetune published without VAE and image encoder, such as
the few-step AnimateLCM-SVD-xt).

A UNet file is one ``.safetensors`` file whose keys name a VideoUNet one of four ways (:data:`.detect.UNET_LAYOUTS`):
official names under ``model.diffusion_model.``; official names without prefix (``input_blocks.*``, ...); diffusers
``UNetSpatioTemporalConditionModel`` names (``down_blocks.*``, ``mid_block.*``: the layout of AnimateLCM-SVD-xt's
``AnimateLCM-SVD-xt.safetensors``, which its demo loads strictly into diffusers' UNet; converted by
:mod:`.diffusers_keys`); or a full checkpoint, of which only the UNet is taken. The VAEs and the image encoder stay
those of the bundle it joins (a base SVD-XT checkpoint, or one with a separate VAE file, :mod:`.vae_file`).

The architecture comes from the shapes (:func:`.detect.infer_unet_config`), the file is validated by the safetensors
library, keys and shapes are checked against the network built from them, and every weight is checked for NaN / Inf
as :func:`.loader.load_bundle` does. It must fit the bundle: the same latent channels, vector conditioning (family)
and cross-attention width (the image encoder's embedding).

Sampling defaults: a file says which settings it wants through its ``svd_lab.variant`` metadata or its name
(:func:`.detect.guess_variant`: "lcm" in the name -> the few-step variant); the caller may declare the variant. The
returned bundle's ``defaults`` then follow it (4 steps, lcm sampler, animatelcm schedule, cfg 1.0-1.2 for
AnimateLCM-SVD-xt); otherwise the bundle's variant is kept.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..config import FEW_STEP_VARIANT, VARIANT_DEFAULTS, VARIANT_FAMILY, UNetConfig, sampling_defaults
from ..errors import CheckpointError, ConfigError, SVDError, shorten
from ..lora.apply import _with_unet
from ..nn import streaming
from ..nn.cast import FP8_STORAGE, convert, store_fp8
from ..nn.unet import VideoUNet
from .checkpoint import CheckpointReader
from .detect import (
    UNET_LAYOUTS,
    guess_variant,
    has_temporal_layers,
    infer_unet_config,
    not_a_unet_message,
    unet_file_keys,
    unet_file_layout,
)
from .diffusers_keys import unet_diffusers_to_sgm
from .weight_checks import checked_state

if TYPE_CHECKING:
    from .loader import SVDBundle

log = logging.getLogger(__name__)

#: Metadata key naming a file's sampling variant (written by loader.save_bundle).
VARIANT_KEY = "svd_lab.variant"


@dataclass(frozen=True)
class UNetReplacement:
    """What :func:`with_unet` did: the file, how it names its keys, the UNet's config, the variant the bundle now
    samples with and where that came from ("declared", "metadata", "file name" or "kept": the bundle's)."""

    source: str
    layout: str
    config: UNetConfig
    variant: str
    variant_from: str
    ignored: int = 0

    def summary(self) -> str:
        d = sampling_defaults(self.variant)
        ignored = f", {self.ignored} other keys ignored" if self.ignored else ""
        return (f"UNet {self.source} ({UNET_LAYOUTS[self.layout]}{ignored}); variant {self.variant} "
                f"({self.variant_from}): {d.steps} steps, {d.sampler} sampler, {d.schedule} schedule, "
                f"cfg {d.min_cfg:g}-{d.max_cfg:g}")


def read_unet_file(path: str | os.PathLike) -> tuple[dict[str, Tensor], str, int, dict[str, str]]:
    """(UNet tensors in sgm names without prefix, the file's layout, keys ignored, the file's metadata). The tensors
    are memory-mapped views of the file (diffusers names renamed, not copied). CheckpointError naming the file for a
    file that holds no SVD UNet."""
    path = Path(path)
    name = path.name
    reader = CheckpointReader(path)  # the safetensors library validates the file
    keys = list(reader)
    layout = unet_file_layout(keys)
    if layout is None:
        raise CheckpointError(f"{name} is not a UNet file: {not_a_unet_message(keys)}. Expected an SVD UNet: "
                              f"{'; '.join(UNET_LAYOUTS.values())}")
    names = unet_file_keys(keys, layout)
    tensors = {bare: reader[key] for key, bare in names.items()}
    if layout == "diffusers":
        try:
            tensors = unet_diffusers_to_sgm(tensors)
        except CheckpointError as exc:
            raise CheckpointError(f"{name}: {exc}") from None
    if not has_temporal_layers(list(tensors)):
        raise CheckpointError(f"{name} holds a UNet without temporal layers (an image model such as SD 1.x / 2.x, "
                              "not SVD): an SVD UNet has time_stack blocks")
    return tensors, layout, len(keys) - len(names), dict(reader.metadata)


def _architecture(name: str, tensors: dict[str, Tensor]) -> UNetConfig:
    shapes = {k: tuple(t.shape) for k, t in tensors.items()}
    try:
        return infer_unet_config(shapes, prefix="")
    except CheckpointError as exc:
        raise CheckpointError(f"{name}: {exc}") from None
    except ConfigError as exc:
        raise CheckpointError(f"{name}: the UNet read from its tensor shapes is not valid: {exc}") from None


def _check_fit(name: str, new: UNetConfig, old: UNetConfig) -> None:
    """The file's UNet works with the bundle's VAE (latent channels) and conditioner (vector width, embedding)."""
    if new.out_channels != old.out_channels:
        raise CheckpointError(f"{name} is a UNet for {new.out_channels} latent channels, the model's VAE has "
                              f"{old.out_channels}")
    if new.adm_in_channels != old.adm_in_channels:
        raise CheckpointError(f"{name} takes a conditioning vector of width {new.adm_in_channels}, the model "
                              f"{old.adm_in_channels}: a UNet of another family (SVD 768, SV3D_u 256, SV3D_p 1280)")
    if new.context_dim != old.context_dim:
        raise CheckpointError(f"{name} cross-attends to {new.context_dim}-wide embeddings, the model's image "
                              f"encoder makes {old.context_dim}: a UNet for another image encoder")


def load_unet(
    path: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    allow_non_finite: bool = False,
) -> tuple[VideoUNet, str, int, dict[str, str]]:
    """(the file's UNet in `dtype` on `device`, eval mode without gradients; the file's layout; keys ignored; its
    metadata). CheckpointError naming the file for anything that is not a complete, finite SVD UNet (unless
    `allow_non_finite`: then NaN / Inf weights are a logged warning)."""
    name = Path(path).name
    tensors, layout, ignored, metadata = read_unet_file(path)
    config = _architecture(name, tensors)
    try:
        with torch.device("meta"):
            unet = convert(VideoUNet(config))
    except (SVDError, ValueError, RuntimeError, ZeroDivisionError) as exc:
        raise CheckpointError(f"{name}: the UNet read from its tensor shapes cannot be built "
                              f"({shorten(str(exc), 200)})") from None
    expected = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    state = checked_state(name, tensors, expected, dtype=dtype, device=device, allow_non_finite=allow_non_finite,
                          what="UNet file", node="the UNet loader node's")
    unet.load_state_dict(state, strict=True, assign=True)
    return unet.eval().requires_grad_(False), layout, ignored, metadata


def _variant(name: str, declared: str | None, metadata: dict[str, str], bundle: SVDBundle) -> tuple[str, str]:
    """(variant, where it came from): declared > the file's metadata > its name (only a few-step name) > kept."""
    family = bundle.family
    if declared is not None:
        sampling_defaults(declared)  # validates the name
        if VARIANT_FAMILY[declared] is not family:
            raise ConfigError(f"variant {declared!r} does not fit this {family.value} model")
        return declared, "declared"
    noted = metadata.get(VARIANT_KEY)
    if noted in VARIANT_DEFAULTS and VARIANT_FAMILY[noted] is family:
        return noted, "metadata"
    if guess_variant(family, name) == FEW_STEP_VARIANT:
        return FEW_STEP_VARIANT, "file name"
    return bundle.variant, "kept"


def _placed_like(unet: VideoUNet, old: torch.nn.Module) -> VideoUNet:
    """Give the new UNet the old one's fp8 weight storage and block streaming (device and dtype are chosen at load)."""
    weight = old.input_blocks[0][0].weight
    if weight.dtype.itemsize == 1:
        storage = next(n for n, d in FP8_STORAGE.items() if d == weight.dtype)
        store_fp8(unet, storage)
        unet.compute_dtype = old.dtype
    streamer = streaming.streamer_of(old)
    if streamer is not None:
        streaming.attach(unet, streamer.device)
    return unet


def with_unet(
    bundle: SVDBundle,
    path: str | os.PathLike,
    *,
    variant: str | None = None,
    allow_non_finite: bool = False,
    device: torch.device | str | None = None,
) -> tuple[SVDBundle, UNetReplacement]:
    """A new bundle whose UNet is the one in the file at `path`, sharing the VAEs and image encoder with `bundle`
    (which is left unchanged); and what was done.

    The UNet is loaded in the compute dtype of `bundle`'s UNet on `device` (None: where that UNet's weights are; a
    host with a memory manager passes its offload device), stored in fp8 and streamed if that one is. `variant` (a
    name of :data:`..config.VARIANT_DEFAULTS`) declares the sampling defaults; else the file's ``svd_lab.variant``
    metadata, else its name for a few-step model ("lcm" in it), else the bundle's variant.
    Raises CheckpointError naming the file for a file that is not an SVD UNet (a VAE, a LoRA, an image model's UNet,
    another model: the message says which), a UNet that does not fit the model, a damaged file or NaN / Inf weights.
    """
    name = Path(path).name
    old = bundle.model.unet
    device = torch.device(device) if device is not None else old.input_blocks[0][0].weight.device
    dtype = old.dtype  # the compute dtype (fp8 storage aside)
    if variant is not None:
        sampling_defaults(variant)  # an unknown name fails before the file is read
    unet, layout, ignored, metadata = load_unet(path, dtype=dtype, device=device, allow_non_finite=allow_non_finite)
    _check_fit(name, unet.config, bundle.config.unet)
    chosen, source = _variant(name, variant, metadata, bundle)
    model = _with_unet(bundle.model, _placed_like(unet, old))
    model.config = replace(bundle.config, unet=unet.config)
    new = replace(bundle, model=model, variant=chosen, source=f"{bundle.source} + UNet {path}")
    done = UNetReplacement(name, layout, unet.config, chosen, source, ignored)
    log.info("%s", done.summary())
    return new, done
