"""Probing media files: :class:`VideoInfo` from container headers, plus the file checks shared by the readers.

Re-exported by :mod:`.video`; import from there. See that module for the SAR and rotation conventions.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from fractions import Fraction
from os import PathLike
from pathlib import Path

import av
import av.logging
from PIL import Image

from ..errors import InputError
from ..fsutil import stat_regular

logger = logging.getLogger(__name__)

#: FFmpeg demuxers of single still images (a PNG or JPEG renamed .mp4): not videos for curation.
IMAGE_DEMUXERS = {"image2", "png_pipe", "jpeg_pipe", "bmp_pipe", "tiff_pipe", "webp_pipe", "gif_pipe", "jpegls_pipe",
                  "qoi_pipe", "pam_pipe", "ppm_pipe", "pgm_pipe", "svg_pipe", "j2k_pipe", "dpx_pipe", "exr_pipe"}
TEXT_DEMUXERS = {"tty"}  # FFmpeg renders .txt/.nfo/.asc files as ANSI-art video: not a video for us
_VARIABLE_DELAY_DEMUXERS = {"gif"}  # per-frame delays: fps = frames / duration, not the minimum delay
DEFAULT_FPS = Fraction(25)


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` learns about a file without decoding it (one frame at most).

    ``width``/``height`` are the display size: after the pixel aspect (see the module notes) and after a
    90/270 degree rotation. ``coded_width``/``coded_height`` are the stored frame size. ``frame_count`` is
    exact when ``frame_count_exact`` (read from the container index, or counted), else ``duration * fps``
    rounded. ``rotation`` is counter-clockwise degrees (0, 90, 180, 270) applied for display.
    """

    path: Path
    width: int
    height: int
    coded_width: int
    coded_height: int
    sar: Fraction
    fps: Fraction
    frame_count: int
    frame_count_exact: bool
    duration: float
    rotation: int
    has_video: bool
    has_audio: bool
    codec: str
    container: str

    @property
    def display_aspect(self) -> float:
        """Display width / height (0.0 without video)."""
        return self.width / self.height if self.height else 0.0


# ----------------------------------------------------------------------------------------------- files


def check_file(path: str | PathLike[str], what: str = "video") -> Path:
    """``path`` when it is a non-empty regular file we may read; else an InputError saying what it is instead
    (missing, a folder, a named pipe, a device or socket, unreadable, empty). Nothing is opened for reading
    before the type is known, so a FIFO never blocks."""
    p = Path(path).expanduser()
    st = stat_regular(p, f"{what} file", InputError)
    if not os.access(p, os.R_OK):
        raise InputError(f"{what} file is not readable (permission denied): {p}")
    if st.st_size == 0:
        raise InputError(f"{what} file is empty (0 bytes): {p}; it was probably not written completely")
    return p


_MP4_BRANDS = (b"ftyp",)
_MP4_TOP = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"uuid", b"pdin", b"moof", b"mfra", b"meta",
            b"sidx", b"styp", b"prft", b"emsg", b"pnot", b"PICT"}


