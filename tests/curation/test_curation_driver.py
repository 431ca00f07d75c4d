"""The curation driver's fixed costs and its folder bookkeeping: tables built without pyarrow's pandas import
(json_table / arrow_array / read_part give exactly what pyarrow's own converters give), no pandas in a whole
curate + filter + dedup + report, the CLI module imports no engine and the forkserver starts early with the
pipeline preloaded (a worker's first video imports nothing more), the faster connected-component labelling of
the text detector finds the same components, --overwrite removes a stale dedup.json, and --dedup --no-report
keeps the setting for the next filter pass."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from comfyui_svd_lab.cli import main
from comfyui_svd_lab.svd_model.curation import engine, manifest, workers
from comfyui_svd_lab.svd_model.curation.dedup import DEDUP_JSON
from comfyui_svd_lab.svd_model.curation.manifest import SCHEMA, arrow_array, empty_row, json_table, read_part, to_table
from comfyui_svd_lab.svd_model.curation.synthetic import make_video


def _rows() -> list[dict]:
    """Rows with the values JSON must carry exactly: text with quotes, escapes, newlines and non-ASCII, None,
    int64 extremes, floats that need all 17 digits, lists (empty and not), booleans."""
    rows = []
    for i, (text, value) in enumerate([("plain", 0.1 + 0.2), ('q"uo\\te\n\t', 1e-300), ("é中\u2028\U0001f600", -0.0),
                                       ("", 2.0**52 + 1), ("x" * 5000, None)]):
        row = empty_row()
        row.update(clip_id=f"v_{i:04d}", video_id="v", source=text, clip_index=i, status="ok", start_frame=2**63 - 1,
                   end_frame=-(2**63), start_time=value, fps=25.0, width=7, keyframe_paths=[text, "b"] if i else [],
                   keep=bool(i % 2), extra=json.dumps({"k": text}), motion_score=None if i == 2 else 1 / 3)
        rows.append(row)
    return rows


def test_json_tables_equal_pyarrows_own_conversion():
    rows = _rows()
    fast = to_table(rows)
    slow = pa.Table.from_pylist(rows, schema=SCHEMA)
    assert json_table(rows, SCHEMA) is not None  # these rows take the JSON path
    assert fast.equals(slow) and fast.schema.equals(SCHEMA, check_metadata=True)
    assert fast.to_pylist() == slow.to_pylist()
    assert math.copysign(1.0, fast["start_time"][2].as_py()) == -1.0  # -0.0 keeps its sign
    assert to_table([]).equals(SCHEMA.empty_table()) and len(to_table([])) == 0
    # what JSON cannot carry exactly goes through pyarrow's converter: same values, same errors
    odd = [{**rows[0], "start_time": math.nan}, {**rows[1], "width": np.int64(3)}, {**rows[2], "keep": np.bool_(1)}]
    for row in odd:
        assert json_table([row], SCHEMA) is None
    got = to_table(odd).to_pylist()
    assert math.isnan(got[0]["start_time"]) and got[1]["width"] == 3 and got[2]["keep"] is True
    raised = 0
    for bad in ({"clip_index": "3"}, {"start_frame": 1.5}, {"start_frame": 3.0}, {"source": "\udcff"},
                {"width": 2**40}, {"keyframe_paths": "ab"}, {"keep": 1}, {"clip_id": 5}):
        row = {**rows[0], **bad}
        try:
            want = pa.Table.from_pylist([row], schema=SCHEMA)
        except Exception as exc:  # noqa: BLE001 - whatever pyarrow raises, to_table must raise too
            raised += 1
            with pytest.raises(type(exc)):
                to_table([row])
        else:
            assert to_table([row]).equals(want)
    assert raised >= 4


def test_arrow_arrays_equal_pa_array_across_reader_blocks():
    texts = [None if i % 7 == 0 else f"reason {i} " + "é" * (i % 50) for i in range(40000)]  # > 1 MiB of JSON
    flags = [i % 3 == 0 for i in range(40000)]
    for values, kind in ((texts, pa.string()), (flags, pa.bool_()), ([], pa.string())):
        got = arrow_array(values, kind)
        assert isinstance(got, pa.Array) and got.equals(pa.array(values, kind))


def test_parts_are_read_as_written_and_older_ones_are_filled(tmp_path):
    table = to_table(_rows())
    pq.write_table(table, tmp_path / "part.parquet")
    assert read_part(tmp_path / "part.parquet").equals(table)
    older = table.drop_columns(["text_area", "extra"])  # a part from before these columns existed
    pq.write_table(older, tmp_path / "old.parquet")
    filled = read_part(tmp_path / "old.parquet")
    assert filled.schema.equals(SCHEMA) and filled["text_area"].null_count == len(table)
    assert filled.select(older.column_names).equals(older)


@pytest.mark.skipif(importlib.util.find_spec("pandas") is None, reason="pandas is not installed: nothing to avoid")
def test_a_whole_run_with_filter_dedup_and_report_never_imports_pandas(tmp_path):
    make_video(tmp_path / "in" / "a.mp4", shots=(40, 45), transitions=("hard",), seed=1)
    script = textwrap.dedent(f"""
        import sys
        from comfyui_svd_lab.cli import main
        code = main(["curate", {str(tmp_path / "in")!r}, "--out", {str(tmp_path / "out")!r}, "--engine", "inline",
                     "--quiet", "--dedup", "--set", "split.min_seconds=1.0"])
        code += main(["curate-report", {str(tmp_path / "out")!r}, "--filter", "none"])
        print(code, "pandas" in sys.modules)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-2:] == ["0", "False"]
    assert (tmp_path / "out" / "report.html").is_file() and (tmp_path / "out" / DEDUP_JSON).is_file()


