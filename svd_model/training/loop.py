"""The training step: batches from the latent cache, the EDM loss, accumulation, clipping, schedules, EMA,
autocast, and a guard that stops on a non-finite loss.

Randomness is stateless. The data order is a function of (seed, epoch); every random draw of a sample
(posterior sample, sigma, noise, conditioning augmentation, conditioning dropout) comes from a generator seeded
by (seed, step, micro-batch, position in the GLOBAL batch). So a resumed run continues exactly, and N processes
with batch B draw exactly what one process with batch N*B draws. Module-internal randomness (LoRA dropout) uses
torch's global RNG, reseeded per step and process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ..conditioning import Cond, encode_cond_frames, vector_conditioning
from ..config import Family
from ..diffusion.denoiser import make_model_fn
from ..diffusion.noise import randn
from ..errors import ConfigError, InputError, SVDError
from ..nn.vae import LOGVAR_MAX, LOGVAR_MIN
from .cache import CacheItem, LatentCache
from .config import ObjectiveConfig, OptimConfig, TrainConfig
from .distributed import DistInfo, all_mean, all_true
from .losses import edm_loss, lognormal_sigmas
from .state import seed_from

log = logging.getLogger(__name__)


class NonFiniteLossError(SVDError):
    """The loss or the gradient became NaN/inf; training stopped before the weights were touched."""


# ------------------------------------------------------------------------------------ schedules, EMA


def lr_at(step: int, total: int, optim: OptimConfig) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warmup, then constant / cosine / linear decay
    from lr to min_lr_ratio * lr at the last step."""
    if optim.warmup_steps and step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return optim.lr
    span = max(1, total - optim.warmup_steps - 1)
    progress = min(1.0, max(0, step - optim.warmup_steps) / span)
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if optim.schedule == "cosine" else 1 - progress
    return optim.lr * (optim.min_lr_ratio + (1 - optim.min_lr_ratio) * shape)


