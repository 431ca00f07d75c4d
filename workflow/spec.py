"""Reading V1 node classes: declared inputs, widget kinds, links and ComfyUI's type matching rule.

A V1 class declares ``INPUT_TYPES() -> {"required": {name: (TYPE, opts)}, "optional": {...}, "hidden": {...}}``
where TYPE is a type string (``"INT"``, ``"LATENT"``, ``"*"``, ``"IMAGE,MASK"``) or a list of choices (a combo).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import WorkflowError

Registry = Mapping[str, type]

WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
SEED_NAMES = frozenset({"seed", "noise_seed"})  # the frontend adds control_after_generate to these INTs
CONTROL_VALUES = frozenset({"fixed", "increment", "decrement", "randomize", "increment-wrap"})


@dataclass(frozen=True)
class InputSpec:
    """One declared input. ``type`` is a type string, or ``"COMBO"`` with ``choices`` set."""

    name: str
    type: str
    section: str  # "required", "optional" or "hidden"
    options: dict = field(default_factory=dict)
    choices: tuple | None = None

    @property
    def is_widget(self) -> bool:
        """True when the editor shows a widget for it (and so it has a slot in ``widgets_values``)."""
        return self.section != "hidden" and self.type in WIDGET_TYPES and not self.options.get("forceInput")

    @property
    def widget_extras(self) -> tuple[str, ...]:
        """UI-only values the frontend saves after this widget's value in ``widgets_values``."""
        if not self.is_widget:
            return ()
        control = self.options.get("control_after_generate")
        if control is None:
            control = self.type == "INT" and self.name in SEED_NAMES
        extras: list[str] = []
        if control and self.type in ("INT", "FLOAT", "COMBO"):
            extras.append("control")
            if self.type == "COMBO":
                extras.append("filter")  # combos with a control also get a filter text widget
        if any(k.endswith("_upload") and v for k, v in self.options.items()):
            extras.append("upload")
        return tuple(extras)


def input_specs(cls: type) -> dict[str, InputSpec]:
    """All declared inputs of a node class (required, then optional, then hidden), in declaration order."""
    try:
        declared = cls.INPUT_TYPES()
    except Exception as exc:  # a broken node class must not crash the runner
        name = getattr(cls, "__name__", cls)
        raise WorkflowError(f"{name}.INPUT_TYPES() raised {type(exc).__name__}: {exc}") from exc
    specs: dict[str, InputSpec] = {}
    for section in ("required", "optional", "hidden"):
        for name, decl in (declared.get(section) or {}).items():
            specs[name] = _parse_decl(name, decl, section)
    return specs


def _parse_decl(name: str, decl: Any, section: str) -> InputSpec:
    if section == "hidden":
        return InputSpec(name, str(decl), section)
    if not isinstance(decl, (tuple, list)) or not decl:
        decl = (decl,)
    raw_type = decl[0]
    options = dict(decl[1]) if len(decl) > 1 and isinstance(decl[1], Mapping) else {}
    if isinstance(raw_type, (list, tuple)):
        return InputSpec(name, "COMBO", section, options, tuple(raw_type))
    if raw_type == "COMBO":
        return InputSpec(name, "COMBO", section, options, tuple(options.get("options") or ()))
    return InputSpec(name, str(raw_type), section, options)


def return_types(cls: type) -> tuple[str, ...]:
    """The class's RETURN_TYPES as type strings (a combo output becomes ``"COMBO"``)."""
    return tuple("COMBO" if isinstance(t, (list, tuple)) else t for t in getattr(cls, "RETURN_TYPES", ()))


def is_output_node(cls: type) -> bool:
    return bool(getattr(cls, "OUTPUT_NODE", False))


def types_match(received: Any, expected: Any) -> bool:
    """ComfyUI's rule: equal strings, ``"*"`` on either side, or overlapping comma-separated unions."""
    if not received != expected:  # honours "any type" str subclasses whose __ne__ is always False
        return True
    if not isinstance(received, str) or not isinstance(expected, str):
        return False
    got = {t.strip() for t in received.split(",")}
    want = {t.strip() for t in expected.split(",")}
    return "*" in got or "*" in want or bool(got & want)


def as_link(value: Any) -> tuple[str, int] | None:
    """``(source_id, output_index)`` if ``value`` is an API-format link ``[id, index]``, else None."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        src, idx = value
        if isinstance(src, (str, int)) and not isinstance(src, bool) and isinstance(idx, int) \
                and not isinstance(idx, bool):
            return str(src), idx
    return None


def unwrap(value: Any) -> Any:
    """A constant input's value: ``{"__value__": v}`` (how list values are written in API format) becomes v."""
    if isinstance(value, dict) and set(value) == {"__value__"}:
        return value["__value__"]
    return value


def coerce(spec: InputSpec, value: Any) -> tuple[bool, Any]:
    """(ok, value converted to the widget type). Integral floats pass for INT, ints for FLOAT; no strings."""
    if spec.type == "INT":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False, value
        if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
            return False, value
        return True, int(value)
    if spec.type == "FLOAT":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False, value
        try:
            return True, float(value)
        except OverflowError:  # an int beyond the float range
            return False, value
    if spec.type == "STRING":
        return isinstance(value, str), value
    if spec.type == "BOOLEAN":
        return isinstance(value, bool), value
    return True, value
