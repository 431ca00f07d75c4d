"""Benchmark our VideoUNet against diffusers' ``UNetSpatioTemporalConditionModel`` on identical weights.

Usage (diffusers is only needed here: it is the optional ``bench`` extra, never a runtime dependency)::

    pip install -e '.[bench]'
    python bench/unet_vs_diffusers.py                       # full-size UNet, 1 video x 14 frames, latent 16x16
    python bench/unet_vs_diffusers.py --latent 32 --reps 5  # 256x256 px
    python bench/unet_vs_diffusers.py --config tiny --frames 14 --latent 64
    python bench/unet_vs_diffusers.py --device cuda --dtype bf16 --latent 72x128 --frames 25

Method
------
1. Weights. Both models are built on the meta device and receive the *same tensor objects*: one seeded
   random state dict in the sgm layout (the idea of ``svd_model.tiny.randomize``: norms near 1, biases
   0.1 N(0, 1), matrices N(0, 1) / sqrt(fan_in), mix factors N(0, 1), so outputs are O(1) and no
   zero-initialised layer hides a code path) is loaded into ours with ``load_state_dict(assign=True)``
   and, renamed by ``svd_model.diffusers_keys.unet_sgm_to_diffusers``, into diffusers'. Sharing the
   tensors keeps the full-size pair at ~6 GB (fp32) instead of 12 GB and guarantees identical weights.
2. Inputs. One batch of ``b`` videos of ``t`` frames. diffusers gets sample (b, t, 8, h, w), one timestep
   (c_noise of sigma = ``--sigma``, broadcast over the videos), encoder_hidden_states (b, 1, d) and the raw
   added_time_ids (fps_id, motion_bucket_id, cond_aug), which it embeds itself. Ours gets the same data
   folded to ((b t), ...): the timestep repeated per frame, the context repeated over frames and
   y = ``conditioning.vector_conditioning`` of the same three values (its sinusoidal embedding is computed
   inside the timed call, as diffusers' is). image_only_indicator is zero for both.
3. Agreement. The warm-up outputs must satisfy max|ours - diffusers| / max|diffusers| < ``--tol``
   (default 1e-4 in fp32, 3e-2 in bf16); otherwise the script exits with an error and times nothing.
4. Time. After the warm-up, ``--reps`` repetitions alternate ours / diffusers under
   ``torch.inference_mode()``, ours inside ``svd_model.cpu_runtime.cpu_inference`` as the pipelines run it (on
   the CPU: the steady heap and oneDNN linears; the heap's freed chunks also serve diffusers' later calls), with
   ``torch.cuda.synchronize`` around each call on CUDA; the table shows the minimum wall time of each (the least
   disturbed run on a shared machine) and every run's time, so that noise shows. The last line is the ratio of
   the minima.
5. Peak memory: the largest increase over the memory in use just before one forward call, measured in
   a separate call after the timing runs (so that measuring cannot disturb the timings).
   - CUDA: ``torch.cuda.max_memory_allocated`` (reset before the call) minus ``memory_allocated`` before.
   - CPU: peak resident set size (RSS) minus RSS before the call. The allocator is first made to return
     freed memory to the OS (glibc ``mallopt(M_MMAP_THRESHOLD, 1 MiB)``, fixed from then on, and
     ``malloc_trim(0)`` before each call), so RSS tracks the live tensors and the second model does not
     profit from pages the first one left behind. The peak is the kernel's high-water mark (VmHWM in
     /proc/self/status, reset by writing 5 to /proc/self/clear_refs), which is exact; where that is not
     available a psutil thread samples RSS every 0.5 ms instead (a lower bound: it can miss short peaks).
     The weights are allocated before the baseline, so only activations and temporaries count.

The CPU speed target is a time ratio ours/diffusers <= 0.85.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from comfyui_svd_lab.svd_model.conditioning import vector_conditioning
from comfyui_svd_lab.svd_model.config import VECTOR_LAYOUT, Family, UNetConfig
from comfyui_svd_lab.svd_model.cpu_runtime import HEAP_ENV, cpu_inference
from comfyui_svd_lab.svd_model.nn.unet import VideoUNet
from comfyui_svd_lab.svd_model.weights.diffusers_keys import unet_sgm_to_diffusers
from comfyui_svd_lab.svd_model.weights.tiny import tiny_config

try:
    import diffusers
    from diffusers import UNetSpatioTemporalConditionModel
except ImportError:  # pragma: no cover - depends on the environment
    sys.exit("diffusers is not installed: pip install -e '.[bench]'  (the optional bench extra)")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
DEFAULT_TOL = {"fp32": 1e-4, "bf16": 3e-2}
#: Raw values of the added time ids (diffusers order = our vector layout order for the SVD family).
TIME_IDS = {"fps_id": 6.0, "motion_bucket_id": 127.0, "cond_aug": 0.02}
MIB = 2**20


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------
# Models


def unet_config(name: str) -> UNetConfig:
    return UNetConfig() if name == "full" else tiny_config(Family.SVD).unet


def diffusers_kwargs(cfg: UNetConfig) -> dict[str, object]:
    """The UNetSpatioTemporalConditionModel arguments of the same architecture as ``cfg``."""
    if cfg.video_kernel_size != 3:
        raise SystemExit("diffusers' SpatioTemporalResBlock has a fixed temporal kernel of 3")
    widths = tuple(cfg.model_channels * m for m in cfg.channel_mult)
    time_id_width = {w for _, w in VECTOR_LAYOUT[Family.SVD]}.pop()
    return {
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels,
        "down_block_types": tuple(
            "CrossAttnDownBlockSpatioTemporal" if a else "DownBlockSpatioTemporal" for a in cfg.attention_levels
        ),
        "up_block_types": tuple(
            "CrossAttnUpBlockSpatioTemporal" if a else "UpBlockSpatioTemporal" for a in reversed(cfg.attention_levels)
        ),
        "block_out_channels": widths,
        "addition_time_embed_dim": time_id_width,
        "projection_class_embeddings_input_dim": cfg.adm_in_channels,
        "layers_per_block": cfg.num_res_blocks,
        "cross_attention_dim": cfg.context_dim,
        "transformer_layers_per_block": cfg.transformer_depth,
        "num_attention_heads": tuple(w // cfg.num_head_channels for w in widths),
    }


def random_state_dict(model: torch.nn.Module, seed: int, dtype: torch.dtype, device: str) -> dict[str, Tensor]:
    """Seeded O(1)-output weights for ``model`` (parameters may live on the meta device)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, p in model.named_parameters():
        r = torch.randn(p.shape, generator=gen)
        leaf = name.rsplit(".", 1)[-1]
        if name.endswith("mix_factor"):
            value = r
        elif "norm" in name and p.ndim == 1 and leaf == "weight":
            value = r.mul_(0.1).add_(1.0)
        elif p.ndim < 2:
            value = r.mul_(0.1)
        else:
            value = r.div_(math.sqrt(p.numel() / p.shape[0]))
        out[name] = value.to(device=device, dtype=dtype)
    return out


