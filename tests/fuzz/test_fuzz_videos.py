"""Broken videos, made at run time with PyAV from tiny synthetic frames and then damaged, through the curation
pipeline (one ``error`` row with a specific reason, never an exception) and through ``read_video`` (the LoadVideo
path: a specific InputError, or the decodable frames). Nothing may be written outside the sandbox's folders and
no process may start."""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from comfyui_svd_lab.svd_model.curation.pipeline import CurationConfig, curate_video
from comfyui_svd_lab.svd_model.curation.synthetic import make_audio_only
from comfyui_svd_lab.svd_model.errors import InputError
from comfyui_svd_lab.svd_model.media.video import read_video

CONFIG = CurationConfig.from_dict({"text": False, "keyframe_max_side": 32, "split": {"min_seconds": 2.0}})
OK = "ok"  # read_video returns frames


def _encode(path: Path, *, n: int = 12, size: tuple[int, int] = (64, 48), codec: str = "libx264",
            pix_fmt: str = "yuv420p", options: dict[str, str] | None = None, noise: bool = False) -> Path:
    w, h = size
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", options=options or {}) as container:
        stream = container.add_stream(codec, rate=12)
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        for i in range(n):
            arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8) if noise else np.full((h, w, 3), i * 9 % 256,
                                                                                         np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def zero_bytes(p: Path) -> None:
    p.write_bytes(b"")


def garbage(p: Path) -> None:
    p.write_bytes(np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8).tobytes())


def text_file(p: Path) -> None:
    p.write_text("hello, this is not a video\n" * 40)


