"""The pack's curation and finetuning nodes (V1 classes). Same registry convention as ``nodes``:
each module exports ``NODES = {node_id: (class, display name)}``; a module whose optional dependency is
missing logs one warning and its nodes are left out.
"""

from __future__ import annotations

from ..nodes import collect

_MODULES: tuple[str, ...] = ("curation_nodes", "train_nodes")

NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = collect(__name__, _MODULES)

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
