"""Writing frames to video files (mp4, webm, animated webp, gif) with embedded metadata, and reading it back.

Re-exported by :mod:`.video`; import from there.

Per format (``quality`` is 0..100, higher is better and bigger):

=======  =====================================  ========================  ===================================
format   codec / writer                         quality                   metadata (``dict[str, str]``)
=======  =====================================  ========================  ===================================
mp4      H.264 yuv420p BT.709, PyAV, faststart  crf = round(51 - 0.41q)   MP4 tags, keys verbatim
                                                (q=85 -> crf 16)          (``movflags=use_metadata_tags``)
webm     VP9 yuv420p BT.709, PyAV               crf = round(63 - 0.45q),  Matroska tags (the muxer upper-cases
                                                constant-quality mode     names; read back lower-cased)
webp     animated WebP, Pillow                  Pillow quality; 100 =     EXIF, ComfyUI's layout: ``prompt`` in
                                                lossless                  0x0110, others 0x010F downwards, each
                                                                          as ``"key:value"``
gif      Pillow (adaptive 256-colour palette)   ignored                   GIF comment: the dict as JSON
=======  =====================================  ========================  ===================================

H.264 4:2:0 needs even sizes: an odd width/height is padded by one replicated edge column/row (right/bottom),
so such an mp4 is one pixel larger than the frames. VP9, WebP and GIF keep the exact size. GIF delays are in
1/100 s and WebP in 1/1000 s: per-frame delays are rounded cumulatively, so the total duration is within one
unit of ``t / fps`` (browsers slow GIF delays under 20 ms, so GIF above 50 fps plays slower). ``loop`` applies
to webp/gif only. Pillow and libwebp merge identical consecutive frames into one frame with a longer delay in
gif/webp output; reading such a file back with ``target_fps=fps`` restores the constant-rate frame sequence.

Files are written to a hidden temporary file in the target folder and renamed over ``path`` when complete,
so a reader never sees a half-written video.
"""

from __future__ import annotations

import json
import logging
import numbers
import os
import secrets
from collections.abc import Callable, Mapping
from fractions import Fraction
from os import PathLike
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image

from ..errors import ConfigError, InputError, ShapeError
from ..fsutil import remove_stale_temps, sigterm_as_interrupt

logger = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("mp4", "webm", "webp", "gif")
_EXIF_PROMPT_TAG = 0x0110  # EXIF "Model": ComfyUI stores the API prompt here
_EXIF_FIRST_TAG = 0x010F  # EXIF "Make": ComfyUI stores workflow (and further keys) from here downwards
_EXIF_LAST_TAG = 0x0100


def _crf(fmt: str, quality: int) -> int:
    """Constant-rate factor for ``quality`` 0..100: H.264 51..10, VP9 63..18."""
    if fmt == "mp4":
        return round(51 - 0.41 * quality)
    return round(63 - 0.45 * quality)


