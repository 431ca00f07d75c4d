"""Step caching (svd_model.diffusion.step_cache) on a tiny random checkpoint: off and threshold 0 are the uncached
result bit for bit, caching drops full UNet evaluations at a bounded error, per-video gating with CFG batching,
state per run, the grad guard, and block streaming (teacache runs, deepcache is refused)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from comfyui_svd_lab.svd_model.api import VideoParams, encode_condition, sample_video
from comfyui_svd_lab.svd_model.conditioning import Cond
from comfyui_svd_lab.svd_model.cpu_runtime import cpu_inference
from comfyui_svd_lab.svd_model.diffusion.denoiser import make_model_fn
from comfyui_svd_lab.svd_model.diffusion.guidance import cfg_denoiser, frame_scales
from comfyui_svd_lab.svd_model.diffusion.noise import initial_noise
from comfyui_svd_lab.svd_model.diffusion.sampling import get_sampler
from comfyui_svd_lab.svd_model.diffusion.schedules import get_schedule
from comfyui_svd_lab.svd_model.diffusion.step_cache import CacheStats, StepCache, StepCacheOptions
from comfyui_svd_lab.svd_model.errors import ConfigError
from comfyui_svd_lab.svd_model.nn import streaming
from comfyui_svd_lab.svd_model.weights.loader import load_bundle
from comfyui_svd_lab.svd_model.weights.tiny import write_tiny_checkpoint

T, H, W, STEPS = 3, 32, 32, 10
#: Relative L2 distance of the final latents to the uncached run at threshold 0.1 (10 steps, 4 of them reused, this
#: tiny model; measured: deepcache 7.4e-4, teacache 6.4e-3); bounds with headroom. Random weights: not a statement
#: about the quality of real videos (bench/step_cache.py measures more thresholds).
BOUND = {"deepcache": 0.005, "teacache": 0.03}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return load_bundle(write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "svd.safetensors", seed=11))


@pytest.fixture(scope="module")
def conds(bundle):
    image = torch.rand(2, 3, H, W, generator=torch.Generator().manual_seed(0)) * 2 - 1  # two videos per call
    return encode_condition(bundle, image, _params(), generator=torch.Generator().manual_seed(0))


def _params(**kw) -> VideoParams:
    return VideoParams.for_variant("svd", **{"num_frames": T, "width": W, "height": H, "steps": STEPS, **kw})


def _sample(bundle, conds, params, stats=None):
    return sample_video(bundle, *conds, params, generator=torch.Generator().manual_seed(5), cache_stats=stats)


class _Counter:
    """Counts UNet calls and full ones (the middle block runs only in a full call)."""

    def __init__(self, unet):
        self.calls = self.full = 0
        self.handles = [unet.register_forward_pre_hook(lambda *_: self._add("calls")),
                        unet.middle_block.register_forward_pre_hook(lambda *_: self._add("full"))]

    def _add(self, name):
        setattr(self, name, getattr(self, name) + 1)

    def __enter__(self):
        return self

    def __exit__(self, *_):
        for handle in self.handles:
            handle.remove()


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def uncached(bundle, conds):
    return _sample(bundle, conds, _params())


def test_off_is_the_eager_path_bit_for_bit(bundle, conds, uncached):
    """sample_video with the cache off equals sampling with the bare UNet (the code path before caching), both under
    sample_video's CPU runtime (cpu_inference: its kernels change float32 summation order)."""
    params = _params()
    sigmas = get_schedule(params.schedule)(params.steps, params.sigma_min, params.sigma_max, params.rho)
    noise = torch.randn(2, T, 4, H // 8, W // 8, generator=torch.Generator().manual_seed(5))
    denoiser = cfg_denoiser(make_model_fn(bundle.model.unet), *conds, frame_scales("linear", 1.0, 2.5, T),
                            cat=Cond.cat)
    with torch.no_grad(), cpu_inference("cpu"):
        eager = get_sampler("euler")(denoiser, initial_noise(noise, sigmas[0]), sigmas)
    assert torch.equal(uncached, eager)
    stats = CacheStats()
    assert torch.equal(_sample(bundle, conds, _params(step_cache="off"), stats), eager)
    assert stats.calls == 0 and stats.as_metadata() == {"step_cache": "off"}


@pytest.mark.parametrize("mode", ["deepcache", "teacache"])
def test_threshold_zero_reuses_nothing_and_is_bit_exact(bundle, conds, uncached, mode):
    stats = CacheStats()
    with _Counter(bundle.model.unet) as count:
        out = _sample(bundle, conds, _params(step_cache=mode, cache_threshold=0.0), stats)
    assert torch.equal(out, uncached)
    assert stats.reused == 0 and stats.calls == count.calls == count.full == STEPS


@pytest.mark.parametrize("mode", ["deepcache", "teacache"])
def test_caching_skips_full_evaluations_at_a_bounded_error(bundle, conds, uncached, mode):
    stats = CacheStats()
    with _Counter(bundle.model.unet) as count:
        out = _sample(bundle, conds, _params(step_cache=mode, cache_threshold=0.1), stats)
    assert count.calls == stats.calls == STEPS
    assert count.full == stats.full and 3 <= stats.reused <= STEPS - 3, stats.summary()
    # never reused: the first two steps (step 0, and the rate k needs two full calls) and the last (end 0.9)
    assert stats.pattern.startswith("FF") and stats.pattern.endswith("F")
    assert 0 < _rel(out, uncached) < BOUND[mode]
    assert stats.as_metadata() == {"step_cache": mode, "step_cache_threshold": "0.1",
                                   "step_cache_reused": f"{stats.reused}/{STEPS}"}
    # a larger threshold reuses at least as much
    more = CacheStats()
    _sample(bundle, conds, _params(step_cache=mode, cache_threshold=10.0), more)
    assert more.reused >= stats.reused


def test_window_limits_where_calls_are_reused(bundle, conds):
    stats = CacheStats()
    _sample(bundle, conds, _params(step_cache="deepcache", cache_threshold=1e6, cache_start=0.5, cache_end=0.8), stats)
    assert stats.pattern == "FFFFF" + "RRR" + "FF"  # steps 5, 6, 7 of 10 lie in [0.5, 0.8)
    _sample(bundle, conds, _params(step_cache="teacache", cache_threshold=1e6, cache_start=0.0, cache_end=1.0), stats)
    assert stats.pattern == "FF" + "R" * 7 + "F"  # k needs two full calls; the last step always runs in full


def test_each_run_starts_from_a_fresh_state(bundle, conds):
    params = _params(step_cache="teacache", cache_threshold=0.1)
    first, second = CacheStats(), CacheStats()
    a = _sample(bundle, conds, params, first)
    b = _sample(bundle, conds, params, second)
    assert torch.equal(a, b) and first == second
    # a StepCache reset between two runs behaves like a new one
    sigmas = get_schedule("karras")(STEPS, 0.002, 700.0, 7.0)
    cache = StepCache.for_sigmas(params.cache_options, sigmas)
    unet = bundle.model.unet
    x, args = _unet_inputs(unet)
    with torch.no_grad():
        runs = []
        for _ in range(2):
            cache.reset()
            runs.append([cache.bind(unet)(x * (1 + 0.01 * i), t, *args) for i, t in enumerate(_timesteps(cache, x))])
            assert cache.stats.calls == STEPS
    for one, two in zip(*runs, strict=True):
        assert torch.equal(one, two)


def _unet_inputs(unet, videos: int = 2):
    g = torch.Generator().manual_seed(3)
    c, rows = unet.config, videos * T
    x = torch.randn(rows, c.in_channels, H // 8, W // 8, generator=g)
    return x, (torch.randn(rows, 1, c.context_dim, generator=g), torch.randn(rows, c.adm_in_channels, generator=g), T)


def _timesteps(cache: StepCache, x):
    return [torch.full((x.shape[0],), float(t)) for t in cache.step_timesteps]


@pytest.mark.parametrize("mode", ["deepcache", "teacache"])
def test_reuse_is_per_row_and_gated_per_video(bundle, mode):
    """Unchanged inputs reuse and reproduce each row's own full output; a change in one video of the batch makes
    the whole call full."""
    unet = bundle.model.unet
    x, (ctx, y, t) = _unet_inputs(unet)
    cache = StepCache.for_sigmas(StepCacheOptions(mode, 0.1, 0.0, 1.0), get_schedule("karras")(STEPS, 0.002, 700.0))
    steps = _timesteps(cache, x)[5:9]  # neighbouring low noise levels
    with torch.no_grad():
        call = cache.bind(unet)
        full = unet(x, steps[2], ctx, y, t)
        call(x, steps[0], ctx, y, t)
        call(x * 1.001, steps[1], ctx, y, t)  # two full calls measure the rate k
        assert cache.stats.pattern == "FF"
        reused = call(x, steps[2], ctx, y, t)  # back to the first input: a small change since the last full call
        assert cache.stats.pattern == "FFR"
        changed = x.clone()
        changed[T:] = torch.randn(changed[T:].shape, generator=torch.Generator().manual_seed(9))  # second video
        call(changed, steps[3], ctx, y, t)
        assert cache.stats.pattern == "FFRF"
    # deepcache: the deep feature of the call at 1.001 x, shallow blocks fresh; teacache: that call's residual
    assert _rel(reused, full) < 0.05
    per_video = [_rel(reused[i * T:(i + 1) * T], full[i * T:(i + 1) * T]) for i in range(2)]
    swapped = _rel(reused[:T], full[T:])
    assert max(per_video) < 0.05 < swapped  # each row got its own video's cached tensors


def test_cond_only_and_cfg_batches_keep_separate_states(bundle, conds):
    """All guidance scales 1: one call of b videos per step (no uncond rows); per-frame guidance: 2b videos."""
    for min_cfg, max_cfg in ((1.0, 1.0), (1.0, 2.5)):
        stats = CacheStats()
        params = _params(step_cache="deepcache", cache_threshold=0.1, min_cfg=min_cfg, max_cfg=max_cfg)
        out = _sample(bundle, conds, params, stats)
        plain = _sample(bundle, conds, replace(params, step_cache="off"))
        assert stats.calls == STEPS and stats.reused >= 3 and _rel(out, plain) < BOUND["deepcache"]


def test_grad_enabled_is_refused(bundle):
    unet = bundle.model.unet
    x, (ctx, y, t) = _unet_inputs(unet, videos=1)
    cache = StepCache.for_sigmas(StepCacheOptions("teacache"), get_schedule("karras")(STEPS, 0.002, 700.0))
    with torch.enable_grad():
        with pytest.raises(ConfigError, match="inference only"):
            unet(x, torch.zeros(x.shape[0]), ctx, y, t, step_cache=cache)
        with pytest.raises(ConfigError, match="inference only"):
            cache.bind(unet)
        # off is no cache at all: the ordinary path, allowed with grad enabled
        off = StepCache.for_sigmas(StepCacheOptions("off"), get_schedule("karras")(STEPS, 0.002, 700.0))
        assert torch.equal(unet(x, torch.zeros(x.shape[0]), ctx, y, t, step_cache=off),
                           unet(x, torch.zeros(x.shape[0]), ctx, y, t))
    assert cache.stats.calls == 0  # the refused call recorded nothing


def test_block_streaming_runs_teacache_and_refuses_deepcache(bundle, conds):
    unet = bundle.model.unet
    params = _params(step_cache="teacache", cache_threshold=0.1)
    resident = _sample(bundle, conds, params)
    streamer = streaming.attach(unet, "cpu")
    try:
        stats = CacheStats()
        streamed = _sample(bundle, conds, params, stats)
        assert stats.reused >= 3 and streamer.peak_resident <= 2
        with pytest.raises(ConfigError, match="block-streamed UNet"):
            _sample(bundle, conds, replace(params, step_cache="deepcache"))
    finally:
        streaming.detach(unet)
    torch.testing.assert_close(streamed, resident, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fields, match", [
    ({"step_cache": "fast"}, "unknown step cache mode"),
    ({"cache_threshold": -0.1}, "threshold must be >= 0"),
    ({"cache_threshold": float("nan")}, "finite"),
    ({"cache_start": 0.9, "cache_end": 0.5}, "cache start <= cache end"),
    ({"cache_end": 1.5}, "cache end <= 1"),
])
def test_bad_options_are_config_errors(fields, match):
    with pytest.raises(ConfigError, match=match):
        _params(**fields)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", ["deepcache", "teacache"])
def test_on_cuda_in_half_precision(tmp_path, mode):
    """On CUDA in fp16: threshold 0 is the uncached result bit for bit, and caching reuses at a bounded error."""
    path = write_tiny_checkpoint(tmp_path / "svd.safetensors", seed=11)
    gpu = load_bundle(path, device="cuda", dtype=torch.float16)
    image = torch.rand(2, 3, H, W, generator=torch.Generator().manual_seed(0)) * 2 - 1
    conds = encode_condition(gpu, image, _params(), generator=torch.Generator().manual_seed(0))
    plain = _sample(gpu, conds, _params())
    assert torch.equal(_sample(gpu, conds, _params(step_cache=mode, cache_threshold=0.0)), plain)
    stats = CacheStats()
    cached = _sample(gpu, conds, _params(step_cache=mode, cache_threshold=0.1), stats)
    assert stats.reused >= 3 and cached.device.type == "cuda" and _rel(cached, plain) < 2 * BOUND[mode]
