"""The optional imports of ComfyUI's modules: the one place in the pack that imports ComfyUI. Each returns None
when ComfyUI is absent (tests, CLI, headless runs)."""

from __future__ import annotations

from typing import Any


def _folder_paths() -> Any | None:
    try:
        import folder_paths
    except ImportError:
        return None
    return folder_paths


def _mm() -> Any | None:
    try:
        import comfy.model_management as mm
    except ImportError:
        return None
    return mm


def _model_patcher() -> Any | None:
    """comfy.model_patcher (ModelPatcher: the wrapper ComfyUI's memory manager loads, offloads and patches)."""
    try:
        import comfy.model_patcher as model_patcher
    except ImportError:
        return None
    return model_patcher


def _comfy_lora() -> Any | None:
    """comfy.lora (load_lora: LoRA tensors -> ModelPatcher weight patches)."""
    try:
        import comfy.lora as lora
    except ImportError:
        return None
    return lora


def in_comfyui() -> bool:
    return _folder_paths() is not None


def _comfy_args() -> Any | None:
    try:
        from comfy.cli_args import args
    except ImportError:
        return None
    return args


def _progress_bar_class() -> Any | None:
    try:
        import comfy.utils
    except ImportError:
        return None
    return comfy.utils.ProgressBar


def _video_types() -> tuple[Any, Any] | None:
    """(VideoFromComponents, VideoComponents) of comfy_api: how core nodes build a VIDEO from frames."""
    try:
        from comfy_api.latest import InputImpl, Types
    except ImportError:
        try:  # ComfyUI before comfy_api.latest
            from comfy_api.input_impl import VideoFromComponents
            from comfy_api.util import VideoComponents
        except ImportError:
            return None
        return VideoFromComponents, VideoComponents
    return InputImpl.VideoFromComponents, Types.VideoComponents
