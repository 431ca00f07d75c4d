"""The pack's ComfyUI nodes (V1 classes), collected into NODE_CLASS_MAPPINGS / NODE_DISPLAY_NAME_MAPPINGS.

Each node module exports ``NODES = {node_id: (class, display name)}``. A module whose optional dependency
is missing (e.g. PyAV for video files) logs one warning and its nodes are left out; the rest still load.
"""

from __future__ import annotations

import importlib
import logging

log = logging.getLogger(__name__)


def collect(package: str, modules: tuple[str, ...]) -> tuple[dict[str, type], dict[str, str]]:
    """Import ``package.<module>`` for each name and merge their ``NODES`` tables (ids must be unique)."""
    classes: dict[str, type] = {}
    names: dict[str, str] = {}
    for name in modules:
        try:
            module = importlib.import_module(f".{name}", package)
        except ImportError as exc:
            log.warning("SVD Lab: %s nodes disabled (%s)", name, exc)
            continue
        for node_id, (cls, display) in module.NODES.items():
            if node_id in classes:
                raise RuntimeError(f"duplicate node id {node_id} in {package}.{name}")
            classes[node_id] = cls
            names[node_id] = display
    return classes, names


_MODULES = ("loader_nodes", "video_nodes", "io_nodes", "multiview_nodes", "extend_nodes", "lora_nodes",
            "interpolation_nodes", "text_nodes", "unet_nodes")

NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = collect(__name__, _MODULES)

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "collect"]
