"""The pack's ComfyUI nodes (V1 classes), collected into NODE_CLASS_MAPPINGS / NODE_DISPLAY_NAME_MAPPINGS.

Each node module exports ``NODES = {node_id: (class, display name)}``. A module whose optional dependency
is missing (e.g. PyAV for video files) logs one warning and its nodes are left out; the rest still load.
"""

from __future__ import annotations

import importlib
import logging

log = logging.getLogger(__name__)

_MODULES = ("loader_nodes", "video_nodes", "io_nodes")

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}

for _name in _MODULES:
    try:
        _module = importlib.import_module(f".{_name}", __name__)
    except ImportError as _exc:
        log.warning("SVD Lab: %s nodes disabled (%s)", _name, _exc)
        continue
    for _node_id, (_cls, _display) in _module.NODES.items():
        if _node_id in NODE_CLASS_MAPPINGS:
            raise RuntimeError(f"duplicate node id {_node_id} in nodes.{_name}")
        NODE_CLASS_MAPPINGS[_node_id] = _cls
        NODE_DISPLAY_NAME_MAPPINGS[_node_id] = _display

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