def mp4_damage(path: Path) -> str:
    """'' for a file that is not an ISO-BMFF (MP4/MOV) or whose top-level boxes are whole; else why it is
    truncated ("its index (moov box) is missing", "box 'mdat' ends at byte N but the file has M bytes")."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(8)
            if len(head) < 8 or head[4:8] not in _MP4_BRANDS:
                return ""
            offset, seen = 0, set()
            while offset + 8 <= size:
                fh.seek(offset)
                box = fh.read(16)
                length, kind = int.from_bytes(box[:4], "big"), box[4:8]
                if length == 1 and len(box) >= 16:
                    length = int.from_bytes(box[8:16], "big")
                elif length == 0:
                    length = size - offset
                if kind not in _MP4_TOP or length < 8:
                    return ""  # not a box layout we know: no claim
                seen.add(kind)
                if offset + length > size:
                    missing = "" if b"moov" in seen else "; its index (moov box) is missing"
                    return (f"box {kind.decode('latin-1')!r} ends at byte {offset + length} but the file has only "
                            f"{size} bytes{missing}")
                offset += length
    except OSError:
        return ""
    if b"moov" not in seen and b"moof" not in seen:
        return "its index (moov box) is missing"
    return ""


def is_webp(path: Path) -> bool:
    with path.open("rb") as fh:
        head = fh.read(12)
    return head[:4] == b"RIFF" and head[8:12] == b"WEBP"


def open_container(path: Path) -> av.container.InputContainer:
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.FFmpegError, OSError) as exc:
        damage = mp4_damage(path)
        if damage:
            raise InputError(f"{path} is a truncated MP4/MOV file: {damage}, so no frame can be located; the "
                             "download or copy was cut short (re-fetch it)") from None
        claimed = claimed_size(path)
        if claimed is not None:
            raise InputError(f"{path}: video too large ({claimed[0]}x{claimed[1]}): FFmpeg refuses frames of that "
                             "size; the file is damaged or was made by a tool that ignores size limits") from None
        raise InputError(
            f"cannot open {path} as a video: FFmpeg says {exc}. It is not a media file, or it is corrupt or "
            "truncated (an MP4 cut short loses its index, the moov atom, so no frame is decodable)"
        ) from exc
    if container.format.name in TEXT_DEMUXERS:
        container.close()
        raise InputError(f"{path} is a text file, not a video (FFmpeg detected format {container.format.name!r})")
    return container


def pick_video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream | None:
    """First video stream that is not an attached picture (cover art in audio files)."""
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    return None


def display_size(width: int, height: int, sar: Fraction, rotation: int) -> tuple[int, int]:
    """Square-pixel display size: stretch the short axis by the SAR, then swap for 90/270 rotation."""
    if sar > 1:
        width = max(1, round(width * sar))
    elif sar < 1:
        height = max(1, round(height / sar))
    return (height, width) if rotation % 180 else (width, height)


def _normalise_rotation(degrees: float, path: Path) -> int:
    quarter = round(degrees / 90)
    if abs(degrees - 90 * quarter) > 1:
        logger.warning(
            "%s: display rotation %.1f degrees is not a multiple of 90; using %d", path, degrees, 90 * quarter
        )
    return (90 * quarter) % 360


def _first_frame_rotation(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float:
    """Rotation (counter-clockwise degrees) of the first decodable frame; 0.0 when none decodes soon."""
    try:
        for n, packet in enumerate(container.demux(stream)):
            try:
                frames = stream.decode(packet)
            except av.FFmpegError:
                frames = []
            if frames:
                return float(frames[0].rotation)
            if n > 64:
                break
    except av.FFmpegError:
        pass
    return 0.0


# ----------------------------------------------------------------------------------------------- probe


def probe_video(path: str | PathLike[str], *, count_frames: bool = False) -> VideoInfo:
    """Read a video's geometry, rate and length from its headers (and its first frame, for rotation).

    ``count_frames=True`` demuxes every packet (no decoding) when the container has no frame count, making
    ``frame_count`` exact; otherwise it is estimated from the duration. An audio-only file gives
    ``has_video=False`` (zeros for the video fields); :func:`read_video` refuses it.

    Raises:
        InputError: missing, empty, or unreadable file; a text file.
    """
    p = check_file(path)
    if is_webp(p):
        return _probe_pillow(p)
    container = open_container(p)
    try:
        stream = pick_video_stream(container)
        has_audio = bool(container.streams.audio)
        fmt = container.format.name
        container_seconds = Fraction(container.duration, 1_000_000) if container.duration else Fraction(0)
        if stream is None:
            return VideoInfo(
                path=p, width=0, height=0, coded_width=0, coded_height=0, sar=Fraction(1), fps=Fraction(0),
                frame_count=0, frame_count_exact=True, duration=float(container_seconds), rotation=0,
                has_video=False, has_audio=has_audio, codec="", container=fmt,
            )  # fmt: skip
        if stream.duration and stream.time_base:
            seconds = stream.duration * stream.time_base
        else:
            seconds = container_seconds
        frames = int(stream.frames or 0)
        fps = stream.average_rate or stream.guessed_rate or stream.base_rate
        if fmt in _VARIABLE_DELAY_DEMUXERS and frames and seconds:
            fps = (Fraction(frames) / seconds).limit_denominator(1001)
        if not fps:
            logger.warning("%s: no frame rate in the headers; assuming %s fps", p, DEFAULT_FPS)
            fps = DEFAULT_FPS
        sar = Fraction(stream.sample_aspect_ratio or 1)
        rotation = _normalise_rotation(_first_frame_rotation(container, stream), p)
        width, height = display_size(stream.width, stream.height, sar, rotation)
        codec, coded_width, coded_height = stream.codec_context.name, stream.width, stream.height
    finally:
        container.close()
    exact = frames > 0
    if not exact and count_frames:
        frames, exact = _count_packets(p), True
    elif not exact:
        frames = round(float(seconds * fps))
    return VideoInfo(
        path=p, width=width, height=height, coded_width=coded_width, coded_height=coded_height, sar=sar,
        fps=Fraction(fps), frame_count=frames, frame_count_exact=exact, duration=float(seconds), rotation=rotation,
        has_video=True, has_audio=has_audio, codec=codec, container=fmt,
    )  # fmt: skip


def _count_packets(path: Path) -> int:
    """Number of non-empty packets of the video stream (demux only, no decoding)."""
    container = open_container(path)
    try:
        stream = pick_video_stream(container)
        if stream is None:  # pragma: no cover - the caller found one
            return 0
        try:
            return sum(1 for packet in container.demux(stream) if packet.size)
        except av.FFmpegError as exc:
            raise InputError(f"cannot count the frames of {path}: FFmpeg says {exc}") from exc
    finally:
        container.close()


def _pillow_durations(image: Image.Image) -> list[int]:
    durations = []
    for k in range(getattr(image, "n_frames", 1)):
        image.seek(k)
        image.load()
        durations.append(int(image.info.get("duration") or 0))
    return durations


def _probe_pillow(path: Path) -> VideoInfo:
    try:
        with Image.open(path) as image:
            durations = _pillow_durations(image)
            width, height = image.size
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"cannot read {path} as an animated WebP: Pillow says {exc}") from exc
    n = len(durations)
    total_ms = sum(durations)
    fps = Fraction(1000 * n, total_ms).limit_denominator(1001) if total_ms else DEFAULT_FPS
    seconds = total_ms / 1000 if total_ms else n / float(fps)
    return VideoInfo(
        path=path, width=width, height=height, coded_width=width, coded_height=height, sar=Fraction(1), fps=fps,
        frame_count=n, frame_count_exact=True, duration=seconds, rotation=0, has_video=True, has_audio=False,
        codec="webp", container="webp",
    )  # fmt: skip


_INVALID_SIZE = re.compile(r"[Pp]icture size (\d+)x(\d+) is invalid")


def claimed_size(path: Path) -> tuple[int, int] | None:
    """The frame size FFmpeg refused as invalid (too large) while opening or decoding the first packets of
    ``path`` (its log says "Picture size WxH is invalid"), or None. For files whose headers give 0x0."""
    previous, skip = av.logging.get_level(), av.logging.get_skip_repeated()
    try:
        av.logging.set_level(av.logging.ERROR)
        av.logging.set_skip_repeated(False)  # else a message equal to an earlier file's is held back as a repeat
        with av.logging.Capture(local=True) as logs:
            try:
                with av.open(str(path), metadata_errors="ignore") as container:
                    stream = pick_video_stream(container)
                    if stream is not None:
                        for i, _ in enumerate(container.decode(stream)):
                            if i >= 2:
                                break
            except (av.FFmpegError, OSError, ValueError):
                pass  # the exception's "last error log" may be another file's: only this call's log counts
    finally:
        av.logging.set_skip_repeated(skip)
        av.logging.set_level(previous)
    for _, _, message in logs:
        match = _INVALID_SIZE.search(str(message))
        if match:
            return int(match[1]), int(match[2])
    return None


def size_error(info: VideoInfo) -> InputError | None:
    """An InputError for a video stream whose frame size is unusable: 0x0 in the headers because FFmpeg
    refused the size the file claims ("too large (WxH)"), or no size at all; None when the size is known."""
    if not info.has_video or (info.coded_width > 0 and info.coded_height > 0):
        return None
    claimed = claimed_size(info.path)
    if claimed is not None:
        return InputError(f"{info.path}: video too large ({claimed[0]}x{claimed[1]}): FFmpeg refuses frames of that "
                          "size; the file is damaged or was made by a tool that ignores size limits")
    return InputError(f"{info.path}: the video stream has no frame size (0x0); the file is corrupt")


def undecodable_error(info: VideoInfo, first_error: str = "") -> InputError:
    """Why no frame of ``info`` decoded: truncated (with the box that is cut), zero frames, or corrupt."""
    detail = f" (first error: {first_error})" if first_error else ""
    damage = mp4_damage(info.path)
    if damage:
        return InputError(f"no decodable video frames in {info.path}: the file is truncated ({damage}){detail}")
    if info.frame_count_exact and info.frame_count == 0:
        return InputError(f"{info.path} has a video stream with zero frames (nothing to decode)")
    return InputError(f"no decodable video frames in {info.path}{detail}; the file is corrupt or truncated")
