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