def build_models(
    cfg: UNetConfig, dtype: torch.dtype, device: str, seed: int
) -> tuple[VideoUNet, UNetSpatioTemporalConditionModel]:
    with torch.device("meta"):
        ours = VideoUNet(cfg)
        theirs = UNetSpatioTemporalConditionModel(**diffusers_kwargs(cfg))
    sd = random_state_dict(ours, seed, dtype, device)
    ours.load_state_dict(sd, strict=True, assign=True)
    theirs.load_state_dict(unet_sgm_to_diffusers(sd), strict=True, assign=True)
    return ours.eval(), theirs.eval()


# ---------------------------------------------------------------------------------------------------
# Inputs and calls


@dataclass(frozen=True)
class Inputs:
    sample: Tensor  # (b, t, in_channels, h, w)
    context: Tensor  # (b, 1, context_dim)
    c_noise: float


def make_inputs(cfg: UNetConfig, args: argparse.Namespace, dtype: torch.dtype) -> Inputs:
    gen = torch.Generator().manual_seed(args.seed + 1)
    h, w = args.latent
    sample = torch.randn(args.batch, args.frames, cfg.in_channels, h, w, generator=gen)
    context = torch.randn(args.batch, 1, cfg.context_dim, generator=gen)
    to = {"device": args.device, "dtype": dtype}
    return Inputs(sample.to(**to), context.to(**to), 0.25 * math.log(args.sigma))


