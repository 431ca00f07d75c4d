"""Temporal VAE decode: ours against ComfyUI's native VAEDecode on identical weights and latents.

Usage::

    COMFYUI_PATH=/path/to/ComfyUI python bench/decode_vs_comfyui.py             # 6 frames 256x128 (W x H)
    COMFYUI_PATH=... python bench/decode_vs_comfyui.py --frames 14 --width 512 --height 320 --reps 5
    python bench/decode_vs_comfyui.py --dtype bf16      # without COMFYUI_PATH: ours only (fp32 vs the dtype)
    COMFYUI_PATH=... python bench/decode_vs_comfyui.py --before c381738   # also that commit's decoder

Method. A full-size SVD first-stage VAE (encoder + temporal decoder, 98 M parameters) with seeded O(1) random
weights (``svd_model.weights.tiny.randomize``) is written to a temporary safetensors file in the official key
layout; ours loads it with ``AutoencoderKL.load_weights`` and ComfyUI with ``comfy.sd.VAE`` (in ComfyUI's own
Python, ``bench/comfyui_worker.py``: ``COMFYUI_PATH/.venv/bin/python`` when it exists, else this one). Both
decode the same seeded unscaled latents (n, 4, H/8, W/8) as one video of n frames, in float32 on the CPU (as
ComfyUI does there): ours with ``decode_chunked`` at the default chunk (14, so one chunk for n <= 14), ComfyUI
with ``VAE.decode`` (what VAEDecode runs; it also rescales to [0, 1] and clamps). Each rep times both,
alternating who goes first; the ComfyUI worker waits on its stdin while ours runs. One untimed warm-up decode of
2 frames at 64x64 precedes them. The table shows the min over the reps (and every time, so noise shows) and the
last line is the ratio of the minima ours/ComfyUI. ``--before REV`` also times this repository's decoder as of a
git revision (its ``svd_model`` is extracted with ``git archive`` into a temporary directory and imported under
another name), in the same interleaved loop on the same weights, so a speed change is measured against the same
noise.

Agreement: ours mapped to [0, 1] and clamped against ComfyUI's frames (max |d|); they run the same float32
arithmetic up to summation order, so |d| is ~1e-5. ``--dtype bf16`` adds a row for our opt-in bf16 decode
(``AutoencoderKL.decode(..., compute_dtype=torch.bfloat16)``) with its error against our float32 decode.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from comfyui_svd_lab.svd_model.config import VAEConfig
from comfyui_svd_lab.svd_model.nn.vae import AutoencoderKL, decode_chunked
from comfyui_svd_lab.svd_model.weights.tiny import randomize

HERE = Path(__file__).resolve().parent
DEFAULT_CHUNK = 14


class ComfyWorker:
    """bench/comfyui_worker.py in ComfyUI's Python; one JSON request / reply per line."""

    def __init__(self, comfy_path: str, threads: int) -> None:
        venv_python = Path(comfy_path) / ".venv" / "bin" / "python"
        python = str(venv_python) if venv_python.exists() else sys.executable
        env = {**os.environ, "COMFYUI_PATH": comfy_path, "BENCH_THREADS": str(threads)}
        self.proc = subprocess.Popen([python, str(HERE / "comfyui_worker.py")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)
        self.hello = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"the ComfyUI worker exited (code {self.proc.poll()}); see its stderr above")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise SystemExit(f"the ComfyUI worker failed:\n{reply.get('error')}")
        return reply

    def call(self, **request: object) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        try:
            self.call(op="quit")
        finally:
            self.proc.wait(timeout=60)


def random_vae(seed: int) -> AutoencoderKL:
    """The SVD first stage (VAEConfig(): encoder + temporal decoder) with seeded O(1) random weights."""
    with torch.device("meta"):
        vae = AutoencoderKL(VAEConfig())
    return randomize(vae.to_empty(device="cpu"), seed=seed).eval()


