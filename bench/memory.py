"""Peak memory and time of one SVD-XT image-to-video job (conditioning + sampling + decode) per memory mode.

Usage::

    python bench/memory.py                                # CPU: small job on full-size random weights
    python bench/memory.py --device cuda                  # GPU: 25 frames 1024x576, 25 steps
    python bench/memory.py --checkpoint svd_xt.safetensors --device cuda --steps 10 --reps 3

Modes, each run in a fresh child process so that its peak is its own:

  normal        svd_model.memory.DEFAULT: every network resident on the device
  low_vram      svd_model.memory.LOW_VRAM: UNet streamed block by block from pinned CPU memory, image encoder
                and conditioning VAE offloaded between uses, temporal decoder at chunk 1 on 64-latent-pixel
                tiles (overlap 8)
  low_vram+fp8  low_vram with the UNet's weights stored in fp8 (``load_bundle(weight_storage="fp8_e4m3fn")``);
                skipped with a note when the loader has no ``weight_storage`` keyword

Method. Without ``--checkpoint``, a full-size SVD-XT model with seeded random weights
(``svd_model.weights.tiny.randomize``: O(1) outputs) is written once to a temporary fp16 safetensors file
(~4.6 GB; built on the meta device and filled in place, so about one copy in RAM). Every child loads it on
the CPU (``--dtype``: fp16 for CUDA, bf16 for the CPU), applies the mode's plan with
``svd_model.memory.apply_plan`` and runs the same job: ``api.image_to_video`` on a seeded random image,
then ``decode_latents`` with the plan's chunking and tiling, under ``torch.inference_mode()``. Job time is
the wall time of that job (``torch.cuda.synchronize`` around it), load time is reported apart. Peak:

  - CUDA: ``torch.cuda.max_memory_allocated`` over the whole child (weights on the device included).
  - CPU: the child's peak resident set size (``ru_maxrss``: weights, file pages read and activations). On a
    CPU streaming and offload are no-ops (everything is in CPU memory); only the decoder's chunking and
    tiling change the peak, and at small sizes the 64-pixel tiles may not cut the frame at all.

``--reps`` rounds run the modes interleaved (normal, low_vram, ..., normal, ...); the table shows the
minimum over the rounds, the ratios against normal, and the max |frames - normal's frames| (low_vram decodes
differently: chunk 1 and tiles; with random weights the temporal decoder's chunking alone moves frames a lot).
For modes with decode tiles, the tiles' own effect: the same latents decoded untiled at the same chunk, max |d|
and PSNR (peak-to-peak 2). The machine load (``os.getloadavg``) is printed before and after. The last
line is "low_vram peak on GPU: X GiB" on CUDA, else "CPU RSS ratio low_vram/normal: R".
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from comfyui_svd_lab.svd_model.api import VideoParams, decode_latents, image_to_video, load_bundle
from comfyui_svd_lab.svd_model.memory import apply_plan, plan_for

GIB = 1 << 30
FP8 = "fp8_e4m3fn"
MODES = {"normal": ("normal", None), "low_vram": ("low_vram", None), "low_vram+fp8": ("low_vram", FP8)}


def fp8_storage_available() -> bool:
    return "weight_storage" in inspect.signature(load_bundle).parameters


def write_random_checkpoint(path: Path) -> Path:
    """Full-size SVD-XT layout, seeded O(1) random weights, fp16 (like the published svd_xt_1_1)."""
    from comfyui_svd_lab.svd_model.config import ModelConfig
    from comfyui_svd_lab.svd_model.nn.model import SVDModel
    from comfyui_svd_lab.svd_model.weights.loader import save_bundle
    from comfyui_svd_lab.svd_model.weights.tiny import randomize

    with torch.device("meta"):
        model = SVDModel(ModelConfig()).half()
    model = randomize(model.to_empty(device="cpu"), seed=0)  # one fp16 copy, filled tensor by tensor
    save_bundle(model, path, {"svd_lab.note": "bench/memory.py: random weights, svd_xt layout"})
    return path


# ------------------------------------------------------------------------------------------- child


def child(spec: dict) -> dict:
    """One job in this (fresh) process; returns its times and peak."""
    device = torch.device(spec["device"])
    plan_name, storage = MODES[spec["mode"]]
    t0 = time.perf_counter()
    extra = {"weight_storage": storage} if storage else {}
    bundle = load_bundle(spec["checkpoint"], device="cpu", dtype=spec["dtype"], variant="svd_xt", **extra)
    apply_plan(bundle, plan_for(plan_name), device)
    load_s = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, spec["height"], spec["width"], generator=gen) * 2 - 1  # (1, 3, H, W) in [-1, 1]
    params = VideoParams.for_variant("svd_xt", num_frames=spec["frames"], width=spec["width"],
                                     height=spec["height"], steps=spec["steps"])
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t1 = time.perf_counter()
    with torch.inference_mode():
        latents = image_to_video(bundle, image, params, generator=torch.Generator().manual_seed(1))
        frames = decode_latents(bundle, latents)  # (1, t, 3, H, W) on the CPU; chunk and tiles from the plan
    sync()
    job_s = time.perf_counter() - t1
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    tiling = None
    if bundle.memory.decode_tile:  # the same latents untiled at the plan's chunk: what the tiles alone change
        with torch.inference_mode():
            untiled = decode_latents(bundle, latents, tile_size=0)
        mse = float(((frames - untiled) ** 2).mean())
        tiling = {"max_abs": float((frames - untiled).abs().max()),
                  "psnr_db": 10 * math.log10(4.0 / mse) if mse > 0 else math.inf}  # peak-to-peak 2 ([-1, 1])
    if spec.get("frames_out"):
        from safetensors.torch import save_file

        save_file({"frames": frames[0].half().contiguous()}, spec["frames_out"])
    return {"load_s": load_s, "job_s": job_s, "peak": peak, "finite": bool(torch.isfinite(frames).all()),
            "tiling": tiling}


def run_child(spec: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                         check=False, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{spec['mode']} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------- parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--checkpoint", type=Path, help="an SVD-XT .safetensors (default: random weights)")
    parser.add_argument("--frames", type=int, help="default 25 on CUDA, 3 on the CPU")
    parser.add_argument("--width", type=int, help="default 1024 on CUDA, 576 on the CPU")
    parser.add_argument("--height", type=int, help="default 576 on CUDA, 320 on the CPU")
    parser.add_argument("--steps", type=int, help="default 25 on CUDA, 1 on the CPU")
    parser.add_argument("--reps", type=int, help="interleaved rounds, min taken (default 2 on CUDA, 1 on the CPU)")
    parser.add_argument("--dtype", help="UNet / image encoder dtype (default fp16 on CUDA, bf16 on the CPU)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {', '.join(MODES)}")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    gpu = torch.device(args.device).type == "cuda"
    size = {"frames": args.frames or (25 if gpu else 3), "width": args.width or (1024 if gpu else 576),
            "height": args.height or (576 if gpu else 320), "steps": args.steps or (25 if gpu else 1)}
    reps = args.reps or (2 if gpu else 1)
    modes = [m.strip() for m in args.modes.split(",")]
    unknown = set(modes) - set(MODES)
    if unknown:
        raise SystemExit(f"unknown mode(s) {sorted(unknown)}; choose from {', '.join(MODES)}")
    if "low_vram+fp8" in modes and not fp8_storage_available():
        print("note: low_vram+fp8 skipped: load_bundle has no weight_storage keyword in this checkout")
        modes.remove("low_vram+fp8")
    print(f"load average before: {os.getloadavg()}")
    print(f"job: SVD-XT image-to-video, {size['frames']} frames {size['width']}x{size['height']}, "
          f"{size['steps']} steps, on {args.device}, {reps} round(s)")
    with tempfile.TemporaryDirectory(prefix="svd_lab_memory_") as tmp:
        checkpoint = args.checkpoint
        if checkpoint is None:
            t0 = time.perf_counter()
            checkpoint = write_random_checkpoint(Path(tmp) / "random_svd_xt_fp16.safetensors")
            print(f"wrote random full-size weights: {checkpoint.stat().st_size / 1e9:.2f} GB in "
                  f"{time.perf_counter() - t0:.0f} s")
        base = {"checkpoint": str(checkpoint), "device": args.device, "dtype": args.dtype or
                ("fp16" if gpu else "bf16"), **size}
        results: dict[str, list[dict]] = {m: [] for m in modes}
        for rep in range(reps):
            for mode in modes:
                out = str(Path(tmp) / f"{mode}.safetensors") if rep == 0 else None
                results[mode].append(run_child({**base, "mode": mode, "frames_out": out}))
                r = results[mode][-1]
                print(f"  round {rep + 1} {mode:13s} job {r['job_s']:8.1f} s  peak {r['peak'] / GIB:7.2f} GiB",
                      flush=True)
        report(results, Path(tmp), gpu)


def report(results: dict[str, list[dict]], tmp: Path, gpu: bool) -> None:
    from safetensors.torch import load_file

    best = {m: {"job_s": min(r["job_s"] for r in rs), "load_s": min(r["load_s"] for r in rs),
                "peak": min(r["peak"] for r in rs), "finite": all(r["finite"] for r in rs)}
            for m, rs in results.items()}
    ref = best.get("normal")
    frames = {m: load_file(str(tmp / f"{m}.safetensors"))["frames"].float() for m in best}
    kind = "GPU allocated" if gpu else "RSS"
    print(f"load average after: {os.getloadavg()}")
    print(f"{'mode':14s} {'load s':>8s} {'job s':>9s} {'peak ' + kind + ' GiB':>22s} {'time/normal':>12s} "
          f"{'peak/normal':>12s} {'max|d| vs normal':>17s} {'finite':>7s}")
    for mode, b in best.items():
        t_ratio = f"{b['job_s'] / ref['job_s']:.2f}" if ref else "-"
        p_ratio = f"{b['peak'] / ref['peak']:.3f}" if ref else "-"
        diff = f"{(frames[mode] - frames['normal']).abs().max():.4f}" if ref else "-"
        print(f"{mode:14s} {b['load_s']:8.1f} {b['job_s']:9.1f} {b['peak'] / GIB:22.2f} {t_ratio:>12s} "
              f"{p_ratio:>12s} {diff:>17s} {str(b['finite']):>7s}")
    for mode, rs in results.items():
        tiling = rs[0].get("tiling")
        if tiling:
            print(f"{mode}: tiled vs untiled decode of the same latents (same chunk): max|d| {tiling['max_abs']:.4f}, "
                  f"PSNR {tiling['psnr_db']:.1f} dB")
    print(json.dumps(best))
    if gpu and "low_vram" in best:
        print(f"low_vram peak on GPU: {best['low_vram']['peak'] / GIB:.2f} GiB")
    elif ref and "low_vram" in best:
        print(f"CPU RSS ratio low_vram/normal: {best['low_vram']['peak'] / ref['peak']:.3f}")


if __name__ == "__main__":
    main()