def truncated_index_at_end(p: Path) -> None:
    data = _encode(p, n=24, noise=True).read_bytes()
    p.write_bytes(data[: len(data) // 2])  # the moov box (written last) is gone


def truncated_index_at_front(p: Path) -> None:
    data = _encode(p, n=60, noise=True, options={"movflags": "+faststart"}).read_bytes()
    p.write_bytes(data[: len(data) // 3])  # index intact, samples cut: about 20 of 60 frames decode


def headers_only(p: Path) -> None:
    data = _encode(p, n=24, noise=True, options={"movflags": "+faststart"}).read_bytes()
    p.write_bytes(data[: data.index(b"mdat") + 24])


def huge_claimed_mjpeg(p: Path) -> None:
    """MJPEG whose container and JPEG headers claim 60000x60000 (FFmpeg refuses that size: headers say 0x0)."""
    data = bytearray(_encode(p, n=6, codec="mjpeg", pix_fmt="yuvj420p").read_bytes())
    at = data.find(b"\xff\xc0")
    while at >= 0:
        data[at + 5 : at + 9] = struct.pack(">HH", 60000, 60000)
        at = data.find(b"\xff\xc0", at + 2)
    for tag in (b"mp4v", b"jpeg"):
        k = data.find(tag)
        if k > 0:
            data[k + 28 : k + 32] = struct.pack(">HH", 60000, 60000)
    p.write_bytes(bytes(data))


def huge_y4m(p: Path) -> None:
    p.write_bytes(b"YUV4MPEG2 W40000 H40000 F12:1 Ip A1:1 C420jpeg\nFRAME\n" + b"\x80" * 1000)


def large_y4m(p: Path) -> None:
    p.write_bytes(b"YUV4MPEG2 W20000 H12000 F12:1 Ip A1:1 C420jpeg\nFRAME\n" + b"\x80" * 1000)


def folder(p: Path) -> None:
    p.mkdir()


def fifo(p: Path) -> None:
    os.mkfifo(p)


def symlink_loop(p: Path) -> None:
    os.symlink(p.name, p)


def dangling_symlink(p: Path) -> None:
    os.symlink("nowhere.mp4", p)


def audio_only(p: Path) -> None:
    make_audio_only(p, rate=8000, frames=6)


def zero_frames(p: Path) -> None:
    with av.open(str(p), "w") as container:
        stream = container.add_stream("mpeg4", rate=12)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        container.start_encoding()


def still_image(p: Path) -> None:
    Image.new("RGB", (32, 32), (200, 10, 10)).save(p, format="PNG")


def one_pixel(p: Path) -> None:
    _encode(p, n=5, size=(1, 1), codec="rawvideo", pix_fmt="rgb24")


def odd_size(p: Path) -> None:
    _encode(p, n=30, size=(33, 17), codec="ffv1", pix_fmt="yuv444p")


def wrong_extension(p: Path) -> None:
    tmp = p.with_name("real.mkv")
    _encode(tmp, n=30, codec="ffv1", pix_fmt="yuv420p")
    tmp.rename(p)  # Matroska content named .mp4: FFmpeg probes the content


def unreadable(p: Path) -> None:
    _encode(p)
    p.chmod(0)


@dataclass(frozen=True)
class Case:
    name: str
    suffix: str
    make: Callable[[Path], None]
    status: str  # the pipeline row's status
    reason: str  # regex the row's error (or drop reason) must match
    read: str  # regex of read_video's InputError, or OK


CASES = [
    Case("zero_bytes", ".mp4", zero_bytes, "error", r"empty \(0 bytes\)", r"empty \(0 bytes\)"),
    Case("garbage", ".mp4", garbage, "error", r"cannot open .* as a video", r"cannot open .* as a video"),
    Case("text", ".mp4", text_file, "error", r"cannot open .* as a video|is a text file", r"cannot open|text file"),
    Case("truncated_index_at_end", ".mp4", truncated_index_at_end, "error",
         r"truncated MP4/MOV file: box 'mdat' ends at byte \d+ .*moov box\) is missing",
         r"truncated MP4/MOV file: box 'mdat'"),
    Case("truncated_index_at_front", ".mp4", truncated_index_at_front, "error",
         r"^truncated: decoded \d+ of .*box 'mdat' ends at byte .*no clip in the \d+ decodable frames", OK),
    Case("headers_only", ".mp4", headers_only, "error", r"no decodable video frames .*the file is truncated",
         r"no decodable video frames .*the file is truncated"),
    Case("huge_claimed_mjpeg", ".mp4", huge_claimed_mjpeg, "error", r"video too large \(60000x60000\)",
         r"video too large \(60000x60000\)"),
    Case("huge_y4m", ".mp4", huge_y4m, "error", r"video too large \(40000x40000\)", r"video too large \(40000x40000\)"),
    Case("large_y4m", ".mp4", large_y4m, "error", r"video too large \(20000x12000; limit 16384",
         r"no decodable video frames"),
    Case("folder_named_mp4", ".mp4", folder, "error", r"is a folder, not a file", r"is a folder, not a file"),
    Case("fifo", ".mp4", fifo, "error", r"named pipe \(FIFO\)", r"named pipe \(FIFO\)"),
    Case("symlink_loop", ".mp4", symlink_loop, "error", r"cannot read video file .*symbolic links",
         r"symbolic links"),
    Case("dangling_symlink", ".mp4", dangling_symlink, "error", r"video file not found", r"video file not found"),
    Case("audio_only", ".m4a", audio_only, "error", r"no video stream: it is an audio-only file",
         r"no video stream: it is an audio-only file"),
    Case("zero_frames", ".mp4", zero_frames, "error", r"no video stream|zero frames", r"no video stream|zero frames"),
    Case("still_image_named_mp4", ".mp4", still_image, "error", r"is a still image \(FFmpeg reads it as 'png_pipe'\)",
         OK),
    Case("one_pixel", ".avi", one_pixel, "error", r"video size 1x1 is too small to analyse", OK),
    Case("odd_size", ".mkv", odd_size, "ok", r"^$", OK),
    Case("wrong_extension", ".mp4", wrong_extension, "ok", r"^$", OK),
    Case("unreadable", ".mp4", unreadable, "error", r"not readable \(permission denied\)",
         r"not readable \(permission denied\)"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_broken_video(case: Case, sandbox, no_process) -> None:
    if case.name == "unreadable" and os.geteuid() == 0:
        pytest.skip("runs as root: chmod 000 does not stop reads")
    inputs, out = sandbox.folder("input"), sandbox.folder("output")
    path = inputs / f"{case.name}{case.suffix}"
    case.make(path)
    sandbox.mark()

    result = curate_video(path, inputs, CONFIG, out)
    (row, *_) = result.rows
    reason = row["error"] if row["status"] == "error" else row["drop_reason"]
    assert row["status"] == case.status, f"{case.name}: {row['status']} {reason!r}"
    assert re.search(case.reason, reason or ""), f"{case.name}: {reason!r}"
    assert "Traceback" not in (reason or "") and "Error:" not in (reason or "").split(" ")[0]

    if case.read == OK:
        frames, fps = read_video(path)
        assert frames.ndim == 4 and frames.shape[0] >= 1 and fps > 0
    else:
        with pytest.raises(InputError, match=case.read):
            read_video(path)
