"""Probing media files: :class:`VideoInfo` from container headers, plus the file checks shared by the readers.

Re-exported by :mod:`.videoio`; import from there. See that module for the SAR and rotation conventions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from fractions import Fraction
from os import PathLike
from pathlib import Path

import av
from PIL import Image

from .errors import InputError

logger = logging.getLogger(__name__)

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
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"{what} file not found: {p} (check the path; relative paths start at {Path.cwd()})")
    if not p.is_file():
        raise InputError(f"{what} path is not a file: {p}")
    if p.stat().st_size == 0:
        raise InputError(f"{what} file is empty (0 bytes): {p}; it was probably not written completely")
    return p


def is_webp(path: Path) -> bool:
    with path.open("rb") as fh:
        head = fh.read(12)
    return head[:4] == b"RIFF" and head[8:12] == b"WEBP"


def open_container(path: Path) -> av.container.InputContainer:
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.FFmpegError, OSError) as exc:
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
