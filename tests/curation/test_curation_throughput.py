"""Throughput plumbing of the curation engine: per-stage timings (worker -> driver -> timings.json -> report),
warm workers (initialised once per process), report thumbnails written by the workers (the report reads no
source video), keyframes decoded with non-reference frames skipped (same frames, less decoding), resume."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from comfyui_svd_lab.svd_model.curation import engine, frames_at, report, workers
from comfyui_svd_lab.svd_model.curation.decode import DecodeStats
from comfyui_svd_lab.svd_model.curation.engine import run_curation
from comfyui_svd_lab.svd_model.curation.filtering import filter_manifest, parse_rules
from comfyui_svd_lab.svd_model.curation.manifest import TIMINGS_NAME, read_manifest
from comfyui_svd_lab.svd_model.curation.pipeline import STAGES, CurationConfig, VideoResult, annotate_video
from comfyui_svd_lab.svd_model.curation.records import VideoRef
from comfyui_svd_lab.svd_model.curation.synthetic import make_video

CONFIG = CurationConfig.from_dict({"split": {"min_seconds": 1.0}})


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("throughput_videos")
    make_video(folder / "a.mp4", shots=(40, 45, 40), transitions=("hard", "hard"), seed=1)
    make_video(folder / "b.mp4", shots=(45, 40), transitions=("hard",), seed=2)
    return folder


def test_stage_timings_are_summed_printed_and_stored(videos, tmp_path):
    results: list[VideoResult] = []
    summary = run_curation(videos, tmp_path, CONFIG, engine="inline",
                           progress=lambda s: results.append(s.last) if s.last is not None else None)
    assert len(results) == 2
    for result in results:
        assert {"decode", "cuts", "motion", "keyframes", "text", "writes"} <= set(result.timings)
        assert all(v >= 0 for v in result.timings.values())
        assert result.timings["decode"] > 0
        assert sum(result.timings.values()) <= result.seconds + 1e-3  # stages are parts of the video's time
    for stage in summary.timings:
        assert summary.timings[stage] == pytest.approx(sum(r.timings.get(stage, 0.0) for r in results))
    assert list(summary.timings) == [s for s in STAGES if s in summary.timings]  # the pipeline's order
    assert summary.driver["startup"] >= 0 and summary.driver["manifest"] > 0
    text = summary.text()
    assert "decode" in text.splitlines()[-1] and "startup" in text.splitlines()[-1]
    stored = json.loads((tmp_path / TIMINGS_NAME).read_text())
    assert stored["stages"] == pytest.approx(summary.timings) and stored["frames"] == summary.frames
    info = report.build_report(tmp_path)
    page = info.path.read_text()
    assert "Per-stage timings" in page and f"{summary.timings['decode']:.2f}" in page


def count_inits(path: str, root: str) -> VideoResult:
    """A job reporting how often its worker process was initialised, and which process it is."""
    return VideoResult(Path(path).name, str(os.getpid()), [], 0.0, 0,
                       {"inits": float(workers._WORKER.get("inits", 0))})  # noqa: SLF001


def test_workers_are_initialised_once_and_reused(tmp_path):
    jobs = [tmp_path / f"v{i}.mp4" for i in range(6)]
    run = engine._Run(tmp_path, CONFIG, tmp_path, 2)  # noqa: SLF001
    results = list(engine._run_processes(jobs, run, work=count_inits))  # noqa: SLF001
    assert sorted(r.video_id for r in results) == sorted(p.name for p in jobs)
    assert all(r.timings["inits"] == 1 for r in results)  # the initializer ran once in every process
    pids = [r.source for r in results]
    assert len(set(pids)) <= 2 and max(pids.count(p) for p in set(pids)) >= 2  # processes took several videos


def _grey(image) -> np.ndarray:
    return np.asarray(image.convert("L").resize((64, 36)), np.float32)


def test_report_thumbnails_come_from_the_workers_and_match_the_source(videos, tmp_path):
    run_curation(videos, tmp_path, CONFIG, engine="inline")
    rows = [r for r in read_manifest(tmp_path).to_pylist() if r["status"] == "ok"]
    assert len(rows) >= 4
    tiles = [report._tile(tmp_path, r) for r in rows]  # noqa: SLF001
    assert all(t is not None for t in tiles)
    from PIL import Image

    decoded = [Image.fromarray(report._decode_middle(r)) for r in rows]  # noqa: SLF001
    for i, tile in enumerate(tiles):  # each tile is its own clip's middle frame, not a neighbour's
        errors = [float(np.abs(_grey(tile) - _grey(d)).mean()) for d in decoded]
        assert errors[i] < 8.0, errors
        assert errors[i] == min(errors), (i, errors)


def test_report_reads_no_source_video(videos, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for p in videos.iterdir():
        (inputs / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "out"
    run_curation(inputs, out, CONFIG, engine="inline")
    for p in inputs.iterdir():
        p.unlink()  # a report that decoded the sources would have no image now
    result = filter_manifest(out, parse_rules(["motion_score:bottom=0.5"]))  # thresholds: the report shows clips
    info = report.build_report(out, result, per_side=8)
    page = info.path.read_text()
    assert page.count("data:image/jpeg") >= 2 and "no image" not in page


def test_keyframes_skip_non_reference_frames_and_stay_exact(videos):
    path = videos / "a.mp4"
    ann = annotate_video(VideoRef.of(path, videos), CONFIG)
    rng = np.random.default_rng(0)
    times = [*rng.uniform(0.0, ann.duration, 9).tolist(), float(ann.frame_times[0]), float(ann.frame_times[-1])]
    full, skipping = DecodeStats(), DecodeStats()
    exact = frames_at.read_frames_at(path, times, max_side=256, threads=1, stats=full)
    fast = frames_at.read_frames_at(path, times, max_side=256, threads=1, stats=skipping,
                                    frame_times=ann.frame_times)
    assert len(fast) == len(exact) == len(times)
    assert all(np.array_equal(a, b) for a, b in zip(exact, fast, strict=True))
    assert skipping.frames < full.frames  # the synthetic H.264 files have non-reference B-frames


def test_a_resumed_run_times_only_what_it_curated(videos, tmp_path):
    def stop_after_one(state):
        if state.done == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_curation(videos, tmp_path, CONFIG, engine="inline", progress=stop_after_one)
    summary = run_curation(videos, tmp_path, CONFIG, engine="inline", resume=True)
    assert (summary.videos, summary.skipped) == (1, 1)
    assert summary.timings["decode"] > 0
    stored = json.loads((tmp_path / TIMINGS_NAME).read_text())
    assert stored["videos"] == 1 and stored["stages"] == pytest.approx(summary.timings)
    assert len({r["video_id"] for r in read_manifest(tmp_path).to_pylist()}) == 2


def test_ray_actors_match_inline_rows_and_give_their_cpus_back(videos, tmp_path):
    ray = pytest.importorskip("ray", reason="the ray engine needs ray (pip install -e .[test])")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        run_curation(videos, tmp_path / "inline", CONFIG, engine="inline")
        summary = run_curation(videos, tmp_path / "ray", CONFIG, engine="ray", workers=2)
        assert summary.videos == 2 and summary.timings["decode"] > 0 and "ray_init" in summary.driver

        def rows(out: Path) -> dict[str, dict]:
            return {r["clip_id"]: r for r in read_manifest(out).to_pylist()}

        assert rows(tmp_path / "ray") == rows(tmp_path / "inline")
        deadline = time.monotonic() + 20
        while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)  # killing actors is asynchronous
        assert ray.available_resources().get("CPU", 0) == 2  # the actors were killed: a shared cluster gets its CPUs
    finally:
        if started:
            ray.shutdown()
