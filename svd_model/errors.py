"""Exception hierarchy of the model package.

Every message names the value that was found, what was expected, and where possible a hint.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")
#: How much of a value a message shows.
SHOWN_CHARS = 80


def shorten(value: Any, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters with an ellipsis and the full length when it is longer, so a
    huge value from a workflow or a file is never echoed back whole (a long string is cut before ``repr``)."""
    if isinstance(value, str) and len(value) > limit:
        return f"{repr(value[: limit + 1])[:limit]}… ({len(value)} characters)"
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # an int of more than 4300 digits, a very deeply nested value
        return f"<{type(value).__name__} too long or too deeply nested to show>"
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters as text)"


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
