"""Curation manifest (parts + completion log, crash recovery), the filter pass and the HTML report, on
hand-made rows (no decoding here; the engine tests run real videos)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from comfyui_svd_lab.svd_model.curation import manifest as mf
from comfyui_svd_lab.svd_model.curation import manifest_rows
from comfyui_svd_lab.svd_model.curation.filtering import (
    FILTER_JSON,
    FilterRule,
    apply_filters,
    filter_manifest,
    load_rules,
    parse_rules,
)
from comfyui_svd_lab.svd_model.curation.report import build_report
from comfyui_svd_lab.svd_model.errors import ConfigError, InputError


def clip_row(vid: str, index: int, **values) -> dict:
    row = {"clip_id": f"{vid}_{index:04d}", "video_id": vid, "source": f"/data/{vid}.mp4", "source_rel": f"{vid}.mp4",
           "clip_index": index, "status": "ok", "start_frame": 10 * index, "end_frame": 10 * index + 10,
           "num_frames": 10, "start_time": 0.4 * index, "end_time": 0.4 * index + 0.4, "duration": 0.4, "fps": 25.0,
           "width": 64, "height": 48, "keep": True}
    row.update(values)
    return row


def video_rows(vid: str, n: int = 2) -> list[dict]:
    return [clip_row(vid, i, motion_score=float(i)) for i in range(n)]


def test_schema_has_the_trainer_columns_and_rejects_unknown_keys():
    assert set(mf.TRAINER_COLUMNS) <= set(mf.SCHEMA.names)
    table = mf.to_table([clip_row("a", 0)])
    assert table.schema == mf.SCHEMA and table["keyframe_paths"].to_pylist() == [[]]
    with pytest.raises(InputError, match="unknown columns"):
        mf.to_table([{**clip_row("a", 0), "motion": 1.0}])


def test_writer_parts_log_and_reader(tmp_path):
    writer = mf.ManifestWriter(tmp_path, worker="t", videos_per_part=2, flush_seconds=1e9)
    assert not writer.add("a", "/data/a.mp4", video_rows("a"))
    assert writer.add("b", "/data/b.mp4", video_rows("b", 3))  # second video: a part is flushed
    writer.add("c", "/data/c.mp4", video_rows("c", 1))
    writer.close()
    parts = sorted(p.name for p in (tmp_path / "manifest").glob("part-*.parquet"))
    assert parts == ["part-t-000000.parquet", "part-t-000001.parquet"]
    log = mf.read_log(tmp_path / "manifest")
    assert [(e.video_id, e.part, e.rows) for e in log] == [("a", parts[0], 2), ("b", parts[0], 3),
                                                           ("c", parts[1], 1)]
    table = mf.read_manifest(tmp_path)
    assert table["clip_id"].to_pylist() == ["a_0000", "a_0001", "b_0000", "b_0001", "b_0002", "c_0000"]
    # a new writer on the same folder continues the numbering instead of overwriting
    writer = mf.ManifestWriter(tmp_path, worker="t", videos_per_part=1)
    writer.add("d", "/data/d.mp4", video_rows("d", 1))
    assert (tmp_path / "manifest" / "part-t-000002.parquet").is_file()


def test_recovery_after_a_kill_at_every_stage(tmp_path):
    """Simulate the states a SIGKILL can leave: temp file, unlogged part, torn line, half-logged part."""
    writer = mf.ManifestWriter(tmp_path, worker="t", videos_per_part=1)
    writer.add("a", "/data/a.mp4", video_rows("a"))
    mdir = tmp_path / "manifest"
    # killed after writing a part but before logging it, and while writing a temp file
    mf.write_table_atomic(mf.to_table(video_rows("b")), mdir / "part-t-000001.parquet")
    (mdir / ".part-t-000002.parquet.123.tmp").write_bytes(b"PAR1 half")
    # a two-video part whose log append was torn after the first line and in the middle of the second
    mf.write_table_atomic(mf.to_table(video_rows("c") + video_rows("d")), mdir / "part-t-000003.parquet")
    with open(mdir / mf.LOG_NAME, "a") as handle:
        handle.write(json.dumps({"video_id": "c", "source": "/data/c.mp4", "part": "part-t-000003.parquet",
                                 "rows": 2}) + "\n" + '{"video_id": "d", "sou')
    assert set(mf.completed(mdir)) == {"a", "c"}
    table = mf.read_manifest(tmp_path)  # readers ignore what is not logged, even inside a logged part
    assert sorted(set(table["video_id"].to_pylist())) == ["a", "c"]
    writer = mf.ManifestWriter(tmp_path, worker="t", videos_per_part=1)  # restart: repair
    assert sorted(p.name for p in mdir.iterdir()) == [mf.LOG_NAME, "part-t-000000.parquet",
                                                      "part-t-000003.parquet"]
    assert (mdir / mf.LOG_NAME).read_bytes().endswith(b"\n")
    writer.add("d", "/data/d.mp4", video_rows("d"))
    writer.add("b", "/data/b.mp4", video_rows("b"))
    table = mf.read_manifest(tmp_path)
    ids = table["clip_id"].to_pylist()
    assert len(ids) == len(set(ids)) == 8 and sorted(set(table["video_id"].to_pylist())) == ["a", "b", "c", "d"]


def test_changed_source_supersedes_its_old_rows(tmp_path):
    writer = mf.ManifestWriter(tmp_path, worker="t", videos_per_part=1)
    writer.add("old", "/data/x.mp4", video_rows("old", 3))
    writer.add("new", "/data/x.mp4", video_rows("new", 1))
    assert mf.read_manifest(tmp_path)["video_id"].to_pylist() == ["new"]


def test_missing_manifest_and_bad_worker_label(tmp_path):
    with pytest.raises(InputError, match="no curation manifest"):
        mf.read_manifest(tmp_path)
    with pytest.raises(InputError, match="worker label"):
        mf.ManifestWriter(tmp_path, worker="a-b")


# ------------------------------------------------------------------------------------------ filtering


def scored_table(n: int = 40):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        rows.append(clip_row(f"v{i // 4:02d}", i % 4, motion_score=float(rng.uniform(0, 10)),
                             text_area=float(rng.uniform(0, 0.2)), aesthetic=None))
    rows[0]["motion_score"] = rows[1]["motion_score"] = 0.0  # ties at the bottom
    rows.append({**mf.empty_row(), "clip_id": "bad_err", "video_id": "bad", "source": "/data/bad.mp4",
                 "source_rel": "bad.mp4", "clip_index": -1, "status": "error", "error": "no video stream"})
    return mf.to_table(rows)


def test_rule_parsing_and_presets():
    assert parse_rules(["motion_score:bottom=0.25, text_area:max=0.07"]) == [
        FilterRule("motion_score", "bottom", 0.25), FilterRule("text_area", "max", 0.07)]
    assert [r.score for r in parse_rules("svd")] == ["motion_score", "text_area", "aesthetic", "clip_score"]
    assert parse_rules("none") == []
    for bad, match in [("motion:bottom=0.2", "not a numeric"), ("motion_score:lowest=0.2", "mode"),
                       ("motion_score:bottom=25", "fraction"), ("motion_score>3", "SCORE:MODE=VALUE")]:
        with pytest.raises(ConfigError, match=match):
            parse_rules(bad)


def test_fraction_rules_are_rank_based_over_the_whole_table():
    table = scored_table()
    result = apply_filters(table, parse_rules("motion_score:bottom=0.25, text_area:top=0.1, aesthetic:min=5"))
    rows = result.table.to_pylist()
    ok = [r for r in rows if r["status"] == "ok"]
    motion = [r for r in ok if "motion_score in the lowest 25%" in r["drop_reason"]]
    text = [r for r in ok if "text_area in the highest 10%" in r["drop_reason"]]
    assert len(motion) == 10 and len(text) == 4  # exactly round(f * n) even with ties
    kept_motion = [r["motion_score"] for r in ok if r not in motion]
    assert max(r["motion_score"] for r in motion) <= min(kept_motion)
    t_motion, t_text, t_aes = result.thresholds
    assert t_motion.threshold == min(kept_motion) and t_motion.dropped == 10 and t_motion.considered == 40
    assert t_text.threshold == max(r["text_area"] for r in ok if r not in text)
    assert t_aes.note and t_aes.dropped == 0 and t_aes.missing == 40  # no clip has an aesthetic score
    for r in rows:  # every dropped row says why; kept rows have no reason
        assert r["keep"] == (not r["drop_reason"])
        assert r["keep"] == (r["status"] == "ok" and r not in motion and r not in text)
    assert rows[-1]["drop_reason"] == "error: no video stream"
    counts = result.reason_counts()
    assert counts["status error"] == 1 and counts[t_motion.reason] == 10 and result.kept == 40 - len(
        {r["clip_id"] for r in motion + text})


def test_absolute_rules_and_filter_pass_files(tmp_path):
    writer = mf.ManifestWriter(tmp_path, worker="t", videos_per_part=100)
    table = scored_table().to_pylist()
    for vid in sorted({r["video_id"] for r in table}):
        writer.add(vid, f"/data/{vid}.mp4", [r for r in table if r["video_id"] == vid])
    writer.close()
    rules = parse_rules("motion_score:min=5, text_area:max=0.1")
    result = filter_manifest(tmp_path, rules)
    written = pq.read_table(tmp_path / mf.FILTERED_NAME)
    assert written.equals(result.table)
    for r in written.to_pylist():
        if r["status"] == "ok":
            assert r["keep"] == (r["motion_score"] >= 5 and r["text_area"] <= 0.1)
    assert load_rules(tmp_path) == rules
    assert json.loads((tmp_path / FILTER_JSON).read_text())["kept"] == result.kept


# --------------------------------------------------------------------------------------------- report


def test_report_is_self_contained_with_histograms_thumbnails_and_errors(tmp_path):
    rows = scored_table(16).to_pylist()
    for r in rows:
        if r["status"] == "ok":  # keyframes written by the run: the report thumbnails them
            rel = f"keyframes/{r['clip_id']}_middle.jpg"
            (tmp_path / "keyframes").mkdir(exist_ok=True)
            shade = int(r["motion_score"] * 25)
            Image.new("RGB", (64, 48), (shade, 100, 200)).save(tmp_path / rel)
            r["keyframe_paths"] = [rel]
    result = apply_filters(mf.to_table(rows), parse_rules("motion_score:bottom=0.25, text_area:max=0.15"))
    info = build_report(tmp_path, result, per_side=3)
    page = info.path.read_text()
    assert info.path == tmp_path / "report.html"
    assert page.count("<svg") == 3  # motion, text and duration have values; aesthetic and clip_score not
    assert "no clip has aesthetic" in page
    assert page.count('stroke-dasharray') == 2  # one threshold line per rule
    assert page.count("data:image/jpeg;base64,") == 12  # 3 passing + 3 dropped per rule
    assert "no video stream" in page and "bad.mp4" in page
    assert not re.search(r'src="(?!data:)', page)  # nothing outside the file
    assert info.counts["errors"] == 1 and info.counts["clips"] == 16 and info.counts["kept"] == result.kept
    assert "motion_score:bottom=0.25: 4 dropped" in info.summary()


def test_the_worker_side_pipeline_imports_no_pyarrow():
    """The per-video pipeline (preloaded by the forkserver, run in every worker) builds rows from the Arrow-free
    manifest_rows module; only the driver's manifest.py imports pyarrow (about 0.07-0.14 s of a worker's start).
    The local engine's job function is pickled by reference, so a worker imports its module before its first
    video: that module must not be the engine (which imports manifest.py)."""
    import inspect

    from comfyui_svd_lab.svd_model.curation import engine

    job = inspect.signature(engine._run_processes).parameters["work"].default
    script = ("import sys; import comfyui_svd_lab.svd_model.curation.pipeline, comfyui_svd_lab.svd_model.curation."
              f"workers, {job.__module__}; print(sorted(m for m in sys.modules if m.split('.')[0] == 'pyarrow'))")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"
    # one definition of the columns: the Arrow schema is the light table's names, in order, with matching types
    assert mf.SCHEMA.names == list(manifest_rows.COLUMN_SPECS)
    expected = [pa.list_(pa.string()) if kind == "list<string>" else pa.type_for_alias(kind)
                for kind, _ in manifest_rows.COLUMN_SPECS.values()]
    assert [field.type for field in mf.SCHEMA] == expected
    assert mf.empty_row() == manifest_rows.empty_row() and set(mf.empty_row()) == set(mf.SCHEMA.names)
