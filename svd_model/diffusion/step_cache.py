"""Step caching: skip most of the VideoUNet on sampling steps where its output would change little.

Consecutive sampling steps feed the network nearly the same input, so much of its work is repeated. Two
training-free ways to reuse it, both gated by the same cheap signal:

* ``"deepcache"`` (after DeepCache): every evaluation runs the shallowest blocks (the first input
  block, the last output block and ``out``); the deep part in between (everything else) is reused from the last
  full evaluation: the feature the last output block received from below. The fresh skip connection and the
  current timestep still shape the output.
* ``"teacache"`` (after TeaCache / EasyCache / first-block cache): only the first input block runs; the network
  output is its input plus the *residual* (output minus the latent channels of the input) of the last full
  evaluation. Cheaper than deepcache on a reused step and further from the uncached result. TeaCache's
  model-specific polynomial rescaling of the signal is not used (there is none fitted for SVD).

The gate estimates how much the network output has changed since its last full evaluation, from how much its
input has (after EasyCache). The signal is the first input block's output, ((b t), c, h, w),
subsampled every :data:`SIGNAL_STRIDE` pixels; per video, ``change = mean|s - s_full| / mean|s_full|`` against
the signal of the last full evaluation. The output moves faster than this input early in sampling (where the input
is mostly noise) and slower late, so the change is scaled by a per-video rate ``k``: after every full evaluation
``k = output change / input change`` between it and the full evaluation before (relative L1 of the network
outputs, over those of the signals). An evaluation is a reuse while every video's estimate ``k * change`` stays
below ``threshold``: the relative L1 change of the output tolerated before it is computed again. 0 never reuses
(the result is the uncached one bit for bit); larger values reuse more and drift further from the uncached
result. Two full evaluations come first (to measure ``k``).

Only evaluations whose noise level lies in the window ``[start, end)`` of the run (as a fraction of its steps;
the first and the last step never) may reuse: the first steps fix the video's layout and the last ones its detail,
both change fast.

State lives in one :class:`StepCache` per sampling run, never on the network: :func:`.image_to_video.sample_video`
makes a new one for every run. Within a run the state is keyed by the call's shape (rows, frames, latent size,
dtype, device): a CFG run evaluates uncond and cond videos together as one call of 2b videos
(:func:`.guidance.cfg_denoiser`), so the cached tensors hold one row per (video, frame) of that batch, aligned with
the call's rows; a cond-only run (all guidance scales 1) makes calls of b videos with a state of their own. A run
that made two calls of the same shape per step with *different* conditionings would mix them up: no sampler here
does (guidance is one batched call). The decision is taken for the whole call (every video below the threshold),
since a batched call gains nothing from skipping some of its rows.

Caching is inference only: the UNet refuses a cache while gradients are enabled. ``deepcache`` is refused on a
block-streamed UNet (:mod:`..nn.streaming`): streaming prefetches the units in forward order, and jumping over the
deep blocks would leave a prefetched unit on the device beside the two the streamer allows; ``teacache`` works
there (the skipped tail is simply never fetched).
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..nn.streaming import streamer_of
from .scalings import v_scalings_edm_cnoise

__all__ = ["CACHE_MODES", "SIGNAL_STRIDE", "CacheStats", "Reuse", "StepCache", "StepCacheOptions"]

log = logging.getLogger(__name__)

#: Step cache modes, in order of speed (and of distance from the uncached result).
CACHE_MODES = ("off", "deepcache", "teacache")

#: Spatial stride of the gate's signal (the first block's output is kept at 1/16 of its pixels).
SIGNAL_STRIDE = 4


@dataclass(frozen=True)
class StepCacheOptions:
    """What to cache and when.

    mode: one of :data:`CACHE_MODES`. threshold: the estimated relative L1 change of the network output since its
    last full evaluation (>= 0, unitless; 0 = never reuse) tolerated before it runs in full again. start, end: the
    window of the run, as fractions of its steps in [0, 1], in which evaluations may be reused (the first and last
    step never are). The defaults reuse nothing in the first 15 % of the steps (they set the video's layout) and
    nothing in the last 10 % (they set its detail).
    """

    mode: str = "off"
    threshold: float = 0.1
    start: float = 0.15
    end: float = 0.9

    def __post_init__(self) -> None:
        if self.mode not in CACHE_MODES:
            raise ConfigError(f"unknown step cache mode {self.mode!r}; choose from {list(CACHE_MODES)}")
        for name in ("threshold", "start", "end"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"step cache {name} must be a finite number, got {value!r}")
        if self.threshold < 0:
            raise ConfigError(f"step cache threshold must be >= 0 (0 = never reuse), got {self.threshold}")
        if not 0.0 <= self.start <= self.end <= 1.0:
            raise ConfigError(f"need 0 <= cache start <= cache end <= 1, got start {self.start}, end {self.end}")

    @property
    def enabled(self) -> bool:
        return self.mode != "off"


class Reuse(enum.Enum):
    """What one UNet evaluation reuses: nothing (full), the deep feature, or the whole output."""

    NONE = "full"
    DEEP = "deepcache"
    OUTPUT = "teacache"


@dataclass
class CacheStats:
    """What a run's cache did: filled while sampling, readable afterwards (e.g. for the video's metadata).

    calls: UNet evaluations seen; reused: those that skipped the deep part (deepcache) or all but the first block
    (teacache); pattern: one letter per evaluation, ``F`` full, ``R`` reused.
    """

    mode: str = "off"
    threshold: float = 0.0
    calls: int = 0
    reused: int = 0
    pattern: str = ""

    @property
    def full(self) -> int:
        return self.calls - self.reused

    def summary(self) -> str:
        if self.mode == "off":
            return "step cache off"
        return (f"step cache {self.mode} (threshold {self.threshold:g}): reused {self.reused} of {self.calls} UNet "
                f"evaluations [{self.pattern}]")

    def as_metadata(self) -> dict[str, str]:
        """Flat strings for a video file's metadata (the mode, and what it skipped)."""
        if self.mode == "off":
            return {"step_cache": "off"}
        return {"step_cache": self.mode, "step_cache_threshold": f"{self.threshold:g}",
                "step_cache_reused": f"{self.reused}/{self.calls}"}


