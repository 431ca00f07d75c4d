"""Step caching (``svd_model.diffusion.step_cache``): speed-up and error against the uncached run at equal seeds.

Usage::

    python bench/step_cache.py                      # CPU: the SVD layout at 128 channels, 4 frames, 16x16 latents
    python bench/step_cache.py --repeats 3 --steps 25 --size 32x32 --thresholds 0.05,0.1,0.2,0.5

Method. One VideoUNet of the SVD layout (levels, blocks, attention as SVD; ``--channels`` wide instead of 320)
with seeded random weights (``svd_model.weights.tiny.randomize``), a seeded random conditioning (one video, CFG
with SVD-XT's linear 1.0 -> 3.0 per-frame guidance, so every UNet call has 2 videos), the Euler sampler over
Karras sigmas as ``sample_video`` composes it. For every mode and threshold: UNet evaluations reused / all,
the fraction of the UNet FLOPs skipped (per-block counts of one full call, ``torch.utils.flop_counter``, for the
blocks a reused call leaves out), the wall time as min-of-N interleaved runs (each run of every configuration once
per round) and its ratio to the uncached run, and the relative L2 distance of the final latents to the uncached
ones (same noise). Random weights: the distances say how far caching moves *this* network's trajectory, not how
a trained SVD's videos look; the reuse pattern of a trained model differs too. The FLOPs per reused call are also
given for full-size SVD-XT (25 frames, 72x128 latents, counted on the meta device, nothing computed).

The machine's load average is printed before and after: on a shared machine the times are only as good as it is
quiet. Last line: "deepcache@T: time ratio R, FLOPs skipped F, rel L2 E" for the default threshold.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from comfyui_svd_lab.svd_model.conditioning import Cond
from comfyui_svd_lab.svd_model.config import UNetConfig
from comfyui_svd_lab.svd_model.diffusion.denoiser import make_model_fn
from comfyui_svd_lab.svd_model.diffusion.guidance import cfg_denoiser, linear_frame_scales
from comfyui_svd_lab.svd_model.diffusion.noise import initial_noise
from comfyui_svd_lab.svd_model.diffusion.sampling import get_sampler
from comfyui_svd_lab.svd_model.diffusion.schedules import get_schedule
from comfyui_svd_lab.svd_model.diffusion.step_cache import CacheStats, StepCache, StepCacheOptions
from comfyui_svd_lab.svd_model.nn.unet import VideoUNet
from comfyui_svd_lab.svd_model.weights.tiny import randomize

DEFAULT_THRESHOLD = StepCacheOptions().threshold


def block_flops(unet: VideoUNet, frames: int, h: int, w: int) -> dict[str, float]:
    """FLOPs of one call of `unet` (one video of `frames` frames at h x w latents) per top-level unit."""
    c = unet.config
    device = next(unet.parameters()).device
    args = (torch.zeros(frames, c.in_channels, h, w, device=device), torch.zeros(frames, device=device),
            torch.zeros(frames, 1, c.context_dim, device=device), torch.zeros(frames, c.adm_in_channels, device=device),
            frames)
    with torch.no_grad(), FlopCounterMode(display=False, depth=3) as counter:
        unet(*args)
    units = {"time_embed", "label_emb", "middle_block", "out"}
    units |= {f"input_blocks.{i}" for i in range(len(unet.input_blocks))}
    units |= {f"output_blocks.{i}" for i in range(len(unet.output_blocks))}
    return {name.removeprefix("VideoUNet."): float(sum(ops.values()))
            for name, ops in counter.get_flop_counts().items() if name.removeprefix("VideoUNet.") in units}


def reused_fraction(flops: dict[str, float], unet: VideoUNet) -> dict[str, float]:
    """Fraction of a full call's FLOPs that a reused call of each mode still spends (the gate's few ops aside)."""
    total = sum(flops.values())
    base = flops["time_embed"] + flops["label_emb"] + flops["input_blocks.0"]
    shallow = flops[f"output_blocks.{len(unet.output_blocks) - 1}"] + flops["out"]
    return {"deepcache": (base + shallow) / total, "teacache": base / total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=128)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--size", default="16x16", help="latent HxW")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--thresholds", default="0.1,0.2,0.5")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    opts = parser.parse_args()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    h, w = (int(v) for v in opts.size.lower().split("x"))
    t = opts.frames
    print(f"load average before: {os.getloadavg()}  torch threads: {torch.get_num_threads()}")

    config = UNetConfig(model_channels=opts.channels, context_dim=256)
    unet = randomize(VideoUNet(config), seed=0).eval()  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(0)
    cond = Cond(torch.randn(1, 1, config.context_dim, generator=gen), torch.randn(1, 4, h, w, generator=gen),
                torch.randn(1, t, config.adm_in_channels, generator=gen))
    noise = torch.randn(1, t, 4, h, w, generator=gen)
    sigmas = get_schedule("karras")(opts.steps, 0.002, 700.0, 7.0)
    scales = linear_frame_scales(1.0, 3.0, t)

    def run(options: StepCacheOptions) -> tuple[float, torch.Tensor, CacheStats]:
        stats = CacheStats()
        cache = StepCache.for_sigmas(options, sigmas, stats)
        with torch.inference_mode():
            model_fn = make_model_fn(cache.bind(unet) if cache.active else unet)  # type: ignore[arg-type]
            denoiser = cfg_denoiser(model_fn, cond, cond.unconditional(), scales, cat=Cond.cat)
            start = time.perf_counter()
            out = get_sampler("euler")(denoiser, initial_noise(noise, sigmas[0]), sigmas)
            return time.perf_counter() - start, out, stats

    thresholds = [float(v) for v in opts.thresholds.split(",")]
    configs = [StepCacheOptions("off")] + [StepCacheOptions(m, th) for m in ("deepcache", "teacache")
                                           for th in thresholds]
    best: dict[StepCacheOptions, float] = {}
    results: dict[StepCacheOptions, tuple[torch.Tensor, CacheStats]] = {}
    for _ in range(opts.repeats):
        for options in configs:
            seconds, out, stats = run(options)
            best[options] = min(best.get(options, float("inf")), seconds)
            results[options] = (out, stats)

    spent = reused_fraction(block_flops(unet, 2 * t, h, w), unet)
    with torch.device("meta"):
        full_size = VideoUNet(UNetConfig())
    spent_full = reused_fraction(block_flops(full_size, 25, 72, 128), full_size)
    print(f"UNet {opts.channels} channels (SVD layout), {t} frames, {h}x{w} latents, CFG batch of 2 videos, "
          f"{opts.steps} Euler steps, min of {opts.repeats} interleaved runs")
    print(f"FLOPs a reused call still spends: deepcache {spent['deepcache']:.2%}, teacache {spent['teacache']:.2%} "
          f"(full-size SVD-XT, 25 frames 72x128: {spent_full['deepcache']:.2%}, {spent_full['teacache']:.2%})")
    reference = results[configs[0]][0]
    print(f"{'mode':<10} {'threshold':>9} {'reused':>8} {'FLOPs skipped':>13} {'seconds':>8} {'time ratio':>10} "
          f"{'rel L2':>9}  pattern")
    headline = ""
    for options in configs:
        out, stats = results[options]
        skipped = 0.0 if options.mode == "off" else stats.reused * (1 - spent[options.mode]) / stats.calls
        ratio = best[options] / best[configs[0]]
        rel = float((out - reference).norm() / reference.norm())
        threshold = "-" if options.mode == "off" else f"{options.threshold:g}"
        reused = "-" if options.mode == "off" else f"{stats.reused}/{stats.calls}"
        print(f"{options.mode:<10} {threshold:>9} {reused:>8} {skipped:>13.1%} "
              f"{best[options]:>8.2f} {ratio:>10.3f} {rel:>9.2e}  {stats.pattern}")
        if options.mode == "deepcache" and options.threshold == DEFAULT_THRESHOLD:
            headline = (f"deepcache@{options.threshold:g}: time ratio {ratio:.3f}, FLOPs skipped {skipped:.1%}, "
                        f"rel L2 {rel:.2e}")
    print(f"load average after: {os.getloadavg()}")
    print(headline or "deepcache at the default threshold not measured (see --thresholds)")


if __name__ == "__main__":
    main()
