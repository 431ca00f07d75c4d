"""Load a model bundle from an official single-file checkpoint or a diffusers-format folder; save one.

Loading builds the networks on the meta device and assigns memory-mapped tensors into them, so a
checkpoint in the requested dtype is never copied; converted tensors are copied one at a time and
their file pages released (peak memory ~ one copy of the weights). Every file is validated by the
safetensors library (:mod:`.checkpoint`); the loader adds what only the model knows: every weight is
floating point, every key and shape is the one the architecture inferred from the file needs, and no
weight is NaN or Inf (one cheap sum per tensor as it is materialised; ``allow_non_finite`` overrides).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ..config import VARIANT_FAMILY, Family, ModelConfig, SamplingDefaults, sampling_defaults
from ..errors import CheckpointError, ConfigError, SVDError, shorten
from ..memory import MemoryPlan
from ..nn.cast import fp8_dtype, store_fp8
from ..nn.model import SVDModel, check_keys
from ..text_conditioning import CONDITIONING_KEY, CONDITIONINGS
from .checkpoint import CheckpointReader, save_checkpoint
from .detect import FIRST_STAGE_PREFIX, cond_vae_prefix, guess_variant, infer_config, is_ignored_key
from .diffusers_keys import diffusers_pipeline_to_sgm
from .weight_checks import check_weight_table, non_finite_report, quick_sum, refuse_non_finite

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class SVDBundle:
    """A loaded model plus what the weights cannot tell: the sampling variant and the source."""

    model: SVDModel
    variant: str
    source: str
    #: How the networks use device memory (svd_model.memory); set by memory.apply_plan.
    memory: MemoryPlan = field(default_factory=MemoryPlan)
    #: Where and in which dtype the networks compute, when their weights live elsewhere (a streamed UNet stays
    #: in CPU memory; fp8-stored weights compute in bf16/fp16). None: where / what the UNet's weights are.
    compute_device: torch.device | None = None
    compute_dtype: torch.dtype | None = None
    #: What the UNet's cross-attention was trained on: "image" (SVD's image embedding) or "text" (CLIP text
    #: embeddings, the t2v finetune); from the checkpoint's metadata (svd_model.text_conditioning).
    conditioning: str = "image"

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
        return self.compute_device or next(self.model.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return self.compute_dtype or next(self.model.unet.parameters()).dtype


def native_bf16(device: torch.device) -> bool:
    """True on a CUDA device with native bfloat16 math (compute capability 8.0+: Ampere, Ada, Hopper and later);
    older GPUs only emulate it (slowly)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(device)[0] >= 8


def resolve_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    """None/"auto": bf16 on CUDA GPUs with native bf16 (float32's range: no attention upcast needed, so the fused
    half-precision attention kernels run), fp16 on older CUDA GPUs (as the reference runs under autocast), fp32
    elsewhere."""
    if dtype is None or dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if native_bf16(device) else torch.float16
        return torch.float32
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
    raise CheckpointError(f"{folder.parent.name}/{folder.name} has none of {', '.join(names)} (diffusers-format "
                          "folder expected)")


def _index_shards(index: Path) -> list[str]:
    """The shard file names of a sharded component's index: plain names of files beside the index."""
    where = f"{index.parent.name}/{index.name}"
    try:
        weight_map = json.loads(index.read_bytes().decode("utf-8-sig"))["weight_map"]
    except (OSError, UnicodeDecodeError, ValueError, RecursionError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{where} is not a readable shard index ({type(exc).__name__}): expected JSON with a "
                              "'weight_map' object") from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{where}: 'weight_map' must map tensor names to shard file names")
    shards = sorted(set(weight_map.values()))
    for shard in shards:
        if shard in ("", ".", "..") or "/" in shard or "\\" in shard or "\0" in shard:
            raise CheckpointError(f"{where}: shard {shorten(shard)} is not a file name beside the index")
    return shards


def _read_component(folder: Path, stem: str) -> dict[str, Tensor]:
    """A diffusers component: single file, fp16 variant, or sharded index."""
    index = next((folder / n for n in (f"{stem}.safetensors.index.json", f"{stem}.fp16.safetensors.index.json")
                  if (folder / n).is_file()), None)
    if index is not None:
        readers = [CheckpointReader(folder / shard) for shard in _index_shards(index)]
    else:
        readers = [CheckpointReader(_component_file(folder, (f"{stem}.safetensors", f"{stem}.fp16.safetensors")))]
    return {k: r[k] for r in readers for k in r}


