"""The curation engine on real (tiny, synthetic) videos: bad inputs become rows, engines agree, interruption
and a SIGKILL at every named crash point (the manifest's test hook) resume with no lost and no duplicated rows,
the CLI, a worker crash."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from comfyui_svd_lab.cli import main
from comfyui_svd_lab.svd_model.curation import engine, manifest, workers
from comfyui_svd_lab.svd_model.curation.captioner_registry import CaptionerEntry, CaptionerRegistry
from comfyui_svd_lab.svd_model.curation.engine import list_videos, run_curation
from comfyui_svd_lab.svd_model.curation.pipeline import CurationConfig, VideoRef, curate_video
from comfyui_svd_lab.svd_model.curation.synthetic import make_audio_only, make_video
from comfyui_svd_lab.svd_model.errors import ConfigError
from comfyui_svd_lab.svd_model.media.video import probe_video

REPO = Path(__file__).resolve().parents[2]
SIZE = (128, 72)
#: Fast settings for tests: text detection on, keyframes small.
CONFIG = CurationConfig.from_dict({"keyframe_max_side": 128, "split": {"min_seconds": 0.5}})


def _huge(path: Path) -> None:
    """Three frames 17000 px wide (MJPEG): beyond what curation accepts."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mjpeg", rate=25)
        stream.width, stream.height, stream.pix_fmt = 17000, 16, "yuvj420p"
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(np.zeros((16, 17000, 3), np.uint8), format="rgb24")
            frame = frame.reformat(format="yuvj420p")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """Six good synthetic videos (cuts, fades, motion, one rotated, one with text) in a folder tree."""
    root = tmp_path_factory.mktemp("videos")
    (root / "sub").mkdir()
    specs = [
        ("a.mp4", {"shots": (40, 40), "motion": (2.0, 0.0)}),
        ("b.mp4", {"shots": (30, 30, 30), "transitions": ("fade", "hard"), "motion": (1.0, 3.0, 0.5)}),
        ("c.mkv", {"shots": (50,), "motion": (4.0,), "text": (True,)}),
        ("sub/d.mp4", {"shots": (35, 35), "transitions": ("dissolve",), "motion": (0.0, 2.0)}),
        ("sub/e.mov", {"shots": (40, 30), "rotation": 90, "sar": Fraction(4, 3)}),
        ("sub/f.mp4", {"shots": (25, 45), "motion": (6.0, 1.0)}),
    ]
    for i, (name, kw) in enumerate(specs):
        make_video(root / name, size=SIZE, seed=i, gop=10, **kw)
    (root / "notes.txt").write_text("not a video, skipped by extension")
    return root