@dataclass
class _Branch:
    """State of one call shape: signal and output of the last full call, the rate k and the cached tensors."""

    signal: Tensor | None = None  # (videos, n) float32, the subsampled first-block output, flattened per video
    output: Tensor | None = None  # (videos, m) float32, the network output, flattened per video
    change: Tensor | None = None  # (videos,) the signal's relative change from the full call before (None: none)
    rate: Tensor | None = None  # (videos,) output change / signal change between the last two full calls
    deep: Tensor | None = None  # ((b t), c, h, w): the input of the last output block from below, last full call
    residual: Tensor | None = None  # ((b t), out_channels, h, w): output - input latent channels, last full call


@dataclass
class StepCache:
    """The step cache of one sampling run (see the module doc). Make it with :meth:`for_sigmas`.

    step_timesteps: the network's timestep input (c_noise) of each step, (n,) in the run's order.
    """

    options: StepCacheOptions
    step_timesteps: Tensor
    stats: CacheStats = field(default_factory=CacheStats)
    _branches: dict[tuple, _Branch] = field(default_factory=dict)
    _current: _Branch | None = None
    _full: bool = False  # whether the current call runs every block

    @classmethod
    def for_sigmas(cls, options: StepCacheOptions, sigmas: Tensor, stats: CacheStats | None = None) -> StepCache:
        """The cache for a run over ``sigmas`` ((n + 1,) decreasing, ending in 0, as the samplers take them).

        ``stats``: an object to fill (the caller keeps it to read afterwards); a new one otherwise.
        """
        levels = sigmas.detach().to("cpu", torch.float32)
        levels = levels[levels > 0]
        if levels.numel() == 0:
            raise ConfigError("the step cache needs a schedule with at least one positive sigma")
        c_noise = v_scalings_edm_cnoise(levels)[3]
        cache = cls(options, c_noise, stats if stats is not None else CacheStats())
        cache.reset()
        return cache

    @property
    def active(self) -> bool:
        return self.options.enabled

    def reset(self) -> None:
        """Forget every cached tensor and start the statistics again (a new run)."""
        self._branches.clear()
        self._current, self._full = None, False
        s = self.stats
        s.mode, s.threshold, s.calls, s.reused, s.pattern = self.options.mode, self.options.threshold, 0, 0, ""

    def bind(self, unet: nn.Module) -> Callable[..., Tensor]:
        """``unet`` called with this cache: what :func:`.denoiser.make_model_fn` wraps for a cached run."""
        self.check_network(unet)
        return _Bound(unet, self)

    def check_network(self, unet: nn.Module) -> None:
        """ConfigError when this cache cannot run on ``unet`` now (grad enabled; deepcache on a streamed UNet)."""
        if not self.active:
            return
        if torch.is_grad_enabled():
            raise ConfigError("the step cache is for inference only: run under torch.no_grad() / inference_mode(), "
                              "and never pass a cache while training")
        if self.options.mode == "deepcache" and streamer_of(unet) is not None:
            raise ConfigError("step cache 'deepcache' cannot run on a block-streamed UNet (low_vram memory mode): "
                              "it jumps over the deep blocks the streamer prefetches in order; use 'teacache' or a "
                              "memory mode that keeps the UNet on the device")

    # ------------------------------------------------------------------ called by VideoUNet.forward

    def _step_of(self, timesteps: Tensor) -> int:
        """The run's step index whose timestep is nearest to this call's (Heun's second evaluation at sigma_next
        counts as the next step)."""
        t = float(timesteps.detach().float().mean())
        return int((self.step_timesteps - t).abs().argmin())

    def _may_reuse(self, step: int) -> bool:
        n = self.step_timesteps.numel()
        return 1 <= step < n - 1 and self.options.start <= step / n < self.options.end

    def decide(self, unet: nn.Module, x: Tensor, signal: Tensor, timesteps: Tensor, num_frames: int) -> Reuse:
        """Whether this evaluation reuses: x ((b t), in_channels, h, w) the network input, signal the first input
        block's output ((b t), c, h, w), timesteps ((b t),) its c_noise, num_frames t."""
        self.check_network(unet)
        rows = x.shape[0]
        key = (rows, num_frames, tuple(x.shape[1:]), tuple(signal.shape[1:]), signal.dtype, signal.device)
        branch = self._branches.setdefault(key, _Branch())
        self._current = branch
        videos = rows // num_frames
        sub = signal[:, :, ::SIGNAL_STRIDE, ::SIGNAL_STRIDE].float().reshape(videos, -1)  # (videos, n)
        change = None if branch.signal is None else _relative_l1(sub, branch.signal)  # (videos,)
        cached = branch.deep if self.options.mode == "deepcache" else branch.residual
        reuse = Reuse.NONE
        if (change is not None and branch.rate is not None and cached is not None
                and self._may_reuse(self._step_of(timesteps))
                and bool((branch.rate * change < self.options.threshold).all())):
            reuse = Reuse(self.options.mode)
        else:  # a full call: its signal is the reference of the next ones (the output follows in store_output)
            branch.signal, branch.change = sub.clone(), change
        self._full = reuse is Reuse.NONE
        self.stats.calls += 1
        self.stats.reused += reuse is not Reuse.NONE
        self.stats.pattern += "F" if reuse is Reuse.NONE else "R"
        return reuse

    def deep_feature(self) -> Tensor:
        """The cached deep feature for the current call's rows, ((b t), c, h, w)."""
        assert self._current is not None and self._current.deep is not None
        return self._current.deep

    def reused_output(self, x: Tensor) -> Tensor:
        """The network output of a teacache reuse: input latent channels + cached residual, ((b t), out, h, w)."""
        assert self._current is not None and self._current.residual is not None
        residual = self._current.residual
        return x[:, : residual.shape[1]].to(residual.dtype) + residual

    # Cached tensors are copies: a compiled network (CUDA graphs) may overwrite its outputs in the next call.
    def store_deep(self, h: Tensor) -> None:
        if self.options.mode == "deepcache" and self._current is not None:
            self._current.deep = h.detach().clone()

    def store_output(self, x: Tensor, out: Tensor, num_frames: int) -> None:
        """After a full call: measure the rate k, keep the output (and the teacache residual)."""
        branch = self._current
        if branch is None or not self._full:
            return
        flat = out.detach().float().reshape(out.shape[0] // num_frames, -1)  # (videos, m)
        if branch.output is not None and branch.change is not None:
            branch.rate = _relative_l1(flat, branch.output) / branch.change.clamp_min(1e-12)
        branch.output = flat.clone()
        if self.options.mode == "teacache":
            branch.residual = (out - x[:, : out.shape[1]].to(out.dtype)).detach()

    def log_summary(self) -> CacheStats:
        """Log what the run's cache did (INFO) and return the statistics."""
        if self.active:
            log.info(self.stats.summary())
        return self.stats


def _relative_l1(a: Tensor, ref: Tensor) -> Tensor:
    """mean|a - ref| / mean|ref| per row of (rows, n) tensors -> (rows,)."""
    return (a - ref).abs().mean(1) / ref.abs().mean(1).clamp_min(1e-12)


class _Bound:
    """A UNet with a run's cache bound to every call; reports the network's compute dtype like the network."""

    def __init__(self, unet: nn.Module, cache: StepCache) -> None:
        self.unet, self.cache = unet, cache

    @property
    def dtype(self) -> torch.dtype:
        return getattr(self.unet, "dtype", None) or next(self.unet.parameters()).dtype

    def parameters(self) -> Any:
        return self.unet.parameters()

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        return self.unet(*args, step_cache=self.cache, **kwargs)
