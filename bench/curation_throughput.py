"""Curation throughput against pure decoding of the same files, on N worker processes (default 2).

    .venv/bin/python bench/curation_throughput.py [--input DIR] [--copies 6] [--workers 2] [--repeat 2]

Inputs: the videos in --input, else --copies links to the shared broadcast sample
(../shared/data/issue-195-aspect-ratio.mp4, 704x576 H.264, 628 frames), else synthetic 640x360 videos.
Measured (best of --repeat, warm process pool, one single-threaded decode per process):

  decode     PyAV, every frame's luma plane read (no colour conversion): the ceiling
  decode-fast  the same with the H.264 loop filter skipped (annotate_video's decoder setting)
  annotate   annotate_video: decode + cascaded cut/fade detection + 2-fps Farneback motion
  pipeline   curate_video with the default config: annotate, split, motion, text area on 3 keyframes per clip
  end-to-end run_curation (engine local): pipeline + worker start-up + manifest writing

The last line is the headline: annotation frames/s over luma-decode frames/s with the same decoder settings
(target >= 0.80); the line before compares with the default (exact) decode.
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from comfyui_svd_lab.svd_model.curation.annotate import annotate_video
from comfyui_svd_lab.svd_model.curation.engine import run_curation
from comfyui_svd_lab.svd_model.curation.pipeline import CurationConfig, curate_video

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "issue-195-aspect-ratio.mp4"


def decode_luma(path: str, fast: bool = False) -> int:
    """Decode every frame single-threaded and touch its Y plane; returns the frame count. ``fast``: skip the
    H.264 loop filter, the decoder setting annotate_video uses."""
    frames = 0
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1
        if fast:
            stream.codec_context.options = {"skip_loop_filter": "all"}
        for frame in container.decode(stream):
            plane = frame.planes[0]
            y = np.frombuffer(plane, np.uint8).reshape(frame.height, plane.line_size)
            frames += int(y[0, 0] >= 0)
    return frames


def decode_luma_fast(path: str) -> int:
    return decode_luma(path, fast=True)


def annotate_only(path: str) -> int:
    return annotate_video(path, threads=1).num_frames


def full_pipeline(path: str, out: str) -> tuple[int, int]:
    result = curate_video(path, Path(path).parent, CurationConfig(), out)
    return result.frames, result.clips


def _warm(_: int) -> int:
    import cv2

    cv2.setNumThreads(1)
    return 0


def make_inputs(folder: Path, copies: int) -> list[Path]:
    if SAMPLE.is_file():
        paths = []
        for i in range(copies):
            link = folder / f"sample_{i}.mp4"
            link.symlink_to(SAMPLE)
            paths.append(link)
        return paths
    from comfyui_svd_lab.svd_model.curation.synthetic import make_video

    paths = []
    for i in range(copies):
        path = folder / f"synthetic_{i}.mp4"
        make_video(path, shots=(60, 80, 60), transitions=("fade", "hard"), size=(640, 360), motion=(2, 0.5, 4),
                   seed=i)
        paths.append(path)
    return paths


def timed(pool: multiprocessing.pool.Pool, fn, args: list, repeat: int) -> tuple[float, list]:
    best, result = float("inf"), []
    for _ in range(repeat):
        start = time.perf_counter()
        result = pool.starmap(fn, args) if isinstance(args[0], tuple) else pool.map(fn, args, chunksize=1)
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", help="folder of videos (default: the shared sample or synthetic videos)")
    parser.add_argument("--copies", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        (tmp_path / "in").mkdir()
        paths = sorted(Path(args.input).iterdir()) if args.input else make_inputs(tmp_path / "in", args.copies)
        files = [str(p) for p in paths if p.is_file()]
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(args.workers) as pool:
            pool.map(_warm, range(args.workers * 2))
            pool.map(annotate_only, files[: args.workers])  # imports and caches warmed up
            t_dec, counts = timed(pool, decode_luma, files, args.repeat)
            frames = sum(counts)
            t_fast, _ = timed(pool, decode_luma_fast, files, args.repeat)
            t_ann, _ = timed(pool, annotate_only, files, args.repeat)
            t_pipe, res = timed(pool, full_pipeline, [(f, str(tmp_path / "pipe")) for f in files], args.repeat)
        clips = sum(c for _, c in res)
        start = time.perf_counter()
        summary = run_curation(Path(args.input) if args.input else tmp_path / "in", tmp_path / "e2e", CurationConfig(),
                               engine="local", workers=args.workers)
        t_e2e = time.perf_counter() - start
    print(f"{len(files)} files, {frames} frames, {clips} clips, {args.workers} worker process(es)")
    print(f"{'stage':<12}{'seconds':>9}{'frames/s':>10}{'clips/s':>9}{'vs decode':>11}")
    rows = (("decode", t_dec, None), ("decode-fast", t_fast, None), ("annotate", t_ann, None),
            ("pipeline", t_pipe, clips), ("end-to-end", t_e2e, summary.clips))
    for name, sec, n_clips in rows:
        rate = f"{n_clips / sec:9.1f}" if n_clips is not None else f"{'':9}"
        print(f"{name:<12}{sec:9.2f}{frames / sec:10.0f}{rate}{t_dec / sec:11.2f}")
    print(f"annotation / exact luma decode (the default decoder), frames/s: {t_dec / t_ann:.2f}")
    print(f"annotation (cut + fade + motion) / luma decode with the same decoder settings, frames/s: "
          f"{t_fast / t_ann:.2f}")


if __name__ == "__main__":
    main()
