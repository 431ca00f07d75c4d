"""One decode per video, fanned out to the cut cascade and the motion sampler: :func:`annotate_video`.

Per decoded frame the only Python work is copying a strided view of the Y plane into a chunk buffer.
Per chunk of 64 frames: the small images for the cut scores (area-downscaled with OpenCV), the change
series (vectorised), a ring write, and whatever became final (cut confirmation on the ring, 2-fps
Farnebäck on the samples). Memory is bounded by the ring (a few seconds of thumbnails) plus a few floats
per frame.

With a :class:`FrameCapture` the same decode also keeps the exact RGB pictures of the frames the capture wants
(the clips' keyframes), so no second decode reads them: the decoder deblocks (``fast`` off), each frame stays
referenced until the cuts before it are final and the capture says whether it is wanted, and only the wanted
ones are converted (as :func:`.frames_at.read_frames_at` converts, so the bytes are the same). A capture of
reference frames (``FrameCapture.references``, H.264) holds only those (about half the frames of a stream with
B-frames) and lets the decoder skip deblocking the others; :attr:`VideoAnnotation.reference` says which they are.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from fractions import Fraction
from os import PathLike
from pathlib import Path

import av
import cv2
import numpy as np

from ..media.probe import VideoInfo
from .cuts import Cut, CutConfig
from .decode import DecodeStats, check_decoded, damage_note, luma_chunks, luma_geometry, open_info
from .frames_at import _rgb as rgb_picture  # the one conversion the exact keyframe reads use
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
    #: with a :class:`FrameCapture`: frame index -> exact RGB uint8 (H, W, 3) picture of the wanted frames that
    #: were captured (a wanted frame can be missing: the held frames' budget ran out, or the decode had errors)
    pictures: dict[int, np.ndarray] = field(default_factory=dict, repr=False)
    #: with ``references``: bool (num_frames,), True where the frame is an H.264 reference frame (other frames are
    #: predicted from it; :class:`.h264_refs.H264References`); None when not asked for or not known (other codecs,
    #: no timestamps, interlaced frames): then every frame counts as one
    reference: np.ndarray | None = field(default=None, repr=False)

    @property
    def frames_per_second_processed(self) -> float:
        return self.frames_decoded / self.decode_seconds if self.decode_seconds > 0 else 0.0


@dataclass(frozen=True)
class FrameCapture:
    """Exact RGB pictures to keep during the analysis decode (see :attr:`VideoAnnotation.pictures`).

    ``wanted(annotation)``: the indices of the frames wanted, e.g. the keyframes of the clips split from it. While
    decoding it is also called on partial annotations (the frames so far, the cuts final so far); only its answer
    before the last of those cuts is used then, and once at the end on the whole annotation (which decides).
    ``max_side``: the pictures' long side, as :func:`.frames_at.read_frames_at`'s (None = display size).
    ``budget_bytes``: the most decoded frames held while their fate is open (in a shot whose end is not final
    yet; about 0.6 MB per 576p frame, 3 MB per 1080p one); past it the oldest are let go, and a reader falls back
    to decoding those. Memory is this budget plus the wanted pictures. A video whose frames over the cut
    detector's confirmation latency (its ``ring_size``, about 30 s of frames at 25 fps by default), or over the
    whole video if it is shorter, would not fit is not captured at all (with the default budget: frames up to
    about 576p; 1080p videos up to about 12 s with ``references``).
    ``references``: only reference frames can be wanted (``wanted`` picks among the annotation's ``reference``
    frames): the decode tracks them, holds only those (on H.264; counted as half the frames above) and skips
    deblocking the others.
    """

    wanted: Callable[[VideoAnnotation], Collection[int]]
    max_side: int | None = 512
    budget_bytes: int = 512 * 2**20
    references: bool = False


class _Held:
    """Decoded frames (av.VideoFrame) awaiting the capture's decision, oldest first, within the byte budget."""

    def __init__(self, capture: FrameCapture, info: VideoInfo) -> None:
        self.capture, self.info = capture, info
        self.frames: dict[int, tuple[av.VideoFrame, int]] = {}  # index -> (frame, bytes), in index order
        self.bytes = 0
        self.kept: dict[int, np.ndarray] = {}
        self.decided_before = 0
        self.dropped = 0  # frames let go for the budget, undecided

    def add(self, index: int, frame: av.VideoFrame, exact: bool = True) -> None:
        """Hold ``frame`` (frame ``index``) while its fate is open; frames decoded inexactly are never held."""
        if index < self.decided_before or not exact:
            return
        size = sum(plane.buffer_size for plane in frame.planes)
        self.frames[index] = (frame, size)
        self.bytes += size
        while self.bytes > self.capture.budget_bytes and self.frames:
            _, (_, old) = self._pop_first()
            self.bytes -= old
            self.dropped += 1

    def _pop_first(self) -> tuple[int, tuple[av.VideoFrame, int]]:
        first = next(iter(self.frames))
        return first, self.frames.pop(first)

    def decide(self, before: int, wanted: Collection[int]) -> None:
        """Convert the wanted held frames before index ``before``, let the others go."""
        for i in [i for i in self.frames if i < before]:
            frame, size = self.frames.pop(i)
            self.bytes -= size
            if i in wanted:
                self.kept[i] = rgb_picture(frame, self.info, self.capture.max_side)
        self.decided_before = max(self.decided_before, before)