def ours_call(model: VideoUNet, inp: Inputs) -> Callable[[], Tensor]:
    b, t = inp.sample.shape[:2]
    device = inp.sample.device
    x = inp.sample.flatten(0, 1)  # ((b t), c, h, w)
    timesteps = torch.full((b * t,), inp.c_noise, device=device)  # ((b t),)
    context = inp.context.repeat_interleave(t, dim=0)  # ((b t), 1, d)
    indicator = torch.zeros(b, t, device=device)

    def call() -> Tensor:
        y = vector_conditioning(Family.SVD, TIME_IDS, b, t).reshape(b * t, -1).to(device)  # ((b t), 768)
        with cpu_inference(device):  # as every pipeline of the pack runs it (a no-op off the CPU)
            return model(x, timesteps, context, y, num_video_frames=t, image_only_indicator=indicator)

    return call


def diffusers_call(model: UNetSpatioTemporalConditionModel, inp: Inputs) -> Callable[[], Tensor]:
    b = inp.sample.shape[0]
    device = inp.sample.device
    timestep = torch.tensor([inp.c_noise], device=device)  # broadcast over the videos by diffusers
    # float32 like ours (diffusers' sinusoidal embedding casts to float32 anyway; bf16 ids would be rounded)
    time_ids = torch.tensor([[TIME_IDS[name] for name, _ in VECTOR_LAYOUT[Family.SVD]]] * b, device=device)

    def call() -> Tensor:
        out = model(inp.sample, timestep, inp.context, time_ids, return_dict=False)[0]
        return out.flatten(0, 1)  # ((b t), out_channels, h, w)

    return call


# ---------------------------------------------------------------------------------------------------
# Measurement


def timed(fn: Callable[[], Tensor], device: str) -> tuple[float, Tensor]:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


class CpuMemory:
    """Peak RSS increase of the process during a block (see the module docstring)."""

    def __init__(self) -> None:
        self.libc = None
        name = ctypes.util.find_library("c")
        if name and sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(name)
                libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD: fixed 1 MiB, returned to the OS on free
                self.libc = libc
            except (OSError, AttributeError):
                self.libc = None
        self.method = "VmHWM" if self._reset_hwm() else "psutil sampling"

    @staticmethod
    def _status_kib(field: str) -> int | None:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        return int(line.split()[1])
        except OSError:
            pass
        return None

    def _reset_hwm(self) -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            return False
        return self._status_kib("VmHWM") is not None

    @contextmanager
    def peak(self) -> Iterator[list[int]]:
        import psutil

        gc.collect()
        if self.libc is not None:
            self.libc.malloc_trim(0)
        proc = psutil.Process()
        result: list[int] = []
        base = proc.memory_info().rss
        if self.method == "VmHWM":
            self._reset_hwm()
            yield result
            hwm = self._status_kib("VmHWM")
            result.append(max(0, (hwm or 0) * 1024 - base))
            return
        high = [base]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                high[0] = max(high[0], proc.memory_info().rss)
                time.sleep(0.0005)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            yield result
        finally:
            stop.set()
            thread.join()
        result.append(max(0, high[0] - base))


def peak_memory(fn: Callable[[], Tensor], device: str, cpu_memory: CpuMemory | None) -> int:
    """Bytes allocated at the peak of one call, above what was in use before it."""
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = fn()
        torch.cuda.synchronize()
        del out
        return torch.cuda.max_memory_allocated() - before
    assert cpu_memory is not None
    with cpu_memory.peak() as result:
        out = fn()
        del out
    return result[0]


# ---------------------------------------------------------------------------------------------------
# Main


