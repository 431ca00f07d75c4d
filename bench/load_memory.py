"""Load time and peak memory of `load_bundle` against the checkpoint's file size.

Writes a synthetic full-size checkpoint (random weights, the official svd_xt key layout and shapes,
the six unused text-tower tensors included, fp16 like the published svd_xt_1_1), then loads it in
fresh subprocesses and reports each one's peak resident set size (ru_maxrss: anonymous memory plus
the file pages it mapped) and wall time:

  fp16, lazy     load as fp16 (zero-copy views of the file; the VAEs are converted to fp32)
  fp16, touched  the same, then every weight is read once so all of it is resident
  fp32, touched  load converted to fp32 (one converted copy; file pages released per tensor)

A baseline process that only imports torch and the package is subtracted to get the net load cost.
Usage: python bench/load_memory.py [--dir DIR] [--keep]. Needs ~5 GB of free disk and ~12 GB RAM.
The last line is the fp16-touched net peak RSS divided by the file size (target <= 1.1).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from comfyui_svd_lab.svd_model.config import ModelConfig
from comfyui_svd_lab.svd_model.nn.model import SVDModel
from comfyui_svd_lab.svd_model.weights.checkpoint import save_checkpoint

TEXT_LEFTOVERS = {
    "token_embedding.weight": (49408, 1024), "positional_embedding": (77, 1024), "ln_final.weight": (1024,),
    "ln_final.bias": (1024,), "text_projection": (1024, 1024), "logit_scale": (),
}

CHILD = r"""
import resource, sys, time, torch
from comfyui_svd_lab.svd_model.weights.loader import load_bundle
mode = sys.argv[2]
t0 = time.perf_counter()
if mode != "baseline":
    bundle = load_bundle(sys.argv[1], dtype=torch.float16 if mode.startswith("fp16") else torch.float32)
    if mode.endswith("touched"):
        with torch.no_grad():
            total = sum(float(p.float().sum()) for p in bundle.model.parameters())
elapsed = time.perf_counter() - t0
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, elapsed)
"""


class RandomWeights(Mapping[str, torch.Tensor]):
    """key -> a fresh random fp16 tensor of the official shape, made on access (never all in memory)."""

    def __init__(self, shapes: dict[str, tuple[int, ...]]):
        self.shapes = shapes

    def __getitem__(self, key: str) -> torch.Tensor:
        shape = self.shapes[key]
        fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
        return torch.empty(shape, dtype=torch.float16).uniform_(-1, 1).div_(math.sqrt(fan_in))

    def __iter__(self) -> Iterator[str]:
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)


def write_synthetic(path: Path) -> int:
    with torch.device("meta"):
        shapes = SVDModel(ModelConfig()).official_shapes()
    shapes.update({"conditioner.embedders.0.open_clip.model." + k: v for k, v in TEXT_LEFTOVERS.items()})
    save_checkpoint(path, RandomWeights(shapes), {"note": "synthetic svd_xt layout, random fp16 weights"})
    return path.stat().st_size


def measure(path: Path, mode: str) -> tuple[int, float]:
    out = subprocess.run([sys.executable, "-c", CHILD, str(path), mode], check=True, capture_output=True, text=True)
    rss, seconds = out.stdout.split()[-2:]
    return int(rss), float(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="where to write the synthetic file (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic file")
    args = parser.parse_args()
    folder = args.dir or Path(tempfile.mkdtemp(prefix="svd_lab_bench_"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "synthetic_svd_xt_fp16.safetensors"
    try:
        t0 = time.perf_counter()
        size = write_synthetic(path)
        print(f"wrote {path.name}: {size / 1e9:.3f} GB in {time.perf_counter() - t0:.1f} s")
        base, _ = measure(path, "baseline")
        print(f"baseline process (python + torch + package): {base / 1e9:.3f} GB")
        print(f"{'mode':16s} {'load s':>8s} {'peak RSS GB':>12s} {'net GB':>8s} {'net / file':>10s}")
        results = {}
        for mode in ("fp16-lazy", "fp16-touched", "fp32-touched"):
            rss, seconds = measure(path, mode)
            results[mode] = (rss - base) / size
            print(f"{mode:16s} {seconds:8.2f} {rss / 1e9:12.3f} {(rss - base) / 1e9:8.3f} {results[mode]:10.3f}")
        print(json.dumps({"file_bytes": size, "net_rss_over_file": results}))
        print(f"peak RSS / file size (fp16, all weights touched): {results['fp16-touched']:.3f}")
    finally:
        if not args.keep:
            path.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
