"""Typed, frozen configuration of a finetuning run, loaded from JSON or TOML with unknown-key errors.

    config = load_config("run.toml", overrides=["optim.lr=3e-5", "steps=2000"])

Sections (each a frozen dataclass; a TOML table / JSON object of the same name):

- ``data``: where the clips come from (curation manifest or a folder), frames, fps, size, buckets.
- ``cache``: the latent/embedding cache (folder, storage dtype, how noise augmentation is cached).
- ``objective``: EDM noise distribution, conditioning augmentation and dropout, loss.
- ``lora``: rank, alpha, dropout, extra target patterns (method "lora").
- ``optim``: optimizer, learning rate, warmup and schedule, clipping, accumulation.
- ``validation``: the validation video (image, seed, steps, guidance).

Defaults are the paper's image-to-video finetune where it states them (log sigma ~ N(0.7, 1.6^2) at 320x576,
conditioning augmentation log sigma ~ N(-3, 0.5^2); its 576x1024 stage used P_mean 1.0), and SVD_Xtend's
conventions where it does not (10 % conditioning dropout).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..configdict import build, check_finite, parse_override, set_dotted
from ..errors import ConfigError, shorten
from ..jsonfile import check_depth, read_json_file, read_text_file

MODES = ("image_to_video", "keyframes", "t2v")
TRAINABLE = ("temporal", "spatial", "all")
METHODS = ("lora", "full")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SIGMA_PER = ("clip", "frame")
COND_AUG_MODES = ("exact", "cached")
STORAGE_DTYPES = ("fp16", "bf16", "fp32")
OPTIMIZERS = ("adamw", "adamw8bit")
SCHEDULES = ("constant", "cosine", "linear")
CONFIG_MAX_BYTES = 4 * 2**20


def _choice(value: str, choices: tuple[str, ...], name: str) -> None:
    if value not in choices:
        raise ConfigError(f"{name} = {shorten(value)} is not one of {list(choices)}")


def _positive(value: float, name: str, *, allow_zero: bool = False) -> None:
    if not value >= 0 or (value == 0 and not allow_zero):  # "not >=": NaN is refused too
        raise ConfigError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {shorten(value)}")


@dataclass(frozen=True)
class DataConfig:
    """Clips and how frames are taken from them."""

    manifest: str = ""  # curation output folder (OUT) or a (filtered) manifest .parquet file
    folder: str = ""  # or: a folder of video clips (no measured motion: motion_bucket_id below)
    num_frames: int = 14  # T frames per training clip
    fps: float = 7.0  # frames are sampled at this rate (0 = the clip's own); fps_id = round(fps) - 1
    width: int = 1024
    height: int = 576
    buckets: tuple[tuple[int, int], ...] = ()  # more (width, height) sizes; a clip takes the nearest aspect
    windows_per_clip: int = 1  # frame windows cached per clip (spread over the clip)
    motion_bucket_id: int = 127  # folder clips only; manifest clips use their measured value
    only_kept: bool = True  # manifest rows with keep = False are skipped
    seed: int = 0  # frame-window placement

    def __post_init__(self) -> None:
        check_finite(self, "data.")
        if self.manifest and self.folder:
            raise ConfigError("data.manifest and data.folder are both set; choose one source of clips")
        if self.num_frames < 2:
            raise ConfigError(f"data.num_frames must be >= 2 (a video), got {self.num_frames}")
        _positive(self.fps, "data.fps", allow_zero=True)
        sizes = [("data.width x data.height", (self.width, self.height))]
        sizes += [(f"data.buckets[{i}]", size) for i, size in enumerate(self.buckets)]
        for where, (w, h) in sizes:
            if w <= 0 or h <= 0 or w % 64 or h % 64:
                raise ConfigError(f"{where}: size {w}x{h} is not a positive multiple of 64 (the model's size "
                                  "multiple)")
        if self.windows_per_clip < 1:
            raise ConfigError(f"data.windows_per_clip must be >= 1, got {self.windows_per_clip}")
        if not 0 <= self.motion_bucket_id <= 1023:
            raise ConfigError(f"data.motion_bucket_id must be in 0..1023, got {self.motion_bucket_id}")

    @property
    def sizes(self) -> tuple[tuple[int, int], ...]:
        """Every training size (width, height), the main one first."""
        return tuple(dict.fromkeys(((self.width, self.height), *self.buckets)))


@dataclass(frozen=True)
class CacheConfig:
    """The latent cache. ``cond_aug_mode`` (see ``cache.py``): "exact" caches the conditioning frames' pixels
    and encodes the noise-augmented frame every step with the (small) conditioner VAE encoder, as the reference;
    "cached" stores ``aug_draws`` pre-encoded augmentations per clip so no VAE stays in memory."""

    dir: str = ""  # default: <output_dir>/cache
    dtype: str = "fp16"  # storage dtype of the latent moments and conditioning frames
    cond_aug_mode: str = "exact"
    aug_draws: int = 4
    shard_clips: int = 32  # clip windows per safetensors shard
    encode_frames: int = 8  # frames per VAE encoder call while building

    def __post_init__(self) -> None:
        check_finite(self, "cache.")
        _choice(self.dtype, STORAGE_DTYPES, "cache.dtype")
        _choice(self.cond_aug_mode, COND_AUG_MODES, "cache.cond_aug_mode")
        for name in ("aug_draws", "shard_clips", "encode_frames"):
            if getattr(self, name) < 1:
                raise ConfigError(f"cache.{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class ObjectiveConfig:
    """EDM training objective (sgm StandardDiffusionLoss + EDMSampling + VWeighting)."""

    p_mean: float = 0.7  # log sigma ~ N(p_mean, p_std^2); the paper's 576x1024 stage used 1.0
    p_std: float = 1.6
    sigma_per: str = "clip"  # "clip": frames share one sigma (as at sampling); "frame": the reference's
    cond_aug_mean: float = -3.0  # log cond_aug ~ N(mean, std^2): noise added to the conditioning frame
    cond_aug_std: float = 0.5
    cond_dropout: float = 0.1  # probability of zeroing image embedding and concat latent together (CFG)
    loss: str = "l2"

    def __post_init__(self) -> None:
        check_finite(self, "objective.")
        _choice(self.sigma_per, SIGMA_PER, "objective.sigma_per")
        _choice(self.loss, ("l2", "l1"), "objective.loss")
        _positive(self.p_std, "objective.p_std", allow_zero=True)
        _positive(self.cond_aug_std, "objective.cond_aug_std", allow_zero=True)
        if not 0.0 <= self.cond_dropout < 1.0:
            raise ConfigError(f"objective.cond_dropout must be in [0, 1), got {self.cond_dropout}")


@dataclass(frozen=True)
class LoRAConfig:
    rank: int = 16
    alpha: float = 0.0  # 0 = rank (scale 1)
    dropout: float = 0.0
    patterns: tuple[str, ...] = ()  # extra module-name patterns (the LoRA module's syntax)

    def __post_init__(self) -> None:
        check_finite(self, "lora.")
        if self.rank < 1:
            raise ConfigError(f"lora.rank must be >= 1, got {self.rank}")
        _positive(self.alpha, "lora.alpha", allow_zero=True)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class OptimConfig:
    optimizer: str = "adamw"  # "adamw8bit" needs bitsandbytes
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 1e-2
    warmup_steps: int = 0  # linear warmup from 0
    schedule: str = "constant"  # after warmup: constant, cosine or linear decay to min_lr_ratio * lr
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0  # max gradient norm (0 = no clipping)
    grad_accum: int = 1  # micro-batches per optimizer step

    def __post_init__(self) -> None:
        check_finite(self, "optim.")
        _choice(self.optimizer, OPTIMIZERS, "optim.optimizer")
        _choice(self.schedule, SCHEDULES, "optim.schedule")
        _positive(self.lr, "optim.lr")
        _positive(self.eps, "optim.eps")
        _positive(self.weight_decay, "optim.weight_decay", allow_zero=True)
        _positive(self.grad_clip, "optim.grad_clip", allow_zero=True)
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.warmup_steps < 0 or self.grad_accum < 1:
            raise ConfigError("optim.warmup_steps must be >= 0 and optim.grad_accum >= 1")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {self.betas}")


@dataclass(frozen=True)
class ValidationConfig:
    every: int = 0  # steps between validation videos (0 = none)
    image: str = ""  # conditioning image file ("" = the first cached clip's conditioning)
    seed: int = 23
    steps: int = 25
    min_cfg: float = 1.0
    max_cfg: float = 2.5
    cond_aug: float = 0.02
    format: str = "webp"

    def __post_init__(self) -> None:
        check_finite(self, "validation.")
        if self.every < 0 or self.steps < 1:
            raise ConfigError("validation.every must be >= 0 and validation.steps >= 1")
        for name in ("min_cfg", "max_cfg", "cond_aug"):
            _positive(getattr(self, name), f"validation.{name}", allow_zero=True)


@dataclass(frozen=True)
class TextConfig:
    """Mode "t2v": the OpenCLIP text tower and tokenizer whose embeddings of the clips' captions (manifest caption
    columns, or clip.txt beside each clip of a folder) are cached and condition the UNet."""

    tower: str = ""  # open_clip model file with the text tower (safetensors)
    tokenizer: str = ""  # bpe_simple_vocab_16e6.txt.gz, or a folder with vocab.json + merges.txt


@dataclass(frozen=True)
class TrainConfig:
    checkpoint: str = ""  # base model: official single-file .safetensors or diffusers folder
    output_dir: str = "output/svd-lab-train"
    mode: str = "image_to_video"  # or "keyframes": first and last frame condition (interpolation model); or "t2v":
    # captions condition through the text tower (text.tower + text.tokenizer), no conditioning frame
    method: str = "lora"  # "lora" or "full" (the selected weights themselves)
    trainable: str = "temporal"  # which layers train: temporal (default), spatial or all
    patterns: tuple[str, ...] = ()  # method "full": extra module-name patterns that also train
    steps: int = 1000  # optimizer steps
    batch_size: int = 1  # clips per process per micro-batch (global batch = batch_size * processes)
    precision: str = "auto"  # autocast dtype; weights being trained stay fp32. auto: bf16 on CUDA, fp32 on CPU
    gradient_checkpointing: bool = True
    ema_decay: float = 0.0  # 0 = no EMA; else e.g. 0.999 (warmed up: min(decay, (1 + n) / (10 + n)))
    seed: int = 0
    device: str = "auto"
    save_every: int = 500  # steps between training-state checkpoints (0 = only at the end / interruption)
    keep_checkpoints: int = 2
    log_every: int = 1
    resume: str = "auto"  # "auto" (latest in output_dir), "none", or a checkpoint path
    save_dtype: str = "fp16"  # dtype of the saved full model / LoRA
    data: DataConfig = field(default_factory=DataConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    text: TextConfig = field(default_factory=TextConfig)

    def __post_init__(self) -> None:
        check_finite(self, "")
        _choice(self.mode, MODES, "mode")
        _choice(self.method, METHODS, "method")
        _choice(self.trainable, TRAINABLE, "trainable")
        _choice(self.precision, PRECISIONS, "precision")
        _choice(self.save_dtype, STORAGE_DTYPES, "save_dtype")
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError(f"steps and batch_size must be >= 1, got {self.steps} and {self.batch_size}")
        if self.save_every < 0 or self.keep_checkpoints < 1 or self.log_every < 1:
            raise ConfigError("save_every must be >= 0, keep_checkpoints and log_every >= 1")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay}")

    @property
    def cache_dir(self) -> Path:
        return Path(self.cache.dir) if self.cache.dir else Path(self.output_dir) / "cache"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


# ------------------------------------------------------------------------------------------------ loading


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from nested dicts; unknown keys and wrong types raise ConfigError naming the key."""
    return build(TrainConfig, values)


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The table of a .toml or .json training config; ConfigError naming the file for every way it can be bad
    (missing, a directory or FIFO, too large, not UTF-8/UTF-16 text, nested too deeply, not parseable)."""
    path = Path(path)
    what = "training config"
    if path.suffix.lower() == ".toml":
        import tomllib

        text = read_text_file(path, what=what, max_bytes=CONFIG_MAX_BYTES)
        check_depth(text, f"{what} {path}")  # tomllib recurses into nested arrays and inline tables
        try:
            data: Any = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{what} {path} is not valid TOML: {exc}") from None
        except RecursionError:
            raise ConfigError(f"{what} {path} nests tables/arrays too deeply to read") from None
    else:
        data = read_json_file(path, what=what, max_bytes=CONFIG_MAX_BYTES)
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must hold a JSON object at the top level, got {type(data).__name__}")
    return data


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = (),
                base: dict[str, Any] | None = None) -> TrainConfig:
    """Read a .toml or .json file (or start from `base`), apply "a.b=value" overrides, validate.

    Relative data/cache/output paths stay relative to the working directory.
    """
    values = read_config_file(path) if path is not None else {}
    values = {**(base or {}), **values}
    for text in overrides:
        set_dotted(values, *parse_override(text))
    return config_from_dict(values)
