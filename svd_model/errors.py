"""Exception hierarchy of the model package.

Every message names the value that was found, what was expected, and where possible a hint.
"""

from __future__ import annotations


class SVDError(Exception):
    """Base class of every error raised by ``svd_model``."""


class CheckpointError(SVDError):
    """A checkpoint file or state dict is unreadable, of the wrong model family, or incomplete."""


class ConfigError(SVDError):
    """A configuration or parameter value is invalid (unknown name, out of range)."""


class InputError(SVDError):
    """A tensor or value handed to a public function has the wrong shape, range or type."""


class ShapeError(InputError):
    """A tensor does not have the documented shape."""
