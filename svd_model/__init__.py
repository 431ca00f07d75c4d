"""svd_model: Stable Video Diffusion (SVD, SVD-XT, SV3D) in plain PyTorch. No ComfyUI, no diffusers.

The public API lives in :mod:`svd_model.api` (its ``__all__`` is the one list of it) and is re-exported here,
with the error types.
"""

from . import api
from .api import *  # noqa: F403
from .errors import CheckpointError, ConfigError, InputError, ShapeError, SVDError

__all__ = [*api.__all__, "CheckpointError", "ConfigError", "InputError", "SVDError", "ShapeError"]