def annotate_video(
    path: str | PathLike[str],
    cut: CutConfig = CutConfig(),  # noqa: B008 - frozen dataclass default
    motion: MotionConfig | None = MotionConfig(),  # noqa: B008
    *,
    threads: int = 1,
    fast: bool = True,
    capture: FrameCapture | None = None,
    references: bool = False,
) -> VideoAnnotation:
    """Decode ``path`` once and detect cuts, fades, dissolves and 2-fps motion.

    Args:
        path: a video file FFmpeg reads.
        cut: cascade settings; motion: flow settings, None = skip motion.
        threads: decoder threads (1 = single-threaded, best for one process per core; 0 = FFmpeg's choice); also
            the learned shot detector's onnxruntime threads (``cut.detector``, see :mod:`.shot_model`).
        fast: skip H.264/HEVC deblocking while decoding (see :mod:`.decode`); about 20-40% faster. Ignored (off)
            with ``capture``, whose pictures must be exact.
        capture: keep the exact RGB pictures of the frames it wants (:attr:`VideoAnnotation.pictures`).
        references: tell which frames are H.264 reference frames (:attr:`VideoAnnotation.reference`); implied by a
            capture of reference frames.

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

    # the most frames held at once: those of the detector's confirmation latency, or of a shorter video; a capture
    # of reference frames holds about half of them (H.264 with B-frames; the budget lets go of any excess)
    held_max = min(ring_size, info.frame_count) if info.frame_count > 0 else ring_size
    held_max = held_max // 2 if capture is not None and capture.references else held_max
    if capture is not None and info.coded_width * info.coded_height * 3 // 2 * held_max > capture.budget_bytes:
        # they would not fit: the keyframes are read later
        logger.info("%s: %dx%d frames over %d frames of cut latency exceed the capture budget (%d MiB); not "
                    "capturing keyframes", info.path, info.coded_width, info.coded_height, held_max,
                    capture.budget_bytes >> 20)
        capture = None
    held = _Held(capture, info) if capture is not None else None
    last_cut = 0  # with capture: the frame of the last cut final so far (the frames before it are decided)
    track_refs = references or (capture is not None and capture.references)
    ref_flags: list[bool | None] = []  # per decoded frame, with track_refs: reference frame (None: unknown)

    def on_frame(index: int, frame: av.VideoFrame, reference: bool | None, exact: bool) -> None:
        ref_flags.append(reference)
        if held is not None:
            held.add(index, frame, exact)

    def decide_final() -> None:
        """Frames before the last cut that is final now: their clips are known, so whether they are wanted."""
        nonlocal last_cut
        cuts_so_far = getattr(detector, "cuts", None)  # the cascade's; a detector without it decides at the end
        if held is None or cuts_so_far is None or not held.frames:
            return
        final = [c for c in cuts_so_far(times[:n]) if c.end_frame < detector.final_before]
        if not final or final[-1].frame <= last_cut:
            return
        last_cut = final[-1].frame
        partial = _annotation(info, fps, times[:n], tuple(final), stats, reference=_reference(ref_flags, n))
        held.decide(last_cut, set(capture.wanted(partial)))

    chunks = luma_chunks(info, geometry, stats, chunk=CHUNK, threads=threads, fast=fast and capture is None,
                         chroma=True, chroma_step=fb, on_frame=on_frame if held is not None or track_refs else None,
                         references=track_refs, noref=held is not None and capture.references)
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
        decide_final()
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
    stages = {"decode": max(0.0, seconds - t_cuts - t_motion), "cuts": t_cuts, "motion": t_motion}
    ann = _annotation(info, fps, times, tuple(cuts), stats, note=note, stages=stages, pairs=pairs, seconds=seconds,
                      reference=_reference(ref_flags, n) if track_refs else None)
    if held is not None:
        wanted = set(capture.wanted(ann))
        held.decide(n, wanted)
        # pictures after a damaged packet may differ from a seek-and-decode read of the same frame: none then
        pictures = {i: a for i, a in held.kept.items() if i in wanted} if not stats.errors else {}
        if held.dropped:
            logger.info("%s: %d undecided frames let go (capture budget)", info.path, held.dropped)
        ann = dataclasses.replace(ann, pictures=pictures)
    logger.info("%s: %d frames, %d cuts, %d motion pairs in %.2fs", info.path, n, len(cuts), len(pairs), seconds)
    return ann


def _reference(flags: list[bool | None], n: int) -> np.ndarray | None:
    """The first ``n`` reference flags as a bool (n,) array (unknown: False); None when none is known."""
    if not any(f is not None for f in flags[:n]):
        return None
    return np.array([f is True for f in flags[:n]], bool)


def _annotation(info: VideoInfo, fps: float, times: np.ndarray, cuts: tuple[Cut, ...], stats: DecodeStats, *,
                note: str = "", stages: dict[str, float] | None = None, pairs: np.ndarray | None = None,
                seconds: float = 0.0, reference: np.ndarray | None = None) -> VideoAnnotation:
    """The annotation of the frames at ``times`` (pts s) with ``cuts``; ``pairs``: (k, 5) motion sample pairs
    (frame a, frame b, time a, time b, magnitude), None = none; ``seconds``: the annotation's wall time;
    ``reference``: see :attr:`VideoAnnotation.reference`."""
    n = len(times)
    pairs = np.zeros((0, 5), np.float64) if pairs is None else pairs
    duration = float(times[-1] - times[0] + (times[-1] - times[-2] if n > 1 else 1.0 / fps)) if n else 0.0
    return VideoAnnotation(
        path=info.path, fps=fps, num_frames=n, duration=duration, width=info.width, height=info.height,
        coded_width=info.coded_width, coded_height=info.coded_height, sar=info.sar, rotation=info.rotation,
        frame_times=times, cuts=cuts, motion_times=pairs[:, 2].copy(), motion_magnitudes=pairs[:, 4].copy(),
        motion_frames=pairs[:, :2].astype(np.int64), frames_decoded=stats.frames, decode_seconds=seconds,
        decode_errors=stats.errors, truncated=bool(note), note=note, codec=info.codec, stage_seconds=stages or {},
        reference=reference,
    )  # fmt: skip
