"""comfyui-svd-lab: Stable Video Diffusion for ComfyUI. ComfyUI imports this folder as a package.

The node mappings load on first use (ComfyUI reads them right after importing the package), so a process
that imports only the library (a curation worker: ``svd_model.curation``) does not import every node module.
"""

from __future__ import annotations

from typing import Any

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]


def _load_mappings() -> None:
    from .nodes import NODE_CLASS_MAPPINGS as generation
    from .nodes import NODE_DISPLAY_NAME_MAPPINGS as generation_names
    from .training_nodes import NODE_CLASS_MAPPINGS as training
    from .training_nodes import NODE_DISPLAY_NAME_MAPPINGS as training_names

    clash = set(generation) & set(training)
    if clash:
        raise RuntimeError(f"node ids defined twice: {sorted(clash)}")
    globals().update(NODE_CLASS_MAPPINGS={**generation, **training},
                     NODE_DISPLAY_NAME_MAPPINGS={**generation_names, **training_names})


def __getattr__(name: str) -> Any:
    if name in ("NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"):
        _load_mappings()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