def parse_latent(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    if len(parts) == 1:
        parts = parts * 2
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"latent size {text!r} is not N or HxW") from None
    return h, w


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--config", choices=("full", "tiny"), default="full", help="UNet size (full: 1.5 B params)")
    p.add_argument("--frames", type=int, default=14, help="frames per video (t)")
    p.add_argument("--batch", type=int, default=1, help="videos (b)")
    p.add_argument("--latent", type=parse_latent, default=(16, 16), help="latent size N or HxW (pixels / 8)")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions of each model after one warm-up")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="fp32")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--sigma", type=float, default=2.0, help="noise level; the timestep is c_noise = log(sigma)/4")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tol", type=float, default=None, help="agreement tolerance (default: 1e-4 fp32, 3e-2 bf16)")
    args = p.parse_args(argv)
    if args.reps < 1 or args.frames < 1 or args.batch < 1:
        p.error("--reps, --frames and --batch must be positive")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device available")
    if args.tol is None:
        args.tol = DEFAULT_TOL[args.dtype]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    if args.device == "cuda" and dtype == torch.float32:
        # TF32 convolutions/matmuls (PyTorch's cuDNN default) differ from fp32 by ~5e-4 relative, which would
        # fail the fp32 agreement check; both models run without it.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    cfg = unet_config(args.config)
    factor = 2 ** (len(cfg.channel_mult) - 1)
    if args.latent[0] % factor or args.latent[1] % factor:
        raise SystemExit(f"--latent must be a multiple of {factor} for this config")
    log("building models ...")
    with torch.no_grad():
        ours, theirs = build_models(cfg, dtype, args.device, args.seed)
    if {p.data_ptr() for p in ours.parameters()} != {p.data_ptr() for p in theirs.parameters()}:
        raise SystemExit("the two models do not share their weight tensors")
    with torch.inference_mode():
        inp = make_inputs(cfg, args, dtype)
        calls = {"ours": ours_call(ours, inp), "diffusers": diffusers_call(theirs, inp)}
        params = sum(p.numel() for p in ours.parameters())

        log("warm-up and agreement check ...")
        warm = {name: timed(fn, args.device) for name, fn in calls.items()}
        ref = warm["diffusers"][1].float()
        diff = (warm["ours"][1].float() - ref).abs().max().item()
        rel = diff / max(ref.abs().max().item(), 1e-30)
        del warm, ref
        if not rel < args.tol:
            raise SystemExit(f"outputs disagree: max|diff| / max|ref| = {rel:.3e} >= {args.tol:.0e}; not timing")

        load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        times: dict[str, list[float]] = {name: [] for name in calls}
        for rep in range(args.reps):
            order = list(calls) if rep % 2 == 0 else list(reversed(calls))  # alternate who goes first
            for name in order:
                seconds, out = timed(calls[name], args.device)
                del out
                times[name].append(seconds)
            log(f"rep {rep + 1}/{args.reps}: " + ", ".join(f"{n} {times[n][-1]:.3f} s" for n in calls))

        load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        # Memory is measured with glibc returning freed memory at once (CpuMemory), which the steady heap would undo
        # for ours: off for the memory calls (the oneDNN linear route stays).
        os.environ[HEAP_ENV] = "0"
        cpu_memory = CpuMemory() if args.device == "cpu" else None
        peaks = {name: peak_memory(fn, args.device, cpu_memory) for name, fn in calls.items()}

    low = {name: min(ts) for name, ts in times.items()}
    threads = torch.get_num_threads() if args.device == "cpu" else "-"
    mem_method = "cuda max_memory_allocated" if cpu_memory is None else f"RSS, {cpu_memory.method}"
    h, w = args.latent
    print(
        f"UNet {args.config} ({params / 1e9:.3f} B params), b={args.batch} t={args.frames} latent {h}x{w} "
        f"({8 * h}x{8 * w} px), {args.dtype}, {args.device}, threads {threads}, reps {args.reps}"
    )
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}; peak memory: {mem_method}; "
          f"1-min load average {load_before:.2f} before / {load_after:.2f} after timing "
          f"(this run adds ~{threads}; more means other processes competed)")
    print(f"agreement: max|ours - diffusers| / max|diffusers| = {rel:.2e} (tol {args.tol:.0e})")
    print(f"{'':16}{'min s':>12}{'peak MiB':>12}   every run (s), interleaved")
    for name in calls:
        print(f"{name:16}{low[name]:12.3f}{peaks[name] / MIB:12.1f}   " + " ".join(f"{t:.3f}" for t in times[name]))
    mem_ratio = peaks["ours"] / peaks["diffusers"] if peaks["diffusers"] else float("nan")
    print(f"{'ours/diffusers':16}{low['ours'] / low['diffusers']:12.3f}{mem_ratio:12.3f}")
    print(f"time ratio ours/diffusers (min of {args.reps} interleaved runs each): "
          f"{low['ours'] / low['diffusers']:.2f}")


if __name__ == "__main__":
    main()
