"""Benchmark one finetuning step (forward + backward + AdamW) of ours against a diffusers-based step.

Usage (diffusers is the optional ``bench`` extra)::

    python bench/train_step.py                                  # tiny UNet, 4 frames at 64x64, CPU
    python bench/train_step.py --config tiny --frames 14 --size 256x128 --reps 3
    python bench/train_step.py --device cuda --config full --frames 14 --size 576x320 --method lora \\
        --precision bf16 --checkpointing                          # the 24 GB LoRA target (ours only, no PEFT)
    python bench/train_step.py --device cuda --config full --frames 25 --size 1024x576 --precision bf16 \\
        --checkpointing --method full                            # SVD-XT size, temporal layers

Method
------
- Weights: both UNets receive the same seeded tensors (``unet_vs_diffusers.build_models``: ours in the sgm
  layout, diffusers' ``UNetSpatioTemporalConditionModel`` renamed by ``unet_sgm_to_diffusers``); the trained
  parameters are the same tensors on both sides (``--trainable temporal`` by default: every layer SVD added to
  the image model, selected by ``lora.targets``; diffusers' parameters are matched by storage).
- Batch: one seeded batch of b videos x t frames: clean latents, noise, one sigma per video, CLIP context,
  concat latent, (fps_id, motion_bucket_id, cond_aug).
- Ours: ``training.losses.edm_loss`` over ``denoiser.make_model_fn`` (what the trainer runs). Diffusers: the same
  EDM v-scalings, weighting and loss written around its UNet, as SVD_Xtend does. Both: ``torch.optim.AdamW``,
  zero_grad(set_to_none), optional gradient checkpointing (ours: ``unet.gradient_checkpointing``; diffusers:
  ``enable_gradient_checkpointing()``), optional autocast (weights stay fp32).
- Agreement: the first step's losses must agree (relative 1e-4 in fp32) before anything is timed.
- Time: after one warm-up step each, ``--reps`` alternating steps; median and min wall time.
- Peak memory: one more step each, measured as in ``unet_vs_diffusers.py`` (CUDA max_memory_allocated above the
  memory in use before the step; CPU peak RSS), so optimizer state allocated at warm-up is not counted.
- LoRA (``--method lora``): ours only (the diffusers side would need PEFT); the table has no ratio then.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
import unet_vs_diffusers as uvd  # noqa: E402  (exits with a message when diffusers is missing)

from comfyui_svd_lab.svd_model.conditioning import Cond, vector_conditioning  # noqa: E402
from comfyui_svd_lab.svd_model.config import VECTOR_LAYOUT, Family  # noqa: E402
from comfyui_svd_lab.svd_model.diffusion.denoiser import make_model_fn  # noqa: E402
from comfyui_svd_lab.svd_model.diffusion.scalings import v_scalings_edm_cnoise  # noqa: E402
from comfyui_svd_lab.svd_model.lora import inject_lora, set_trainable  # noqa: E402
from comfyui_svd_lab.svd_model.training.losses import edm_loss, edm_weighting  # noqa: E402

GIB = 2**30
TIME_IDS = uvd.TIME_IDS


def parse_size(text: str) -> tuple[int, int]:
    w, h = (int(v) for v in text.lower().split("x"))
    if w % 64 or h % 64:
        raise argparse.ArgumentTypeError("--size must be WIDTHxHEIGHT in multiples of 64")
    return w, h


def make_batch(cfg, args, device: str) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(args.seed + 7)
    b, t = args.batch, args.frames
    h, w = args.size[1] // 8, args.size[0] // 8
    batch = {
        "x0": torch.randn(b, t, 4, h, w, generator=gen) * 0.8,
        "noise": torch.randn(b, t, 4, h, w, generator=gen),
        "sigma": torch.exp(0.7 + 1.6 * torch.randn(b, generator=gen)),
        "context": torch.randn(b, 1, cfg.context_dim, generator=gen),
        "concat": torch.randn(b, 4, h, w, generator=gen),
    }
    return {k: v.to(device) for k, v in batch.items()}


def ours_step(unet, batch: dict[str, Tensor], amp: torch.dtype | None) -> Callable[[], Tensor]:
    b, t = batch["x0"].shape[:2]
    vector = vector_conditioning(Family.SVD, TIME_IDS, b, t).float().to(batch["x0"].device)
    cond = Cond(batch["context"], batch["concat"], vector)
    model_fn = make_model_fn(unet)

    def step() -> Tensor:
        with torch.autocast(batch["x0"].device.type, dtype=amp or torch.float32, enabled=amp is not None):
            return edm_loss(model_fn, batch["x0"], batch["sigma"], batch["noise"], cond).mean()

    return step


def diffusers_step(model, batch: dict[str, Tensor], amp: torch.dtype | None) -> Callable[[], Tensor]:
    x0, noise, sigma = batch["x0"], batch["noise"], batch["sigma"]
    b, t = x0.shape[:2]
    time_ids = torch.tensor([[TIME_IDS[n] for n, _ in VECTOR_LAYOUT[Family.SVD]]] * b, device=x0.device)
    concat = batch["concat"][:, None].expand(b, t, *batch["concat"].shape[1:])

    def step() -> Tensor:
        c_skip, c_out, c_in, c_noise = (c.reshape(b, 1, 1, 1, 1) for c in v_scalings_edm_cnoise(sigma))
        noisy = x0 + sigma.reshape(b, 1, 1, 1, 1) * noise
        inp = torch.cat([c_in * noisy, concat], dim=2)  # (b, t, 8, h, w)
        with torch.autocast(x0.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            out = model(inp, c_noise.reshape(b), batch["context"], time_ids, return_dict=False)[0]
        denoised = c_skip * noisy + c_out * out.float()
        weight = edm_weighting(sigma).reshape(b, 1, 1, 1, 1)
        return (weight * (denoised - x0) ** 2).reshape(b, -1).mean(1).mean()

    return step


def trainer(loss_fn: Callable[[], Tensor], params: list[torch.nn.Parameter], lr: float) -> Callable[[], Tensor]:
    opt = torch.optim.AdamW(params, lr=lr)

    def step() -> Tensor:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--config", choices=("tiny", "full"), default="tiny")
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--size", type=parse_size, default=(64, 64), help="WIDTHxHEIGHT in pixels (multiples of 64)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--method", choices=("full", "lora"), default="full")
    p.add_argument("--trainable", default="temporal", help="preset: temporal, spatial, all")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    p.add_argument("--checkpointing", action="store_true", help="gradient checkpointing on both sides")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-peer", action="store_true", help="time ours only (e.g. when the peer does not fit)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and args.precision == "fp32":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    amp = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    cfg = uvd.unet_config(args.config)
    uvd.log("building models ...")
    ours, theirs = uvd.build_models(cfg, torch.float32, args.device, args.seed)
    ours.train()
    ours.gradient_checkpointing = args.checkpointing
    chosen = set_trainable(ours, args.trainable)
    steps: dict[str, Callable[[], Tensor]] = {}
    batch = make_batch(cfg, args, args.device)
    if args.method == "lora" or args.no_peer:
        theirs = None
    if args.method == "lora":
        inject_lora(ours, rank=args.rank, preset=args.trainable)
        params = [q for q in ours.parameters() if q.requires_grad]
    else:
        params = [q for _, q in chosen]
    if theirs is not None:
        ptrs = {q.data_ptr() for q in params}
        theirs.train().requires_grad_(False)
        their_params = [q for q in theirs.parameters() if q.data_ptr() in ptrs]
        for q in their_params:
            q.requires_grad_(True)
        if len(their_params) != len(params):
            raise SystemExit(f"trainable parameters differ: ours {len(params)}, diffusers {len(their_params)}")
        if args.checkpointing:
            theirs.enable_gradient_checkpointing()
    steps["ours"] = trainer(ours_step(ours, batch, amp), params, 1e-5)
    if theirs is not None:
        steps["diffusers"] = trainer(diffusers_step(theirs, batch, amp), their_params, 1e-5)
    n_train = sum(q.numel() for q in params)

    uvd.log("warm-up and agreement check ...")
    warm = {name: uvd.timed(fn, args.device) for name, fn in steps.items()}  # shared weights: ours updates first
    if theirs is not None:
        # After ours stepped, the shared weights moved by ~1e-5: compare a fresh loss of each instead.
        with torch.no_grad():
            a, b = ours_step(ours, batch, amp)().item(), diffusers_step(theirs, batch, amp)().item()
        rel = abs(a - b) / max(abs(b), 1e-30)
        tol = 1e-4 if amp is None else 3e-2
        if not rel < tol:
            raise SystemExit(f"losses disagree: ours {a:.6g}, diffusers {b:.6g} (relative {rel:.2e} >= {tol:.0e})")
    del warm
    times: dict[str, list[float]] = {name: [] for name in steps}
    for rep in range(args.reps):
        for name in list(steps) if rep % 2 == 0 else list(reversed(steps)):
            seconds, _ = uvd.timed(steps[name], args.device)
            times[name].append(seconds)
        uvd.log(f"rep {rep + 1}/{args.reps}: " + ", ".join(f"{n} {times[n][-1]:.3f} s" for n in steps))
    cpu_memory = uvd.CpuMemory() if args.device == "cpu" else None
    peaks = {name: uvd.peak_memory(fn, args.device, cpu_memory) for name, fn in steps.items()}
    med = {n: statistics.median(t) for n, t in times.items()}
    low = {n: min(t) for n, t in times.items()}
    w, h = args.size
    print(f"train step: UNet {args.config}, {args.method} on {args.trainable} ({n_train / 1e6:.2f} M trained), "
          f"b={args.batch} t={args.frames} {w}x{h} px, {args.precision}, checkpointing {args.checkpointing}, "
          f"{args.device}, threads {torch.get_num_threads() if args.device == 'cpu' else '-'}, reps {args.reps}")
    if theirs is not None:
        print(f"agreement: first-step loss ours {a:.6g} vs diffusers {b:.6g} (relative {rel:.2e})")
    print(f"{'':16}{'median s':>12}{'min s':>12}{'peak GiB':>12}")
    for name in steps:
        print(f"{name:16}{med[name]:12.3f}{low[name]:12.3f}{peaks[name] / GIB:12.3f}")
    if theirs is None:
        why = "for LoRA" if args.method == "lora" else "(--no-peer)"
        print(f"s/step ours: {med['ours']:.3f}; peak memory {peaks['ours'] / GIB:.2f} GiB (no diffusers peer {why})")
        return
    print(f"{'ours/diffusers':16}{med['ours'] / med['diffusers']:12.3f}{low['ours'] / low['diffusers']:12.3f}"
          f"{peaks['ours'] / max(peaks['diffusers'], 1):12.3f}")
    print(f"step time ratio ours/diffusers: {med['ours'] / med['diffusers']:.2f} "
          f"(peak memory ratio {peaks['ours'] / max(peaks['diffusers'], 1):.2f})")


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    uvd.log(f"total {time.perf_counter() - start:.1f} s")