def test_the_cli_parser_imports_no_engine_and_the_forkserver_preloads_the_pipeline():
    script = textwrap.dedent("""
        import argparse, sys
        import comfyui_svd_lab.cli.curate as curate
        parser = argparse.ArgumentParser()
        curate.add_commands(parser.add_subparsers())  # parsing comes before the engine is known
        parser.parse_args(["curate", "in", "--out", "out", "--dedup"])
        heavy = sorted(m for m in ("av", "cv2", "numpy", "pyarrow") if m in sys.modules)
        from multiprocessing import forkserver
        from comfyui_svd_lab.svd_model.curation.workers import start_server
        started = start_server()
        print(heavy, started, forkserver._forkserver._forkserver_pid is not None,
              "comfyui_svd_lab.svd_model.curation.worker_preload" in forkserver._forkserver._preload_modules)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["[]", "True", "True", "True"]
    assert workers.ENGINES == tuple(engine._ENGINES)  # noqa: SLF001 - the light list names every engine


def test_a_workers_first_video_imports_nothing_the_forkserver_could_have_loaded(tmp_path):
    """After the forkserver's preload, a worker's first video (default config: cuts, motion, text, hash,
    thumbnails) imports no module of the pack, numpy, PIL, pyarrow or pandas: each would cost every worker its
    import time during its first video (the perceptual hash once pulled in dedup.py, the manifest and pyarrow)."""
    make_video(tmp_path / "a.mp4", shots=(40, 45), transitions=("hard",), seed=1)
    script = textwrap.dedent(f"""
        import sys, tempfile
        import comfyui_svd_lab.svd_model.curation.workers, comfyui_svd_lab.svd_model.curation.worker_preload
        from comfyui_svd_lab.svd_model.curation.pipeline import CurationConfig, curate_video
        before = set(sys.modules)
        config = CurationConfig.from_dict({{"split": {{"min_seconds": 1.0}}}})
        result = curate_video({str(tmp_path / "a.mp4")!r}, None, config, {str(tmp_path / "out")!r})
        roots = ("comfyui_svd_lab", "numpy", "PIL", "pyarrow", "pandas")
        print(result.status, sorted(m for m in set(sys.modules) - before if m.split(".")[0] in roots))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["ok", "[]"]


def test_block_based_labelling_finds_the_default_components():
    """The text detector's components come from Grana's BBDT scan instead of the default (Spaghetti): same
    labels and statistics on blobs, strokes, single pixels, diagonals and frame edges."""
    rng = np.random.default_rng(3)
    for trial in range(20):
        mask = (rng.random((97 + trial, 131)) < 0.08 + 0.02 * (trial % 5)).astype(np.uint8)
        mask = cv2.dilate(mask, np.ones((2, 2), np.uint8)) if trial % 2 else mask
        mask[0, :: 3] = 1
        want = cv2.connectedComponentsWithStats(mask, connectivity=8)
        got = cv2.connectedComponentsWithStatsWithAlgorithm(mask, 8, cv2.CV_32S, cv2.CCL_BBDT)
        assert got[0] == want[0]
        assert all(np.array_equal(a, b) for a, b in zip(got[1:], want[1:], strict=True))


@pytest.fixture(scope="module")
def twins(tmp_path_factory) -> Path:
    """Two byte-identical videos under two names: near-duplicates of each other."""
    folder = tmp_path_factory.mktemp("twins")
    make_video(folder / "a.mp4", shots=(40, 45), transitions=("hard",), seed=1)
    shutil.copyfile(folder / "a.mp4", folder / "b.mp4")
    return folder


def _duplicates(out: Path) -> int:
    return sum(r["drop_reason"].startswith("duplicate of") for r in pq.read_table(out / manifest.FILTERED_NAME)
               .to_pylist())


CURATE = ["--engine", "inline", "--quiet", "--filter", "none", "--set", "split.min_seconds=1.0"]


def test_overwrite_removes_the_old_runs_dedup_setting(twins, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["curate", str(twins), "--out", str(out), "--dedup", *CURATE]) == 0
    assert (out / DEDUP_JSON).is_file() and _duplicates(out) > 0
    assert "near-duplicates" in capsys.readouterr().out
    assert main(["curate", str(twins), "--out", str(out), "--overwrite", *CURATE]) == 0
    assert not (out / DEDUP_JSON).exists() and _duplicates(out) == 0
    assert "near-duplicates" not in capsys.readouterr().out


def test_dedup_without_report_is_kept_for_the_next_filter_pass(twins, tmp_path):
    out = tmp_path / "out"
    assert main(["curate", str(twins), "--out", str(out), "--dedup", "--dedup-hamming", "3", "--no-report",
                 *CURATE]) == 0
    assert json.loads((out / DEDUP_JSON).read_text())["config"]["hamming"] == 3
    assert not (out / manifest.FILTERED_NAME).exists()  # no filter pass yet
    assert main(["curate-report", str(out), "--filter", "none"]) == 0
    assert _duplicates(out) > 0
