"""Video/image file I/O: probe, decode with selection/resampling/resizing, write round trips, metadata, errors.

Synthetic clips are made with PyAV directly (not with the code under test): 64x48, the frame index encoded in
the background's red channel (``4 + 7 * i``) so any decoded frame tells which source frame it is.
"""

from __future__ import annotations

import json
import logging
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_svd_lab.svd_model.errors import ConfigError, InputError, ShapeError
from comfyui_svd_lab.svd_model.media.video import (
    iter_frames,
    probe_video,
    read_image,
    read_image_rgba,
    read_video,
    read_video_metadata,
    write_video,
)

SHARED_VIDEO = Path(__file__).resolve().parents[2].parent / "shared/data/issue-195-aspect-ratio.mp4"
W, H, N, FPS = 64, 48, 32, 30


def counter_frame(i: int, width: int = W, height: int = H) -> np.ndarray:
    """uint8 (H, W, 3): background red = 4 + 7 i, a white 12x12 square moving right below the top rows."""
    frame = np.empty((height, width, 3), dtype=np.uint8)
    frame[...] = (4 + 7 * i, 128, 60)
    x = (2 * i) % (width - 12)
    frame[height // 2 - 6 : height // 2 + 6, x : x + 12] = 255
    return frame


def frame_index(frame: np.ndarray | torch.Tensor) -> int:
    """Source index of a decoded counter frame (float [0, 1] or uint8), from its top rows."""
    arr = frame.numpy() if isinstance(frame, torch.Tensor) else frame
    red = float(arr[: max(1, arr.shape[0] // 8), :, 0].mean())
    red = red * 255.0 if arr.dtype != np.uint8 else red
    return round((red - 4) / 7)


def make_video(
    path: Path,
    n: int = N,
    fps: int = FPS,
    *,
    width: int = W,
    height: int = H,
    codec: str = "libx264",
    options: dict[str, str] | None = None,
    pts: list[int] | None = None,
    sar: Fraction | None = None,
    rotation: float | None = None,
    frames: list[np.ndarray] | None = None,
) -> Path:
    """Encode counter frames (or ``frames``) with PyAV; ``pts`` in units of 1/fps for variable frame rate."""
    with av.open(str(path), "w", options=options or {}) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "10"} if codec == "libx264" else {"crf": "10", "b": "0", "cpu-used": "8"}
        if sar is not None:
            stream.codec_context.sample_aspect_ratio = sar
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i in range(n):
            image = frames[i] if frames is not None else counter_frame(i, width, height)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = (i if pts is None else pts[i]), Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.double() - b.double()) ** 2).mean())
    return 10 * np.log10(1.0 / max(mse, 1e-12))


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """32 frames, 64x48, 30 fps, H.264 in MP4 (index at the front)."""
    return make_video(tmp_path_factory.mktemp("videoio") / "clip.mp4", options={"movflags": "+faststart"})


@pytest.fixture(scope="module")
def counter_frames() -> torch.Tensor:
    """float32 (32, 48, 64, 3) in [0, 1]: the frames :func:`make_video` encodes."""
    return torch.from_numpy(np.stack([counter_frame(i) for i in range(N)])).float() / 255.0


# ------------------------------------------------------------------------------------------------ probe / read


def test_probe_synthetic(clip: Path) -> None:
    info = probe_video(clip)
    assert (info.width, info.height, info.coded_width, info.coded_height) == (W, H, W, H)
    assert info.fps == FPS and info.frame_count == N and info.frame_count_exact
    assert info.duration == pytest.approx(N / FPS, abs=1e-3)
    assert info.has_video and not info.has_audio and info.codec == "h264"
    assert info.sar == 1 and info.rotation == 0


def test_read_video_layout_and_content(clip: Path, counter_frames: torch.Tensor) -> None:
    frames, fps = read_video(clip)
    assert frames.shape == (N, H, W, 3) and frames.dtype == torch.float32
    assert 0.0 <= float(frames.min()) and float(frames.max()) <= 1.0
    assert fps == FPS
    assert [frame_index(f) for f in frames] == list(range(N))
    assert psnr(frames, counter_frames) > 30


def test_iter_frames_uint8_and_early_close(clip: Path) -> None:
    frames = list(iter_frames(clip))
    assert len(frames) == N and all(f.dtype == np.uint8 and f.shape == (H, W, 3) for f in frames)
    gen = iter_frames(clip)
    assert frame_index(next(gen)) == 0 and frame_index(next(gen)) == 1
    gen.close()  # abandoning the generator closes the container without error


