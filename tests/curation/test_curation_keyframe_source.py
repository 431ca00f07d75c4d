"""keyframe_source 'intra': each keyframe from the nearest intra frame inside the clip within tolerance, decoded
alone and byte-identical to the exact read of that frame; the exact frame where no intra frame is near."""

from __future__ import annotations

import json

import numpy as np
import pytest

from comfyui_svd_lab.svd_model.curation import frames_at
from comfyui_svd_lab.svd_model.curation.clips import ClipSpan, intra_keyframe_times, keyframe_times, packet_index
from comfyui_svd_lab.svd_model.curation.manifest import empty_row
from comfyui_svd_lab.svd_model.curation.records import ClipRecord, CurationConfig, KeyframeCache
from comfyui_svd_lab.svd_model.curation.synthetic import make_video
from comfyui_svd_lab.svd_model.errors import ConfigError

FPS = 25


def _span(a: int, b: int) -> ClipSpan:
    """Frames a..b-1 of a constant 25 fps video (pts = i / 25)."""
    return ClipSpan(0, a, b, a / FPS, b / FPS, "hard", "hard", 1.0, 1.0, middle_time=((a + b) // 2) / FPS,
                    last_time=(b - 1) / FPS)


def _record(path, span: ClipSpan, n: int = 0) -> ClipRecord:
    row = empty_row()
    row.update(clip_id=f"v_{n:04d}", video_id="v", source=str(path), status="ok")
    return ClipRecord(row, span)


def test_selection_inside_clip_within_tolerance_and_distinct():
    span = _span(10, 110)  # 0.4 .. 4.36 s, 4 s long: tolerance max(0.5, 0.4) = 0.5 s
    intra = np.array([0.0, 0.6, 2.5, 3.0, 4.4])  # 0.0 before the clip, 4.4 after its last frame
    got = intra_keyframe_times(intra, span, ("first", "middle", "last"))
    assert got == [0.6, 2.5, None]  # middle 2.4 -> 2.5; last 4.36 has only 3.0 (too far) and 4.4 (outside)
    # the 0.5 s bound: first at 0.4 s takes 0.85 s, not 0.95 s
    assert intra_keyframe_times(np.array([0.85]), span, ("first",)) == [0.85]
    assert intra_keyframe_times(np.array([0.95]), span, ("first",)) == [None]
    long = _span(0, 500)  # 20 s: tolerance 10 % = 2 s
    assert intra_keyframe_times(np.array([1.9, 11.5, 18.2]), long, ("first", "middle", "last")) == [1.9, 11.5, 18.2]
    assert intra_keyframe_times(np.array([2.1]), long, ("first",)) == [None]
    # one intra frame never serves two keyframes of a clip
    short = _span(0, 50)  # 0 .. 1.96 s, middle 1.0 s
    assert intra_keyframe_times(np.array([0.5]), short, ("first", "middle")) == [0.5, None]
    assert keyframe_times(span, ("last", "first")) == [span.last_time, span.start_time]


def test_config_option_validated_and_hashed():
    base = CurationConfig()
    assert base.keyframe_source == "reference"  # the default since reference keyframes exist
    exact = base.replace(keyframe_source="exact")
    intra = base.replace(keyframe_source="intra")
    assert len({exact.hash(), intra.hash(), base.hash()}) == 3
    assert CurationConfig.from_dict({"keyframe_source": "intra"}).hash() == intra.hash()
    # 'exact' keeps the hash the default config had before the option existed (and before 'reference' became the
    # default, commit b7bf0b4): manifests from then resume with --set keyframe_source=exact
    assert exact.hash() == "9439d3f0d049"
    with pytest.raises(ConfigError, match="keyframe_source"):
        CurationConfig(keyframe_source="nearest")


def test_intra_frames_equal_exact_decode_and_fall_back(tmp_path):
    path = tmp_path / "v.mp4"
    make_video(path, shots=(150,), size=(160, 96), motion=(3.0,), gop=25, seed=5)  # keyframes every 1 s
    keys = packet_index(path).keyframe_times
    assert len(keys) >= 5
    # intra frames at 0, 1, 2, ... s: all three near; only the middle one near; none inside the clip
    spans = [_span(20, 130), _span(28, 124), _span(3, 23)]
    expect = [[True, True, True], [False, True, False], [False, False, False]]
    config = CurationConfig(keyframe_source="intra", keyframe_max_side=0)
    cache = KeyframeCache(config)
    records = [_record(path, s, n) for n, s in enumerate(spans)]
    cache.prefetch(records)
    exact_cache = KeyframeCache(CurationConfig(keyframe_max_side=0))
    for rec in records:
        extra = json.loads(rec.row["extra"])
        used, was_intra = extra["keyframe_times"], extra["keyframe_intra"]
        span = rec.span
        tol = max(0.5, 0.1 * span.duration)
        exact = keyframe_times(span, config.keyframes)
        frames = cache.get(rec)
        assert len(frames) == 3 and len(set(used)) == 3
        reference = frames_at.read_frames_at(path, used)
        for t, t_exact, flag, frame, ref in zip(used, exact, was_intra, frames, reference, strict=True):
            assert span.start_time - 1e-6 <= t <= span.last_time + 1e-6
            assert np.array_equal(frame, ref)  # byte-identical to the exact decode of that frame
            if flag:
                assert np.isclose(keys, t).any() and abs(t - t_exact) <= tol + 1e-6
            else:
                assert t == t_exact
        assert was_intra == expect[int(rec.clip_id[-1])]
        if not any(was_intra):
            assert all(np.array_equal(a, b) for a, b in zip(frames, exact_cache.get(rec), strict=True))
    # the per-clip path (no prefetch) chooses the same frames
    single = KeyframeCache(config)
    assert all(np.array_equal(a, b) for a, b in zip(single.get(records[0]), cache.get(records[0]), strict=True))


def test_read_intra_frames_refuses_a_non_intra_time(tmp_path):
    path = tmp_path / "v.mp4"
    make_video(path, shots=(40,), size=(96, 64), gop=20, seed=1)
    from comfyui_svd_lab.svd_model.errors import InputError

    with pytest.raises(InputError, match="no intra frame"):
        frames_at.read_intra_frames(path, [5 / FPS])


def test_unusable_intra_frames_fall_back_to_exact(tmp_path, monkeypatch):
    path = tmp_path / "v.mp4"
    make_video(path, shots=(60,), size=(96, 64), gop=10, seed=2)
    from comfyui_svd_lab.svd_model.errors import InputError

    def refuse(*args, **kwargs):
        raise InputError("no intra frame at t=0.400s")

    monkeypatch.setattr(frames_at, "read_intra_frames", refuse)
    rec = _record(path, _span(5, 55))
    frames = KeyframeCache(CurationConfig(keyframe_source="intra")).get(rec)
    assert json.loads(rec.row["extra"])["keyframe_intra"] == [False, False, False]
    exact = KeyframeCache(CurationConfig()).get(_record(path, _span(5, 55)))
    assert all(np.array_equal(a, b) for a, b in zip(frames, exact, strict=True))
