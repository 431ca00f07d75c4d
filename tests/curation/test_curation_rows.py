"""No silent drops (issue 15): every span between cuts is a clip or a row with status 'dropped' and its reason;
the minimum clip length follows the finetuning defaults; dropped rows are counted and never trained on."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pyarrow.parquet as pq
import pytest

from comfyui_svd_lab.svd_model.curation import filtering, manifest, report
from comfyui_svd_lab.svd_model.curation.annotate import VideoAnnotation
from comfyui_svd_lab.svd_model.curation.clips import (
    DROP_REASONS,
    SplitConfig,
    min_seconds_for,
    split_clips,
    split_spans,
)
from comfyui_svd_lab.svd_model.curation.cuts import Cut
from comfyui_svd_lab.svd_model.curation.pipeline import CurationConfig, curate_video
from comfyui_svd_lab.svd_model.curation.synthetic import make_video
from comfyui_svd_lab.svd_model.errors import ConfigError
from comfyui_svd_lab.svd_model.training.config import DataConfig
from comfyui_svd_lab.svd_model.training.data import load_manifest, window_indices


def _annotation(n: int, fps: float, cuts: list[Cut]) -> VideoAnnotation:
    times = np.arange(n) / fps
    empty = np.zeros(0)
    return VideoAnnotation(
        path="x.mp4", fps=fps, num_frames=n, duration=n / fps, width=64, height=64, coded_width=64, coded_height=64,
        sar=Fraction(1), rotation=0, frame_times=times, cuts=tuple(cuts), motion_times=empty,
        motion_magnitudes=empty, motion_frames=np.zeros((0, 2), np.int64),
    )  # fmt: skip


CUTS = [
    Cut(100, 4.0, "hard", 9.0, 100, 1),
    Cut(104, 4.16, "hard", 7.0, 104, 1),  # a 4-frame shot: trimmed away (2 frames at each cut)
    Cut(140, 5.6, "flash", 6.0, 141, 1),  # 104..140 is 1.44 s after trimming: too short
    Cut(300, 12.0, "dissolve", 5.0, 311, 2),
    Cut(600, 24.0, "fade", 4.0, 620, 3),
]


def test_every_span_between_cuts_is_a_clip_or_a_dropped_row():
    ann = _annotation(700, 25.0, CUTS)
    cfg = SplitConfig(min_seconds=2.0, max_seconds=8.0, trim_frames=2)
    spans = split_spans(ann, cfg)
    got = [(s.start_frame, s.end_frame, s.index, s.drop.split(":")[0]) for s in spans]
    assert got == [
        (0, 98, 0, ""),
        (100, 104, -1, "trimmed away"),
        (106, 138, -1, "too short"),
        (140, 142, -1, "transition"),
        (144, 298, 1, ""),
        (300, 312, -1, "transition"),
        (314, 456, 2, ""),
        (456, 598, 3, ""),
        (600, 621, -1, "transition"),
        (623, 700, 4, ""),
    ]
    assert spans[2].drop == "too short: 1.28 s < 2.00 s minimum (32 frames)"
    assert spans[3].drop == "transition: flash of 2 frame(s)" and spans[3].cut_in == "flash"
    assert {s.drop.split(":")[0] for s in spans if s.drop} == set(DROP_REASONS)
    assert [s for s in spans if not s.drop] == split_clips(ann, cfg)
    # nothing is left out but the trimmed frames next to a cut
    covered = np.zeros(700, bool)
    for s in spans:
        assert not covered[s.start_frame : s.end_frame].any()  # no overlap
        covered[s.start_frame : s.end_frame] = True
    near_cut = np.zeros(700, bool)
    for c in CUTS:
        near_cut[c.frame - 2 : c.frame] = True
        after = c.end_frame + (0 if c.kind == "hard" else 1)
        near_cut[after : after + 2] = True
    assert (covered | near_cut).all()


def test_too_short_pieces_of_a_long_shot_are_dropped_not_lost():
    ann = _annotation(130, 25.0, [])  # 5.2 s at most 3 s a piece: two pieces of 2.6 s; min 2.8 s drops both
    spans = split_spans(ann, SplitConfig(min_seconds=2.8, max_seconds=3.0, trim_frames=0))
    assert [(s.start_frame, s.end_frame, s.cut_in, s.cut_out) for s in spans] == [(0, 65, "start", "split"),
                                                                                  (65, 130, "split", "end")]
    assert all(s.drop.startswith("too short: 2.60 s < 2.80 s") for s in spans)


def test_minimum_length_default_is_one_training_window():
    data = DataConfig()
    assert SplitConfig().min_seconds == min_seconds_for(data.num_frames, data.fps) == pytest.approx(2.0)
    assert min_seconds_for(25, 7.0) == pytest.approx(3.571, abs=1e-3)  # SVD-XT
    for fps in (7.0, 12.0, 23.976, 25.0, 30.0, 50.0, 60.0):
        n = math.ceil(SplitConfig().min_seconds * fps - 1e-9)  # the shortest clip kept at this source rate
        windows, _ = window_indices(n, fps, data.fps, data.num_frames, 1, np.random.default_rng(0))
        assert windows, fps
    # tight at the training rate itself: one frame less and the window does not fit
    assert window_indices(13, 7.0, 7.0, 14, 1, np.random.default_rng(0))[0] == []
    with pytest.raises(ConfigError):
        min_seconds_for(0, 7.0)


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    root = tmp_path_factory.mktemp("rows")
    truth = make_video(root / "v.mp4", size=(160, 96), shots=(60, 20, 70, 60),
                       transitions=("hard", "dip_black", "fade"), dip_frames=2, transition_frames=12,
                       motion=(1.0, 0.5, 1.0, 0.5), seed=5, preset="ultrafast")
    config = CurationConfig.from_dict({"text": False, "keyframe_max_side": 64})
    result = curate_video(root / "v.mp4", root, config, root / "out")
    return root, truth, result


def test_curated_video_rows_name_every_span(curated):
    _, truth, result = curated
    rows = result.rows
    assert [r["status"] for r in rows] == ["ok", "dropped", "dropped", "ok", "dropped", "ok"]
    assert result.status == "ok" and result.clips == 3
    assert [json.loads(r["extra"]).get("dropped") for r in rows] == [None, "too short", "transition", None,
                                                                     "transition", None]
    short, dip, fade = rows[1], rows[2], rows[4]
    assert short["error"].startswith("too short: 0.6") and short["drop_reason"] == f"dropped: {short['error']}"
    first, last, _ = truth.transitions[1]  # the 2-frame dip to black
    assert (dip["start_frame"], dip["end_frame"]) == (first, last + 1)
    assert dip["error"] == "transition: fade of 2 frame(s)"
    first, last, _ = truth.transitions[2]
    assert abs(fade["start_frame"] - first) <= 1 and abs(fade["end_frame"] - 1 - last) <= 1
    assert all(not r["keep"] and r["clip_index"] == -1 and r["motion_score"] is None for r in (short, dip, fade))
    ids = [r["clip_id"] for r in rows]
    assert len(set(ids)) == len(ids) and ids[1].endswith("_d0000") and ids[4].endswith("_d0002")
    assert manifest.video_status(["dropped", "dropped"]) == "empty"
    assert manifest.video_status(["dropped", "error"]) == "error"


def test_dropped_rows_are_counted_and_never_trained_on(curated):
    root, _, result = curated
    table = manifest.to_table(result.rows)
    filtered = filtering.apply_filters(table, [])
    assert filtered.kept == 3
    counts = filtered.reason_counts()
    assert counts["dropped: too short"] == 1 and counts["dropped: transition"] == 2
    assert report._counts(filtered.table)["dropped"] == 3 and report._counts(filtered.table)["empty"] == 0
    no_clip = [dict(r, status="dropped", keep=False, error="too short: 1.00 s < 2.00 s minimum",
                    video_id="other", clip_id=f"other_d{i:04d}") for i, r in enumerate(result.rows[1:3])]
    counts = report._counts(filtering.apply_filters(manifest.to_table([*result.rows, *no_clip]), []).table)
    assert (counts["videos"], counts["empty"], counts["clips"]) == (2, 1, 3)
    path = root / "filtered.parquet"
    pq.write_table(filtered.table, path)
    clips = load_manifest(path)
    assert sorted(c.clip_id for c in clips) == sorted(r["clip_id"] for r in result.rows if r["status"] == "ok")
    everything = load_manifest(path, only_kept=False)  # keep ignored: still only status 'ok'
    assert len(everything) == 3
