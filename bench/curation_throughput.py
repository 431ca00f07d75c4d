"""`svd-lab curate` end to end (start-up included) against pure decoding of the same files, 1 and 2 workers,
local and Ray engines.

    .venv/bin/python bench/curation_throughput.py [--input DIR] [--copies 6] [--workers 1 2] [--repeat 3]
                                                  [--engines local ray] [--baseline CODE_DIR]

Inputs: the videos in --input, else --copies links to the shared broadcast sample
(../shared/data/issue-195-aspect-ratio.mp4, 704x576 H.264 with B-frames, 628 frames), else synthetic 640x360
videos. Each round, interleaved (the best of --repeat rounds counts; the machine is shared):

  decode       PyAV, every frame's luma plane read (no colour conversion), single-threaded, one process per
               worker, the pool already started: the ceiling
  end-to-end   the whole command as a user runs it, in a fresh interpreter through the console script's entry
               point: `svd-lab curate IN --out OUT --engine E --workers N` (imports, worker / Ray start-up, the
               default config: cuts + motion + text, the manifest, the filter pass and the HTML report)

--baseline CODE_DIR: also time the command from another copy of the code (a folder holding comfyui_svd_lab/, e.g.
`git archive <commit>` extracted there), interleaved, to compare before / after on the same machine state.
Printed: a table per engine and worker count (end to end; start-up: from the run's start until the first video
started; work: from then until the last result, and the frames/s over it, from timings.json), the Ray start-up
overhead, the speed-up from 1 to 2 workers (end to end and after start-up), the per-stage timings of the last local
run, the load average; the last line is end-to-end / pure decode at 2 workers, local engine.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "issue-195-aspect-ratio.mp4"
CODE = "current"
#: what the `svd-lab` console script runs (pyproject's [project.scripts]), so the timed process imports what a
#: user's does (not this script's av / numpy); with --baseline, PYTHONPATH picks the other copy of the package
SVD_LAB = "import sys; from comfyui_svd_lab.cli import main; sys.argv[0] = 'svd-lab'; sys.exit(main())"


def decode_luma(path: str) -> int:
    """Decode every frame single-threaded and touch its Y plane; returns the frame count."""
    frames = 0
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1
        for frame in container.decode(stream):
            plane = frame.planes[0]
            y = np.frombuffer(plane, np.uint8).reshape(frame.height, plane.line_size)
            frames += int(y[0, 0] >= 0)
    return frames


def make_inputs(folder: Path, copies: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
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


def time_decode(files: list[str], workers: int) -> tuple[float, int]:
    """Seconds to decode ``files`` on a started pool of ``workers`` processes, and the frame count."""
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pool.map(decode_luma, files[:workers], chunksize=1)  # imports done, caches warm
        start = time.perf_counter()
        frames = sum(pool.map(decode_luma, files, chunksize=1))
        return time.perf_counter() - start, frames


def time_command(inputs: Path, out: Path, engine: str, workers: int, code: str | None) -> tuple[float, dict]:
    """Seconds of the whole curate command in a fresh interpreter, and its timings.json."""
    env = dict(os.environ)
    if code:
        env["PYTHONPATH"] = code + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-c", SVD_LAB, "curate", str(inputs), "--out", str(out), "--engine", engine,
           "--workers", str(workers), "--quiet"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"curate failed ({engine}, {workers} workers, code {code or CODE}):\n{proc.stderr[-3000:]}")
    timings = out / "timings.json"
    return seconds, json.loads(timings.read_text()) if timings.is_file() else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", help="folder of videos (default: the shared sample or synthetic videos)")
    parser.add_argument("--copies", type=int, default=6)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--engines", nargs="+", default=["local", "ray"], choices=["local", "ray", "thread"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--baseline", help="folder holding another comfyui_svd_lab/ to compare with")
    args = parser.parse_args()
    codes = [None] + ([str(Path(args.baseline).resolve())] if args.baseline else [])
    best: dict[tuple, float] = {}
    last_timings: dict[tuple, dict] = {}
    best_work: dict[tuple, float] = {}  # seconds from the first video's start to the last result (timings.json)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        inputs = Path(args.input) if args.input else tmp_path / "in"
        paths = sorted(inputs.iterdir()) if args.input else make_inputs(inputs, args.copies)
        files = [str(p) for p in paths if p.is_file()]
        frames = 0
        for r in range(args.repeat):
            for w in args.workers:
                sec, frames = time_decode(files, w)
                best[("decode", w)] = min(best.get(("decode", w), float("inf")), sec)
                for engine in args.engines:
                    for code in codes:
                        key = (engine, w, code or CODE)
                        out = tmp_path / f"out_{engine}_{w}_{len(best)}"
                        sec, timings = time_command(inputs, out, engine, w, code)
                        shutil.rmtree(out, ignore_errors=True)
                        best[key] = min(best.get(key, float("inf")), sec)
                        last_timings[key] = timings
                        if "wall_seconds" in timings:
                            work = timings["wall_seconds"] - timings.get("driver", {}).get("startup", 0.0)
                            best_work[key] = min(best_work.get(key, float("inf")), work)
            print(f"round {r + 1}/{args.repeat} done, load average {os.getloadavg()}", file=sys.stderr)
    load = os.getloadavg()
    print(f"{len(files)} files, {frames} frames; best of {args.repeat} interleaved rounds; load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")
    print(f"{'run':<28}{'workers':>8}{'seconds':>9}{'frames/s':>10}{'vs decode':>11}{'startup s':>11}"
          f"{'work s':>8}{'work f/s':>10}")
    for w in args.workers:
        dec = best[("decode", w)]
        print(f"{'pure decode':<28}{w:>8}{dec:9.2f}{frames / dec:10.0f}{1.0:11.2f}{'':>11}")
        for engine in args.engines:
            for code in codes:
                key = (engine, w, code or CODE)
                sec = best[key]
                startup = last_timings[key].get("driver", {}).get("startup")
                label = f"curate {engine}" + ("" if code is None else " (baseline)")
                startup_text = f"{startup:11.2f}" if startup is not None else f"{'':>11}"
                work = best_work.get(key)
                work_text = f"{work:8.2f}{frames / work:10.0f}" if work else ""
                print(f"{label:<28}{w:>8}{sec:9.2f}{frames / sec:10.0f}{dec / sec:11.2f}{startup_text}{work_text}")
    if "ray" in args.engines and "local" in args.engines:
        for w in args.workers:
            extra = best[("ray", w, CODE)] - best[("local", w, CODE)]
            print(f"Ray overhead at {w} worker(s): {extra:+.2f} s end to end against the local engine")
        if len(args.workers) > 1:
            lo, hi = min(args.workers), max(args.workers)
            for engine in args.engines:
                speedup = best[(engine, lo, CODE)] / best[(engine, hi, CODE)]
                line = f"{engine}: {hi} workers are {speedup:.2f}x as fast as {lo} end to end (ideal {hi / lo:.0f}x)"
                if (engine, lo, CODE) in best_work and (engine, hi, CODE) in best_work:
                    line += f", {best_work[(engine, lo, CODE)] / best_work[(engine, hi, CODE)]:.2f}x after start-up"
                print(line)
    local_key = ("local", max(args.workers), CODE)
    timings = last_timings.get(local_key, {})
    if timings:
        stages = timings.get("stages", {})
        total = sum(stages.values()) or 1.0
        print("per-stage seconds of the last local run (summed over workers): "
              + ", ".join(f"{k} {v:.2f} ({100 * v / total:.0f}%)" for k, v in stages.items())
              + "; driver: " + ", ".join(f"{k} {v:.2f}" for k, v in timings.get("driver", {}).items()))
    if ("local", 2, CODE) in best:
        ratio = best[("decode", 2)] / best[("local", 2, CODE)]
        print(f"end-to-end / pure decode at 2 workers, local engine: {ratio:.2f}")


if __name__ == "__main__":
    main()