class EMA:
    """Exponential moving average of the trained parameters (fp32 shadows), decay warmed up as
    min(decay, (1 + n) / (10 + n)) after n updates."""

    def __init__(self, params: Sequence[tuple[str, nn.Parameter]], decay: float) -> None:
        self.decay = decay
        self.params = list(params)
        self.shadow = {name: p.detach().float().clone() for name, p in self.params}

    @torch.no_grad()
    def update(self, updates: int) -> None:
        d = min(self.decay, (1 + updates) / (10 + updates))
        for name, p in self.params:
            self.shadow[name].mul_(d).add_(p.detach().float(), alpha=1 - d)

    def load(self, shadow: dict[str, Tensor]) -> None:
        missing = set(self.shadow) - set(shadow)
        if missing:
            raise ConfigError(f"the checkpoint's EMA lacks {len(missing)} parameters (e.g. {sorted(missing)[0]})")
        for name in self.shadow:
            self.shadow[name].copy_(shadow[name])

    @torch.no_grad()
    def copy_to_params(self) -> None:
        """Overwrite the model's parameters with the EMA weights (for good, e.g. at the end of a run)."""
        for name, p in self.params:
            p.copy_(self.shadow[name])

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Swap the EMA weights into the model for the block (validation, export), then restore."""
        saved = {name: p.detach().clone() for name, p in self.params}
        with torch.no_grad():
            for name, p in self.params:
                p.copy_(self.shadow[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in self.params:
                    p.copy_(saved[name])


# ------------------------------------------------------------------------------------------ batching


class BatchPlan:
    """Global micro-batch g -> cache indices: per epoch, each size bucket is shuffled and cut into batches of
    `global_batch` (the remainder waits for the next epoch), and the batches are shuffled. Stateless."""

    def __init__(self, groups: dict[tuple[int, int], list[int]], global_batch: int, seed: int) -> None:
        self.groups = sorted(groups.items())
        self.global_batch = global_batch
        self.seed = seed
        self.per_epoch = sum(len(idx) // global_batch for _, idx in self.groups)
        if self.per_epoch == 0:
            sizes = ", ".join(f"{len(i)} at {w}x{h}" for (w, h), i in self.groups)
            raise InputError(f"no size bucket holds a full batch of {global_batch} clips ({sizes}); lower "
                             "batch_size (it is per process) or add clips of one size")
        small = [f"{w}x{h} ({len(i)})" for (w, h), i in self.groups if len(i) < global_batch]
        if small:
            log.warning("size buckets with fewer clips than one batch of %d are not used: %s", global_batch, small)
        self._epoch_cache: tuple[int, list[list[int]]] = (-1, [])

    def _epoch(self, epoch: int) -> list[list[int]]:
        if self._epoch_cache[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            batches = []
            for _, idx in self.groups:
                perm = [idx[i] for i in rng.permutation(len(idx))]
                batches += [perm[j * self.global_batch:(j + 1) * self.global_batch]
                            for j in range(len(idx) // self.global_batch)]
            self._epoch_cache = (epoch, [batches[i] for i in rng.permutation(len(batches))])
        return self._epoch_cache[1]

    def batch(self, index: int) -> list[int]:
        epoch, i = divmod(index, self.per_epoch)
        return self._epoch(epoch)[i]


@dataclass
class Batch:
    x0: Tensor  # (b, t, 4, h, w) diffusion-scaled latents
    sigma: Tensor  # (b,) or (b, t)
    noise: Tensor  # (b, t, 4, h, w)
    cond: Cond


@dataclass
class ClipDraw:
    """One clip of a micro-batch: its random draws and its model inputs before stacking."""

    x0: Tensor  # (t, z, h, w) posterior sample, diffusion-scaled
    sigma: Tensor  # (1,) or (t,)
    noise: Tensor  # (t, z, h, w)
    aug: float  # the conditioning augmentation strength
    keep: float  # 1.0, or 0.0 when the conditioning is dropped
    crossattn: Tensor  # (1, d): the first frame's embedding
    concat: Tensor | None = None  # cached mode: the picked pre-encoded augmentation (k z, h, w)
    cond_frames: Tensor | None = None  # exact mode: the clean conditioning frames (k, 3, H, W) ...
    aug_noise: Tensor | None = None  # ... and their augmentation noise, encoded for the whole batch at once


def draw_clip(item: CacheItem, gen: torch.Generator, *, objective: ObjectiveConfig, k: int,
              scale_factor: float, text: bool = False) -> ClipDraw:
    """Draw one clip's randomness from `gen` in the fixed order: posterior sample, sigma, noise, then the
    augmentation (exact: strength and noise; cached: which pre-encoded one), then the conditioning dropout.
    `text` (t2v): the caption embedding conditions, the concat frame is zeros and cond_aug 0 (no augmentation
    draw)."""
    mean, logvar = item.moments.chunk(2, dim=1)  # (t, z, h, w) each
    eps = randn(mean.shape, gen, what="the posterior sample")
    x0 = (mean + torch.exp(0.5 * logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)) * eps) * scale_factor
    n_sigma = 1 if objective.sigma_per == "clip" else mean.shape[0]
    sigma = lognormal_sigmas(n_sigma, objective.p_mean, objective.p_std, generator=gen)
    noise = randn(mean.shape, gen, what="the training noise")
    concat = cond_frames = aug_noise = None
    if text:
        if item.text is None:
            raise InputError("this latent cache holds no caption embeddings: build it with a text encoder for t2v")
        keep = float(torch.rand(1, generator=gen).item() >= objective.cond_dropout)
        return ClipDraw(x0, sigma, noise, 0.0, keep, item.text[:1], torch.zeros(k * mean.shape[1], *mean.shape[2:]))
    if item.cond_frames is not None:  # exact: draw the augmentation now, augment and encode per batch
        z = randn((1,), gen, what="the cond_aug draw").item()
        aug = math.exp(objective.cond_aug_mean + objective.cond_aug_std * z)
        cond_frames = item.cond_frames[:k]  # (k, 3, H, W)
        aug_noise = randn(cond_frames.shape, gen, what="the noise augmentation")
    else:  # cached: pick one of the pre-encoded augmentations
        pick = int(torch.randint(item.concat.shape[0], (1,), generator=gen).item())
        aug = float(item.cond_aug[pick])
        concat = item.concat[pick, :k].flatten(0, 1)  # (k z, h, w)
    keep = float(torch.rand(1, generator=gen).item() >= objective.cond_dropout)
    return ClipDraw(x0, sigma, noise, aug, keep, item.crossattn[:1], concat, cond_frames, aug_noise)


def _batch_concat(clips: Sequence[ClipDraw], k: int, cond_vae: nn.Module | None, device: torch.device) -> Tensor:
    """The concat conditioning (b, k z, h, w): exact mode augments and encodes every clip's frames in one
    call of the conditioner's VAE; cached mode stacks the picked encodings."""
    if cond_vae is not None:
        if any(c.cond_frames is None for c in clips):
            raise InputError("this cache holds pre-encoded augmentations (cond_aug_mode 'cached'): the trainer "
                             "needs no conditioner VAE for it")
        with torch.no_grad():
            frame_augs = torch.tensor([c.aug for c in clips], dtype=torch.float32).repeat_interleave(k)  # (b k,)
            concat = encode_cond_frames(cond_vae, torch.cat([c.cond_frames for c in clips]), frame_augs,
                                        device=device, noise=torch.cat([c.aug_noise for c in clips]))  # (b k, z, h, w)
            return concat.reshape(len(clips), -1, *clips[0].x0.shape[-2:])  # (b, k z, h, w)
    if any(c.concat is None for c in clips):
        raise InputError("this cache holds conditioning frames (cond_aug_mode 'exact'): the trainer needs the "
                         "conditioner's VAE encoder to encode them")
    return torch.stack([c.concat for c in clips]).to(device)


