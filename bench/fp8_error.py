"""Error of fp8 weight storage (``load_bundle(weight_storage=...)``) against bf16 and fp32, on the golden model and on
a full-size SVD-XT UNet with random weights.

Usage::

    python bench/fp8_error.py                    # golden model (../shared) + full-size random UNet, on the CPU
    python bench/fp8_error.py --device cuda      # the full-size part on a GPU (compute in bf16 and fp16)
    python bench/fp8_error.py --skip-full        # the golden model only (seconds)

Method. One UNet call per storage on the same inputs: the golden set's ``unet.*`` vectors (the reference's tiny model,
its fp32 output as the reference) and, for the full-size UNet (``ModelConfig()`` = SVD / SVD-XT layout, seeded
O(1) random weights from ``svd_model.weights.tiny.randomize``), 2 videos x ``--frames`` frames of seeded random
latents at ``--size`` latent pixels, sigma 1 and 10. Rows: fp32, bf16, fp8_e4m3fn and fp8_e5m2 (stored in fp8,
computed in bf16; on CUDA also fp16 and fp8 computed in fp16). Columns: relative L2 error against fp32 and
against the same compute dtype without fp8, and the UNet's weight bytes. Random weights are harsher than trained
ones (no weight is small enough to vanish, none large), so they bound rather than predict the error of a real
checkpoint. The last line: "fp8_e4m3fn vs bf16 on full-size random weights: relative L2 X".
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import torch

from comfyui_svd_lab.svd_model.config import ModelConfig
from comfyui_svd_lab.svd_model.nn.cast import convert, store_fp8
from comfyui_svd_lab.svd_model.nn.unet import VideoUNet
from comfyui_svd_lab.svd_model.weights.loader import load_bundle
from comfyui_svd_lab.svd_model.weights.tiny import randomize

GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "reference" / "golden_tiny"
STORAGES = ("fp8_e4m3fn", "fp8_e5m2")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def nbytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def variants(unet: torch.nn.Module, computes: list[torch.dtype]):
    """(name, compute dtype, network) for fp32, then each compute dtype plain and with each fp8 storage."""
    yield "fp32", torch.float32, unet
    for dtype in computes:
        plain = copy.deepcopy(unet).to(dtype)
        yield str(dtype).removeprefix("torch."), dtype, plain
        for storage in STORAGES:
            stored = copy.deepcopy(plain)
            store_fp8(stored, storage)
            stored.compute_dtype = dtype
            yield f"{storage} ({str(dtype).removeprefix('torch.')})", dtype, stored
        del plain


def table(title: str, unet: torch.nn.Module, args: tuple, computes: list[torch.dtype],
          reference: torch.Tensor | None = None) -> dict[str, float]:
    print(f"\n{title}")
    print(f"{'weights':24s} {'vs fp32':>10s} {'vs same dtype':>14s} {'weight GB':>10s} {'s':>6s}")
    outs: dict[str, torch.Tensor] = {}
    errors: dict[str, float] = {}
    for name, dtype, net in variants(unet, computes):
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = net(*args).float().cpu()
        seconds = time.perf_counter() - t0
        outs[name] = out
        base = outs.get(str(dtype).removeprefix("torch."), out)
        ref = reference if reference is not None else outs["fp32"]
        errors[name] = rel(out, base) if base is not out else rel(out, ref)
        same = f"{rel(out, base):14.4f}" if base is not out else f"{'-':>14s}"
        print(f"{name:24s} {rel(out, ref):10.4f} {same} {nbytes(net) / 1e9:10.3f} {seconds:6.1f}", flush=True)
        if net is not unet:
            del net
    return errors


def golden_part() -> None:
    if not (GOLDEN / "checkpoint.safetensors").is_file():
        print(f"\ngolden model: skipped, {GOLDEN} not found")
        return
    from safetensors.torch import load_file

    g = load_file(str(GOLDEN / "vectors.safetensors"))
    unet = load_bundle(GOLDEN / "checkpoint.safetensors", dtype="fp32").model.unet
    args = (g["unet.x"], g["unet.timesteps"], g["unet.context"], g["unet.y"], int(g["unet.num_video_frames"]),
            g["unet.image_only_indicator"])
    table("golden model (reference's tiny UNet; 'vs fp32' = vs the reference's fp32 output)", unet, args,
          [torch.bfloat16], g["unet.out"])


def full_size_unet(device: torch.device, frames: int, h: int, w: int) -> tuple[VideoUNet, tuple]:
    """The full-size SVD-XT UNet with random weights (seed 0, cast-on-use layers) and the forward arguments of two
    videos x ``frames`` at h x w latents, one at sigma 1 and one at sigma 10 (x, c_noise, context, y, frames)."""
    u = ModelConfig().unet
    with torch.device("meta"):
        unet = convert(VideoUNet(u))
    unet = randomize(unet.to_empty(device="cpu"), seed=0).to(device).eval()  # randomize: any module's parameters
    gen = torch.Generator().manual_seed(0)
    rows = 2 * frames
    sigma = torch.tensor([1.0] * frames + [10.0] * frames)
    x = torch.randn(rows, u.in_channels, h, w, generator=gen)
    args = (x.to(device), (0.25 * sigma.log()).to(device),
            torch.randn(rows, 1, u.context_dim, generator=gen).to(device),
            torch.randn(rows, u.adm_in_channels, generator=gen).to(device), frames)
    return unet, args


def full_part(device: torch.device, frames: int, size: int) -> float:
    unet, args = full_size_unet(device, frames, size, size)
    rows = 2 * frames
    computes = [torch.bfloat16, torch.float16] if device.type == "cuda" else [torch.bfloat16]
    errors = table(f"full-size SVD-XT UNet, random weights, {rows} rows at {size}x{size} latents, on {device}",
                   unet, args, computes)
    return errors["fp8_e4m3fn (bfloat16)"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--frames", type=int, default=2)
    parser.add_argument("--size", type=int, default=16, help="latent edge (x8 = pixels)")
    parser.add_argument("--skip-full", action="store_true")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}; torch {torch.__version__}; {sys.platform}")
    golden_part()
    if args.skip_full:
        return
    e4m3 = full_part(torch.device(args.device), args.frames, args.size)
    print(f"\nload average after: {os.getloadavg()}")
    print(f"fp8_e4m3fn vs bf16 on full-size random weights: relative L2 {e4m3:.4f}")


if __name__ == "__main__":
    main()
