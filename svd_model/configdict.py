"""Typed dataclass configs from nested dicts (JSON / TOML / node widgets), and dotted ``section.key=value``
overrides: the one builder behind :func:`training.config.config_from_dict` and :meth:`CurationConfig.from_dict`.

Every value is checked against the field's annotation: ints become floats where a float is declared, lists become
tuples, nested tables become the nested dataclass; a bool is never a number. Unknown keys (with a did-you-mean) and
wrong types raise :class:`ConfigError` naming the dotted key (``optim.lr``), the value and what was expected. The
dataclass's own ``__post_init__`` then checks ranges and choices.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any, TypeVar

from .errors import ConfigError, shorten
from .jsonfile import parse_json

T = TypeVar("T")


def check_finite(obj: Any, prefix: str = "") -> None:
    """ConfigError naming the first float of the dataclass ``obj`` (nested dataclasses, tuples and lists included)
    that is NaN or infinite: range checks let NaN through, as every comparison with it is false. ``prefix`` names
    the section as in :func:`build` (``"optim."``)."""
    def walk(value: Any, path: str) -> None:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            for f in dataclasses.fields(value):
                walk(getattr(value, f.name), f"{path}.{f.name}" if path else f.name)
        elif isinstance(value, (tuple, list)):  # numbers are named by their field, sections by their index
            for i, item in enumerate(value):
                walk(item, f"{path}[{i}]" if dataclasses.is_dataclass(item) else path)
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{path} must be a finite number, got {value!r}")

    walk(obj, prefix.rstrip("."))


def build(cls: type[T], values: Any, prefix: str = "") -> T:
    """An instance of the dataclass ``cls`` from the (possibly partial) nested dict ``values``.

    ``prefix`` is how the section is named in messages, with its trailing dot (``"optim."``; ``""`` at the top).
    """
    if not isinstance(values, dict):
        where = prefix.rstrip(".") or "the config"
        raise ConfigError(f"{where} must be a table/object, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in values if k not in known]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), known, n=1)
        hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
        raise ConfigError(f"unknown config key {shorten(prefix + str(key))}{hint} (known in this section: "
                          f"{', '.join(known)})")
    kwargs = {k: convert(v, hints[k], prefix + k) for k, v in values.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a __post_init__ comparing what the annotations could not pin down
        raise ConfigError(f"bad {prefix.rstrip('.') or 'config'}: {exc}") from None


def convert(value: Any, hint: Any, where: str) -> Any:
    """Coerce a JSON/TOML value to the annotated type (lists -> tuples, ints -> floats), else ConfigError."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a table/object, got {type(value).__name__}")
        return build(hint, value, where + ".")
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return convert(value, option, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where} = {shorten(value)} has the wrong type (expected {hint})")
    if origin is tuple:
        return _convert_tuple(value, typing.get_args(hint), where)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, got {shorten(value)}")
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            raise ConfigError(f"{where} = {shorten(value)} is too large for a float") from None
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is str and isinstance(value, str):
        return value
    if hint is type(None) and value is None:
        return None
    raise ConfigError(f"{where} = {shorten(value)} has the wrong type (expected {getattr(hint, '__name__', hint)})")


def _convert_tuple(value: Any, args: tuple[Any, ...], where: str) -> tuple[Any, ...]:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where} must be a list, got {shorten(value)}")
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if len(value) != len(args):
        raise ConfigError(f"{where} must have {len(args)} entries, got {shorten(value)}")
    return tuple(convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """``tree["optim"]["lr"] = value`` for ``dotted = "optim.lr"``, creating the sections on the way."""
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {shorten(dotted)}: {shorten(part)} is not a section")
    node[leaf] = value


def parse_value(raw: str, what: str) -> Any:
    """An override's value: JSON when it parses as JSON (``3``, ``2.5``, ``true``, ``[1, 2]``), else the text."""
    try:
        return parse_json(raw, what)
    except ConfigError:
        return raw


def parse_override(text: str) -> tuple[str, Any]:
    """``"optim.lr=3e-5"`` -> ``("optim.lr", 3e-05)``: the value is parsed as JSON, else kept as a string."""
    if "=" not in text:
        raise ConfigError(f"override {shorten(text)} must look like section.key=value")
    key, raw = text.split("=", 1)
    return key.strip(), parse_value(raw, f"override {key.strip()!r}")