def _open_diffusers(path: Path) -> dict[str, Tensor]:
    layout = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "image_encoder": "model"}
    absent = [sub for sub in layout if not (path / sub).is_dir()]
    if absent:
        raise CheckpointError(
            f"{path.name} is a folder but not a diffusers SVD pipeline: missing the {absent[0]!r} subfolder "
            "(expected unet/, vae/, image_encoder/)"
        )
    parts = {sub: _read_component(path / sub, stem) for sub, stem in layout.items()}
    return diffusers_pipeline_to_sgm(parts["unet"], parts["vae"], parts["image_encoder"])


@dataclass(frozen=True)
class CheckedCheckpoint:
    """A checkpoint that passed every check that needs no weight values: file format (the safetensors
    library), dtypes, and keys and shapes against the architecture inferred from the file."""

    path: Path
    tensors: Mapping[str, Tensor]
    config: ModelConfig
    model: SVDModel  # on the meta device
    needed: tuple[str, ...]
    ignored: tuple[str, ...]
    dtypes: dict[str, torch.dtype]

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self.tensors.metadata) if isinstance(self.tensors, CheckpointReader) else {}


def _table(tensors: Mapping[str, Tensor]) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    if isinstance(tensors, CheckpointReader):
        return {k: (i.shape, i.dtype) for k, i in tensors.infos.items()}
    return {k: (tuple(t.shape), t.dtype) for k, t in tensors.items()}


def _named(name: str, exc: Exception) -> CheckpointError:
    """A CheckpointError whose message starts with the file's name."""
    message = str(exc)
    return CheckpointError(message if message.startswith(name) else f"{name}: {message}")


def _architecture(name: str, shapes: Mapping[str, tuple[int, ...]]) -> tuple[ModelConfig, SVDModel]:
    """The config inferred from the shapes and the model built from it on the meta device."""
    try:
        config = infer_config(shapes)
    except CheckpointError as exc:
        raise _named(name, exc) from None
    except ConfigError as exc:
        raise CheckpointError(f"{name}: the architecture read from its tensor shapes is not valid: {exc}") from None
    try:
        with torch.device("meta"):
            model = SVDModel(config)
    except (SVDError, ValueError, RuntimeError, ZeroDivisionError) as exc:
        raise CheckpointError(
            f"{name}: the architecture read from its tensor shapes cannot be built ({shorten(str(exc), 200)})"
        ) from None
    return config, model


def check_checkpoint(path: str | os.PathLike) -> CheckedCheckpoint:
    """Open a single-file checkpoint or a diffusers folder and run every check that needs no weight values.

    Raises CheckpointError naming the file and the first problem (format, dtype, missing/renamed/unexpected
    key, shape). ``svd-lab info`` and :func:`load_bundle` both go through it.
    """
    path = Path(path)
    tensors = _open(path)
    table = _table(tensors)
    shapes = {k: shape for k, (shape, _) in table.items()}
    config, model = _architecture(path.name, shapes)
    ignored = tuple(k for k in shapes if is_ignored_key(k))
    needed = {k: s for k, s in shapes.items() if not is_ignored_key(k)}
    expected = model.official_shapes()
    check_weight_table(path.name, table, expected)
    try:
        check_keys(expected, needed)
    except CheckpointError as exc:
        raise _named(path.name, exc) from None
    return CheckedCheckpoint(path, tensors, config, model, tuple(needed), ignored,
                             {k: dtype for k, (_, dtype) in table.items()})