def vae_class_at(rev: str, tmp: Path) -> type:
    """AutoencoderKL of this repository's svd_model at git revision ``rev`` (imported as ``svd_model_<rev>``)."""
    archive = subprocess.run(["git", "-C", str(HERE.parent), "archive", rev, "svd_model"], check=True,
                             capture_output=True).stdout
    name = "svd_model_" + "".join(c if c.isalnum() else "_" for c in rev)
    root = tmp / "before"
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(root, filter="data")
    (root / "svd_model").rename(root / name)
    sys.path.insert(0, str(root))
    return importlib.import_module(f"{name}.nn.vae").AutoencoderKL


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--reps", type=int, default=3, help="interleaved timed rounds after one warm-up")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="bf16: also our opt-in bf16")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--before", metavar="REV", help="also time the decoder of this git revision")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    comfy_path = os.environ.get("COMFYUI_PATH")
    print(f"load average before: {load_average()}  (threads {args.threads}, torch {torch.__version__})")
    vae = random_vae(args.seed)
    h, w = args.height // 8, args.width // 8
    z = torch.randn(args.frames, 4, h, w, generator=torch.Generator().manual_seed(args.seed + 1))
    with tempfile.TemporaryDirectory(prefix="svd_lab_decode_") as tmp:
        weights, latents = Path(tmp) / "vae.safetensors", Path(tmp) / "z.safetensors"
        save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(weights))
        save_file({"z": z}, str(latents))
        ours = AutoencoderKL(VAEConfig()).eval()
        ours.load_weights(load_file(str(weights)))
        del vae
        runs = {"ours fp32": lambda: decode_chunked(ours, z, DEFAULT_CHUNK, num_frames_per_video=args.frames)}
        if args.before:
            old = vae_class_at(args.before, Path(tmp))(VAEConfig()).eval()
            old.load_state_dict(ours.state_dict())
            runs[f"ours@{args.before}"] = lambda: old.decode(z, args.frames)  # one chunk: decode_chunked's work
        if args.dtype == "bf16":
            runs["ours bf16"] = lambda: decode_chunked(
                ours, z, DEFAULT_CHUNK, num_frames_per_video=args.frames, compute_dtype=torch.bfloat16)
        worker = None
        if comfy_path:
            worker = ComfyWorker(comfy_path, args.threads)
            worker.call(op="load_vae", path=str(weights))
        else:
            print("COMFYUI_PATH is not set: ComfyUI's row is skipped")
        times: dict[str, list[float]] = {name: [] for name in runs}
        outputs: dict[str, torch.Tensor] = {}
        if worker:
            times["comfyui"] = []
            small = Path(tmp) / "z_small.safetensors"
            save_file({"z": z[:2, :, :8, :8].contiguous()}, str(small))
            worker.call(op="decode", latents=str(small))  # warm-up
        with torch.inference_mode():
            decode_chunked(ours, z[:2, :, :8, :8], DEFAULT_CHUNK)  # warm-up
        for rep in range(args.reps):
            names = list(times) if rep % 2 == 0 else list(reversed(times))
            for name in names:
                if name == "comfyui":
                    out = str(Path(tmp) / "comfy.safetensors") if rep == 0 else None
                    seconds = worker.call(op="decode", latents=str(latents), out=out)["seconds"]
                    if out:
                        outputs[name] = load_file(out)["frames"]  # (n, H, W, 3) in [0, 1]
                else:
                    with torch.inference_mode():
                        start = time.perf_counter()
                        frames = runs[name]()  # (n, 3, H, W) in [-1, 1]
                        seconds = time.perf_counter() - start
                    if rep == 0:
                        outputs[name] = frames.float()
                times[name].append(seconds)
            print(f"  rep {rep + 1}: " + ", ".join(f"{n} {times[n][-1]:.2f} s" for n in times), flush=True)
        if worker:
            worker.close()
    print(f"load average after: {load_average()}")
    print(f"decode {args.frames} frames {args.width}x{args.height} (latents {h}x{w}), one video, chunk "
          f"{DEFAULT_CHUNK}, CPU; min of {args.reps} interleaved reps")
    base = outputs["ours fp32"]
    print(f"{'':12s}{'min s':>9s}   all s")
    for name, ts in times.items():
        print(f"{name:12s}{min(ts):9.2f}   " + " ".join(f"{t:.2f}" for t in ts))
    if "ours bf16" in outputs:
        err = (outputs["ours bf16"] - base).abs()
        print(f"bf16 vs fp32 (ours, [-1, 1]): max |d| {err.max():.4f}, mean |d| {err.mean():.5f}, "
              f"relative L2 {((outputs['ours bf16'] - base).norm() / base.norm()):.5f}")
    if args.before:
        name = f"ours@{args.before}"
        print(f"{name} vs ours: max |d| {(outputs[name] - base).abs().max():.2e}; "
              f"time ratio ours/{name}: {min(times['ours fp32']) / min(times[name]):.3f}")
        if "comfyui" in times:
            print(f"{name}/ComfyUI: {min(times[name]) / min(times['comfyui']):.3f}")
    if "comfyui" in outputs:
        ours01 = ((base + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)  # (n, H, W, 3) as ComfyUI's
        print(f"agreement with ComfyUI ([0, 1] frames): max |d| {(ours01 - outputs['comfyui']).abs().max():.2e}")
        print(f"decode time ratio ours/ComfyUI: {min(times['ours fp32']) / min(times['comfyui']):.3f}")


if __name__ == "__main__":
    main()
