"""comfyui-svd-lab: Stable Video Diffusion for ComfyUI. ComfyUI imports this folder as a package."""

from .nodes import NODE_CLASS_MAPPINGS as _GENERATION
from .nodes import NODE_DISPLAY_NAME_MAPPINGS as _GENERATION_NAMES
from .training_nodes import NODE_CLASS_MAPPINGS as _TRAINING
from .training_nodes import NODE_DISPLAY_NAME_MAPPINGS as _TRAINING_NAMES

_clash = set(_GENERATION) & set(_TRAINING)
if _clash:
    raise RuntimeError(f"node ids defined twice: {sorted(_clash)}")

NODE_CLASS_MAPPINGS = {**_GENERATION, **_TRAINING}
NODE_DISPLAY_NAME_MAPPINGS = {**_GENERATION_NAMES, **_TRAINING_NAMES}

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