def load_bundle(
    path: str | os.PathLike,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | str | None = None,
    vae_dtype: torch.dtype | str = torch.float32,
    variant: str | None = None,
    allow_non_finite: bool = False,
    vae: str | os.PathLike | None = None,
    weight_storage: str | None = None,
) -> SVDBundle:
    """Load an official single-file ``.safetensors`` (svd, svd_xt, svd_xt_1_1, *_image_decoder, sv3d_u,
    sv3d_p) or a diffusers-format SVD folder. The architecture comes from the weights; `variant`
    (sampling defaults) is guessed from the family and file name unless given. UNet and image
    encoder use `dtype` (auto: bf16 on CUDA GPUs with native bf16, fp16 on older ones, else fp32; see
    :func:`resolve_dtype`); both VAEs use `vae_dtype` (fp32 by default, as the reference runs them outside
    autocast). F8_E4M3 / F8_E5M2 files are upcast to these dtypes.

    A weight that holds NaN or Inf is a CheckpointError naming the tensors, unless `allow_non_finite`
    (then it is a logged warning).

    `vae`: a separate VAE file (first-stage keys only, official / ComfyUI models/vae / diffusers names, or a full
    checkpoint's first stage) that replaces the checkpoint's first stage, in `vae_dtype` (:mod:`.vae_file`).

    `weight_storage` ("fp8_e4m3fn" / "fp8_e5m2", :data:`..nn.cast.FP8_STORAGE`): the UNet's Linear and Conv weights
    are kept in fp8 and computed in `dtype` (half the UNet's weight memory; ``bundle.compute_dtype`` is `dtype`).
    An fp8 file keeps its values exactly (fp8 -> fp16 / bf16 -> fp8 is lossless)."""
    path = Path(path)
    if weight_storage is not None:
        fp8_dtype(weight_storage)  # validates the name before the file is read
    device = torch.device(device)
    dtype = resolve_dtype(dtype, device)
    vae_dtype = resolve_dtype(vae_dtype, device)
    if variant is not None:
        sampling_defaults(variant)  # validates the name
    checked = check_checkpoint(path)
    config, model, tensors = checked.config, checked.model, checked.tensors
    if variant is not None and VARIANT_FAMILY.get(variant, config.family) is not config.family:
        raise ConfigError(f"variant {variant!r} does not fit this {config.family.value} checkpoint")
    variant = variant or guess_variant(config.family, path.name)
    reader = tensors if isinstance(tensors, CheckpointReader) else None
    done: dict[int, Tensor] = {}
    state: dict[str, Tensor] = {}
    sums: list[Tensor] = []
    for key in checked.needed:
        tensor = _load_tensor(tensors, key, _component_dtype(key, config.family, dtype, vae_dtype), device, done)
        state[key] = tensor
        sums.append(quick_sum(tensor))
        if reader is not None and tensor.device.type == "cpu" and tensor.dtype == checked.dtypes[key]:
            reader.release(key)  # a zero-copy view was just read for the sum: let its pages go again
    refuse_non_finite(non_finite_report(path.name, state, sums), allow_non_finite)
    model.load_official_state_dict(state, assign=True)
    model.eval().requires_grad_(False)
    log.info(
        "loaded %s: %s (variant %s, unet %s, %d unused text-tower keys ignored)",
        path.name, config.family.value, variant, dtype, len(checked.ignored),
    )
    bundle = SVDBundle(model=model, variant=variant, source=str(path), conditioning=_conditioning(checked))
    if weight_storage is not None:
        store_unet_fp8(bundle, weight_storage)
    if vae is not None:
        from .vae_file import replace_vae  # it imports this module

        replace_vae(bundle, vae, allow_non_finite=allow_non_finite)
    return bundle


def _conditioning(checked: CheckedCheckpoint) -> str:
    """The conditioning a checkpoint records (svd_lab.conditioning metadata; official files: image)."""
    value = checked.metadata.get(CONDITIONING_KEY, "image")
    if value not in CONDITIONINGS:
        log.warning("%s: unknown %s %r in the metadata; taking it as an image-to-video model",
                    checked.path.name, CONDITIONING_KEY, shorten(value))
        return "image"
    return value


def store_unet_fp8(bundle: SVDBundle, storage: str) -> SVDBundle:
    """Keep `bundle`'s UNet Linear / Conv weights in fp8 (`storage`), computed in the UNet's current dtype
    (:func:`..nn.cast.store_fp8`); in place, returns `bundle`."""
    unet = bundle.model.unet
    compute = unet.dtype
    if compute.itemsize < 2:
        raise ConfigError(f"the UNet already computes in {compute}; load it in fp16, bf16 or fp32 to store fp8")
    count = store_fp8(unet, storage)
    unet.compute_dtype = compute
    bundle.compute_dtype = compute
    log.info("UNet: %d weights stored in %s, computed in %s", count, storage, compute)
    return bundle


def save_bundle(
    bundle: SVDBundle | SVDModel, path: str | os.PathLike, metadata: Mapping[str, str] | None = None, *,
    dtype: str | None = None,
) -> Path:
    """Save in the official single-file layout (keys as sgm's DiffusionEngine.state_dict()), atomically.

    ``dtype`` (fp16 / bf16 / fp32) casts the floating-point weights of the UNet and the image encoder; the VAEs keep
    theirs (the reference runs them in fp32). None keeps every tensor's dtype. This is the one writer of full models
    (tiny models, a finetuned model, the Save Model node).
    """
    model = bundle.model if isinstance(bundle, SVDBundle) else bundle
    state = model.official_state_dict()
    if dtype is not None:
        if dtype not in DTYPES:
            raise ConfigError(f"unknown save dtype {dtype!r}; choose from {', '.join(DTYPES)}")
        vaes = (FIRST_STAGE_PREFIX, cond_vae_prefix(model.config.family))
        state = {k: v if k.startswith(vaes) or not v.is_floating_point() else v.detach().to(DTYPES[dtype])
                 for k, v in state.items()}
    meta = {"format": "pt", "svd_lab.family": model.config.family.value}
    if isinstance(bundle, SVDBundle):
        meta["svd_lab.variant"] = bundle.variant
        meta[CONDITIONING_KEY] = bundle.conditioning
    meta.update(metadata or {})
    return save_checkpoint(path, state, meta)
