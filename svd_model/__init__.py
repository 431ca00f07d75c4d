"""svd_model: Stable Video Diffusion (SVD, SVD-XT, SV3D) in plain PyTorch. No ComfyUI, no diffusers.

The public API lives in :mod:`svd_model.api` (its ``__all__`` is the one list of it) and is re-exported here,
with the error types. The API loads on first use of one of its names, so importing a subpackage on its own
(``svd_model.curation`` in a curation worker) does not import the networks, samplers and pipelines.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import CheckpointError as CheckpointError
from .errors import ConfigError as ConfigError
from .errors import InputError as InputError
from .errors import ShapeError as ShapeError
from .errors import SVDError as SVDError

if TYPE_CHECKING:  # type checkers and IDEs see the API names; at run time __getattr__ loads them
    from .api import *  # noqa: F403

_ERRORS = ("CheckpointError", "ConfigError", "InputError", "SVDError", "ShapeError")


def __getattr__(name: str) -> Any:
    if name.startswith("__") and name != "__all__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    api = importlib.import_module(f"{__name__}.api")
    if name == "__all__":
        value: Any = [*api.__all__, *_ERRORS]
    elif name == "api":
        return api
    elif name in api.__all__:
        value = getattr(api, name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__getattr__("__all__")})
