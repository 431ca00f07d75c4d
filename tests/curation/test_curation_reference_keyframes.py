"""'reference' keyframes (the default source): H.264 reference frames read from the packets' nal_ref_idc, the
analysis decode skipping deblocking of the other frames and holding only reference frames, the keyframes snapped
to the nearest reference frame inside the clip, every captured picture byte-identical to an exact decode, no
second decode, other codecs and old manifests keeping the exact frames."""

from __future__ import annotations

import json
from fractions import Fraction

import av
import numpy as np
import pytest

from comfyui_svd_lab.svd_model.curation import annotate, frames_at, pipeline
from comfyui_svd_lab.svd_model.curation.clips import ClipSpan, SplitConfig
from comfyui_svd_lab.svd_model.curation.decode import H264References
from comfyui_svd_lab.svd_model.curation.engine import run_curation
from comfyui_svd_lab.svd_model.curation.records import (
    REFERENCE_MAX_SHIFT,
    CurationConfig,
    KeyframeCache,
    VideoRef,
    keyframe_capture,
    keyframe_indices,
)
from comfyui_svd_lab.svd_model.curation.synthetic import make_video
from comfyui_svd_lab.svd_model.errors import ConfigError


def _nal(ref_idc: int, kind: int, payload: bytes = b"\x88\x84") -> bytes:
    return bytes([(ref_idc << 5) | kind]) + payload


def _avcc(*nals: bytes, size: int = 4) -> bytes:
    return b"".join(len(n).to_bytes(size, "big") + n for n in nals)


def test_packets_tell_reference_pictures():
    sei, aud = _nal(0, 6), _nal(0, 9)
    four, two, annexb = H264References(4), H264References(2), H264References(0)
    assert four.packet(_avcc(aud, sei, _nal(2, 1))) is True  # a P or reference-B slice after SEI
    assert four.packet(_avcc(_nal(3, 5))) is True  # IDR
    assert four.packet(_avcc(sei, _nal(0, 1), _nal(0, 1))) is False  # a non-reference picture in two slices
    assert two.packet(_avcc(_nal(0, 1), size=2)) is False
    assert four.packet(_avcc(_nal(2, 1), _nal(0, 1))) is None  # slices that disagree (two fields): unknown
    assert four.packet(_avcc(sei)) is None  # no slice
    assert four.packet(_avcc(_nal(2, 1))[:-1]) is None  # a length past the end
    assert four.packet(b"") is None
    assert annexb.packet(b"\0\0\0\1" + aud + b"\0\0\1" + _nal(0, 1)) is False
    assert annexb.packet(b"\0\0\1" + _nal(1, 1) + b"\0\0\1" + _nal(1, 1)) is True


def _h264(tmp_path):
    path = tmp_path / "v.mp4"  # libx264 veryfast: B-frames, some of them references (B-pyramid)
    make_video(path, shots=(60, 75, 55), size=(160, 96), motion=(2.0, 3.0, 1.0), gop=30, seed=3)
    return path


