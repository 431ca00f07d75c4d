"""Attention precision modes (``svd_model.nn.attention``): per-layer attention logits and the UNet output error of
each mode against float32, on the golden model and on a full-size SVD-XT UNet with random weights.

Usage::

    python bench/attention_precision.py                   # golden model (../shared) + full-size random UNet, CPU
    python bench/attention_precision.py --skip-full       # the golden model only (seconds)
    python bench/attention_precision.py --device cuda --size 72x128 --frames 14   # SVD-XT at 576x1024 on a GPU

Method. The float32 UNet's output is the reference. Each half-precision variant is a copy of the UNet in float16
(every mode of :data:`ATTENTION_PRECISIONS`) or bfloat16 (the modes do not change bfloat16), run on the same inputs
(on the CPU the full-size float16 rows keep the UNet in float32 and run only the attention in float16: CPUs without
native float16 matmuls run a float16 UNet ~100x slower);
printed: relative L2 of its output against float32. Per layer, :func:`record_attention_stats` on the float16 UNet
(q and k as float16 projections produce them): the largest |q.k| (a float16 ``q @ k.T`` overflows past 65504), the
largest |q.k * scale| and the largest softmax input, whether float16 SDPA gave inf / NaN, and its relative error
against float32 SDPA; "auto" upcasts the layers :func:`overflow_layers` names (listed). Inputs: the golden set's
``unet.*`` vectors; for the full-size UNet (``ModelConfig()``, seeded O(1) random weights from
``svd_model.weights.tiny.randomize``) seeded random latents at ``--size``, ``--frames`` frames, sigma 1 and 10,
one context token per frame (SVD's image embedding: the cross-attention then never computes logits).

Random weights do not have a trained model's logit statistics (trained q/k projections align and grow; random ones
give logits of order sqrt(d)): the full-size numbers show the layout's token counts and the machinery, not where a
real SVD-XT checkpoint overflows. On the CPU, float16 SDPA runs the CPU flash kernel (float32 accumulation); CUDA's
flash / memory-efficient / cuDNN kernels accumulate in float32 too, but round the softmax weights differently.
Last line: "fp16 prescale vs fp32 (full-size random): relative L2 X".
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import sys
import time
from pathlib import Path

import torch
from fp8_error import full_size_unet

from comfyui_svd_lab.svd_model.nn import attention as attention_module
from comfyui_svd_lab.svd_model.nn.attention import (
    ATTENTION_PRECISIONS,
    LogitStats,
    overflow_layers,
    record_attention_stats,
    set_attention_precision,
)
from comfyui_svd_lab.svd_model.weights.loader import load_bundle

GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "reference" / "golden_tiny"


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def run(unet: torch.nn.Module, args: tuple) -> torch.Tensor:
    with torch.inference_mode():
        return unet(*args).float().cpu()


def layer_table(stats: list[LogitStats]) -> None:
    print(f"{'layer':58s} {'kind':15s} {'keys':>5s} {'max|q.k|':>10s} {'max|logit|':>10s} {'max logit':>10s} "
          f"{'fp16 inf/nan':>12s} {'fp16 SDPA err':>13s}")
    for s in stats:
        if not s.calls:
            print(f"{s.path:58s} {s.kind:15s} {'1':>5s} {'(one key: softmax = 1, no logits computed)':>60s}")
            continue
        print(f"{s.path:58s} {s.kind:15s} {s.tokens:5d} {s.max_abs_qk:10.1f} {s.max_abs_logit:10.2f} "
              f"{s.max_logit:10.2f} {str(s.fp16_nonfinite):>12s} {s.fp16_rel_err:13.2e}")
    live = [s for s in stats if s.calls]
    worst = max(live, key=lambda s: s.max_abs_qk)
    print(f"largest |q.k|: {worst.max_abs_qk:.1f} in {worst.path} ({worst.max_abs_qk / 65504:.2e} of float16's "
          f"maximum); layers at risk (overflow_layers): {overflow_layers(stats) or 'none'}")


@contextlib.contextmanager
def fp16_attention_only() -> object:
    """The float32 UNet with only its attention in float16 (q, k, v rounded to float16, the layer's mode applied,
    the result widened back): the attention's share of the float16 error, where float16 matmuls are too slow
    (CPUs without native float16 run them ~100x slower than float32)."""
    original = attention_module.attention

    def half(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, *, precision: str) -> torch.Tensor:
        return original(q.half(), k.half(), v.half(), heads, precision=precision).to(q.dtype)

    attention_module.attention = half
    try:
        yield
    finally:
        attention_module.attention = original


def modes_table(title: str, unet: torch.nn.Module, args: tuple, device: torch.device,
                reference: torch.Tensor | None = None, attention_only: bool = False) -> dict[str, float]:
    """Rows: fp32, then fp16 in every mode (per-layer stats from the first), then bf16. Returns name -> error.
    attention_only: fp16 rows from the fp32 UNet with fp16 attention (:func:`fp16_attention_only`)."""
    print(f"\n{title}")
    t0 = time.perf_counter()
    fp32 = run(unet, args)
    print(f"fp32 {time.perf_counter() - t0:.1f} s" + (f"; vs the reference's fp32 output {rel(fp32, reference):.2e}"
                                                       if reference is not None else ""))
    ref = fp32 if reference is None else reference
    errors: dict[str, float] = {}
    half = unet if attention_only else copy.deepcopy(unet).to(device, torch.float16)
    with record_attention_stats(half) as stats:
        run(half, args)
    print(f"per-layer attention logits ({'fp32' if attention_only else 'fp16'} UNet):")
    layer_table(stats)
    at_risk = overflow_layers(stats)
    what = "fp32 UNet, fp16 attention" if attention_only else "fp16"
    print(f"{'variant':40s} {'rel L2 vs fp32':>14s} {'s':>6s}")
    for mode in ATTENTION_PRECISIONS:
        set_attention_precision(half, mode, at_risk if mode == "auto" else ())
        t0 = time.perf_counter()
        with fp16_attention_only() if attention_only else contextlib.nullcontext():
            out = run(half, args)
        errors[f"fp16 {mode}"] = rel(out, ref)
        finite = "" if torch.isfinite(out).all() else "  NON-FINITE"
        print(f"{what + ' ' + mode:40s} {errors[f'fp16 {mode}']:14.2e} {time.perf_counter() - t0:6.1f}{finite}")
    set_attention_precision(half, "fp32")
    del half
    bf16 = copy.deepcopy(unet).to(device, torch.bfloat16)
    t0 = time.perf_counter()
    errors["bf16"] = rel(run(bf16, args), ref)
    print(f"{'bf16 UNet (every mode: as is)':40s} {errors['bf16']:14.2e} {time.perf_counter() - t0:6.1f}")
    return errors


def golden_part(device: torch.device) -> None:
    if not (GOLDEN / "checkpoint.safetensors").is_file():
        print(f"\ngolden model: skipped, {GOLDEN} not found")
        return
    from safetensors.torch import load_file

    g = load_file(str(GOLDEN / "vectors.safetensors"))
    unet = load_bundle(GOLDEN / "checkpoint.safetensors", dtype="fp32").model.unet.to(device)
    args = tuple(t.to(device) for t in (g["unet.x"], g["unet.timesteps"], g["unet.context"], g["unet.y"]))
    args = (*args, int(g["unet.num_video_frames"]), g["unet.image_only_indicator"].to(device))
    modes_table("golden model (the reference's tiny UNet, seeded random init; error vs the reference's fp32 "
                "output)", unet, args, device, g["unet.out"])


def full_part(device: torch.device, frames: int, h: int, w: int) -> float:
    unet, args = full_size_unet(device, frames, h, w)
    errors = modes_table(f"full-size SVD-XT UNet, RANDOM weights (not a trained model's logits), 2 videos x {frames} "
                         f"frames at {h}x{w} latents, on {device}", unet, args, device,
                         attention_only=device.type == "cpu")
    return errors["fp16 prescale"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--size", default="32x32", help="latent HxW of the full-size part (x8 = pixels)")
    parser.add_argument("--skip-full", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"load average before: {os.getloadavg()}; torch {torch.__version__}; {sys.platform}; "
          f"{torch.get_num_threads()} threads")
    golden_part(device)
    if args.skip_full:
        return
    h, w = (int(v) for v in args.size.split("x"))
    prescale = full_part(device, args.frames, h, w)
    print(f"\nload average after: {os.getloadavg()}")
    print(f"fp16 prescale vs fp32 (full-size random): relative L2 {prescale:.2e}")


if __name__ == "__main__":
    main()
