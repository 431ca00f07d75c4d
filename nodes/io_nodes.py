"""Image and video files: load image, load video, save video, preview video.

Files come from ComfyUI's input folder (upload COMBO) or, when the `path` STRING is not empty, from that path
relative to the input folder (or the pack's example inputs). A value that leaves those folders, also through a
symbolic link, is refused when the prompt is queued; headless, `svd-lab run --allow-any-path` lets the local
user name files anywhere.
"""

from __future__ import annotations

import json
import logging
import random
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..svd_model.errors import InputError, SVDError
from ..svd_model.media.video import read_image, read_video, write_video
from . import adapters, bridge
from .bridge.video import UNSET, frames_input, source_problem, video_from_frames
from .generation_info import MODES_KEY, generation_modes
from .types import MAX_SIZE, range_problem

log = logging.getLogger(__name__)

FORMATS = ["mp4", "webm", "webp", "gif"]
RESIZE_MODES = ["cover", "contain", "stretch"]
PATH_INPUT = ("STRING", {"default": "", "tooltip": (
    "Optional file path relative to the input folder (e.g. clips/a.mp4); when set it is used instead of the list.")})
VIDEO_OUTPUT_TOOLTIP = "The same frames with their frame rate as a VIDEO (core Save Video, Get Video Components)."


def frames_inputs(what: str = "The frames (one per batch entry).", fps_widget: str | None = "fps") -> dict[str, Any]:
    """The optional IMAGE / VIDEO pair of a node that takes frames (exactly one connected, see bridge.video)."""
    rate = f"; its frame rate replaces the {fps_widget} widget" if fps_widget else ""
    return {"images": ("IMAGE", {"tooltip": f"{what} Connect this or video."}),
            "video": ("VIDEO", {"tooltip": f"The frames as a VIDEO (core Load Video, Create Video){rate}. Connect "
                                           "this or images."})}


def _choices(kind: str) -> list[str]:
    """Input-folder files, plus "" (no file: use `path`) so path-only workflows validate anywhere."""
    return [*bridge.list_inputs(kind), ""]


def _file_problem(name: str | None, path: str | None, kind: str) -> str | None:
    return bridge.input_problem(name, path, kind)


def _stamp(name: str, path: str) -> str:
    try:
        found = bridge.input_file(name, path)
        stat = found.stat()
    except (InputError, OSError):
        return ""
    return f"{bridge.display(found)}:{stat.st_mtime_ns}:{stat.st_size}"


def _read(reader: Callable[..., Any], found: Path, **options: Any) -> Any:
    """``reader(found, **options)`` with the file named relative to its ComfyUI folder in any error (the package
    names the path it was given; the server's folders are not the client's business)."""
    try:
        return reader(found, **options)
    except SVDError as exc:
        raise type(exc)(str(exc).replace(str(found), bridge.display(found))) from None


class LoadImage:
    DESCRIPTION = "Loads an image (upload, input folder, or a file path) as IMAGE, e.g. the conditioning frame."
    CATEGORY = "SVD Lab/io"
    FUNCTION = "load"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("The image, (1, H, W, 3) in [0, 1].",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {"image": (_choices("image"), {"image_upload": True,
                                                       "tooltip": "Image in ComfyUI's input folder."})},
            "optional": {"path": PATH_INPUT},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, image: str | None, path: str | None = "") -> bool | str:
        return _file_problem(image, path, "image") or True

    @classmethod
    def IS_CHANGED(cls, image: str, path: str = "") -> str:
        return _stamp(image, path)

    def load(self, image: str, path: str = "") -> tuple[Any]:
        return (adapters.array_to_images(_read(read_image, bridge.input_file(image, path, "image"))),)


