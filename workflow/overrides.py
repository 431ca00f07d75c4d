"""``--set NODE_ID.INPUT=VALUE`` overrides of an API-format prompt.

VALUE is parsed by the input's declared type: INT (``5``, ``-3``, ``1_000``), FLOAT (``0.5``, ``1e-3``),
BOOLEAN (``true/false``, ``yes/no``, ``on/off``, ``1/0``), STRING and combos (taken as written; a combo whose
choices are not strings takes the choice that prints as VALUE). Other types (``*``) take JSON if VALUE parses as
JSON, else the text. Overriding a linked input replaces the link with the constant. Range and choice checks
are left to ``validate``, so every problem is reported together.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from ..svd_model.errors import ConfigError, shorten
from ..svd_model.jsonfile import parse_json
from .errors import WorkflowError
from .graph import sorted_ids
from .spec import InputSpec, Registry, as_link, input_specs

log = logging.getLogger(__name__)

_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


def apply_overrides(prompt: Mapping[str, Any], sets: Iterable[str], registry: Registry) -> dict:
    """A copy of ``prompt`` with each ``"NODE_ID.INPUT=VALUE"`` applied; WorkflowError lists every bad one."""
    out = copy.deepcopy(dict(prompt))
    errors: list[str] = []
    for text in sets:
        try:
            nid, name, value = _apply_one(out, text, registry)
        except WorkflowError as exc:
            errors.append(str(exc))
            continue
        log.info("override: node %s input '%s' = %r", nid, name, value)
    if errors:
        raise WorkflowError("bad --set override(s):\n" + "\n".join(f"  {e}" for e in errors))
    return out


def _apply_one(prompt: dict, text: str, registry: Registry) -> tuple[str, str, Any]:
    nid, name, raw = split_override(text)
    node = prompt.get(nid)
    shown = _arg(text)
    if not isinstance(node, dict):
        ids = sorted_ids(prompt)
        listed = ", ".join(ids[:20]) + (", ..." if len(ids) > 20 else "")
        raise WorkflowError(f"--set {shown}: no node {_arg(nid)} in the workflow (its nodes: {listed})")
    class_type = node.get("class_type")
    cls = registry.get(class_type) if isinstance(class_type, str) else None
    if cls is None:
        raise WorkflowError(f"--set {shown}: node {nid} has the unknown type {shorten(class_type)}")
    specs = {k: s for k, s in input_specs(cls).items() if s.section != "hidden"}
    if name not in specs:
        raise WorkflowError(f"--set {shown}: node {nid} ({class_type}) has no input '{_arg(name)}' "
                            f"(its inputs: {', '.join(specs) or 'none'})")
    value = parse_value(specs[name], raw)
    inputs = node.setdefault("inputs", {})
    if as_link(inputs.get(name)) is not None:
        log.warning("--set %s replaces the link into node %s input '%s' with a constant", text, nid, name)
    inputs[name] = {"__value__": value} if isinstance(value, list) else value
    return nid, name, value


def split_override(text: str) -> tuple[str, str, str]:
    """``"3.seed=5"`` -> ``("3", "seed", "5")``; the value may itself contain ``=`` and ``.``."""
    key, eq, raw = text.partition("=")
    nid, dot, name = key.strip().partition(".")
    if not eq or not dot or not nid or not name.strip():
        raise WorkflowError(f"--set {_arg(text)}: expected NODE_ID.INPUT=VALUE, e.g. 3.seed=42")
    return nid, name.strip(), raw


def parse_value(spec: InputSpec, raw: str) -> Any:
    """Parse ``raw`` as a value of ``spec``'s declared type; WorkflowError if it is not one."""
    text = raw.strip()
    try:
        if spec.type == "INT":
            return int(text)
        if spec.type == "FLOAT":
            return float(text)
    except ValueError:
        raise WorkflowError(f"input '{spec.name}' expects {spec.type}, got {shorten(raw)}") from None
    if spec.type == "BOOLEAN":
        if text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        raise WorkflowError(f"input '{spec.name}' expects BOOLEAN (true/false), got {shorten(raw)}")
    if spec.type == "STRING":
        return raw
    if spec.type == "COMBO":
        return next((c for c in spec.choices or () if not isinstance(c, str) and str(c) == text), raw)
    try:
        return parse_json(text, f"--set value for '{spec.name}'")
    except ConfigError:
        return raw


def _arg(text: str, limit: int = 80) -> str:
    """A command-line argument as shown in a message: cut to ``limit`` characters."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"
