"""Compile time and speed of regional compilation (``svd_model.nn.compile.compile_unet``) against eager.

Usage::

    python bench/compile_speed.py                  # CPU, a small-but-not-tiny UNet (128 channels, 3 levels)
    python bench/compile_speed.py --device cuda --full --size 72x128 --frames 14   # SVD-XT layout on a GPU

Method. One UNet with seeded random weights (``svd_model.weights.tiny.randomize``), two copies (eager, compiled).
Printed: the compile time (the compiled copy's first call minus an eager call), the time of a first call at a
second resolution (dynamic shapes: it should not compile again), then min-of-N interleaved calls of both at the
first resolution with the ratio compiled / eager, and the relative L2 of the outputs. The machine's load average
is printed before and after: on a shared machine the numbers are only as good as it is quiet.
Last line: "compiled/eager: R (compile S s)".
"""

from __future__ import annotations

import argparse
import copy
import os
import time

import torch

from comfyui_svd_lab.svd_model.config import ModelConfig, UNetConfig
from comfyui_svd_lab.svd_model.nn.cast import convert
from comfyui_svd_lab.svd_model.nn.compile import compile_unet
from comfyui_svd_lab.svd_model.nn.unet import VideoUNet
from comfyui_svd_lab.svd_model.weights.tiny import randomize

SMALL = UNetConfig(model_channels=128, channel_mult=(1, 2, 4), num_res_blocks=1, attention_levels=(True, True, True),
                   context_dim=256, adm_in_channels=768)


def inputs(config: UNetConfig, frames: int, h: int, w: int, device: torch.device, dtype: torch.dtype) -> tuple:
    gen = torch.Generator().manual_seed(0)
    rows = frames
    return (torch.randn(rows, config.in_channels, h, w, generator=gen).to(device, dtype),
            torch.rand(rows, generator=gen).to(device),
            torch.randn(rows, 1, config.context_dim, generator=gen).to(device, dtype),
            torch.randn(rows, config.adm_in_channels, generator=gen).to(device, dtype), frames)


def timed(unet: torch.nn.Module, args: tuple) -> tuple[float, torch.Tensor]:
    if args[0].device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = unet(*args)
    if out.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--full", action="store_true", help="the SVD-XT layout (default: a small 128-channel UNet)")
    parser.add_argument("--size", default="32x32", help="latent HxW of the timed runs")
    parser.add_argument("--size2", default="24x40", help="latent HxW of the second-resolution call")
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--mode", default="regional", choices=["regional", "regional+cudagraphs"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    config = ModelConfig().unet if args.full else SMALL
    print(f"load average {os.getloadavg()}; torch {torch.__version__}, {torch.get_num_threads()} threads, {device}, "
          f"{args.dtype}; UNet {config.model_channels} ch x {config.channel_mult}, {args.frames} frames")
    with torch.device("meta"):
        unet = convert(VideoUNet(config))
    eager = randomize(unet.to_empty(device="cpu"), seed=0).to(device, dtype).eval()
    compiled = copy.deepcopy(eager)  # the same weights
    h, w = (int(v) for v in args.size.split("x"))
    h2, w2 = (int(v) for v in args.size2.split("x"))
    a = inputs(config, args.frames, h, w, device, dtype)
    a2 = inputs(config, args.frames, h2, w2, device, dtype)
    eager_first, ref = timed(eager, a)
    report = compile_unet(compiled, args.mode)
    print(report.summary())
    first, out = timed(compiled, a)
    print(f"first compiled call {first:.1f} s (eager call {eager_first:.1f} s): "
          f"compile about {first - eager_first:.1f} s")
    second_eager, _ = timed(eager, a2)
    second, _ = timed(compiled, a2)
    print(f"second resolution {h2}x{w2}: compiled first call {second:.1f} s, eager {second_eager:.1f} s")
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(args.repeats):
        for name, net in (("eager", eager), ("compiled", compiled)):
            times[name].append(timed(net, a)[0])
    best = {k: min(v) for k, v in times.items()}
    rel = float((out.float() - ref.float()).norm() / ref.float().norm())
    print(f"min of {args.repeats}: eager {best['eager']:.3f} s, compiled {best['compiled']:.3f} s; "
          f"relative L2 compiled vs eager {rel:.2e}")
    print(f"load average {os.getloadavg()}")
    print(f"compiled/eager: {best['compiled'] / best['eager']:.3f} (compile {first - eager_first:.0f} s)")


if __name__ == "__main__":
    main()
