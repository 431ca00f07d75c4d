"""Load a model bundle from an official single-file checkpoint or a diffusers-format folder; save one.

Loading builds the networks on the meta device and assigns memory-mapped tensors into them, so a
checkpoint in the requested dtype is never copied; converted tensors are copied one at a time and
their file pages released (peak memory ~ one copy of the weights).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .checkpoint import CheckpointReader, save_checkpoint
from .config import VARIANT_FAMILY, Family, ModelConfig, SamplingDefaults, sampling_defaults
from .detect import FIRST_STAGE_PREFIX, cond_vae_prefix, guess_variant, infer_config, is_ignored_key
from .diffusers_keys import diffusers_pipeline_to_sgm
from .errors import CheckpointError, ConfigError
from .model import SVDModel, check_keys

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class SVDBundle:
    """A loaded model plus what the weights cannot tell: the sampling variant and the source."""

    model: SVDModel
    variant: str
    source: str

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def family(self) -> Family:
        return self.model.config.family

    @property
    def defaults(self) -> SamplingDefaults:
        return sampling_defaults(self.variant)

    @property
    def device(self) -> torch.device:
        return next(self.model.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.unet.parameters()).dtype


def resolve_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    """None/"auto": fp16 on CUDA (as the reference runs under autocast), fp32 elsewhere."""
    if dtype is None or dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, str):
        try:
            return DTYPES[dtype]
        except KeyError:
            raise ConfigError(f"unknown dtype {dtype!r}; choose from auto, {', '.join(DTYPES)}") from None
    return dtype


def _load_tensor(
    tensors: Mapping[str, Tensor], key: str, dtype: torch.dtype, device: torch.device, done: dict[int, Tensor]
) -> Tensor:
    """A zero-copy view when dtype and device already match; otherwise a converted copy (and, for a
    single-file checkpoint, the file pages behind the key are released at once). A tensor that a
    converted diffusers folder uses under two keys is converted once (`done`, by source identity)."""
    if isinstance(tensors, CheckpointReader):
        return tensors.load(key, dtype, device)
    source = tensors[key]
    if id(source) not in done:
        done[id(source)] = source.to(device=device, dtype=dtype)
    return done[id(source)]


def _component_dtype(key: str, family: Family, dtype: torch.dtype, vae_dtype: torch.dtype) -> torch.dtype:
    if key.startswith(FIRST_STAGE_PREFIX) or key.startswith(cond_vae_prefix(family)):
        return vae_dtype
    return dtype


def _open(path: Path) -> Mapping[str, Tensor]:
    return _open_diffusers(path) if path.is_dir() else CheckpointReader(path)


def _component_file(folder: Path, names: tuple[str, ...]) -> Path:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(f"{folder} has none of {', '.join(names)} (diffusers-format folder expected)")


def _read_component(folder: Path, stem: str) -> dict[str, Tensor]:
    """A diffusers component: single file, fp16 variant, or sharded index."""
    index = next((folder / n for n in (f"{stem}.safetensors.index.json", f"{stem}.fp16.safetensors.index.json")
                  if (folder / n).is_file()), None)
    if index is not None:
        weight_map = json.loads(index.read_text())["weight_map"]
        readers = [CheckpointReader(folder / shard) for shard in sorted(set(weight_map.values()))]
    else:
        readers = [CheckpointReader(_component_file(folder, (f"{stem}.safetensors", f"{stem}.fp16.safetensors")))]
    return {k: r[k] for r in readers for k in r}


def _open_diffusers(path: Path) -> dict[str, Tensor]:
    layout = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "image_encoder": "model"}
    absent = [sub for sub in layout if not (path / sub).is_dir()]
    if absent:
        raise CheckpointError(
            f"{path} is a folder but not a diffusers SVD pipeline: missing the {absent[0]!r} subfolder "
            "(expected unet/, vae/, image_encoder/)"
        )
    parts = {sub: _read_component(path / sub, stem) for sub, stem in layout.items()}
    return diffusers_pipeline_to_sgm(parts["unet"], parts["vae"], parts["image_encoder"])


def load_bundle(
    path: str | os.PathLike,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | str | None = None,
    vae_dtype: torch.dtype | str = torch.float32,
    variant: str | None = None,
) -> SVDBundle:
    """Load an official single-file ``.safetensors`` (svd, svd_xt, svd_xt_1_1, *_image_decoder, sv3d_u,
    sv3d_p) or a diffusers-format SVD folder. The architecture comes from the weights; `variant`
    (sampling defaults) is guessed from the family and file name unless given. UNet and image
    encoder use `dtype` (auto: fp16 on CUDA, else fp32); both VAEs use `vae_dtype` (fp32 by default,
    as the reference runs them outside autocast)."""
    path = Path(path)
    device = torch.device(device)
    dtype = resolve_dtype(dtype, device)
    vae_dtype = resolve_dtype(vae_dtype, device)
    tensors = _open(path)
    shapes = {k: tuple(t.shape) for k, t in tensors.items()}
    config = infer_config(shapes)
    if variant is not None:
        if VARIANT_FAMILY.get(variant, config.family) is not config.family:
            raise ConfigError(f"variant {variant!r} does not fit this {config.family.value} checkpoint")
        sampling_defaults(variant)  # validates the name
    variant = variant or guess_variant(config.family, path.name)
    with torch.device("meta"):
        model = SVDModel(config)
    ignored = [k for k in shapes if is_ignored_key(k)]
    needed = {k: s for k, s in shapes.items() if not is_ignored_key(k)}
    check_keys(model.official_shapes(), needed)
    done: dict[int, Tensor] = {}
    state = {k: _load_tensor(tensors, k, _component_dtype(k, config.family, dtype, vae_dtype), device, done)
             for k in needed}
    model.load_official_state_dict(state, assign=True)
    model.eval().requires_grad_(False)
    log.info(
        "loaded %s: %s (variant %s, unet %s, %d unused text-tower keys ignored)",
        path.name, config.family.value, variant, dtype, len(ignored),
    )
    return SVDBundle(model=model, variant=variant, source=str(path))


def save_bundle(
    bundle: SVDBundle | SVDModel, path: str | os.PathLike, metadata: Mapping[str, str] | None = None
) -> Path:
    """Save in the official single-file layout (keys as sgm's DiffusionEngine.state_dict())."""
    model = bundle.model if isinstance(bundle, SVDBundle) else bundle
    meta = {"format": "pt", "svd_lab.family": model.config.family.value}
    if isinstance(bundle, SVDBundle):
        meta["svd_lab.variant"] = bundle.variant
    meta.update(metadata or {})
    return save_checkpoint(path, model.official_state_dict(), meta)