@pytest.mark.parametrize(
    ("kwargs", "expected", "fps"),
    [
        ({"skip_first": 5}, list(range(5, N)), 30.0),
        ({"every_nth": 3}, list(range(0, N, 3)), 10.0),
        ({"frame_cap": 10}, list(range(10)), 30.0),
        ({"skip_first": 2, "every_nth": 4, "frame_cap": 3}, [2, 6, 10], 7.5),
        ({"target_fps": 10}, list(range(0, 31, 3)), 10.0),  # 30 -> 10 fps: every 3rd frame
        ({"target_fps": 10, "every_nth": 2, "frame_cap": 5}, [0, 6, 12, 18, 24], 5.0),
        ({"target_fps": 15, "skip_first": 3}, list(range(3, N, 2)), 15.0),
        ({"target_fps": 20, "frame_cap": 5}, [0, 1, 3, 4, 6], 20.0),  # grid 1.5 frames apart, ties to earlier
        ({"target_fps": 60}, [i // 2 for i in range(2 * N)], 60.0),  # upsampling repeats frames
    ],
)
def test_selection_arithmetic(clip: Path, kwargs: dict[str, int], expected: list[int], fps: float) -> None:
    frames, out_fps = read_video(clip, **kwargs)
    assert [frame_index(f) for f in frames] == expected
    assert out_fps == pytest.approx(fps)


def test_variable_frame_rate_resampled_by_timestamps(tmp_path: Path) -> None:
    path = make_video(tmp_path / "vfr.mp4", n=8, pts=[0, 1, 2, 5, 6, 7, 8, 9])  # a gap after the third frame
    frames, _ = read_video(path)
    assert [frame_index(f) for f in frames] == list(range(8))
    frames, fps = read_video(path, target_fps=30)
    assert fps == 30.0
    assert [frame_index(f) for f in frames][:10] == [0, 1, 2, 2, 2, 3, 4, 5, 6, 7]  # the frame before a gap holds


def test_sar_gives_display_aspect(tmp_path: Path) -> None:
    path = make_video(tmp_path / "sar.mp4", n=4, sar=Fraction(2, 1))
    info = probe_video(path)
    assert (info.coded_width, info.coded_height, info.sar) == (W, H, Fraction(2, 1))
    assert (info.width, info.height) == (2 * W, H)
    frames, _ = read_video(path)
    assert frames.shape == (4, H, 2 * W, 3)
    frames, _ = read_video(path, size=(64, 64), resize_mode="contain")  # 128x48 fits as 64x24 + bars
    assert frames.shape == (4, 64, 64, 3)
    assert float(frames[:, :18].max()) < 0.02 and float(frames[:, 22:42].mean()) > 0.1


def test_rotation_metadata_applied(tmp_path: Path) -> None:
    marker = np.full((H, W, 3), 100, dtype=np.uint8)
    marker[:12, :12] = (255, 0, 0)  # red top-left corner in coded orientation
    path = make_video(tmp_path / "rot.mp4", n=2, rotation=90, frames=[marker, marker])
    info = probe_video(path)
    assert info.rotation == 90 and (info.width, info.height) == (H, W)
    frames, _ = read_video(path)
    assert frames.shape == (2, W, H, 3)  # 90 degrees counter-clockwise: the top-left goes to the bottom-left
    assert float(frames[0, -6:, :6, 0].mean()) > 0.8 and float(frames[0, :6, :6, 0].mean()) < 0.6
    frames, _ = read_video(path, size=(24, 32))
    assert frames.shape == (2, 32, 24, 3)


def test_resize_modes(clip: Path) -> None:
    native, _ = read_video(clip, frame_cap=4)
    nchw = native.permute(0, 3, 1, 2)  # (t 3 H W)
    stretch, _ = read_video(clip, frame_cap=4, size=(32, 32), resize_mode="stretch")
    ref = torch.nn.functional.interpolate(nchw, size=(32, 32), mode="area").permute(0, 2, 3, 1)
    assert stretch.shape == (4, 32, 32, 3) and float((stretch - ref).abs().mean()) < 0.03
    cover, _ = read_video(clip, frame_cap=4, size=(32, 32), resize_mode="cover")  # 64x48 -> 43x32, crop x 5..37
    ref = torch.nn.functional.interpolate(nchw, size=(32, 43), mode="area")[..., 5:37].permute(0, 2, 3, 1)
    assert cover.shape == (4, 32, 32, 3) and float((cover - ref).abs().mean()) < 0.03
    contain, _ = read_video(clip, frame_cap=4, size=(32, 32), resize_mode="contain")  # 32x24 + 4-row bars
    ref = torch.nn.functional.interpolate(nchw, size=(24, 32), mode="area").permute(0, 2, 3, 1)
    assert contain.shape == (4, 32, 32, 3)
    assert float(contain[:, :4].max()) == 0.0 and float(contain[:, 28:].max()) == 0.0
    assert float((contain[:, 4:28] - ref).abs().mean()) < 0.03


def test_webm_frame_count_estimate_and_count(tmp_path: Path) -> None:
    path = make_video(tmp_path / "clip.webm", n=12, codec="libvpx-vp9")
    info = probe_video(path)
    assert not info.frame_count_exact and abs(info.frame_count - 12) <= 1
    counted = probe_video(path, count_frames=True)
    assert counted.frame_count_exact and counted.frame_count == 12 and counted.rotation == 0


# ------------------------------------------------------------------------------------------------ write


@pytest.mark.parametrize(("fmt", "min_psnr"), [("mp4", 35.0), ("webm", 35.0), ("webp", 30.0), ("gif", 30.0)])
def test_write_round_trip(tmp_path: Path, counter_frames: torch.Tensor, fmt: str, min_psnr: float) -> None:
    path = write_video(counter_frames, tmp_path / f"out.{fmt}", fps=FPS, quality=95)
    assert path == tmp_path / f"out.{fmt}" and path.stat().st_size > 0
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind
    info = probe_video(path)
    assert info.frame_count == N and (info.width, info.height) == (W, H)
    fps_tolerance = 0.15 if fmt == "gif" else 0.05  # GIF delays are whole 1/100 s: 32 frames last 1.07 s
    assert float(info.fps) == pytest.approx(FPS, abs=fps_tolerance)
    frames, fps = read_video(path)
    assert frames.shape == (N, H, W, 3) and fps == pytest.approx(FPS, abs=fps_tolerance)
    assert [frame_index(f) for f in frames] == list(range(N))
    assert psnr(frames, counter_frames) > min_psnr


def test_write_uint8_odd_size_and_suffix(tmp_path: Path) -> None:
    frames = np.stack([counter_frame(i, 63, 47) for i in range(5)])  # (5 47 63 3) uint8
    mp4 = write_video(frames, tmp_path / "odd", fps=24)  # no suffix: mp4 appended
    assert mp4.name == "odd.mp4"
    back, fps = read_video(mp4)
    assert back.shape == (5, 48, 64, 3) and fps == 24.0  # padded to even by edge replication
    assert psnr(back[:, :47, :63], torch.from_numpy(frames).float() / 255) > 30
    webm = write_video(frames, tmp_path / "odd.webm", fps=24)
    assert read_video(webm)[0].shape == (5, 47, 63, 3)
    write_video(frames[:2], mp4, fps=24)  # overwrite in place
    assert probe_video(mp4).frame_count == 2


@pytest.mark.parametrize("fmt", ["webp", "gif"])
def test_identical_frames_merged_then_restored_by_target_fps(tmp_path: Path, fmt: str) -> None:
    frames = torch.zeros(5, 16, 16, 3)
    frames[3:] = 1.0  # 3 black + 2 white: the encoders keep 2 frames of 300 ms and 200 ms
    path = write_video(frames, tmp_path / f"still.{fmt}", fps=10)
    assert probe_video(path).duration == pytest.approx(0.5)
    back, fps = read_video(path, target_fps=10)
    assert fps == 10.0 and back.shape == (5, 16, 16, 3)
    assert back[:, 0, 0, 0].round().tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]


def test_metadata_embedded(tmp_path: Path, counter_frames: torch.Tensor) -> None:
    workflow = json.dumps({"nodes": [{"id": 1, "type": "SVDLabSampler", "title": "caf\u00e9 \u65e5\u672c"}]})
    meta = {"prompt": json.dumps({"1": {"class_type": "X", "inputs": {}}}), "workflow": workflow}
    frames = counter_frames[:4]
    for fmt in ("mp4", "webm"):
        path = write_video(frames, tmp_path / f"m.{fmt}", fps=8, metadata=meta)
        with av.open(str(path)) as container:
            tags = {k.lower(): v for k, v in container.metadata.items()}  # Matroska upper-cases tag names
        assert tags["workflow"] == workflow and tags["prompt"] == meta["prompt"]
        assert read_video_metadata(path)["workflow"] == workflow
    webp = write_video(frames, tmp_path / "m.webp", fps=8, metadata=meta)
    with Image.open(webp) as image:
        exif = image.getexif()
    assert exif[0x0110].startswith("prompt:") and exif[0x010F].startswith("workflow:")  # ComfyUI's layout
    assert json.loads(exif[0x010F].partition(":")[2]) == json.loads(workflow)
    assert json.loads(read_video_metadata(webp)["workflow"]) == json.loads(workflow)
    gif = write_video(frames, tmp_path / "m.gif", fps=8, metadata=meta, loop=False)
    with Image.open(gif) as image:
        assert json.loads(image.info["comment"])["workflow"] == workflow
        assert "loop" not in image.info
    assert read_video_metadata(gif) == meta


def test_write_errors(tmp_path: Path, counter_frames: torch.Tensor) -> None:
    frames = counter_frames[:2]
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(InputError, match="a_file"):
        write_video(frames, blocker / "sub" / "out.mp4", fps=8)
    with pytest.raises(ShapeError, match=r"\(t, H, W, 3\)"):
        write_video(frames[0], tmp_path / "x.mp4", fps=8)
    with pytest.raises(ConfigError, match="quality"):
        write_video(frames, tmp_path / "x.mp4", fps=8, quality=101)
    with pytest.raises(ConfigError, match="fps"):
        write_video(frames, tmp_path / "x.mp4", fps=0)
    with pytest.raises(ConfigError, match="format"):
        write_video(frames, tmp_path / "x.mp4", fps=8, format="webm")
    with pytest.raises(ConfigError, match="format"):
        write_video(frames, tmp_path / "x.avi", fps=8)
    with pytest.raises(ConfigError, match="non-ASCII"):
        write_video(frames, tmp_path / "x.webp", fps=8, metadata={"note": "caf\u00e9"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_write_failure_names_folder_and_cleans_up(
    tmp_path: Path, counter_frames: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    from comfyui_svd_lab.svd_model.media import write as videoio_write

    def deny(src: object, dst: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(videoio_write.os, "replace", deny)  # fails after encoding, at the atomic rename
    with pytest.raises(InputError, match=str(tmp_path)):
        write_video(counter_frames[:2], tmp_path / "out.gif", fps=8)
    assert list(tmp_path.iterdir()) == []  # the temporary file is removed
    monkeypatch.setattr(videoio_write.os, "access", lambda path, mode: False)
    with pytest.raises(InputError, match="not writable"):
        write_video(counter_frames[:2], tmp_path / "out.mp4", fps=8)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs a non-root POSIX user")
def test_write_unwritable_folder(tmp_path: Path, counter_frames: torch.Tensor) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(InputError, match="ro"):
            write_video(counter_frames[:2], folder / "out.mp4", fps=8)
    finally:
        folder.chmod(0o700)


# ------------------------------------------------------------------------------------------------ read errors


def _audio_file(path: Path, codec: str, rate: int = 16000) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate, layout="mono")
        fmt = "s16" if codec == "pcm_s16le" else "fltp"
        samples = np.zeros((1, 1024), dtype=np.int16 if fmt == "s16" else np.float32)
        for k in range(8):
            frame = av.AudioFrame.from_ndarray(samples, format=fmt, layout="mono")
            frame.sample_rate, frame.pts = rate, k * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


@pytest.mark.parametrize(("name", "codec"), [("tone.m4a", "aac"), ("tone.wav", "pcm_s16le")])
def test_audio_only(tmp_path: Path, name: str, codec: str) -> None:
    path = _audio_file(tmp_path / name, codec)
    info = probe_video(path)
    assert not info.has_video and info.has_audio
    with pytest.raises(InputError, match="audio-only"):
        read_video(path)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        read_video(tmp_path / "missing.mp4")
    empty = tmp_path / "empty.mp4"
    empty.touch()
    with pytest.raises(InputError, match="empty"):
        probe_video(empty)
    notes = tmp_path / "notes.txt"
    notes.write_text("just some text\n" * 40)
    with pytest.raises(InputError, match="text file"):
        read_video(notes)
    fake = tmp_path / "fake.mp4"
    fake.write_text("not a video at all\n" * 40)
    with pytest.raises(InputError, match="cannot open"):
        read_video(fake)
    with pytest.raises(InputError, match="cannot read"):
        read_image(fake)


def test_truncated_files(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for _ in range(24)]  # every frame is large
    late_index = make_video(tmp_path / "late.mp4", n=24, frames=noise)  # moov atom written last
    data = late_index.read_bytes()
    (tmp_path / "late_cut.mp4").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated MP4/MOV file: box 'mdat' ends at byte .*index \\(moov box\\) is "
                       "missing"):
        read_video(tmp_path / "late_cut.mp4")

    early_index = make_video(tmp_path / "early.mp4", n=24, frames=noise, options={"movflags": "+faststart"})
    data = early_index.read_bytes()
    (tmp_path / "half.mp4").write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="comfyui_svd_lab.svd_model.media.video"):
        frames, _ = read_video(tmp_path / "half.mp4")
    assert 1 <= frames.shape[0] < 24
    assert "truncated" in caplog.text
    start = data.index(b"mdat") + 8
    (tmp_path / "headers_only.mp4").write_bytes(data[: start + 16])
    with pytest.raises(InputError, match="no decodable video frames"):
        read_video(tmp_path / "headers_only.mp4")


def test_bad_arguments(clip: Path) -> None:
    with pytest.raises(InputError, match="skip_first=40"):
        read_video(clip, skip_first=40)
    with pytest.raises(ConfigError, match="frame_cap"):
        read_video(clip, frame_cap=-1)
    with pytest.raises(ConfigError, match="every_nth"):
        read_video(clip, every_nth=0)
    with pytest.raises(ConfigError, match="resize_mode"):
        read_video(clip, size=(8, 8), resize_mode="fill")
    with pytest.raises(ConfigError, match="target_fps"):
        iter_frames(clip, target_fps=-5)


# ------------------------------------------------------------------------------------------------ images


def test_read_image_rgb_rgba_and_exif(tmp_path: Path) -> None:
    rgb = np.zeros((6, 10, 3), dtype=np.uint8)
    rgb[:, :5] = (255, 0, 0)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    image = read_image(tmp_path / "rgb.png")
    assert image.shape == (1, 6, 10, 3) and image.dtype == torch.float32
    assert torch.allclose(image[0, 0, 0], torch.tensor([1.0, 0.0, 0.0]))

    rgba = np.zeros((6, 10, 4), dtype=np.uint8)
    rgba[..., :3] = (0, 0, 255)
    rgba[:, 5:, 3] = 255  # left half transparent
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    image = read_image(tmp_path / "rgba.png")
    assert torch.allclose(image[0, 0, 0], torch.ones(3)) and torch.allclose(image[0, 0, 9], torch.tensor([0, 0, 1.0]))
    assert torch.allclose(read_image(tmp_path / "rgba.png", background=None)[0, 0, 0], torch.tensor([0, 0, 1.0]))
    colour, alpha = read_image_rgba(tmp_path / "rgba.png")
    assert colour.shape == (1, 6, 10, 3) and alpha.shape == (1, 6, 10)
    assert float(alpha[0, :, :5].max()) == 0.0 and float(alpha[0, :, 5:].min()) == 1.0
    assert float(read_image_rgba(tmp_path / "rgb.png")[1].min()) == 1.0

    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise for display
    Image.fromarray(rgb).save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    assert read_image(tmp_path / "rotated.jpg").shape == (1, 10, 6, 3)

    deep = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    gray = read_image(tmp_path / "deep.png")
    assert gray.shape == (1, 3, 4, 3) and float(gray[0, 2, 3, 0]) == pytest.approx(55000 / 65535, abs=1e-4)

    with pytest.raises(InputError, match="not found"):
        read_image(tmp_path / "nope.png")


# ------------------------------------------------------------------------------------------------ shared video


@pytest.mark.skipif(not SHARED_VIDEO.is_file(), reason=f"shared test video not found at {SHARED_VIDEO}")
def test_shared_video_non_square_pixels() -> None:
    info = probe_video(SHARED_VIDEO)
    assert abs(info.frame_count - 628) <= 1 and info.fps == 25
    assert (info.coded_width, info.coded_height, info.sar) == (704, 576, Fraction(16, 11))
    assert (info.width, info.height) == (1024, 576) and info.display_aspect == pytest.approx(16 / 9)
    frames, fps = read_video(SHARED_VIDEO, frame_cap=10)
    assert frames.shape == (10, 576, 1024, 3) and fps == 25.0
    assert frames.shape[2] / frames.shape[1] == pytest.approx(16 / 9, rel=1e-3)
