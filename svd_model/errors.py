"""Exception hierarchy of the model package.

Every message names the value that was found, what was expected, and where possible a hint.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")


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


def choose(table: Mapping[str, T], name: str, what: str) -> T:
    """table[name], or a ConfigError naming the unknown `what` and the valid choices."""
    try:
        return table[name]
    except KeyError:
        raise ConfigError(f"unknown {what} {name!r}; choose from {sorted(table)}") from None