def make_batch(items: Sequence[CacheItem], generators: Sequence[torch.Generator], *, objective: ObjectiveConfig,
               keyframes: bool, scale_factor: float, cond_vae: nn.Module | None, device: torch.device,
               text: bool = False) -> Batch:
    """Draw one micro-batch's randomness per sample (in a fixed order) and build the model inputs. `text`: the
    t2v finetune (caption embeddings, zero concat)."""
    k = 2 if keyframes else 1
    clips = [draw_clip(item, gen, objective=objective, k=k, scale_factor=scale_factor, text=text)
             for item, gen in zip(items, generators, strict=True)]
    b, t = len(clips), clips[0].x0.shape[0]
    concat = torch.stack([c.concat for c in clips]).to(device) if text else _batch_concat(clips, k, cond_vae, device)
    mask = torch.tensor([c.keep for c in clips], device=device)
    vector = vector_conditioning(Family.SVD, {
        "fps_id": torch.tensor([it.entry.fps_id for it in items], dtype=torch.float64),
        "motion_bucket_id": torch.tensor([it.entry.motion_bucket_id for it in items], dtype=torch.float64),
        "cond_aug": torch.tensor([c.aug for c in clips], dtype=torch.float64)}, b, t)  # (b, t, adm)
    cond = Cond(torch.stack([c.crossattn for c in clips]).to(device) * mask[:, None, None],
                concat * mask[:, None, None, None], vector.float().to(device))
    sigma = torch.stack([c.sigma for c in clips]).to(device)  # (b, 1) or (b, t)
    return Batch(torch.stack([c.x0 for c in clips]).to(device), sigma[:, 0] if objective.sigma_per == "clip" else sigma,
                 torch.stack([c.noise for c in clips]).to(device), cond)


@torch.no_grad()
def fixed_sigma_loss(unet: nn.Module, cache: LatentCache, indices: Sequence[int], *, objective: ObjectiveConfig,
                     sigmas: Sequence[float] = (0.2, 0.5, 1.0, 2.0, 5.0), seed: int = 0, keyframes: bool = False,
                     scale_factor: float = 0.18215, cond_vae: nn.Module | None = None,
                     device: torch.device | str = "cpu", text: bool = False) -> float:
    """A low-variance loss for monitoring: the EDM loss of the cache entries `indices` at fixed noise levels,
    with fixed noise and augmentation draws (`seed`) and no conditioning dropout; the mean over clips and
    sigmas. The same arguments give the same draws, so two calls compare weights, not luck."""
    objective = dataclasses.replace(objective, cond_dropout=0.0)
    device = torch.device(device)
    items = [cache.item(i) for i in indices]
    gens = [torch.Generator().manual_seed(seed_from(seed, "eval", i)) for i in indices]
    batch = make_batch(items, gens, objective=objective, keyframes=keyframes, scale_factor=scale_factor,
                       cond_vae=cond_vae, device=device, text=text)
    was_training = unet.training
    unet.eval()
    try:
        model_fn = make_model_fn(unet)
        total = [edm_loss(model_fn, batch.x0, torch.full((len(items),), s, device=device), batch.noise,
                          batch.cond).mean() for s in sigmas]
    finally:
        unet.train(was_training)
    return float(torch.stack(total).mean())


# ------------------------------------------------------------------------------------------- stepping


@dataclass
class StepStats:
    step: int  # optimizer steps done (1-based after the first)
    loss: float  # mean over the global batch and the accumulated micro-batches
    lr: float
    grad_norm: float
    sigma_mean: float
    seconds: float


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else (torch.float16 if device.type == "cuda" else None)
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def make_optimizer(params: list[nn.Parameter], optim: OptimConfig) -> torch.optim.Optimizer:
    kwargs = {"lr": optim.lr, "betas": optim.betas, "eps": optim.eps, "weight_decay": optim.weight_decay}
    if optim.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise ConfigError("optim.optimizer 'adamw8bit' needs the bitsandbytes package (CUDA only); install "
                              "it or use 'adamw'") from None
        return bnb.optim.AdamW8bit(params, **kwargs)
    return torch.optim.AdamW(params, **kwargs)


