"""Curation decode, motion, clip splitting/writing, keyframes, timestamps and bad inputs.

Every video is synthetic (``svd_model.curation.synthetic.make_video``) and made in a temporary folder.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from comfyui_svd_lab.svd_model.curation import decode as decode_mod
from comfyui_svd_lab.svd_model.curation import frames_at as frames_at_mod
from comfyui_svd_lab.svd_model.curation.annotate import VideoAnnotation, annotate_video
from comfyui_svd_lab.svd_model.curation.clips import (
    ClipSpan,
    SplitConfig,
    clip_motion,
    keyframes,
    packet_index,
    split_clips,
    write_clip,
)
from comfyui_svd_lab.svd_model.curation.cuts import Cut
from comfyui_svd_lab.svd_model.curation.decode import DecodeStats, sample_indices, stream_luma
from comfyui_svd_lab.svd_model.curation.frames_at import read_frames_at
from comfyui_svd_lab.svd_model.curation.motion import MotionCalibration, motion_bucket_id, to_paper_units
from comfyui_svd_lab.svd_model.curation.synthetic import make_video
from comfyui_svd_lab.svd_model.errors import ConfigError, InputError
from comfyui_svd_lab.svd_model.media.video import probe_video, read_video
from conftest import SHARED

SHARED_VIDEO = SHARED / "data" / "issue-195-aspect-ratio.mp4"  # 25 fps, keyframes up to 5.2 s apart


@pytest.fixture(scope="module")
def three_shots(tmp_path_factory: pytest.TempPathFactory):
    """Static, slow and fast shots separated by hard cuts; SAR 16:11; keyframes every 20 frames."""
    path = tmp_path_factory.mktemp("video") / "three.mp4"
    truth = make_video(path, shots=(70, 80, 70), motion=(0.0, 1.0, 4.0), gop=20, sar=Fraction(16, 11), seed=3)
    return path, truth, annotate_video(path)


@pytest.fixture(scope="module")
def three_shots_rgb(three_shots) -> np.ndarray:
    """The reference decode of ``three_shots``: float32 (t, H, W, 3) display RGB from media.video.read_video."""
    return read_video(three_shots[0])[0].numpy()


# ----------------------------------------------------------------------------------------------- synthetic + decode


def test_synthetic_video_matches_its_truth(three_shots):
    path, truth, ann = three_shots
    info = probe_video(path, count_frames=True)
    assert info.frame_count == truth.num_frames == ann.num_frames == 220
    assert truth.shots == ((0, 70), (70, 150), (150, 220)) and truth.cuts == (70, 150)
    index = packet_index(path)
    assert np.allclose(index.keyframe_times * truth.fps, truth.keyframes)
    a = make_video(path.with_name("a.mp4"), shots=(8, 8), transitions=("dissolve",), transition_frames=4, seed=3)
    b = make_video(path.with_name("b.mp4"), shots=(8, 8), transitions=("dissolve",), transition_frames=4, seed=3)
    assert a == b  # the rendering is deterministic (libx264's output is not always bit-identical between runs)
    la, lb = (np.stack([f.luma for f in stream_luma(path.with_name(n))]).astype(np.float32) for n in ("a.mp4", "b.mp4"))
    assert np.abs(la - lb).mean() < 1.0
    assert a.transitions == ((8, 11, "dissolve"),) and a.cuts == (10,) and a.shots == ((0, 8), (12, 20))


def test_stream_luma_strides_the_y_plane(three_shots):
    path, truth, _ = three_shots
    frames = list(stream_luma(path, max_width=100))
    assert len(frames) == truth.num_frames
    assert [f.index for f in frames] == list(range(truth.num_frames))
    assert frames[0].luma.dtype == np.uint8 and frames[0].luma.shape == (45, 80)  # 320x180 coded, stride 4
    part = list(stream_luma(path, max_width=100, start_time=2.0, end_time=3.0))
    assert [f.index for f in part] == list(range(50, 75))
    assert np.array_equal(part[0].luma, frames[50].luma)


def test_read_frames_at_returns_the_frame_shown_at_each_time(three_shots, three_shots_rgb):
    path, truth, _ = three_shots
    frames = three_shots_rgb
    times = [5.0, 0.0, 2.8, 2.76, 100.0, 1.0]  # out of order, past the end
    got = read_frames_at(path, times)
    for t, img in zip(times, got, strict=True):
        k = min(truth.num_frames - 1, round(t * truth.fps))
        assert img.shape == frames[k].shape  # SAR applied: 465x180
        assert np.abs(img.astype(np.float32) / 255 - frames[k]).mean() < 0.01, t
    small = read_frames_at(path, [1.0], max_side=100)[0]
    assert max(small.shape[:2]) == 100


def _frames_needed(pts: np.ndarray, keys: np.ndarray, times: list[float]) -> int:
    """Frames a decoder must output to show the frame at each of ``times``: from the keyframe at or before the
    wanted frame through the frame after it (which shows that no later frame is due at t), each counted once."""
    need: set[int] = set()
    for t in times:
        want = int(np.searchsorted(pts, t + 1e-6, side="right")) - 1
        key = int(np.searchsorted(pts, keys[keys <= pts[want]][-1]))
        need.update(range(key, min(want + 2, len(pts))))
    return len(need)


@pytest.mark.parametrize("source", ["long_gop", "shared"])
def test_read_frames_at_decodes_each_stretch_once(source, tmp_path, monkeypatch):
    """First / middle / last frames of several clips, all in one call (the pipeline's prefetch) and clip by clip:
    the decoder seeks only to a keyframe past what it has decoded, so nothing is decoded twice even where the
    requested times are seconds apart inside one long GOP."""
    if source == "shared":
        if not SHARED_VIDEO.is_file():
            pytest.skip(f"shared test video {SHARED_VIDEO} is absent")
        path = SHARED_VIDEO
    else:
        path = tmp_path / "long_gop.mp4"
        make_video(path, shots=(150, 150, 150), size=(64, 48), gop=200, seed=7)  # keyframes 8 s apart
    index = packet_index(path)
    pts, keys = index.times, index.keyframe_times
    edges = np.linspace(0, len(pts), 4 if source == "long_gop" else 7).round().astype(int)
    times = [float(pts[i]) for a, b in zip(edges[:-1], edges[1:], strict=True) for i in (a, (a + b - 1) // 2, b - 1)]
    assert max(np.diff(times)) > 2.0  # gaps the decoder used to cross by seeking back to the same keyframe
    results = []
    for batch in [times] + [times[i : i + 3] for i in range(0, len(times), 3)]:
        stats = DecodeStats()
        got = read_frames_at(path, batch, max_side=64, stats=stats)
        assert len(got) == len(batch) and 0 < stats.frames <= _frames_needed(pts, keys, batch), batch
        results.append(got)
    assert all(np.array_equal(a, b) for a, b in zip(results[0], [f for r in results[1:] for f in r], strict=True))
    for t, img in list(zip(times, results[0], strict=True))[:: 1 if source == "long_gop" else 6]:
        alone = read_frames_at(path, [t], max_side=64)[0]  # a single time: one seek straight to its keyframe
        assert np.abs(alone.astype(np.float32) - img).mean() < 0.5, t
    if source == "long_gop":  # packets without timestamps: the seek rule falls back to gaps of over 2 s
        monkeypatch.setattr(frames_at_mod._SeekProbe, "landing", lambda self, ticks: None)
        stats = DecodeStats()
        assert all(np.array_equal(a, b) for a, b in zip(read_frames_at(path, times, max_side=64, stats=stats),
                                                        results[0], strict=True))
        assert stats.seeks > 1


def test_read_frames_at_in_mpeg_ts_where_seeks_land_between_keyframes(tmp_path):
    """MPEG-TS seeks land on any packet, and the decoder shows nothing until the next keyframe: each time still
    gets the frame shown then (the one a straight decode gives), never a later frame, up to the very last."""
    source = tmp_path / "v.mp4"
    make_video(source, shots=(60, 75, 55), size=(96, 64), motion=(2.0, 3.0, 1.0), gop=30, seed=3)
    path = tmp_path / "v.ts"
    with av.open(str(source)) as src, av.open(str(path), "w") as dst:
        out = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(video=0):
            if packet.dts is not None:
                packet.stream = out
                dst.mux(packet)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        decoded = sorted(((float(f.pts * stream.time_base), f.to_ndarray(format="rgb24")) for f in
                          container.decode(stream)), key=lambda x: x[0])
    picks = [0, 10, 50, 101, 152, 170, len(decoded) - 2, len(decoded) - 1]
    for k in picks:  # one call per time: every read starts with a seek
        got = read_frames_at(path, [decoded[k][0]])[0]
        assert np.array_equal(got, decoded[k][1]), k
    together = read_frames_at(path, [decoded[k][0] for k in picks])
    assert all(np.array_equal(a, decoded[k][1]) for a, k in zip(together, picks, strict=True))


def test_variable_frame_rate_timestamps(tmp_path):
    rng = np.random.default_rng(0)
    steps = rng.choice([1 / 50, 1 / 25, 1 / 12.5], size=79)
    stamps = np.concatenate([[0.0], np.cumsum(steps)])
    truth = make_video(tmp_path / "vfr.mkv", shots=(40, 40), timestamps=stamps.tolist(), seed=5)
    ann = annotate_video(tmp_path / "vfr.mkv")
    assert ann.num_frames == 80
    assert np.allclose(ann.frame_times - ann.frame_times[0], stamps, atol=1.5e-3)
    assert [c.frame for c in ann.cuts] == [40] and abs(ann.cuts[0].time - stamps[40]) < 1.5e-3
    times = [f.time for f in stream_luma(tmp_path / "vfr.mkv")]
    assert np.allclose(times, ann.frame_times)
    idx = sample_indices(ann.frame_times, 2.0)
    assert np.all(np.abs(ann.frame_times[idx] - (ann.frame_times[0] + np.arange(len(idx)) / 2.0)) <= 0.041)
    assert truth.times == tuple(stamps.tolist())


def test_sample_indices_on_a_regular_grid():
    times = np.arange(100) / 25.0
    assert sample_indices(times, 2.0).tolist() == [0, 12, 25, 37, 50, 62, 75, 87]
    assert sample_indices(times, 100.0).tolist() == list(range(100))  # finer than the frames: each once
    assert sample_indices(np.zeros(0), 2.0).size == 0


# ----------------------------------------------------------------------------------------------- motion


def test_motion_orders_static_slow_fast_and_is_calibrated(three_shots):
    path, truth, ann = three_shots
    spans = split_clips(ann, SplitConfig(min_seconds=1.0, max_seconds=0, trim_frames=0))
    assert [(s.start_frame, s.end_frame) for s in spans] == [(0, 70), (70, 150), (150, 220)]
    static, slow, fast = (clip_motion(ann, s) for s in spans)
    assert static < slow < fast
    # 4 px/frame pan at 25 fps; display short side 180 px; the pan direction is stretched by the SAR (<= 16/11).
    # Dense flow reads low on the flat parts of the picture (as the paper's mean magnitude does).
    expected = 4 * 25 / 180
    assert expected * 0.6 < fast < expected * 16 / 11 * 1.15, fast
    assert static < 0.02
    assert to_paper_units(1.0) == 8.0


def test_motion_pairs_never_cross_a_cut_and_restart_at_it(three_shots):
    _, truth, ann = three_shots
    pairs = ann.motion_frames
    assert len(pairs) == len(ann.motion_times) == len(ann.motion_magnitudes) > 0
    for cut in ann.cuts:
        assert not np.any((pairs[:, 0] < cut.frame) & (pairs[:, 1] >= cut.frame))
        assert cut.frame in pairs[:, 0]  # sampling restarts on the new shot's first frame
    gaps = np.diff(ann.frame_times[pairs], axis=1)[:, 0]
    assert np.allclose(gaps, 0.5, atol=0.021)  # 2 fps: 12 or 13 frames at 25 fps


def test_motion_bucket_mapping():
    assert motion_bucket_id(0.08) == 127
    assert motion_bucket_id(0.16) == 159 and motion_bucket_id(0.04) == 95
    assert motion_bucket_id(0.0) == 0 and motion_bucket_id(100.0) == 255 and motion_bucket_id(math.nan) == 127
    values = [motion_bucket_id(s) for s in np.geomspace(1e-4, 10, 50)]
    assert values == sorted(values)
    scores = np.random.default_rng(0).lognormal(-3, 1, 1000)
    cal = MotionCalibration.from_scores(scores)
    assert motion_bucket_id(float(np.median(scores)), cal) == 127
    assert motion_bucket_id(float(np.percentile(scores, 95)), cal) == 239
    with pytest.raises(InputError):
        MotionCalibration.from_scores([0.1])


# ----------------------------------------------------------------------------------------------- clips


def _annotation(n: int, fps: float, cuts: list[Cut]) -> VideoAnnotation:
    times = np.arange(n) / fps
    empty = np.zeros(0)
    return VideoAnnotation(
        path=Path("x.mp4"), fps=fps, num_frames=n, duration=n / fps, width=64, height=64, coded_width=64,
        coded_height=64, sar=Fraction(1), rotation=0, frame_times=times, cuts=tuple(cuts), motion_times=empty,
        motion_magnitudes=empty, motion_frames=np.zeros((0, 2), np.int64),
    )  # fmt: skip


def test_split_clips_rules():
    cuts = [
        Cut(100, 4.0, "hard", 9.0, 100, 1),
        Cut(150, 6.0, "dissolve", 5.0, 161, 2),
        Cut(600, 24.0, "fade", 4.0, 620, 3),
    ]
    ann = _annotation(700, 25.0, cuts)
    spans = split_clips(ann, SplitConfig(min_seconds=2.0, max_seconds=8.0, trim_frames=2))
    got = [(s.start_frame, s.end_frame, s.cut_in, s.cut_out) for s in spans]
    # shot 0: 0..98 (trimmed at the cut); shot 1 (102..148) is 1.84 s: dropped; shot 2: 164..598 = 17.4 s ->
    # 3 pieces; shot 3: 623..700
    assert got == [
        (0, 98, "start", "hard"),
        (164, 309, "dissolve", "split"),
        (309, 453, "split", "split"),
        (453, 598, "split", "fade"),
        (623, 700, "fade", "end"),
    ]
    assert [s.index for s in spans] == list(range(5))
    assert spans[0].cut_out_score == 9.0 and spans[1].cut_in_score == 5.0 and spans[1].cut_out_score == 0.0
    assert all(s.duration <= 8.0 + 1e-9 and s.duration >= 2.0 for s in spans)
    assert spans[-1].end_time == pytest.approx(28.0) and spans[0].last_time == pytest.approx(97 / 25)
    whole = split_clips(ann, SplitConfig(min_seconds=0.0, max_seconds=0.0, trim_frames=0))
    assert [(s.start_frame, s.end_frame) for s in whole] == [(0, 100), (100, 150), (162, 600), (621, 700)]
    with pytest.raises(ConfigError):
        SplitConfig(min_seconds=5, max_seconds=2)


def test_write_clip_copy_snaps_to_keyframes_and_reencode_is_exact(three_shots, tmp_path):
    path, truth, ann = three_shots
    span = split_clips(ann, SplitConfig(min_seconds=1.0, max_seconds=0, trim_frames=2))[1]  # frames 72..148
    assert (span.start_frame, span.end_frame) == (72, 148)
    index = packet_index(path)
    copy = write_clip(path, span, tmp_path / "copy.mp4", mode="copy", index=index)
    assert (copy.mode, copy.start_frame, copy.end_frame) == ("copy", 80, 140)  # keyframes every 20 frames
    assert span.start_frame <= copy.start_frame and copy.end_frame <= span.end_frame  # never crosses the cuts
    info = probe_video(copy.path, count_frames=True)
    assert info.frame_count == copy.num_frames == 60 and info.sar == Fraction(16, 11) and info.width == 465
    src = np.stack([f.luma for f in stream_luma(path)][80:140])
    out = np.stack([f.luma for f in stream_luma(copy.path)])
    assert np.array_equal(src, out)  # stream copy: bit-identical frames
    exact = write_clip(path, span, tmp_path / "exact.mp4", mode="reencode", index=index, preset="ultrafast")
    assert (exact.mode, exact.start_frame, exact.end_frame) == ("reencode", 72, 148)
    info = probe_video(exact.path, count_frames=True)
    assert info.frame_count == 76 and info.sar == Fraction(16, 11)
    src = np.stack([f.luma for f in stream_luma(path)][72:148]).astype(np.float32)
    out = np.stack([f.luma for f in stream_luma(exact.path)]).astype(np.float32)
    assert np.abs(src - out).mean() < 3.0
    assert write_clip(path, span, tmp_path / "auto.mp4", index=index, min_seconds=2.0).mode == "copy"  # 2.4 s
    assert write_clip(path, span, tmp_path / "auto2.mp4", index=index, min_seconds=2.5).mode == "reencode"
    short = ClipSpan(0, 82, 98, 82 / 25, 98 / 25, "split", "split", 0.0, 0.0, 90 / 25, 97 / 25)
    with pytest.raises(InputError, match="GOP"):
        write_clip(path, short, tmp_path / "none.mp4", mode="copy", index=index)
    with pytest.raises(ConfigError):
        write_clip(path, span, tmp_path / "bad.mp4", mode="fast")


def test_write_clip_keeps_rotation(tmp_path):
    make_video(tmp_path / "rot.mp4", shots=(60,), rotation=90, gop=10, seed=2)
    ann = annotate_video(tmp_path / "rot.mp4", motion=None)
    span = split_clips(ann, SplitConfig(min_seconds=0.5, trim_frames=0))[0]
    for mode in ("copy", "reencode"):
        res = write_clip(tmp_path / "rot.mp4", span, tmp_path / f"{mode}.mp4", mode=mode, preset="ultrafast")
        info = probe_video(res.path)
        assert info.rotation == 90 and (info.width, info.height) == (180, 320), mode


def test_keyframes_first_middle_last(three_shots, three_shots_rgb):
    path, truth, ann = three_shots
    span = split_clips(ann, SplitConfig(min_seconds=1.0, max_seconds=0, trim_frames=0))[2]  # 150..220
    frames = three_shots_rgb
    got = keyframes(path, span)
    assert len(got) == 3 and got[0].dtype == np.uint8 and got[0].shape == (180, 465, 3)
    for img, k in zip(got, (150, 184, 219), strict=True):
        assert np.abs(img.astype(np.float32) / 255 - frames[k]).mean() < 0.01
    assert keyframes(path, span, which=("middle",), max_side=64)[0].shape == (25, 64, 3)
    with pytest.raises(ConfigError):
        keyframes(path, span, which=("centre",))


# ----------------------------------------------------------------------------------------------- bad input


def test_bad_inputs_raise_input_error(tmp_path):
    with pytest.raises(InputError, match="not found"):
        annotate_video(tmp_path / "missing.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        annotate_video(tmp_path / "empty.mp4")
    (tmp_path / "junk.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(InputError):
        annotate_video(tmp_path / "junk.mp4")
    with av.open(str(tmp_path / "audio.wav"), "w") as out:  # audio only
        stream = out.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        out.mux(stream.encode(frame))
    with pytest.raises(InputError, match="no video stream"):
        annotate_video(tmp_path / "audio.wav")


def test_truncated_file_annotates_the_decodable_part(tmp_path):
    truth = make_video(tmp_path / "whole.mkv", shots=(60, 60), seed=8)
    data = (tmp_path / "whole.mkv").read_bytes()
    (tmp_path / "cut.mkv").write_bytes(data[: int(len(data) * 0.7)])
    ann = annotate_video(tmp_path / "cut.mkv")
    assert 40 < ann.num_frames < truth.num_frames
    assert ann.truncated and "truncated" in ann.note
    assert [c.frame for c in ann.cuts] == [60]
    mp4 = make_video(tmp_path / "whole.mp4", shots=(30,), seed=8)  # moov atom at the end: nothing to decode
    assert mp4.num_frames == 30
    data = (tmp_path / "whole.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated MP4/MOV file.*moov box. is missing"):
        annotate_video(tmp_path / "cut.mp4")


def test_oversized_video_is_refused(tmp_path, monkeypatch):
    make_video(tmp_path / "v.mp4", shots=(5,), seed=1)
    monkeypatch.setattr(decode_mod, "MAX_SIDE", 256)
    with pytest.raises(InputError, match="too large"):
        annotate_video(tmp_path / "v.mp4")
