"""Cut detection: our cascade (``svd_model.curation``) against PySceneDetect 0.7 on the same videos.

Usage (scenedetect is only needed here: it is part of the optional ``bench`` extra)::

    pip install -e '.[bench]'
    python bench/cuts_vs_pyscenedetect.py              # shared broadcast sample (if present) + synthetic edits
    python bench/cuts_vs_pyscenedetect.py --reps 5 --video my.mp4:12,80,233

Method
------
1. Videos. ``../shared/data/issue-195-aspect-ratio.mp4`` (704x576 SAR 16:11, 628 frames, 5 hard cuts
   checked by eye; skipped when absent) and synthetic H.264 edits made by
   ``svd_model.curation.synthetic.make_video`` into a temporary folder, whose ground truth is exact: hard
   cuts, fades and dissolves of 6-36 frames with camera motion, a hard-cut-only video with a fast
   pan and flashes (false-positive bait), brief transitions (dips to black or white and flash frames of
   1 or 2 frames between shots, fades) over shots whose brightness ramps slowly, and one slowly darkening
   shot with flashes and no cut (any detection there is a false positive; F1 is 1 only with none).
   ``--video PATH:F1,F2,...`` adds your own (hard cuts, 0-based
   first frame of each new shot).
2. Accuracy. A detection hits a hard cut when it is within +-1 frame of it, and a gradual transition when
   it lies inside its span +-1 frame (PySceneDetect reports one frame somewhere in a fade; we report
   the span and use its middle). Each truth is matched at most once; precision, recall, F1 per video.
3. Detectors. Ours: ``annotate_video`` with its defaults (3-level cascade, fades and dissolves, 2-fps
   Farnebäck motion, all from one decode of the Y/U/V planes). PySceneDetect: ``ContentDetector()`` and
   ``AdaptiveDetector()`` at their defaults through ``SceneManager`` (auto-downscale on), on the PyAV
   backend ``VideoStreamAv``.
4. Speed. Single process, single-threaded decoding for everyone (``thread_count = 1``): frames per
   second of each detector and of a plain PyAV decode loop of the same file (no conversion), the ceiling.
   Frames per second are per CPU second of the process (``time.process_time``, all threads), best of
   ``--reps`` runs: on a machine shared with other jobs, wall time mostly measures the neighbours; CPU
   time measures the work. ``--wall`` reports wall time instead.
   Ours is timed twice: as shipped (``fast=True``: H.264 deblocking skipped, which analysis on
   thumbnails does not need) and with exact decoding (``fast=False``), which is the fair comparison
   with the decode ceiling.
5. The last line: our frames/s (as shipped) divided by ContentDetector's, on the broadcast sample (or
   the first video).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import av

from comfyui_svd_lab.svd_model.curation.annotate import annotate_video
from comfyui_svd_lab.svd_model.curation.synthetic import make_video

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "issue-195-aspect-ratio.mp4"
SHARED_CUTS = [70, 170, 301, 421, 484]
RAMPS = ((1.0, 0.5), (0.5, 1.0), (1.0, 0.55), (0.6, 1.0), (1.2, 0.7))  # per shot brightness, first -> last frame


def synthetic_videos(folder: Path) -> list[tuple[str, Path, list[tuple[int, int, str]]]]:
    specs = {
        "synthetic gradual 12f": dict(
            shots=(60, 70, 50, 60, 70, 60), transitions=("hard", "fade", "dissolve", "dissolve", "fade"),
            motion=(0.0, 2.0, 1.0, 3.0, 0.5, 1.0), seed=1,
        ),
        "synthetic gradual 6-36f": dict(
            shots=(70, 70, 70, 70), transitions=("dissolve", "fade", "dissolve"), transition_frames=30,
            motion=(1.0, 0.0, 1.0, 0.5), seed=2,
        ),
        "synthetic hard+pan+flash": dict(
            shots=(80, 90, 70, 60), motion=(1.0, 10.0, 2.0, 0.0), flashes=(40, 200), seed=3,
        ),
        "synthetic 50fps fades": dict(
            shots=(120, 120, 120), transitions=("fade", "dissolve"), transition_frames=40, fps=50,
            motion=(1.0, 1.0, 1.0), seed=4,
        ),
        "synthetic brief 1f + ramps": dict(
            shots=(50, 50, 50, 50, 50), transitions=("dip_black", "dip_white", "flash", "fade"), dip_frames=1,
            transition_frames=16, gain=RAMPS, motion=(0.5, 1.0, 0.3, 2.0, 0.5), seed=5,
        ),
        "synthetic brief 2f + ramps 30fps": dict(
            shots=(60, 60, 60, 60, 60), transitions=("flash", "dip_black", "dip_white", "fade"), dip_frames=2,
            transition_frames=20, fps=30, gain=RAMPS[::-1], motion=(1.0, 0.5, 2.0, 0.3, 1.0), seed=6,
        ),
        "synthetic ramp, no cut": dict(shots=(150,), gain=((1.0, 0.2),), motion=(0.5,), flashes=(40, 41, 100), seed=7),
    }  # fmt: skip
    out = []
    for name, spec in specs.items():
        path = folder / (name.replace(" ", "_").replace("+", "_") + ".mp4")
        truth = make_video(path, **spec)
        out.append((name, path, list(truth.transitions)))
    return out


def score(detections: list[tuple[int, int]], truth: list[tuple[int, int, str]]) -> tuple[float, float, float]:
    """Precision, recall, F1. ``detections``: (frame, end_frame) spans (a point: frame == end_frame)."""
    left = list(truth)
    tp = 0
    for a, b in detections:
        mid = (a + b + 1) // 2
        hit = next((t for t in left if t[0] - 1 <= mid <= t[1] + 1), None)
        if hit is not None:
            left.remove(hit)
            tp += 1
    p = tp / len(detections) if detections else 1.0
    r = tp / len(truth) if truth else 1.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


CLOCK = time.process_time


def decode_fps(path: Path) -> float:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1
        t = CLOCK()
        n = sum(1 for _ in container.decode(stream))
        return n / (CLOCK() - t)


def run_ours(path: Path, fast: bool) -> tuple[list[tuple[int, int]], float]:
    t = CLOCK()
    ann = annotate_video(path, threads=1, fast=fast)
    dt = CLOCK() - t
    return [(c.frame, c.end_frame) for c in ann.cuts], ann.num_frames / dt


def run_psd(path: Path, kind: str) -> tuple[list[tuple[int, int]], float]:
    from scenedetect import AdaptiveDetector, ContentDetector, SceneManager
    from scenedetect.backends.pyav import VideoStreamAv

    video = VideoStreamAv(str(path))
    video._video_stream.thread_count = 1  # single-threaded decoding, as ours
    manager = SceneManager()
    manager.add_detector(ContentDetector() if kind == "content" else AdaptiveDetector())
    t = CLOCK()
    frames = manager.detect_scenes(video)
    dt = CLOCK() - t
    scenes = manager.get_scene_list()
    cuts = [s[0].frame_num for s in scenes[1:]]
    return [(c, c) for c in cuts], frames / dt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3, help="timing runs per detector (best is kept)")
    parser.add_argument("--video", action="append", default=[], help="PATH:F1,F2,... extra video with hard cuts")
    parser.add_argument("--wall", action="store_true", help="time with the wall clock instead of CPU time")
    args = parser.parse_args()
    global CLOCK
    CLOCK = time.perf_counter if args.wall else time.process_time
    with tempfile.TemporaryDirectory() as tmp:
        videos = []
        if SHARED.is_file():
            videos.append(("broadcast 704x576 (shared)", SHARED, [(f, f, "hard") for f in SHARED_CUTS]))
        for spec in args.video:
            p, _, frames = spec.rpartition(":")
            videos.append((Path(p).name, Path(p), [(int(f), int(f), "hard") for f in frames.split(",") if f]))
        print("making synthetic videos ...", flush=True)
        videos += synthetic_videos(Path(tmp))
        detectors = {
            "ours (as shipped)": lambda p: run_ours(p, True),
            "ours (exact decode)": lambda p: run_ours(p, False),
            "PSD ContentDetector": lambda p: run_psd(p, "content"),
            "PSD AdaptiveDetector": lambda p: run_psd(p, "adaptive"),
        }
        clock = "wall" if args.wall else "CPU"
        print(f"load average before: {os.getloadavg()[0]:.2f}; frames per {clock} second, best of {args.reps}")
        header = f"{'video':28s} {'detector':22s} {'P':>5s} {'R':>5s} {'F1':>5s} {'frames/s':>9s} {'vs decode':>9s}"
        print(header)
        print("-" * len(header))
        headline = None
        for name, path, truth in videos:
            dec = max(decode_fps(path) for _ in range(args.reps))
            fps: dict[str, float] = {}
            for label, fn in detectors.items():
                runs = [fn(path) for _ in range(args.reps)]
                found = runs[0][0]
                fps[label] = max(r[1] for r in runs)
                p, r, f1 = score(found, truth)
                print(f"{name:28s} {label:22s} {p:5.2f} {r:5.2f} {f1:5.2f} {fps[label]:9.0f} {fps[label] / dec:9.2f}")
            print(f"{name:28s} {'PyAV decode only':22s} {'':5s} {'':5s} {'':5s} {dec:9.0f} {1.0:9.2f}")
            ratio = fps["ours (as shipped)"] / fps["PSD ContentDetector"]
            print(f"{'':28s} ours / ContentDetector frames/s: {ratio:.2f}; ours exact / decode: "
                  f"{fps['ours (exact decode)'] / dec:.2f}")  # fmt: skip
            headline = ratio if headline is None else headline
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        print(f"ours / PySceneDetect ContentDetector frames/s (first video): {headline:.2f}")


if __name__ == "__main__":
    main()
