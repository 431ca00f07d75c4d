"""One decode per video, fanned out to the cut cascade and the motion sampler: :func:`annotate_video`.

Per decoded frame the only Python work is copying a strided view of the Y plane into a chunk buffer.
Per chunk of 64 frames: the small images for the cut scores (area-downscaled with OpenCV), the change
series (vectorised), a ring write, and whatever became final (cut confirmation on the ring, 2-fps
Farnebäck on the samples). Memory is bounded by the ring (a few seconds of thumbnails) plus a few floats
per frame.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from fractions import Fraction
from os import PathLike
from pathlib import Path

import cv2
import numpy as np

from .cuts import Cut, CutConfig
from .decode import DecodeStats, check_decoded, damage_note, luma_chunks, luma_geometry, open_info
from .motion import UNIT, MotionConfig, MotionTrack, flow_size
from .shot_model import make_detector

logger = logging.getLogger(__name__)

CHUNK = 128  # frames per decode chunk
SCAN_EVERY = 256  # frames between cut scans (the ring holds a few seconds more than this)


@dataclass(frozen=True)
class VideoAnnotation:
    """What :func:`annotate_video` learned about one video.

    ``width``/``height``: display size (SAR and rotation applied); ``coded_width``/``coded_height``: stored
    size. ``frame_times``: pts (s) of every decoded frame, float64 (num_frames,). ``cuts``: shot boundaries
    in order. Motion: one entry per sample pair that lies inside one shot; ``motion_frames`` (k, 2) int64
    frame indices of the pair, ``motion_times`` (k,) pts of its first frame, ``motion_magnitudes`` (k,)
    mean flow length in ``motion_unit`` (display short sides per second, see :mod:`.motion`).
    ``truncated`` / ``note``: the file was damaged and only its decodable part was analysed.
    """

    path: Path
    fps: float
    num_frames: int
    duration: float
    width: int
    height: int
    coded_width: int
    coded_height: int
    sar: Fraction
    rotation: int
    frame_times: np.ndarray
    cuts: tuple[Cut, ...]
    motion_times: np.ndarray
    motion_magnitudes: np.ndarray
    motion_frames: np.ndarray
    motion_unit: str = UNIT
    frames_decoded: int = 0
    decode_seconds: float = 0.0
    decode_errors: int = 0
    truncated: bool = False
    note: str = ""
    codec: str = ""
    #: seconds spent in "decode" (decoding + luma/chroma thumbnails), "cuts" (the cut cascade) and "motion"
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def frames_per_second_processed(self) -> float:
        return self.frames_decoded / self.decode_seconds if self.decode_seconds > 0 else 0.0


def annotate_video(
    path: str | PathLike[str],
    cut: CutConfig = CutConfig(),  # noqa: B008 - frozen dataclass default
    motion: MotionConfig | None = MotionConfig(),  # noqa: B008
    *,
    threads: int = 1,
    fast: bool = True,
) -> VideoAnnotation:
    """Decode ``path`` once and detect cuts, fades, dissolves and 2-fps motion.

    Args:
        path: a video file FFmpeg reads.
        cut: cascade settings; motion: flow settings, None = skip motion.
        threads: decoder threads (1 = single-threaded, best for one process per core; 0 = FFmpeg's choice); also
            the learned shot detector's onnxruntime threads (``cut.detector``, see :mod:`.shot_model`).
        fast: skip H.264/HEVC deblocking while decoding (see :mod:`.decode`); about 20-40% faster.

    Raises:
        InputError: missing, empty, unreadable, audio-only, unsupported or oversized file; no decodable frame.
    """
    t_start = time.perf_counter()
    info = open_info(path)
    fps = float(info.fps)
    geometry = luma_geometry(info, cut.luma_width)
    lw, lh = geometry.size
    fb = max(1, round(lw / cut.feature_width))
    small_size = (max(1, lw // fb), max(1, lh // fb))
    detector = make_detector(cut, fps, (3, small_size[1], small_size[0]), ring_extra=2 * CHUNK,
                             scan_every=SCAN_EVERY, threads=threads)  # the cascade unless cut.detector says
    ring_size = detector.ring_size
    ring = np.zeros((ring_size, lh, lw), np.uint8)  # (R h w) decode thumbnails for motion
    track = None
    if motion is not None:
        fw, fh = flow_size((lh, lw), motion.short_side)
        scale = (geometry.scale[0] * lw / fw, geometry.scale[1] * lh / fh)
        track = MotionTrack(motion, scale, float(geometry.display_short_side), (fw, fh))
    times = np.zeros(4096, np.float64)
    n = 0
    stats = DecodeStats()
    small = np.full((CHUNK, 3, small_size[1], small_size[0]), 128.0, np.float32)  # (c YUV h w)

    def get_luma(i: int) -> np.ndarray:
        return ring[i % ring_size]

    def events() -> list[tuple[int, int, bool]]:
        return [(e.start, e.end, e.kind == "hard") for e in detector.pending()]

    chunks = luma_chunks(info, geometry, stats, chunk=CHUNK, threads=threads, fast=fast, chroma=True, chroma_step=fb)
    t_cuts = t_motion = 0.0  # per-stage seconds (perf_counter); decode is the rest of the annotation time
    for chunk_times, lumas, uv in chunks:
        c = len(chunk_times)
        if n + c > len(times):
            times = np.concatenate([times, np.zeros(max(len(times), c), np.float64)])
        times[n : n + c] = chunk_times
        idx = np.arange(n, n + c) % ring_size
        ring[idx] = lumas
        for i in range(c):
            small[i, 0] = cv2.resize(lumas[i], small_size, interpolation=cv2.INTER_AREA)
            if uv is not None:  # chroma arrives strided to about the small size: nearest fit
                small[i, 1] = cv2.resize(uv[i, 0], small_size, interpolation=cv2.INTER_NEAREST)
                small[i, 2] = cv2.resize(uv[i, 1], small_size, interpolation=cv2.INTER_NEAREST)
        t0 = time.perf_counter()
        detector.push(small[:c])
        t1 = time.perf_counter()
        t_cuts += t1 - t0
        n += c
        if track is not None and detector.final_before > track.pos:
            track.process(detector.final_before, times[:n], events(), get_luma)
            t_motion += time.perf_counter() - t1
    check_decoded(info, stats)
    times = times[:n]
    t0 = time.perf_counter()
    cuts = detector.finish(times)
    t1 = time.perf_counter()
    t_cuts += t1 - t0
    if track is not None:
        track.process(n, times, events(), get_luma)
        t_motion += time.perf_counter() - t1
    pairs = np.asarray(track.pairs if track is not None else [], np.float64).reshape(-1, 5)
    note = damage_note(info, stats)
    seconds = time.perf_counter() - t_start
    duration = float(times[-1] - times[0] + (times[-1] - times[-2] if n > 1 else 1.0 / fps))
    logger.info("%s: %d frames, %d cuts, %d motion pairs in %.2fs", info.path, n, len(cuts), len(pairs), seconds)
    return VideoAnnotation(
        path=info.path, fps=fps, num_frames=n, duration=duration, width=info.width, height=info.height,
        coded_width=info.coded_width, coded_height=info.coded_height, sar=info.sar, rotation=info.rotation,
        frame_times=times, cuts=tuple(cuts), motion_times=pairs[:, 2].copy(), motion_magnitudes=pairs[:, 4].copy(),
        motion_frames=pairs[:, :2].astype(np.int64), frames_decoded=stats.frames, decode_seconds=seconds,
        decode_errors=stats.errors, truncated=bool(note), note=note, codec=info.codec,
        stage_seconds={"decode": max(0.0, seconds - t_cuts - t_motion), "cuts": t_cuts, "motion": t_motion},
    )  # fmt: skip