class LoadVideo:
    DESCRIPTION = ("Loads a video's frames as IMAGE (one frame per batch entry) with its frame rate; optionally "
                   "skips, thins, retimes and resizes them (for video-to-video or as conditioning frames).")
    CATEGORY = "SVD Lab/io"
    FUNCTION = "load"
    RETURN_TYPES = ("IMAGE", "FLOAT", "INT")
    RETURN_NAMES = ("images", "fps", "frame_count")
    OUTPUT_TOOLTIPS = ("The frames in [0, 1].", "Frame rate of the returned frames.", "Number of frames returned.")

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        size = {"default": 0, "min": 0, "max": MAX_SIZE, "step": 8}
        return {"optional": {"path": PATH_INPUT}, "required": {
            "video": (_choices("video"), {"video_upload": True, "tooltip": "Video in ComfyUI's input folder."}),
            "frame_cap": ("INT", {"default": 0, "min": 0, "max": 100000,
                                  "tooltip": "Most frames to return (0 = all)."}),
            "skip_first": ("INT", {"default": 0, "min": 0, "max": 100000, "tooltip": "Frames to skip at the start."}),
            "every_nth": ("INT", {"default": 1, "min": 1, "max": 1000, "tooltip": "Keep every n-th frame."}),
            "target_fps": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 240.0, "step": 0.01,
                                     "tooltip": "Resample to this frame rate (0 = keep)."}),
            "width": ("INT", {**size, "tooltip": "Resize to this width (0 with height 0 = keep the size)."}),
            "height": ("INT", {**size, "tooltip": "Resize to this height (0 with width 0 = keep the size)."}),
            "resize_mode": (RESIZE_MODES, {"default": "cover", "tooltip": (
                "cover: scale and centre-crop; contain: scale and pad; stretch: ignore the aspect ratio.")}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, video: str | None, width: int | None, height: int | None,
                        path: str | None = "", target_fps: float | None = None) -> bool | str:
        problem = range_problem(cls, "target_fps", target_fps) or _file_problem(video, path, "video")
        problem = problem or range_problem(cls, "width", width) or range_problem(cls, "height", height)
        if problem is None and width is not None and height is not None and (width == 0) != (height == 0):
            problem = f"set both width and height, or leave both 0 to keep the size (got {width}x{height})"
        return problem or True

    @classmethod
    def IS_CHANGED(cls, video: str, path: str = "", **_: Any) -> str:
        return _stamp(video, path)

    def load(self, video: str, frame_cap: int, skip_first: int, every_nth: int, target_fps: float, width: int,
             height: int, resize_mode: str, path: str = "") -> tuple[Any, float, int]:
        frames, fps = _read(read_video, bridge.input_file(video, path, "video"), frame_cap=frame_cap,
                            skip_first=skip_first, every_nth=every_nth, target_fps=target_fps or None,
                            size=(width, height) if width and height else None, resize_mode=resize_mode)
        images = adapters.array_to_images(frames)
        return images, float(fps), int(images.shape[0])


class SaveVideo:
    DESCRIPTION = ("Writes the frames (IMAGE, or a VIDEO with its frame rate) as a video (mp4/webm/webp/gif) into "
                   "ComfyUI's output folder as prefix_00001_.ext, with the workflow embedded as metadata, and shows it "
                   "in the node.")
    CATEGORY = "SVD Lab/io"
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES = ("VIDEO",)
    RETURN_NAMES = ("video",)
    OUTPUT_TOOLTIPS = ("What was saved as a VIDEO: IMAGE frames with the fps widget's rate; a connected VIDEO "
                       "unchanged (as core Save Video).",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "fps": ("FLOAT", {"default": 7.0, "min": 0.01, "max": 240.0, "step": 0.01, "tooltip": (
                    "Frame rate of IMAGE frames; a connected VIDEO keeps its own.")}),
                "format": (FORMATS, {"default": "mp4", "tooltip": "Container / codec: mp4 (H.264), webm (VP9), "
                                                                  "animated webp, gif."}),
                "quality": ("INT", {"default": 85, "min": 0, "max": 100, "tooltip": "0 = smallest, 100 = best."}),
                "filename_prefix": ("STRING", {"default": "SVDLab/video", "tooltip": (
                    "File name prefix inside the output folder; may contain subfolders and ComfyUI's "
                    "%date:yyyy-MM-dd% etc.")}),
            },
            "optional": frames_inputs(),
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO", "unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, filename_prefix: str | None, fps: float | None = None, images: Any = UNSET,
                        video: Any = UNSET) -> bool | str:
        return (bridge.prefix_problem(filename_prefix) or range_problem(cls, "fps", fps)
                or source_problem(images, video) or True)

    def save(self, images: Any = None, fps: float = 7.0, format: str = "mp4", quality: int = 85,
             filename_prefix: str = "SVDLab/video", prompt: Any = None, extra_pnginfo: Any = None,
             video: Any = None, unique_id: Any = None) -> dict[str, Any]:
        images, rate = frames_input(images, video, "SVD Lab Save Video")
        fps = rate or fps
        meta = _metadata(prompt, extra_pnginfo, unique_id)
        out = _write(images, fps, format, quality, filename_prefix, "output", meta)
        return {**out, "result": (video if video is not None else video_from_frames(images, fps),)}