@pytest.fixture(scope="module")
def bad(tmp_path_factory, videos) -> Path:
    """A list file naming bad inputs next to one good video."""
    root = tmp_path_factory.mktemp("bad")
    (root / "empty.mp4").write_bytes(b"")
    (root / "garbage.mp4").write_bytes(os.urandom(5000))
    data = (videos / "a.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 3])
    make_audio_only(root / "audio.m4a")
    (root / "text.txt").write_text("hello")
    _huge(root / "huge.mkv")
    listing = ["empty.mp4", "garbage.mp4", "truncated.mp4", "audio.m4a", "text.txt", "missing.mp4", "huge.mkv",
               str(videos / "sub" / "e.mov")]
    (root / "list.txt").write_text("# inputs\n" + "\n".join(listing) + "\n")
    return root / "list.txt"


def rows_by_clip(table: pa.Table) -> dict[str, dict]:
    ids = table["clip_id"].to_pylist()
    assert len(ids) == len(set(ids)), "duplicated rows"
    return {r["clip_id"]: r for r in table.to_pylist()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, videos) -> dict[str, dict]:
    """An uninterrupted in-process run: the rows every other run must reproduce."""
    out = tmp_path_factory.mktemp("ref")
    summary = run_curation(videos, out, CONFIG, engine="inline", videos_per_part=4)
    assert summary.videos == 6 and summary.errors == 0 and summary.clips >= 10
    return rows_by_clip(manifest.read_manifest(out))


def test_folder_listing_and_identity(videos):
    listed = list_videos(videos)
    assert [p.relative_to(videos).as_posix() for p in listed.paths] == ["a.mp4", "b.mp4", "c.mkv", "sub/d.mp4",
                                                                       "sub/e.mov", "sub/f.mp4"]
    assert dict(listed.ignored) == {".txt": 1}
    ref = VideoRef.of(videos / "sub" / "d.mp4", videos)
    assert ref.source_rel == "sub/d.mp4" and ref == VideoRef.of(videos / "sub" / "d.mp4", videos)
    assert ref.video_id != VideoRef.of(videos / "sub" / "d.mp4", videos / "sub").video_id  # relative path counts


def test_rows_carry_clip_positions_scores_and_video_metadata(reference, videos):
    dropped = [r for r in reference.values() if r["status"] != "ok"]
    assert [(r["source_rel"], r["error"].split(" of ")[0]) for r in sorted(dropped, key=lambda r: r["source_rel"])] == [
        ("b.mp4", "transition: fade"), ("sub/d.mp4", "transition: dissolve")]  # the frames of the two transitions
    assert all(r["status"] == "dropped" and not r["keep"] for r in dropped)
    rows = [r for r in reference.values() if r["status"] == "ok"]
    for r in rows:
        assert r["clip_id"] == f"{r['video_id']}_{r['clip_index']:04d}"
        assert r["num_frames"] == r["end_frame"] - r["start_frame"] > 0
        assert r["end_time"] > r["start_time"] and r["duration"] == pytest.approx(r["end_time"] - r["start_time"])
        assert r["fps"] == 25.0 and r["motion_bucket_id"] is not None and r["text_area"] is not None
        assert r["keep"] and r["config_hash"] == CONFIG.hash()
    rotated = [r for r in rows if r["source_rel"] == "sub/e.mov"]
    assert rotated and all((r["width"], r["height"], r["rotation"]) == (72, 171, 90) for r in rotated)
    assert {r["sar"] for r in rotated} == {"4:3"}
    static = [r["motion_score"] for r in rows if r["source_rel"] == "sub/d.mp4" and r["clip_index"] == 0]
    moving = [r["motion_score"] for r in rows if r["source_rel"] == "sub/f.mp4" and r["clip_index"] == 0]
    assert static[0] < moving[0]
    texty = max(r["text_area"] for r in rows if r["source_rel"] == "c.mkv")
    assert texty > max(r["text_area"] for r in rows if r["source_rel"] == "a.mp4")


def test_bad_inputs_become_rows_with_reasons(bad, tmp_path):
    summary = run_curation(bad, tmp_path, CONFIG, engine="thread", workers=2, videos_per_part=3)
    table = manifest.read_manifest(tmp_path)
    by_file = {}
    for r in table.to_pylist():
        by_file.setdefault(Path(r["source"]).name, []).append(r)
    assert set(by_file) == {"empty.mp4", "garbage.mp4", "truncated.mp4", "audio.m4a", "text.txt", "missing.mp4",
                            "huge.mkv", "e.mov"}
    for name in ("empty.mp4", "garbage.mp4", "audio.m4a", "text.txt", "missing.mp4", "huge.mkv"):
        (row,) = by_file[name]
        assert row["status"] == "error" and row["error"] and not row["keep"], name
        assert row["clip_id"] == f"{row['video_id']}_err" and row["drop_reason"].startswith("error: ")
    assert "audio" in by_file["audio.m4a"][0]["error"] and "too large" in by_file["huge.mkv"][0]["error"]
    assert "not found" in by_file["missing.mp4"][0]["error"] or "exist" in by_file["missing.mp4"][0]["error"]
    assert by_file["truncated.mp4"][0]["status"] in ("ok", "error", "empty")  # decodable part or a reason
    assert all(r["status"] == "ok" for r in by_file["e.mov"])
    assert summary.videos == 8 and summary.errors >= 6


def test_engines_agree_and_a_stopped_run_resumes(videos, reference, tmp_path):
    out = tmp_path / "threads"
    assert rows_by_clip(_run(videos, out, engine="thread", workers=2)) == reference
    seen = []

    def stop_after_two(state):
        seen.append(state.done)
        if state.done == 2:
            raise KeyboardInterrupt

    out = tmp_path / "stopped"
    with pytest.raises(KeyboardInterrupt):
        run_curation(videos, out, CONFIG, engine="inline", videos_per_part=5, progress=stop_after_two)
    assert len(manifest.completed(out / "manifest")) == 2  # flushed although the part was not full
    with pytest.raises(ConfigError, match="already holds a curation manifest"):
        run_curation(videos, out, CONFIG, engine="inline")
    with pytest.raises(ConfigError, match="another configuration"):
        run_curation(videos, out, CONFIG.replace(keyframe_max_side=96), engine="inline", resume=True)
    summary = run_curation(videos, out, CONFIG, engine="inline", resume=True)
    assert (summary.skipped, summary.videos) == (2, 4)
    assert rows_by_clip(manifest.read_manifest(out)) == reference


def _run(videos: Path, out: Path, **kw) -> pa.Table:
    run_curation(videos, out, CONFIG, **kw)
    return manifest.read_manifest(out)


def _curate_cmd(videos: Path, out: Path, *extra: str, engine_name: str = "local") -> list[str]:
    return [sys.executable, "-m", "comfyui_svd_lab.cli", "curate", str(videos), "--out", str(out), "--engine",
            engine_name, "--workers", "2", "--part-size", "1", "--no-report", "--quiet",
            "--config", json.dumps(CONFIG.to_dict()), *extra]


def _killed_at(cmd: list[str], point: str) -> None:
    """Run `cmd` with the crash test hook armed at `point`; it must die there by SIGKILL."""
    proc = subprocess.run(cmd, env={**os.environ, manifest.CRASH_ENV: point}, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -signal.SIGKILL, f"not killed at {point}: rc {proc.returncode}\n{proc.stderr[-3000:]}"
    assert f"{manifest.CRASH_ENV}={point}: killing this process" in proc.stderr  # the hook, nothing else


def test_killed_runs_resume_with_nothing_lost_or_duplicated(videos, reference, tmp_path, capsys):
    """The CLI killed at the engine's crash points (see manifest.CRASH_POINTS), then resumed in process."""
    out, mdir = tmp_path / "killed", tmp_path / "killed" / "manifest"
    _killed_at(_curate_cmd(videos, out), "config-written")  # process engine, before any worker exists
    assert (out / engine.CONFIG_NAME).is_file() and not manifest.read_log(mdir)
    _killed_at(_curate_cmd(videos, out, "--resume", engine_name="thread"), "result-received@3")
    assert len(manifest.read_log(mdir)) == 2  # part size 1: two videos logged, the third result in hand is lost
    argv = _curate_cmd(videos, out, "--resume", engine_name="inline")[3:]
    assert main(argv) == 0
    assert "4 video(s) curated (2 already done)" in capsys.readouterr().out
    assert rows_by_clip(manifest.read_manifest(out)) == reference
    entries = manifest.read_log(mdir)
    assert len({e.video_id for e in entries}) == len(entries) == 6  # each video logged exactly once
    assert {p.name for p in mdir.iterdir()} == {manifest.LOG_NAME} | {e.part for e in entries}  # no orphans


_WRITER = """
import json, sys
from comfyui_svd_lab.svd_model.curation.manifest import ManifestWriter
writer = ManifestWriter(sys.argv[1], videos_per_part=2)
for video_id, source, rows in json.loads(sys.argv[2]):
    writer.add(video_id, source, rows)
writer.close()
"""
#: Five fake videos of two rows each; parts of two videos: [v0 v1] [v2 v3] [v4].
_FAKE = [(f"v{i}", f"/videos/v{i}.mp4", [{"clip_id": f"v{i}_{c:04d}", "video_id": f"v{i}", "clip_index": c,
                                          "source": f"/videos/v{i}.mp4", "status": "ok"} for c in range(2)])
         for i in range(5)]


def _temp_parts(mdir: Path) -> list[str]:
    return [p.name for p in mdir.iterdir() if p.name.startswith(".part-") and p.name.endswith(".tmp")]


@pytest.mark.parametrize(("point", "logged", "left"), [
    ("part-write@1", 0, "a torn temp part"),
    ("part-write@2", 2, "a torn temp part"),
    ("part-renamed@2", 2, "an unlogged part"),
    ("log-torn@1", 1, "a torn log line"),  # the part holds v0 and v1, only v0's line is complete
    ("log-torn@3", 4, "a torn log line"),  # the one line of [v4] torn
    ("logged@2", 4, "nothing"),
])
def test_manifest_writer_killed_at_each_crash_point_resumes_exactly(tmp_path, point, logged, left):
    mdir = tmp_path / manifest.MANIFEST_DIR
    _killed_at([sys.executable, "-c", _WRITER, str(tmp_path), json.dumps(_FAKE)], point)
    entries = manifest.read_log(mdir)
    assert [e.video_id for e in entries] == [f"v{i}" for i in range(logged)]
    names = {p.name for p in mdir.iterdir()}
    if left == "a torn temp part":
        (tmp,) = _temp_parts(mdir)
        with pytest.raises(pa.ArrowInvalid):
            pq.read_table(mdir / tmp)
    elif left == "an unlogged part":
        assert names - {e.part for e in entries} == {manifest.LOG_NAME, "part-w0-000001.parquet"}
    elif left == "a torn log line":
        assert not (mdir / manifest.LOG_NAME).read_bytes().endswith(b"\n")
    else:
        assert names == {manifest.LOG_NAME} | {e.part for e in entries}
    assert len(manifest.read_manifest(tmp_path)) == 2 * logged  # readers see exactly the logged videos

    writer = manifest.ManifestWriter(tmp_path, videos_per_part=2)  # the resumed run: recover, add what is missing
    done = manifest.completed(mdir)
    for video_id, source, rows in _FAKE:
        if video_id not in done:
            writer.add(video_id, source, rows)
    writer.close()
    table = manifest.read_manifest(tmp_path)
    assert sorted(rows_by_clip(table)) == [r["clip_id"] for _, _, rows in _FAKE for r in rows]
    entries = manifest.read_log(mdir)
    assert sorted(e.video_id for e in entries) == [f"v{i}" for i in range(5)]  # each logged exactly once
    assert {p.name for p in mdir.iterdir()} == {manifest.LOG_NAME} | {e.part for e in entries}
    assert not _temp_parts(mdir)


def test_crash_points_are_inert_unless_the_environment_names_them(tmp_path, monkeypatch):
    monkeypatch.setenv(manifest.CRASH_ENV, "logged@99")  # another count: never reached here
    writer = manifest.ManifestWriter(tmp_path, videos_per_part=1)
    for video_id, source, rows in _FAKE[:2]:
        writer.add(video_id, source, rows)
    monkeypatch.setenv(manifest.CRASH_ENV, "part-renamed")  # another point
    manifest.crash_point("logged")
    monkeypatch.delenv(manifest.CRASH_ENV)
    manifest.crash_point("part-renamed")
    assert len(manifest.read_log(tmp_path / manifest.MANIFEST_DIR)) == 2
    assert set(manifest.CRASH_POINTS) == {"config-written", "result-received", "part-write", "part-renamed",
                                          "log-torn", "logged"}


@pytest.fixture(scope="session")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="the ray engine needs ray (pip install -e .[test])")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


def test_ray_engine_writes_the_same_manifest_and_resumes(ray_cluster, videos, reference, tmp_path):
    out = tmp_path / "ray"
    assert rows_by_clip(_run(videos, out, engine="ray", workers=2, videos_per_part=2)) == reference
    assert {e.part.split("-")[1] for e in manifest.read_log(out / "manifest")} == {"ray"}
    summary = run_curation(videos, out, CONFIG, engine="ray", resume=True)
    assert (summary.videos, summary.skipped) == (0, 6)


def crash_on_b(path: str, root: str):
    """A worker function that kills its process on b.mp4 (stands in for a decoder crash)."""
    if Path(path).name == "b.mp4":
        os._exit(3)
    return workers.work(path, root)


def test_a_crashing_worker_costs_only_its_video(videos, reference, tmp_path):
    jobs = list_videos(videos).paths
    results = list(engine._run_processes(jobs, engine._Run(videos, CONFIG, tmp_path, 2), work=crash_on_b))
    by_source = {Path(r.source).name: r for r in results}
    assert len(results) == 6 and set(by_source) == {"a.mp4", "b.mp4", "c.mkv", "d.mp4", "e.mov", "f.mp4"}
    assert by_source["b.mp4"].status == "error" and "died" in by_source["b.mp4"].rows[0]["error"]
    rows = {r["clip_id"]: r for res in results if res.status == "ok" for r in res.rows}
    assert rows == {k: v for k, v in reference.items() if not v["source"].endswith("b.mp4")}


def test_cli_curate_and_report(videos, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["curate", str(videos), "--out", str(out), "--engine", "inline", "--filter", "motion_score:bottom=0.5",
            "--write-keyframes", "--write-clips", "auto", "--set", "keyframe_max_side=64",
            "--set", "split.min_seconds=0.5", "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "6 video(s) curated" in printed and "report.html" in printed
    filtered = [r for r in pq.read_table(out / manifest.FILTERED_NAME).to_pylist() if r["status"] == "ok"]
    kept = [r for r in filtered if r["keep"]]
    assert 0 < len(kept) < len(filtered) and all("motion_score" in r["drop_reason"] for r in filtered
                                                   if not r["keep"])
    assert all((out / p).is_file() for r in filtered for p in r["keyframe_paths"]) and filtered[0]["keyframe_paths"]
    for r in filtered:  # clip files hold exactly the frames the row names (copies snap to keyframes)
        info = probe_video(out / r["clip_path"], count_frames=True)
        assert info.frame_count == r["num_frames"] and (info.width, info.height) == (r["width"], r["height"])
    modes = {json.loads(r["extra"])["clip_mode"] for r in filtered}
    assert modes <= {"copy", "reencode"} and "copy" in modes
    assert main(["curate", str(videos), "--out", str(out), "--engine", "inline", "--quiet"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["curate-report", str(out), "--filter", "none"]) == 0
    assert all(r["keep"] == (r["status"] == "ok") for r in pq.read_table(out / manifest.FILTERED_NAME).to_pylist())
    assert main(["curate-report", str(out)]) == 0  # no --filter: the last rules (none) again
    assert all(r["keep"] == (r["status"] == "ok") for r in pq.read_table(out / manifest.FILTERED_NAME).to_pylist())
    capsys.readouterr()
    assert main(["curate", str(videos), "--out", str(tmp_path / "x"), "--set", "nope=1"]) == 2
    assert "unknown config key" in capsys.readouterr().err


def test_clip_scores_captions_and_embeddings(videos, tmp_path):
    """CLIP image tower (an open_clip-format file), a user aesthetic head and a registered command captioner."""
    import torch
    from safetensors.torch import load_file, save_file

    from comfyui_svd_lab.svd_model.config import ImageEncoderConfig
    from comfyui_svd_lab.svd_model.curation.clip_scores import load_aesthetic_head
    from comfyui_svd_lab.svd_model.nn.image_encoder import OpenCLIPVisionTower

    torch.manual_seed(0)
    tower = OpenCLIPVisionTower(ImageEncoderConfig(width=64, layers=2, mlp_width=128, embed_dim=32, head_width=64))
    save_file({f"visual.{k}": v.contiguous() for k, v in tower.state_dict().items()}, tmp_path / "clip.safetensors")
    save_file({"fc.weight": torch.randn(1, 32), "fc.bias": torch.tensor([5.0])}, tmp_path / "head.safetensors")
    config = CONFIG.replace(text=False, clip_checkpoint=str(tmp_path / "clip.safetensors"), save_embeddings=True,
                            aesthetic_head=str(tmp_path / "head.safetensors"),
                            captioners=("scene",))
    registry = CaptionerRegistry([CaptionerEntry("scene", "image", argv=("/bin/sh", "-c", "echo a synthetic scene",
                                                                         "sh"))])
    jobs = engine.VideoList(videos, (videos / "a.mp4", videos / "c.mkv"))
    with pytest.raises(ConfigError, match="unknown config.captioners\\[0\\] 'scene'; registered captioners"):
        run_curation(jobs, tmp_path / "out", config, engine="inline", registry=CaptionerRegistry())
    run_curation(jobs, tmp_path / "out", config, engine="inline", registry=registry)
    rows = manifest.read_manifest(tmp_path / "out").to_pylist()
    head = load_aesthetic_head(tmp_path / "head.safetensors")
    assert len(rows) >= 3
    for r in rows:
        assert r["status"] == "ok" and r["caption_image"] == "a synthetic scene" and r["caption_video"] is None
        assert r["clip_score"] is None  # no text tower given: skipped, not failed
        emb = load_file(tmp_path / "out" / r["clip_embedding_path"])[r["clip_id"]]
        assert emb.shape == (3, 32)  # first, middle, last keyframe
        assert r["aesthetic"] == pytest.approx(head(emb.float()).mean().item(), abs=1e-2)
    assert len({r["aesthetic"] for r in rows}) == len(rows)


def test_one_video_function_never_raises(tmp_path):
    result = curate_video(tmp_path / "nothing.mp4", tmp_path, CONFIG, tmp_path)
    assert result.status == "error" and len(result.rows) == 1 and result.clips == 0