class Trainer:
    """One optimizer step at a time over a latent cache. `unet` may be DDP-wrapped; `params` are the trained
    parameters (name, Parameter) of the unwrapped UNet."""

    def __init__(self, config: TrainConfig, unet: nn.Module, params: list[tuple[str, nn.Parameter]],
                 cache: LatentCache, *, dist: DistInfo, scale_factor: float, cond_vae: nn.Module | None) -> None:
        self.config, self.unet, self.params, self.cache, self.dist = config, unet, params, cache, dist
        self.device = dist.device
        self.scale_factor, self.cond_vae = scale_factor, cond_vae
        self.optimizer = make_optimizer([p for _, p in params], config.optim)
        self.amp = autocast_dtype(config.precision, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.amp == torch.float16 else None
        self.ema = EMA(params, config.ema_decay) if config.ema_decay > 0 else None
        self.plan = BatchPlan(cache.groups(), config.batch_size * dist.world_size, config.data.seed + config.seed)
        self.model_fn = make_model_fn(unet)

    def _micro(self, step: int, micro: int) -> tuple[Tensor, Tensor]:
        cfg, dist = self.config, self.dist
        indices = self.plan.batch(step * cfg.optim.grad_accum + micro)
        mine = range(dist.rank * cfg.batch_size, (dist.rank + 1) * cfg.batch_size)
        items = [self.cache.item(indices[j]) for j in mine]
        gens = [torch.Generator().manual_seed(seed_from(cfg.seed, "sample", step, micro, j)) for j in mine]
        batch = make_batch(items, gens, objective=cfg.objective, keyframes=cfg.mode == "keyframes",
                           scale_factor=self.scale_factor, cond_vae=self.cond_vae, device=self.device,
                           text=cfg.mode == "t2v")
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            loss = edm_loss(self.model_fn, batch.x0, batch.sigma, batch.noise, batch.cond,
                            loss_type=cfg.objective.loss).mean()
        return loss, batch.sigma

    def step(self, step: int) -> StepStats:
        """Run optimizer step number `step` (0-based). Raises NonFiniteLossError before touching weights."""
        cfg, start = self.config, time.perf_counter()
        torch.manual_seed(seed_from(cfg.seed, "global", step, self.dist.rank))
        lr = lr_at(step, cfg.steps, cfg.optim)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        accum, losses, sigma_sum = cfg.optim.grad_accum, [], 0.0
        for micro in range(accum):
            sync = micro == accum - 1 or not hasattr(self.unet, "no_sync")
            with contextlib.nullcontext() if sync else self.unet.no_sync():
                loss, sigma = self._micro(step, micro)
                if not all_true(bool(torch.isfinite(loss)), self.dist):
                    raise NonFiniteLossError(
                        f"the loss became {loss.item()} at step {step + 1} (micro-batch {micro + 1}, sigma "
                        f"{sigma.min().item():.3g}..{sigma.max().item():.3g}); training stopped and the weights of "
                        f"step {step} are kept. Try a lower optim.lr, precision bf16 instead of fp16, or "
                        "optim.grad_clip")
                scaled = loss / accum
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            losses.append(loss.detach())
            sigma_sum += sigma.float().mean().item()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        params = [p for _, p in self.params]
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip or float("inf"))
        if self.scaler is None and not torch.isfinite(norm):
            raise NonFiniteLossError(
                f"the gradient norm became {norm.item()} at step {step + 1}; training stopped and the weights of "
                f"step {step} are kept. Try a lower optim.lr or optim.grad_clip > 0")
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.ema is not None:
            self.ema.update(step)
        mean_loss = all_mean(torch.stack(losses).mean(), self.dist)
        return StepStats(step + 1, mean_loss, lr, float(norm), sigma_sum / accum, time.perf_counter() - start)

    # ---------------------------------------------------------------------------------------- state

    def state(self) -> dict:
        return {"model": {n: p.detach() for n, p in self.params}, "optimizer": self.optimizer.state_dict(),
                "ema": self.ema.shadow if self.ema else None,
                "scaler": self.scaler.state_dict() if self.scaler else None}

    @torch.no_grad()
    def load(self, saved: dict) -> None:
        names = {n for n, _ in self.params}
        if set(saved["model"]) != names:
            extra = sorted(set(saved["model"]) ^ names)
            raise ConfigError(f"the checkpoint trains other weights than this run ({len(extra)} differ, e.g. "
                              f"{extra[0]}); resume with the same method, trainable, patterns and LoRA settings")
        for n, p in self.params:
            p.copy_(saved["model"][n])
        self.optimizer.load_state_dict(saved["optimizer"])
        if self.ema is not None:
            if saved["ema"] is None:
                raise ConfigError("this run uses EMA but the checkpoint has none; resume with ema_decay 0")
            self.ema.load(saved["ema"])
        if self.scaler is not None and saved.get("scaler"):
            self.scaler.load_state_dict(saved["scaler"])