def _frame_getter(frames: torch.Tensor | np.ndarray) -> tuple[int, int, int, Callable[[int], np.ndarray]]:
    """Validate ``(t, H, W, 3)`` frames; return t, H, W and a function giving frame i as uint8 (H, W, 3)."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu()
    elif not isinstance(frames, np.ndarray):
        raise InputError(f"frames must be a torch.Tensor or numpy array, got {type(frames).__name__}")
    shape = tuple(frames.shape)
    if len(shape) != 4 or shape[-1] != 3 or min(shape) < 1:
        raise ShapeError(f"frames must have shape (t, H, W, 3) with t, H, W >= 1 (ComfyUI IMAGE), got {shape}")
    is_uint8 = frames.dtype in (torch.uint8, np.uint8)

    def get(i: int) -> np.ndarray:
        frame = frames[i]
        if is_uint8:
            return np.ascontiguousarray(np.asarray(frame))
        arr = np.asarray(frame.float() if isinstance(frame, torch.Tensor) else frame, dtype=np.float32)
        arr = np.clip(np.nan_to_num(arr), 0.0, 1.0)
        return (arr * 255.0 + 0.5).astype(np.uint8)

    return shape[0], shape[1], shape[2], get


def _clean_metadata(metadata: Mapping[str, object] | None) -> dict[str, str]:
    """Keys: non-empty strings without ':'; values: strings (anything else is JSON-encoded)."""
    out: dict[str, str] = {}
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not key or ":" in key or "\0" in key:
            raise ConfigError(f"metadata keys must be non-empty strings without ':', got {key!r}")
        out[key] = value if isinstance(value, str) else json.dumps(value)
    return out


def _durations(n: int, fps: Fraction, unit_ms: int) -> list[int]:
    """Per-frame delays in ms, multiples of ``unit_ms``, rounded cumulatively (sum tracks n / fps)."""
    ticks = [round(i * 1000 / (fps * unit_ms)) for i in range(n + 1)]
    return [max(1, b - a) * unit_ms for a, b in zip(ticks, ticks[1:], strict=False)]


def _write_pyav(
    path: Path,
    fmt: str,
    n: int,
    height: int,
    width: int,
    get: Callable[[int], np.ndarray],
    rate: Fraction,
    quality: int,
    metadata: dict[str, str],
) -> None:
    pad_h, pad_w = (height % 2, width % 2) if fmt == "mp4" else (0, 0)
    if pad_h or pad_w:
        logger.info(
            "%s: H.264 needs even sizes; padding %dx%d to %dx%d", path, width, height, width + pad_w, height + pad_h
        )
    if fmt == "mp4":
        options = {"movflags": "+faststart+use_metadata_tags"}
        codec, codec_options = "libx264", {"crf": str(_crf(fmt, quality)), "preset": "medium"}
    else:
        options = {}
        codec = "libvpx-vp9"
        codec_options = {"crf": str(_crf(fmt, quality)), "b": "0", "row-mt": "1", "deadline": "good", "cpu-used": "4"}
    container = av.open(str(path), mode="w", format=fmt, options=options)
    try:
        for key, value in metadata.items():
            container.metadata[key] = value
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width + pad_w, height + pad_h, "yuv420p"
        stream.options = codec_options
        cc = stream.codec_context
        cc.colorspace, cc.color_primaries, cc.color_trc, cc.color_range = 1, 1, 1, 1  # BT.709, limited range
        time_base = 1 / rate
        for i in range(n):
            arr = get(i)  # (H W 3) uint8
            if pad_h or pad_w:
                arr = np.pad(arr, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
            frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
            frame = frame.reformat(format="yuv420p", dst_colorspace="ITU709", dst_color_range="MPEG")
            frame.pts, frame.time_base = i, time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    finally:
        container.close()


def _ascii(key: str, value: str) -> str:
    """EXIF text is ASCII: re-encode JSON values with ``\\uXXXX`` escapes (same JSON); refuse other text."""
    if value.isascii():
        return value
    try:
        return json.dumps(json.loads(value))
    except json.JSONDecodeError:
        raise ConfigError(
            f"WebP metadata is stored as ASCII EXIF text; the value of {key!r} has non-ASCII characters and is "
            "not JSON (JSON values are escaped automatically): encode it, e.g. with json.dumps"
        ) from None


def _exif_bytes(metadata: dict[str, str]) -> bytes:
    exif = Image.Exif()
    tag = _EXIF_FIRST_TAG
    for key, text in metadata.items():
        value = _ascii(key, text)
        if key == "prompt":
            exif[_EXIF_PROMPT_TAG] = f"{key}:{value}"
            continue
        if tag < _EXIF_LAST_TAG:
            raise ConfigError(
                f"animated WebP holds at most {_EXIF_FIRST_TAG - _EXIF_LAST_TAG + 1} metadata keys besides "
                f"'prompt' (EXIF tags 0x010F..0x0100), got {len(metadata)}: {sorted(metadata)}"
            )
        exif[tag] = f"{key}:{value}"
        tag -= 1
    return exif.tobytes()


def _write_pillow(
    path: Path,
    fmt: str,
    n: int,
    get: Callable[[int], np.ndarray],
    rate: Fraction,
    quality: int,
    metadata: dict[str, str],
    loop: bool,
) -> None:
    images = [Image.fromarray(get(i), mode="RGB") for i in range(n)]
    if fmt == "webp":
        kwargs: dict[str, object] = {
            "duration": _durations(n, rate, 1),
            "loop": 0 if loop else 1,  # WebP: number of plays, 0 = forever
            "quality": quality,
            "lossless": quality >= 100,
            "method": 4,
        }
        if metadata:
            kwargs["exif"] = _exif_bytes(metadata)
        images[0].save(path, format="WEBP", save_all=True, append_images=images[1:], **kwargs)
        return
    if rate > 50:
        logger.warning(
            "%s: GIF at %.3g fps has delays under 20 ms, which browsers slow down to 100 ms", path, float(rate)
        )
    kwargs = {"duration": _durations(n, rate, 10), "optimize": False}
    if loop:
        kwargs["loop"] = 0  # GIF: NETSCAPE loop extension, 0 = forever; omitted = play once
    if metadata:
        kwargs["comment"] = json.dumps(metadata)
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], **kwargs)


def _resolve_target(path: str | PathLike[str], fmt: str | None) -> tuple[Path, str]:
    p = Path(path).expanduser()
    suffix = p.suffix.lower().lstrip(".")
    if fmt is None:
        fmt = suffix if suffix in FORMATS else "mp4"
        if suffix not in FORMATS and suffix:
            raise ConfigError(f"cannot tell the video format from {p.name!r}: use a suffix from {FORMATS} or format=")
    if fmt not in FORMATS:
        raise ConfigError(f"format must be one of {FORMATS}, got {fmt!r}")
    if not suffix:
        p = p.with_name(f"{p.name}.{fmt}")
    elif suffix != fmt:
        raise ConfigError(f"path {p.name!r} ends in .{suffix} but format is {fmt!r}; make them agree")
    return p, fmt


def write_video(
    frames: torch.Tensor | np.ndarray,
    path: str | PathLike[str],
    *,
    fps: float | Fraction,
    format: str | None = None,
    quality: int = 85,
    metadata: Mapping[str, object] | None = None,
    loop: bool = True,
) -> Path:
    """Write frames to a video file, atomically (temporary file in the same folder, then rename).

    Args:
        frames: ``(t, H, W, 3)`` RGB, float in ``[0, 1]`` (clamped, NaN -> 0) or uint8; tensor or array.
        path: output file; its folder is created if missing. Without a suffix, ``.{format}`` is appended.
        fps: frames per second (> 0).
        format: ``"mp4"``, ``"webm"``, ``"webp"`` or ``"gif"``; None = from the suffix (no suffix: mp4).
        quality: 0..100 (see the module table for the per-codec mapping).
        metadata: text tags to embed, e.g. ``{"prompt": ..., "workflow": ...}`` (JSON strings); non-string
            values are JSON-encoded.
        loop: animated webp/gif loop forever (True) or play once (False); ignored for mp4/webm.

    Returns:
        The path written.

    Raises:
        InputError: frames of the wrong type; unwritable/uncreatable folder. ShapeError: wrong shape.
        ConfigError: bad fps, quality, format, or metadata keys.
    """
    target, fmt = _resolve_target(path, format)
    n, height, width, get = _frame_getter(frames)
    if isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not 0 < float(fps) <= 1000:
        raise ConfigError(f"fps must be a number in (0, 1000], got {fps!r}")
    if isinstance(quality, bool) or not isinstance(quality, int) or not 0 <= quality <= 100:
        raise ConfigError(f"quality must be an integer in 0..100, got {quality!r}")
    rate = (fps if isinstance(fps, Fraction) else Fraction(float(fps))).limit_denominator(100_000)
    tags = _clean_metadata(metadata)
    folder = target.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output folder {folder}: {exc.strerror or exc}") from exc
    if not os.access(folder, os.W_OK):
        raise InputError(f"the output folder {folder} is not writable; choose another folder or fix its permissions")
    remove_stale_temps(folder, kinds=("part",))  # .part files of killed writers (dead pid) only
    tmp = folder / f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.part"
    try:
        with sigterm_as_interrupt():  # a SIGTERM while encoding still removes the .part file (finally below)
            if fmt in ("mp4", "webm"):
                _write_pyav(tmp, fmt, n, height, width, get, rate, quality, tags)
            else:
                _write_pillow(tmp, fmt, n, get, rate, quality, tags, loop)
            os.replace(tmp, target)
    except OSError as exc:  # includes av.error.PermissionError and friends
        raise InputError(f"cannot write {target.name} in the folder {folder}: {exc}") from exc
    except av.FFmpegError as exc:
        raise InputError(f"encoding {target} as {fmt} failed: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("wrote %s (%d frames, %dx%d, %s fps)", target, n, width, height, rate)
    return target


def read_video_metadata(path: str | PathLike[str]) -> dict[str, str]:
    """Text metadata of a video or animated image, as :func:`write_video` stores it per format.

    mp4/mov: container tags (including ``major_brand`` etc.); webm/mkv: tags with names lower-cased; webp:
    ``"key:value"`` EXIF entries in ComfyUI's tags 0x0100..0x0110; gif: the JSON comment (a non-JSON comment
    comes back as ``{"comment": text}``). Raises InputError for a missing or unreadable file.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"file not found: {p}")
    with p.open("rb") as fh:
        head = fh.read(12)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP" or head[:4] == b"GIF8":
        try:
            with Image.open(p) as image:
                exif = image.getexif()
                comment = image.info.get("comment")
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read metadata of {p}: Pillow says {exc}") from exc
        out: dict[str, str] = {}
        for tag in range(_EXIF_PROMPT_TAG, _EXIF_LAST_TAG - 1, -1):
            value = exif.get(tag)
            if isinstance(value, str) and ":" in value:
                key, _, text = value.partition(":")
                out[key] = text
        if comment:
            text = comment.decode("utf-8", "replace") if isinstance(comment, bytes) else str(comment)
            try:
                decoded = json.loads(text)
            except json.JSONDecodeError:
                decoded = None
            if isinstance(decoded, dict):
                out.update({str(k): v if isinstance(v, str) else json.dumps(v) for k, v in decoded.items()})
            else:
                out["comment"] = text
        return out
    try:
        with av.open(str(p), metadata_errors="ignore") as container:
            tags = dict(container.metadata)
            lower = "matroska" in container.format.name
    except (av.FFmpegError, OSError) as exc:
        raise InputError(f"cannot read metadata of {p}: FFmpeg says {exc}") from exc
    return {k.lower(): v for k, v in tags.items()} if lower else tags