def _nonref_skipped(path) -> set[int]:
    """pts of the frames FFmpeg decodes when told to skip non-reference frames: its own notion of reference."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.skip_frame = "NONREF"
        return {frame.pts for frame in container.decode(stream)}


def test_reference_flags_match_ffmpegs_and_capture_is_exact(tmp_path, monkeypatch):
    path = _h264(tmp_path)
    config = CurationConfig(keyframe_max_side=128)
    assert config.keyframe_source == "reference"
    ann = annotate.annotate_video(path, config.cut, config.motion, capture=keyframe_capture(config))
    plain = annotate.annotate_video(path, config.cut, config.motion, references=True)  # no capture: fast decode
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        tb = stream.time_base
        pts = sorted(round(t / tb) for t in ann.frame_times)
    refs = _nonref_skipped(path)
    assert ann.reference is not None and np.array_equal(ann.reference, plain.reference)
    assert [p in refs for p in pts] == ann.reference.tolist()
    assert 0 < ann.reference.sum() < len(pts)  # the test video has non-reference frames
    assert [c.frame for c in ann.cuts] == [c.frame for c in plain.cuts] and len(ann.cuts) == 2

    ref = VideoRef.of(path, tmp_path)
    records = [r for r in pipeline.split_records(ref, ann, config) if r.ok]
    assert len(records) == 3
    wanted: list[int] = []
    for rec in records:
        exact = keyframe_indices(ann, rec.span, config.keyframes)
        chosen = keyframe_indices(ann, rec.span, config.keyframes, references=True)
        assert all(ann.reference[i] for i in chosen)
        assert all(rec.span.start_frame <= i < rec.span.end_frame for i in chosen)
        assert all(abs(i - e) <= REFERENCE_MAX_SHIFT for i, e in zip(chosen, exact, strict=True))
        wanted += chosen
    assert set(ann.pictures) == set(wanted)
    asked: list[int] = []
    real = frames_at.read_frames_at
    monkeypatch.setattr(frames_at, "read_frames_at", lambda src, times, **kw: asked.append(len(times)) or real(
        src, times, **kw))
    cache = KeyframeCache(config)
    cache.prefetch(records)
    got = [f for rec in records for f in cache.get(rec)]
    assert sum(asked) == 0  # all captured: nothing decoded again
    times = [t for rec in records for t in json.loads(rec.row["extra"])["keyframe_times"]]
    assert times == [float(ann.frame_times[i]) for i in wanted]
    exact_reads = real(path, times, max_side=128)  # a plain exact decode of the same frames
    assert all(np.array_equal(a, b) for a, b in zip(got, exact_reads, strict=True))


def test_snapping_rules():
    times = np.arange(40) / 25.0
    reference = np.zeros(40, bool)
    reference[[0, 9, 11, 16, 30]] = True

    class Ann:
        fps = 25.0
        frame_times = times

    ann = Ann()
    ann.reference = reference
    span = ClipSpan(0, 2, 20, float(times[2]), float(times[20]), "hard", "hard", 1.0, 1.0,
                    middle_time=float(times[10]), last_time=float(times[19]))
    # first (frame 2): the one reference within 4 frames, frame 0, is outside the span -> the exact frame; middle
    # (10): 9 and 11 are as near -> the earlier; last (19, the span ends at 20): 16, 3 frames away
    assert keyframe_indices(ann, span, ("first", "middle", "last"), references=True) == [2, 9, 16]
    assert keyframe_indices(ann, span, ("first", "middle", "last")) == [2, 10, 19]
    ann.reference = None  # not H.264 / unknown: the exact frames
    assert keyframe_indices(ann, span, ("middle",), references=True) == [10]


def test_other_codecs_keep_the_exact_frames(tmp_path):
    path = tmp_path / "m.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=Fraction(25))
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.max_b_frames = 2
        rng = np.random.default_rng(0)
        for i in range(60):
            img = np.full((48, 64, 3), (i * 4) % 256, np.uint8) + rng.integers(0, 8, (48, 64, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    config = CurationConfig(keyframe_max_side=0, split=SplitConfig(min_seconds=1.0))
    ann = annotate.annotate_video(path, config.cut, config.motion, capture=keyframe_capture(config))
    assert ann.reference is None
    ref = VideoRef.of(path, tmp_path)
    records = [r for r in pipeline.split_records(ref, ann, config) if r.ok]
    assert records
    cache = KeyframeCache(config)
    exact = KeyframeCache(config.replace(keyframe_source="exact"))
    for rec in records:
        assert all(np.array_equal(a, b) for a, b in zip(cache.get(rec), exact.get(rec), strict=True))


def test_old_manifests_resume_with_a_hint(tmp_path):
    make_video(tmp_path / "in" / "a.mp4", shots=(40, 45), transitions=("hard",), size=(96, 64), seed=1)
    old = CurationConfig(keyframe_source="exact", split=SplitConfig(min_seconds=1.0))
    run_curation(tmp_path / "in", tmp_path / "out", old, engine="inline")
    with pytest.raises(ConfigError, match="add --set keyframe_source=exact"):
        run_curation(tmp_path / "in", tmp_path / "out", old.replace(keyframe_source="reference"), engine="inline",
                     resume=True)
    summary = run_curation(tmp_path / "in", tmp_path / "out", old, engine="inline", resume=True)
    assert summary.skipped == 1


@pytest.mark.parametrize("ext", ["ts", "mkv"])  # Annex B packets (MPEG-TS), length-prefixed ones (Matroska)
def test_other_containers_tell_the_same_reference_frames(tmp_path, ext):
    source = _h264(tmp_path)
    path = tmp_path / f"v.{ext}"
    with av.open(str(source)) as src, av.open(str(path), "w") as dst:
        stream = src.streams.video[0]
        out = dst.add_stream_from_template(stream)
        for packet in src.demux(stream):
            if packet.dts is not None:
                packet.stream = out
                dst.mux(packet)
    config = CurationConfig(keyframe_max_side=128)
    ann = annotate.annotate_video(path, config.cut, config.motion, capture=keyframe_capture(config))
    with av.open(str(path)) as container:
        pts = sorted(frame.pts for frame in container.decode(video=0))
    refs = _nonref_skipped(path)
    assert ann.reference is not None and ann.reference.tolist() == [p in refs for p in pts]
    wanted = sorted(ann.pictures)
    exact = frames_at.read_frames_at(path, [float(ann.frame_times[i]) for i in wanted], max_side=128)
    assert wanted and all(np.array_equal(ann.pictures[i], e) for i, e in zip(wanted, exact, strict=True))
