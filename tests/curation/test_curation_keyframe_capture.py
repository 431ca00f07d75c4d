"""Keyframe capture: the analysis decode keeps the exact pictures of every clip's keyframes (byte-identical to
frames_at.read_frames_at's), so KeyframeCache decodes nothing again; within a memory budget, with a fallback."""

from __future__ import annotations

import dataclasses

import av
import numpy as np
import pytest

from comfyui_svd_lab.svd_model.curation import annotate, clips, frames_at, pipeline
from comfyui_svd_lab.svd_model.curation.records import CurationConfig, KeyframeCache, VideoRef, keyframe_capture
from comfyui_svd_lab.svd_model.curation.synthetic import make_video


def _video(tmp_path):
    path = tmp_path / "v.mp4"
    make_video(path, shots=(60, 75, 55), size=(160, 96), motion=(2.0, 3.0, 1.0), gop=30, seed=3)
    return path


def _exact(path, ann, config):
    spans = clips.split_clips(ann, config.split)
    times = [t for s in spans for t in clips.keyframe_times(s, config.keyframes)]
    return spans, times, frames_at.read_frames_at(path, times, max_side=config.keyframe_max_side or None)


def test_captured_pictures_equal_exact_reads_and_cuts_match(tmp_path):
    path = _video(tmp_path)
    config = CurationConfig(keyframe_max_side=128, keyframe_source="exact")
    ann = annotate.annotate_video(path, config.cut, config.motion, capture=keyframe_capture(config))
    plain = annotate.annotate_video(path, config.cut, config.motion)
    assert [c.frame for c in ann.cuts] == [c.frame for c in plain.cuts] and len(ann.cuts) == 2
    assert not plain.pictures
    spans, times, reference = _exact(path, ann, config)
    assert len(spans) == 3
    wanted = {int(np.searchsorted(ann.frame_times, t + 1e-6, side="right")) - 1 for t in times}
    assert set(ann.pictures) == wanted and len(wanted) == 9
    for t, ref in zip(times, reference, strict=True):
        i = int(np.searchsorted(ann.frame_times, t + 1e-6, side="right")) - 1
        assert ann.pictures[i].shape == ref.shape == (77, 128, 3)
        assert np.array_equal(ann.pictures[i], ref)  # the same bytes as the second decode gave


def test_cache_uses_captured_pictures_without_decoding(tmp_path, monkeypatch):
    path = _video(tmp_path)
    config = CurationConfig(keyframe_max_side=128, keyframe_source="exact")
    ref = VideoRef.of(path, tmp_path)
    ann = pipeline.annotate_video(ref, config)
    records = [r for r in pipeline.split_records(ref, ann, config) if r.ok]
    _, _, reference = _exact(path, ann, config)
    asked: list[int] = []
    real = frames_at.read_frames_at

    def counting(src, times, **kwargs):
        asked.append(len(times))
        return real(src, times, **kwargs)

    monkeypatch.setattr(frames_at, "read_frames_at", counting)
    cache = KeyframeCache(config)
    cache.prefetch(records)
    got = [f for rec in records for f in cache.get(rec)]
    assert sum(asked) == 0  # nothing decoded again
    assert all(np.array_equal(a, b) for a, b in zip(got, reference, strict=True))
    # a picture the capture lost (budget, damage) is read instead, exactly
    lost = dataclasses.replace(ann, pictures={k: v for k, v in ann.pictures.items() if k != min(ann.pictures)})
    for rec in records:
        rec.annotation = lost
    again = KeyframeCache(config)
    again.prefetch(records)
    assert sum(asked) == 1
    assert all(np.array_equal(a, b) for a, b in zip([f for r in records for f in again.get(r)], reference,
                                                    strict=True))


def test_budget_bounds_what_is_held(tmp_path):
    path = _video(tmp_path)
    config = CurationConfig(keyframe_max_side=128, keyframe_source="exact")
    capture = keyframe_capture(config)
    frame_bytes = 160 * 96 * 3 // 2
    # too small for the detector's latency: no capture at all (the keyframes are read later)
    none = annotate.annotate_video(path, config.cut, config.motion,
                                   capture=dataclasses.replace(capture, budget_bytes=frame_bytes * 50))
    assert none.pictures == {}
    # the holder never exceeds its budget: the oldest undecided frames are let go
    info = frames_at.open_info(path)
    held = annotate._Held(dataclasses.replace(capture, budget_bytes=12 * frame_bytes + 1000), info)
    container = av.open(str(path))
    try:
        for i, frame in enumerate(container.decode(video=0)):
            held.add(i, frame)
            assert held.bytes <= held.capture.budget_bytes
    finally:
        container.close()
    assert 0 < len(held.frames) <= 12 and held.dropped == 190 - len(held.frames)
    last = max(held.frames)
    held.decide(191, {5, last})  # 5 was let go: only the last frame is converted
    assert set(held.kept) == {last} and held.kept[last].shape == (77, 128, 3) and held.bytes == 0


def test_capture_only_for_the_exact_source_when_keyframes_are_needed():
    assert keyframe_capture(CurationConfig()) is not None
    assert keyframe_capture(CurationConfig(keyframe_source="intra")) is None
    off = CurationConfig(text=False, perceptual_hash=False)
    assert not off.needs_keyframes and keyframe_capture(off) is None


def test_capture_budget_is_a_config_setting_outside_the_hash():
    from comfyui_svd_lab.svd_model.curation.records import CurationConfig, keyframe_capture
    from comfyui_svd_lab.svd_model.errors import ConfigError

    base = CurationConfig()
    assert keyframe_capture(base).budget_bytes == 512 * 2**20
    assert keyframe_capture(base.replace(keyframe_capture_mib=64)).budget_bytes == 64 * 2**20
    assert keyframe_capture(base.replace(keyframe_capture_mib=0)) is None  # 0: the second decode, as before
    assert base.replace(keyframe_capture_mib=64).hash() == base.hash()  # the same pictures either way
    with pytest.raises(ConfigError, match="keyframe_capture_mib"):
        CurationConfig.from_dict({"keyframe_capture_mib": -1})