class PreviewVideo:
    DESCRIPTION = "Shows the frames as a video in the node (written to the temp folder, not kept)."
    CATEGORY = "SVD Lab/io"
    FUNCTION = "preview"
    OUTPUT_NODE = True
    RETURN_TYPES = ()

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        types = SaveVideo.INPUT_TYPES()
        required = {k: v for k, v in types["required"].items() if k != "filename_prefix"}
        required["format"] = (FORMATS, {**required["format"][1], "default": "webp"})
        return {"required": required, "optional": types["optional"], "hidden": types["hidden"]}

    @classmethod
    def VALIDATE_INPUTS(cls, fps: float | None = None, images: Any = UNSET, video: Any = UNSET) -> bool | str:
        return range_problem(cls, "fps", fps) or source_problem(images, video) or True

    def preview(self, images: Any = None, fps: float = 7.0, format: str = "webp", quality: int = 85,
                prompt: Any = None, extra_pnginfo: Any = None, video: Any = None,
                unique_id: Any = None) -> dict[str, Any]:
        images, rate = frames_input(images, video, "SVD Lab Preview Video")
        prefix = "SVDLab_temp_" + "".join(random.choices(string.ascii_lowercase, k=5))
        return _write(images, rate or fps, format, quality, prefix, "temp", _metadata(prompt, extra_pnginfo, unique_id))


def _write(images: Any, fps: float, format: str, quality: int, prefix: str, folder: str,
           metadata: dict[str, str] | None) -> dict[str, Any]:
    """Write a numbered file into the output/temp folder; the UI entry core's video previews use."""
    frames = adapters.images_to_array(images)
    target, subfolder, name = bridge.save_target(prefix, folder, format, (frames.shape[2], frames.shape[1]))
    written = write_video(frames, target, fps=fps, format=format, quality=quality, metadata=metadata)
    log.info("saved %d frames to %s", frames.shape[0], written)
    entry = {"filename": name, "subfolder": subfolder, "type": folder}  # names only, as core SaveImage
    return {"ui": {"images": [entry], "animated": [True]}, "result": ()}


def _metadata(prompt: Any, extra_pnginfo: Any, node_id: Any = None) -> dict[str, str] | None:
    """As core SaveWEBM: "prompt" plus every extra_pnginfo key (e.g. "workflow"), JSON-encoded; and what the
    frames were generated with (:data:`.generation_info.MODES_KEY`: the modes of the pack nodes upstream)."""
    if not bridge.metadata_enabled():
        return None
    meta = {} if prompt is None else {"prompt": json.dumps(prompt)}
    modes = generation_modes(prompt, node_id)
    if modes:
        meta[MODES_KEY] = json.dumps(modes)
    meta.update({k: json.dumps(v) for k, v in (extra_pnginfo or {}).items()})
    return meta or None


NODES: dict[str, tuple[type, str]] = {
    "SVDLab_LoadImage": (LoadImage, "SVD Lab Load Image"),
    "SVDLab_LoadVideo": (LoadVideo, "SVD Lab Load Video"),
    "SVDLab_SaveVideo": (SaveVideo, "SVD Lab Save Video"),
    "SVDLab_PreviewVideo": (PreviewVideo, "SVD Lab Preview Video"),
}
