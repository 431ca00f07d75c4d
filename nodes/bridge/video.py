"""ComfyUI's VIDEO values <-> the pack's frames (an IMAGE tensor and a frame rate).

ComfyUI's VIDEO is a ``comfy_api`` VideoInput: core Load Video gives a ``VideoFromFile``, Create Video a
``VideoFromComponents``; ``get_components()`` returns the frames (IMAGE ``[T, H, W, C]`` float in [0, 1]), the frame
rate (a ``Fraction``) and the audio. The pack's nodes that take frames accept any such value (duck typing:
:func:`frames_from_video`) next to an IMAGE input, exactly one of the two connected (:func:`frames_input`,
:func:`source_problem`). The pack's VIDEO outputs (:func:`video_from_frames`) are ComfyUI's ``VideoFromComponents``
inside ComfyUI and a :class:`FramesVideo` headless, which has the methods the pack and core Save Video use.

The frame rate of a video the Sampler made travels in its LATENT under :data:`LATENT_FPS` (the conditioning's fps),
so Decode can give its VIDEO the rate the video was conditioned on.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from ...svd_model.errors import InputError, SVDError, shorten
from ...svd_model.media.write import write_video
from .. import adapters
from .comfy import _video_types

#: Largest denominator kept when a float frame rate becomes a Fraction (30000/1001 stays exact).
MAX_DENOMINATOR = 10_000
#: LATENT key of the frame rate the latents were made for (set by the pack's Sampler / Encode Frames).
LATENT_FPS = "svdlab_fps"


class _Unset:
    """The default of an unconnected frames input in VALIDATE_INPUTS (a linked one arrives as None)."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()


@dataclass(frozen=True)
class VideoComponents:
    """The parts of a :class:`FramesVideo`, named as comfy_api's VideoComponents."""

    images: Any  # IMAGE tensor (T, H, W, 3) float32 in [0, 1] on the CPU
    frame_rate: Fraction
    audio: Any = None
    metadata: Any = None


class FramesVideo:
    """A VIDEO made of frames in memory, for headless runs; comfy_api's VideoInput methods that the pack and core
    Save Video use (components, size, frame count and rate, duration, saving)."""

    def __init__(self, components: VideoComponents) -> None:
        self._components = components

    def get_components(self) -> VideoComponents:
        return self._components

    def get_dimensions(self) -> tuple[int, int]:
        """(width, height)."""
        return int(self._components.images.shape[2]), int(self._components.images.shape[1])

    def get_frame_count(self) -> int:
        return int(self._components.images.shape[0])

    def get_frame_rate(self) -> Fraction:
        return self._components.frame_rate

    def get_duration(self) -> float:
        return self.get_frame_count() / float(self._components.frame_rate)

    def get_bit_depth(self) -> int:
        return 8

    def get_color_space(self) -> str:
        return "sRGB"

    def save_to(self, path: str | os.PathLike, format: Any = None, codec: Any = None,
                metadata: dict | None = None, **encoder_options: Any) -> None:
        """Write the frames with the pack's writer; the container follows the file's suffix (mp4, webm, webp, gif).
        comfy_api's format / codec / encoder options (crf, bit depth, colour space) are not used."""
        write_video(adapters.images_to_array(self._components.images), path, fps=self._components.frame_rate,
                    metadata=metadata)


def frame_rate(fps: float | Fraction, what: str = "fps") -> Fraction:
    """A positive, finite frame rate as a Fraction (floats to the nearest ratio with a denominator <= 10000)."""
    number = isinstance(fps, int | float | Fraction) and not isinstance(fps, bool)
    if not number or not math.isfinite(fps) or fps <= 0:
        raise InputError(f"{what} must be a positive frame rate, got {fps if number else shorten(fps)}")
    return Fraction(fps).limit_denominator(MAX_DENOMINATOR)


def video_from_frames(images: Any, fps: float | Fraction) -> Any:
    """A VIDEO of IMAGE frames ``(T, H, W, C)`` at ``fps``: ComfyUI's VideoFromComponents when comfy_api is there,
    else a :class:`FramesVideo`. The frames are shared, not copied."""
    rate = frame_rate(fps)
    comfy = _video_types()
    if comfy is not None:
        from_components, components = comfy
        return from_components(components(images=images, frame_rate=rate, audio=None))
    return FramesVideo(VideoComponents(images=images, frame_rate=rate))


def frames_from_video(value: Any, what: str = "video") -> tuple[Any, float]:
    """(IMAGE ``(T, H, W, 3)`` float32 in [0, 1] on the CPU, frame rate) of a VIDEO: ComfyUI's VideoInput (Load
    Video, Create Video, ...) or the pack's :class:`FramesVideo`. A file-backed VIDEO is decoded here (all frames).
    Grey frames become RGB and alpha is dropped; the audio is not used."""
    get = getattr(value, "get_components", None)
    if not callable(get):
        raise InputError(f"{what} must be a VIDEO (e.g. from Load Video or Create Video), got "
                         f"{type(value).__name__}")
    try:
        components = get()
    except SVDError:
        raise
    except Exception as exc:  # a damaged file behind a VideoFromFile: av / OS / value errors
        raise InputError(f"{what}: the VIDEO could not be decoded ({type(exc).__name__}: "
                         f"{shorten(str(exc), 200)})") from exc
    try:
        images = adapters.array_to_images(adapters.images_to_array(getattr(components, "images", None)))
    except InputError as exc:
        raise type(exc)(f"{what}: the VIDEO's frames: {exc}") from None
    rate = frame_rate(getattr(components, "frame_rate", None), f"{what}: the VIDEO's frame rate")
    return images, float(rate)


def frames_input(images: Any, video: Any, node: str, image_input: str = "images") -> tuple[Any, float | None]:
    """The frames of a node with an IMAGE and a VIDEO input, exactly one connected: (IMAGE, the VIDEO's frame rate,
    or None for IMAGE frames)."""
    given = [v for v in (images, video) if v is not None and v is not UNSET]
    if len(given) != 1:
        raise InputError(f"{node}: {_one_source(image_input, both=len(given) == 2)}")
    if images is not None and images is not UNSET:
        return images, None
    return frames_from_video(video)


def source_problem(images: Any, video: Any, image_input: str = "images") -> str | None:
    """For VALIDATE_INPUTS, whose frames parameters default to :data:`UNSET`: an unconnected input keeps the default
    (a linked one arrives as None), so "neither connected" is refused before the run. Both connected is refused
    when the node runs (:func:`frames_input`): a node checked with every socket linked must pass here."""
    if images is UNSET and video is UNSET:
        return _one_source(image_input, both=False)
    return None


def _one_source(image_input: str, *, both: bool) -> str:
    if both:
        return (f"both {image_input} (IMAGE) and video (VIDEO) are connected: connect one of them (the VIDEO brings "
                "its frame rate)")
    return f"connect the frames: {image_input} (IMAGE) or video (VIDEO)"


def with_latent_fps(latent: dict, fps: float | None) -> dict:
    """``latent`` (a LATENT dict) carrying the frame rate its video is for; None leaves it as it is."""
    return latent if fps is None else {**latent, LATENT_FPS: float(fps)}


def latent_fps(latent: Any) -> float | None:
    """The frame rate a LATENT carries (:data:`LATENT_FPS`), when it is a usable one."""
    value = latent.get(LATENT_FPS) if isinstance(latent, dict) else None
    try:
        return float(frame_rate(value)) if value is not None else None
    except InputError:
        return None
