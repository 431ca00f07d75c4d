"""Latent and embedding cache: safetensors shards keyed by clip window, so the VAE and the image encoder can
leave memory while the UNet trains.

Layout of a cache folder::

    index.json                  format, settings fingerprint, window signatures, status ("building" /
                                "complete"), entries (the finished windows)
    shard-00000.safetensors     per window key K:  K/moments (T, 2z, h, w)   VAE posterior [mean | logvar]
                                                   K/crossattn (2, d)        CLIP embedding of first, last frame
                                                   K/cond_frames (2, 3, H, W)  clean first/last frame ("exact")
                                                   K/concat (A, 2, z, h, w), K/cond_aug (A,)            ("cached")
                                                   K/text (1, d)  CLIP text embedding of the caption (text cache)

Latents: the first-stage posterior's moments are stored, not a sample, so every step draws a fresh posterior
sample ``mean + exp(logvar / 2) * eps`` (times 0.18215) as sgm's ``encode_first_stage`` does for training.

Noise augmentation of the conditioning frame. The reference adds ``cond_aug * N(0, I)`` to the conditioning
frame's *pixels* and encodes that with the conditioner's VAE encoder (posterior mean, unscaled), drawing a new
``cond_aug`` (log-normal) and new noise every step. The encoder is not linear, so a cached latent of the clean
frame cannot be augmented exactly. Two choices (``cache.cond_aug_mode``):

- ``"exact"`` (default): the clean first and last frame are cached as pixels (fp16, the clip's size); every step
  draws cond_aug and the pixel noise and runs the conditioner's encoder on the augmented frame, exactly as the
  reference. The first-stage VAE and the image encoder leave memory; the conditioner's encoder (one frame per
  clip, no gradient; ~34 M parameters at full size) stays on the training device.
- ``"cached"``: ``aug_draws`` augmented encodings are made while caching (each with its own log-normal
  cond_aug); every step picks one of them at random and conditions on its cond_aug. No VAE is needed during
  training. Deviation from the reference: the augmentation noise comes from a finite set of ``aug_draws``
  draws per clip, not a fresh draw per step.

A cache built with a text encoder (the ``t2v`` finetune) also holds each window's caption embedding; its index
records that, and the captions are part of the window signatures (a changed caption makes the cache stale).

Both always cache the first *and* the last frame, so one cache serves the image-to-video and the keyframe
(first + last frame) modes. Building is resumable: shards are written atomically and the index lists only
finished shards. The index records what each window's tensors depend on (clip id, frame indices, size, fps_id,
motion bucket, the clip file's size and time): a folder whose windows or settings differ from the dataset's (a
re-curated manifest, other data settings, another model) is refused with a :class:`StaleCacheError`, or replaced
when a rebuild is asked for, never reused or mixed with new windows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..conditioning import encode_cond_frames
from ..diffusion.noise import randn
from ..errors import ConfigError, InputError
from ..fsutil import write_text_atomic
from ..memory import moved
from ..nn.image_encoder import encode_image
from ..text_conditioning import TextEncoder, encode_text
from ..weights.checkpoint import CheckpointReader, save_checkpoint
from ..weights.loader import SVDBundle
from .config import CacheConfig, ObjectiveConfig
from .data import VideoDataset, Window, read_window
from .state import seed_from

log = logging.getLogger(__name__)

CACHE_FORMAT = "svd_lab.latent_cache.v1"
INDEX = "index.json"
_SHARD = re.compile(r"shard-(\d+)\.safetensors")
STORAGE = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass(frozen=True)
class CacheEntry:
    key: str
    shard: str
    clip_id: str
    fps_id: int
    motion_bucket_id: int
    width: int
    height: int
    num_frames: int


@dataclass
class CacheItem:
    """One cached window, as float32 tensors on the CPU."""

    entry: CacheEntry
    moments: Tensor  # (T, 2z, h, w) posterior [mean | logvar]
    crossattn: Tensor  # (2, d) CLIP embeddings of the first and the last frame
    cond_frames: Tensor | None  # (2, 3, H, W) in [-1, 1] ("exact")
    concat: Tensor | None  # (A, 2, z, h, w) augmented conditioner latents ("cached")
    cond_aug: Tensor | None  # (A,)
    text: Tensor | None = None  # (1, d) caption embedding (a cache built with a text encoder)


def weights_fingerprint(modules: Iterable[nn.Module | None], salt: str = "") -> str:
    """A short hash of `salt` and the leading values of each module's first four parameters (None skipped)."""
    digest = hashlib.sha1(salt.encode())
    for module in modules:
        if module is None:
            continue
        for _, p in list(module.named_parameters())[:4]:
            digest.update(p.detach().reshape(-1)[:4096].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def model_fingerprint(bundle: SVDBundle) -> str:
    """A short hash of the encoder weights the cache depends on (first stage / conditioner VAE, CLIP)."""
    model = bundle.model
    return weights_fingerprint((model.first_stage.encoder, model.cond_vae.encoder, model.image_encoder))


def text_fingerprint(encoder: TextEncoder) -> str:
    """A short hash of a text encoder's weights and vocabulary (what cached caption embeddings depend on)."""
    return weights_fingerprint([encoder.tower], repr((encoder.tokenizer.vocab_size, encoder.tower.config)))


def settings_fingerprint(config: CacheConfig, objective: ObjectiveConfig, bundle_fp: str, seed: int) -> str:
    """A short hash of the settings the cached tensors depend on besides the windows (see window_signatures)."""
    settings = {"dtype": config.dtype, "mode": config.cond_aug_mode, "model": bundle_fp}
    if config.cond_aug_mode == "cached":
        settings.update(aug_draws=config.aug_draws, aug=(objective.cond_aug_mean, objective.cond_aug_std), seed=seed)
    return hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def window_signatures(dataset: VideoDataset, captions: bool = False) -> dict[str, str]:
    """Window key -> a short hash of what its cached tensors depend on: the clip id, the frame indices taken, the
    size, fps_id and motion bucket, and the clip file's size and modification time (a file replaced in place);
    with `captions` (a text cache) the caption too."""
    files: dict[Path, tuple[int, int] | None] = {}
    out: dict[str, str] = {}
    for w in dataset.windows:
        path = w.clip.path
        if path not in files:
            try:
                stat = path.stat()
                files[path] = (stat.st_size, stat.st_mtime_ns)
            except OSError:
                files[path] = None
        parts = (w.clip.clip_id, w.indices, w.size, w.fps_id, w.motion_bucket_id, files[path])
        if captions:
            parts += (w.clip.caption,)
        out[w.key] = hashlib.sha1(repr(parts).encode()).hexdigest()[:12]
    return out


def windows_difference(cached: Mapping[str, str], planned: Mapping[str, str]) -> str:
    """'' when both map the same windows to the same signatures, else what differs, e.g. '2 new (e.g. a),
    1 gone (e.g. b)'."""
    kinds = {"new": [k for k in planned if k not in cached], "gone": [k for k in cached if k not in planned],
             "changed": [k for k in planned if k in cached and cached[k] != planned[k]]}
    return ", ".join(f"{len(keys)} {kind} (e.g. {keys[0]})" for kind, keys in kinds.items() if keys)


class StaleCacheError(ConfigError):
    """A cache folder holds other windows than the dataset plans, or was built with other settings."""


class LatentCache:
    """A built cache folder: entries (one per window) and lazy, memory-mapped access to their tensors."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.dir = Path(directory)
        index = self.dir / INDEX
        if not index.is_file():
            raise InputError(f"no latent cache in {self.dir} ({INDEX} missing): build it first "
                             "(SVD Lab Build Latent Cache, or `svd-lab train` builds it)")
        try:
            meta = json.loads(index.read_text())
        except ValueError as exc:
            raise InputError(f"{index} is damaged ({exc}); rebuild the cache") from None
        if meta.get("format") != CACHE_FORMAT:
            raise InputError(f"{index} has format {meta.get('format')!r}, expected {CACHE_FORMAT!r}; rebuild it")
        self.meta = meta
        self.entries = [CacheEntry(**e) for e in meta["entries"]]
        self._readers: dict[str, CheckpointReader] = {}

    @property
    def complete(self) -> bool:
        return self.meta.get("status") == "complete"

    @property
    def cond_aug_mode(self) -> str:
        return self.meta["cond_aug_mode"]

    @property
    def num_frames(self) -> int:
        return int(self.meta["num_frames"])

    @property
    def has_text(self) -> bool:
        """Built with a text encoder: every window holds its caption's embedding (the t2v finetune needs it)."""
        return bool(self.meta.get("text"))

    def __len__(self) -> int:
        return len(self.entries)

    def groups(self) -> dict[tuple[int, int], list[int]]:
        """(width, height) -> indices of the entries of that size (a batch takes one size)."""
        out: dict[tuple[int, int], list[int]] = {}
        for i, e in enumerate(self.entries):
            out.setdefault((e.width, e.height), []).append(i)
        return out

    def _reader(self, shard: str) -> CheckpointReader:
        if shard not in self._readers:
            self._readers[shard] = CheckpointReader(self.dir / shard)
        return self._readers[shard]

    def item(self, index: int) -> CacheItem:
        entry = self.entries[index]
        reader = self._reader(entry.shard)

        def get(name: str) -> Tensor | None:
            key = f"{entry.key}/{name}"
            return reader[key].float() if key in reader else None

        return CacheItem(entry, get("moments"), get("crossattn"), get("cond_frames"), get("concat"),
                         get("cond_aug"), get("text"))

    def describe(self) -> str:
        sizes = ", ".join(f"{len(v)} at {w}x{h}" for (w, h), v in sorted(self.groups().items()))
        text = ", caption embeddings" if self.has_text else ""
        return (f"latent cache {self.dir}: {len(self)} windows of {self.num_frames} frames ({sizes}), "
                f"noise augmentation {self.cond_aug_mode}, {self.meta['dtype']}{text}")


# ------------------------------------------------------------------------------------------------ building


def latent_vae(bundle: SVDBundle) -> nn.Module:
    """The VAE whose posterior the diffusion latents come from (the first stage; SV3D: the conditioner's)."""
    model = bundle.model
    return model.first_stage if model.first_stage.encoder is not None else model.cond_vae


@torch.no_grad()
def encode_window(bundle: SVDBundle, window: Window, frames: Tensor, config: CacheConfig,
                  objective: ObjectiveConfig, seed: int, device: torch.device) -> dict[str, Tensor]:
    """The cache tensors of one window; frames (T, 3, H, W) in [-1, 1]."""
    model, store = bundle.model, STORAGE[config.dtype]
    vae = latent_vae(bundle)
    moments = torch.cat([vae.encode_moments(chunk.to(device, vae.dtype)).float().cpu()
                         for chunk in frames.split(config.encode_frames)])  # (T, 2z, h, w)
    ends = frames[[0, -1]]  # (2, 3, H, W)
    tower = model.image_encoder
    crossattn = encode_image(tower, ends.to(device, tower.dtype)).float().cpu()  # (2, d)
    out = {"moments": moments.to(store), "crossattn": crossattn}
    if config.cond_aug_mode == "exact":
        out["cond_frames"] = ends.to(store)
        return out
    gen = torch.Generator().manual_seed(seed_from(seed, "cond_aug", window.key))
    z = randn((config.aug_draws,), gen, what="the cond_aug draws")  # (A,)
    augs = torch.exp(objective.cond_aug_mean + objective.cond_aug_std * z)
    concat = [encode_cond_frames(model.cond_vae, ends, aug, device=device, generator=gen).cpu() for aug in augs]
    out["concat"] = torch.stack(concat).to(store)  # (A, 2, z, h, w)
    out["cond_aug"] = augs.float()
    return out


def _check_text(bundle: SVDBundle, dataset: VideoDataset, text_encoder: TextEncoder) -> None:
    """A text cache needs a caption for every clip and text embeddings as wide as the UNet's context."""
    context = bundle.config.unet.context_dim
    if text_encoder.embed_dim != context:
        raise ConfigError(f"the text tower embeds into {text_encoder.embed_dim} dims, the UNet's cross-attention "
                          f"takes {context}: use the OpenCLIP text tower of the model's CLIP (ViT-H/14: 1024)")
    missing = sorted({w.clip.clip_id for w in dataset.windows if not w.clip.caption.strip()})
    if missing:
        raise InputError(f"{len(missing)} clip(s) have no caption, e.g. {missing[:3]}: a text (t2v) cache needs one "
                         "per clip (manifest caption_summary / caption_video / caption_image, or clip.txt beside "
                         "each clip of a folder)")


def _write_index(directory: Path, meta: dict, entries: list[CacheEntry], status: str) -> None:
    body = {**meta, "status": status, "entries": [asdict(e) for e in entries]}
    write_text_atomic(json.dumps(body, indent=1), directory / INDEX)


def _mismatch(meta: Mapping, fingerprint: str, planned: Mapping[str, str]) -> str:
    """Why a cache with index `meta` cannot serve these settings and windows ('' when it can)."""
    if meta.get("fingerprint") != fingerprint:
        return "it was built with other settings (storage dtype, augmentation mode or model weights)"
    if "windows" not in meta:
        return "its index does not record its frame windows (built by an older version)"
    diff = windows_difference(meta["windows"], planned)
    if not diff:
        return ""
    return f"its frame windows differ from the dataset's: {diff} (re-curated clips or other data settings)"


def _reusable(directory: Path, fingerprint: str, planned: Mapping[str, str], rebuild: bool) -> LatentCache | None:
    """The cache in `directory` when it matches (possibly incomplete); None when there is none or, with
    `rebuild`, when a stale one was cleared. A stale one without `rebuild` raises StaleCacheError."""
    if not (directory / INDEX).is_file():
        return None
    try:
        old = LatentCache(directory)
        reason = _mismatch(old.meta, fingerprint, planned)
    except InputError as exc:  # a damaged index or another format
        if not rebuild:
            raise
        old, reason = None, str(exc)
    if not reason:
        return old
    if not rebuild:
        raise StaleCacheError(f"the latent cache in {directory} does not fit this dataset: {reason}. Rebuild it "
                              "(rebuild = true on SVD Lab Build Latent Cache; for `svd-lab train` delete the "
                              "folder) or use another cache name / cache.dir")
    log.warning("rebuilding the latent cache in %s: %s", directory, reason)
    (directory / INDEX).unlink()  # first: an interrupted clear leaves no index naming missing shards
    for path in directory.glob("shard-*.safetensors"):
        path.unlink()
    return None


def build_cache(bundle: SVDBundle, dataset: VideoDataset, directory: str | os.PathLike, config: CacheConfig,
                objective: ObjectiveConfig, *, seed: int = 0, device: torch.device | str | None = None,
                rebuild: bool = False, callback: Callable[[int, int], None] | None = None,
                text_encoder: TextEncoder | None = None) -> LatentCache:
    """Encode every window of `dataset` into `directory` (resumable). callback(done, total) after each window.
    With `text_encoder` each window also gets its clip caption's embedding (for the t2v finetune); every clip
    needs a caption then (an InputError names the ones without).

    A folder built with other settings (storage, augmentation mode, encoder weights) or holding other windows
    (clips added, removed or changed; other frames, sizes, fps or motion buckets) raises StaleCacheError, or with
    `rebuild` is cleared and built again. A matching complete cache is returned as it is (`rebuild` or not).
    """
    directory = Path(directory)
    device = torch.device(device) if device is not None else bundle.device
    model_fp = model_fingerprint(bundle)
    if text_encoder is not None:
        _check_text(bundle, dataset, text_encoder)
        model_fp += "+text:" + text_fingerprint(text_encoder)
    fingerprint = settings_fingerprint(config, objective, model_fp, seed)
    planned = window_signatures(dataset, captions=text_encoder is not None)
    meta = {"format": CACHE_FORMAT, "fingerprint": fingerprint, "num_frames": dataset.config.num_frames,
            "cond_aug_mode": config.cond_aug_mode, "dtype": config.dtype, "source": bundle.source,
            "latent_channels": bundle.config.first_stage.z_channels, "windows": planned,
            "text": text_encoder is not None}
    done: list[CacheEntry] = []
    old = _reusable(directory, fingerprint, planned, rebuild)
    if old is not None:
        done = [e for e in old.entries if (directory / e.shard).is_file()]
        if old.complete and len(done) == len(planned):
            log.info("latent cache %s is complete and up to date", directory)
            return old
    directory.mkdir(parents=True, exist_ok=True)
    have = {e.key for e in done}
    todo = [w for w in dataset.windows if w.key not in have]
    # after the highest shard on disk: a shard the index lost (or still names) is never overwritten
    shard_no = 1 + max((int(m[1]) for p in directory.iterdir() if (m := _SHARD.fullmatch(p.name))), default=-1)
    total = len(dataset.windows)
    model = bundle.model
    vae = latent_vae(bundle)
    parts = [vae.encoder, vae.quant_conv, model.image_encoder]
    if config.cond_aug_mode == "cached":
        parts += [model.cond_vae.encoder, model.cond_vae.quant_conv]
    if text_encoder is not None:
        parts.append(text_encoder.tower)
    pending: dict[str, Tensor] = {}
    pending_entries: list[CacheEntry] = []

    def flush() -> None:
        nonlocal shard_no, pending, pending_entries
        if not pending_entries:
            return
        name = f"shard-{shard_no:05d}.safetensors"
        save_checkpoint(directory / name, pending, {"svd_lab.cache": CACHE_FORMAT})
        done.extend(CacheEntry(**{**asdict(e), "shard": name}) for e in pending_entries)
        _write_index(directory, meta, done, "building")
        shard_no, pending, pending_entries = shard_no + 1, {}, []

    with moved(parts, device):
        for window in todo:
            frames = read_window(window)  # (T, 3, H, W)
            tensors = encode_window(bundle, window, frames, config, objective, seed, device)
            if text_encoder is not None:
                tensors["text"] = encode_text(text_encoder, [window.clip.caption]).cpu()  # (1, d), float32
            for name, tensor in tensors.items():
                pending[f"{window.key}/{name}"] = tensor.contiguous()
            w, h = window.size
            pending_entries.append(CacheEntry(window.key, "", window.clip.clip_id, window.fps_id,
                                              window.motion_bucket_id, w, h, len(window.indices)))
            if len(pending_entries) >= config.shard_clips:
                flush()
            if callback is not None:
                callback(len(done) + len(pending_entries), total)
        flush()
    _write_index(directory, meta, done, "complete")
    cache = LatentCache(directory)
    log.info("%s", cache.describe())
    return cache
