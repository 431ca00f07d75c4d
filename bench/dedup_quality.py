"""Near-duplicate removal: precision and recall on a synthetic set with known duplicates, hash only, CLIP only
and hash + CLIP, and the time of the pair search at dataset scale.

Usage::

    python bench/dedup_quality.py                              # tiny random CLIP tower (plumbing only)
    python bench/dedup_quality.py --clip-checkpoint svd_xt.safetensors --sources 24
    python bench/dedup_quality.py --scale 20000                # pair search on 20k random clips

Method
------
1. Data (``svd_model.curation.synthetic_duplicates``): ``--sources`` distinct one-shot synthetic videos (one
   seed each, slow pans, 128x72, 30 frames); of the first half, source i gets copies in the variants
   ``VARIANTS[i % 4]`` and ``VARIANTS[(i + 1) % 4]`` (renamed: same bytes; reencoded: quality 60; resized: 0.75x;
   cropped: 5 % off each side). Truth: two files are duplicates when they come from one source.
2. One curation run (inline engine, text off) with CLIP embeddings saved, from ``--clip-checkpoint`` (an SVD /
   open_clip file with the OpenCLIP image tower) or, without one, a tiny random tower. A random tower embeds
   every frame close to every other (cosine ~0.99), so its CLIP rows only check the plumbing; nothing here
   downloads weights.
3. Each setting runs ``dedup_table`` on the same manifest; pairs are predicted when two files end in one group.
   Precision = true predicted pairs / predicted pairs, recall = true predicted pairs / true pairs.
4. Scale: ``--scale`` random 64-bit hashes and random unit 1024-d embeddings through the blocked pair search
   (``hash_pairs``, ``embedding_pairs``; default block of 16M similarities); the seconds of each, best of
   ``--reps``, and the time of the hash search relative to the embedding search. Both grow with n squared.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from comfyui_svd_lab.svd_model.curation import manifest
from comfyui_svd_lab.svd_model.curation.dedup import DedupConfig, dedup_table, embedding_pairs, hash_pairs
from comfyui_svd_lab.svd_model.curation.engine import run_curation
from comfyui_svd_lab.svd_model.curation.records import CurationConfig
from comfyui_svd_lab.svd_model.curation.synthetic_duplicates import VARIANTS, make_duplicate_set


def _random_tower(path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from comfyui_svd_lab.svd_model.config import ImageEncoderConfig
    from comfyui_svd_lab.svd_model.nn.image_encoder import OpenCLIPVisionTower

    torch.manual_seed(0)
    tower = OpenCLIPVisionTower(ImageEncoderConfig(width=64, layers=2, mlp_width=128, embed_dim=32, head_width=64))
    save_file({f"visual.{k}": v.contiguous() for k, v in tower.state_dict().items()}, path)


def quality(args: argparse.Namespace, folder: Path) -> None:
    copies = [(VARIANTS[i % 4], VARIANTS[(i + 1) % 4]) for i in range(args.sources // 2)]
    data = make_duplicate_set(folder / "videos", sources=args.sources, copies=copies, seed=args.seed)
    checkpoint = args.clip_checkpoint
    if not checkpoint:
        checkpoint = str(folder / "tower.safetensors")
        _random_tower(Path(checkpoint))
    config = CurationConfig.from_dict({"keyframe_max_side": 224, "split": {"min_seconds": 0.5}, "text": False,
                                       "clip_checkpoint": checkpoint, "save_embeddings": True})
    started = time.perf_counter()
    run_curation(data.folder, folder / "out", config, engine="inline")
    table = manifest.read_manifest(folder / "out")
    rows = table.to_pylist()
    ok = sum(r["status"] == "ok" for r in rows)
    print(f"{len(data.groups)} videos ({args.sources} sources, {len(data.groups) - args.sources} copies), {ok} clips, "
          f"{len(data.true_pairs())} true duplicate pairs; curated in {time.perf_counter() - started:.1f} s; CLIP: "
          f"{'random tiny tower (plumbing only)' if not args.clip_checkpoint else args.clip_checkpoint}")
    settings = [("hash only", DedupConfig(hamming=h, use_clip=False), f"hamming <= {h}") for h in (4, 8, 12)]
    settings += [("CLIP only", DedupConfig(cosine=c, hamming=-1), f"cosine >= {c:g}") for c in (0.95, 0.99)]
    settings += [("hash + CLIP", DedupConfig(), "defaults (hamming <= 8 or cosine >= 0.95)")]
    print(f"{'signals':<12} {'setting':<44} {'precision':>9} {'recall':>7} {'dropped':>8}")
    for name, dcfg, label in settings:
        result = dedup_table(table, folder / "out", dcfg)
        precision, recall = data.precision_recall(result.pairs, rows)
        print(f"{name:<12} {label:<44} {precision:>9.3f} {recall:>7.3f} {result.dropped:>8}")


def scale(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(0)
    n = args.scale
    hashes = rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64)
    emb = rng.standard_normal((n, 1024)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    timings = {}
    for name, run in (("hash", lambda: hash_pairs(hashes, 8)), ("clip", lambda: embedding_pairs(emb, 0.95))):
        best = float("inf")
        for _ in range(args.reps):
            t0 = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - t0)
        timings[name] = best
    print(f"pair search over {n} clips (best of {args.reps}): hashes {timings['hash']:.2f} s, 1024-d embeddings "
          f"{timings['clip']:.2f} s (hash / CLIP time ratio {timings['hash'] / timings['clip']:.2f}); "
          f"n = 100000 would take ~{(100_000 / n) ** 2:.0f}x as long")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sources", type=int, default=16, help="distinct source videos (default 16)")
    parser.add_argument("--seed", type=int, default=100, help="seed of the first source")
    parser.add_argument("--clip-checkpoint", default="", help="SVD / open_clip safetensors with the image tower")
    parser.add_argument("--scale", type=int, default=5000, help="clips in the pair-search timing (0 = skip)")
    parser.add_argument("--reps", type=int, default=2, help="timing repetitions (best is printed)")
    args = parser.parse_args()
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="dedup_bench_") as tmp:
        quality(args, Path(tmp))
    if args.scale:
        scale(args)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
