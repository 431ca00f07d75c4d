"""Validation of an API-format prompt against a node registry, reporting every problem (not only the first).

The checks follow ComfyUI's ``validate_prompt``/``validate_inputs`` (``execution.py``): node types exist, required
inputs are present, links point at an existing node's existing output of a matching type (``"*"`` matches
anything, comma-separated unions match when they overlap), constants have the widget's type and lie within its
``min``/``max`` or combo choices, and the class's ``VALIDATE_INPUTS`` accepts them. As in ComfyUI, the inputs
``VALIDATE_INPUTS`` names (all of them if it takes ``**kwargs``) skip the built-in range and choice checks, linked
inputs reach it as None, and a parameter named ``input_types`` receives ``{input: source output type}``.
Stricter than ComfyUI: every node is checked (not only those an output needs), undeclared inputs are reported,
numbers given as strings are rejected, and a workflow without an output node is a problem. A workflow with ComfyUI
core nodes (see :mod:`.core_nodes`) is one problem that names them, whatever else is wrong with it.
"""

from __future__ import annotations

import difflib
import inspect
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..svd_model.errors import shorten
from .core_nodes import core_nodes_message, foreign_types
from .errors import WorkflowError
from .graph import find_cycles, sorted_ids
from .spec import (
    WIDGET_TYPES,
    InputSpec,
    Registry,
    as_link,
    coerce,
    input_specs,
    is_output_node,
    return_types,
    types_match,
    unwrap,
)

INVALID_NODE = "invalid_node"
UNKNOWN_NODE_TYPE = "unknown_node_type"
MISSING_INPUT = "missing_input"
EXTRA_INPUT = "extra_input"
DANGLING_LINK = "dangling_link"
BAD_OUTPUT_INDEX = "bad_output_index"
TYPE_MISMATCH = "type_mismatch"
CYCLE = "cycle"
OUT_OF_RANGE = "out_of_range"
NOT_IN_CHOICES = "not_in_choices"
WRONG_TYPE = "wrong_type"
CUSTOM_VALIDATION = "custom_validation"
NO_OUTPUT = "no_output"
NOT_FINITE = "not_finite"
TOO_LONG = "too_long"
CORE_NODES = "core_nodes"

MAX_STRING = 64 * 1024  # characters of one STRING input
MAX_MESSAGE = 300  # characters shown of a VALIDATE_INPUTS message or exception


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a prompt. ``node_id`` is None for whole-workflow problems."""

    node_id: str | None
    input: str | None
    kind: str
    message: str
    class_type: str | None = None

    def __str__(self) -> str:
        where = "workflow" if self.node_id is None else f"node {_name(self.node_id)}"
        if self.node_id is not None and self.class_type:
            where += f" ({_name(self.class_type)})"
        if self.input is not None:
            where += f" input '{_name(self.input)}'"
        return f"{where}: {self.message}"


def validate(prompt: Mapping[str, Any], registry: Registry) -> list[Problem]:
    """Every problem of ``prompt`` (API format) against ``registry``; an empty list means it can run."""
    if not isinstance(prompt, Mapping) or not prompt:
        return [Problem(None, None, INVALID_NODE, "the workflow has no nodes")]
    core, unknown = foreign_types((_class_type(n) for n in prompt.values()), registry)
    if core:  # it needs ComfyUI: what else is wrong with it does not matter here
        return [Problem(None, None, CORE_NODES, core_nodes_message(core, unknown))]
    problems: list[Problem] = []
    for nid in sorted_ids(prompt):
        problems += _check_node(str(nid), prompt[nid], prompt, registry)
    well_formed = {k: v for k, v in prompt.items() if isinstance(v, Mapping)}
    for cycle in find_cycles(well_formed):
        what = f"node {cycle[0]} is linked to its own output" if len(cycle) == 1 else \
            f"nodes {', '.join(cycle)} form a cycle: each needs the output of another"
        problems.append(Problem(cycle[0], None, CYCLE, what, _class_type(prompt[cycle[0]])))
    known = [registry.get(_class_type(n)) for n in prompt.values()]
    if all(cls is not None for cls in known) and not any(is_output_node(cls) for cls in known):
        problems.append(Problem(None, None, NO_OUTPUT, "the workflow has no output node (a class with "
                                "OUTPUT_NODE = True), so nothing would run"))
    return problems


def _class_type(node: Any) -> str | None:
    return node.get("class_type") if isinstance(node, Mapping) and isinstance(node.get("class_type"), str) else None


def _check_node(nid: str, node: Any, prompt: Mapping, registry: Registry) -> list[Problem]:
    class_type = _class_type(node)
    if class_type is None or not isinstance(node.get("inputs", {}), Mapping):
        return [Problem(nid, None, INVALID_NODE, "expected an object with a string \"class_type\" and an "
                        f"\"inputs\" object, got {shorten(node)}")]
    cls = registry.get(class_type)
    if cls is None:
        close = difflib.get_close_matches(class_type, list(registry), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        return [Problem(nid, None, UNKNOWN_NODE_TYPE, f"unknown node type {shorten(class_type)}{hint}", class_type)]
    try:
        specs = input_specs(cls)
    except WorkflowError as exc:
        return [Problem(nid, None, INVALID_NODE, str(exc), class_type)]
    inputs = node.get("inputs", {})
    names, takes_kwargs = _custom_validation_args(cls)
    problems: list[Problem] = []
    for spec in specs.values():
        if spec.section == "hidden":
            continue
        if spec.name not in inputs:
            if spec.section == "required":
                problems.append(Problem(nid, spec.name, MISSING_INPUT, "required input is missing (no value and "
                                        "no link)", class_type))
            continue
        link = as_link(inputs[spec.name])
        if link is not None:
            found = _check_link(spec, link, prompt, registry)
        else:
            found = _check_constant(spec, inputs[spec.name], skip_limits=takes_kwargs or spec.name in names)
        problems += [Problem(nid, spec.name, kind, message, class_type) for kind, message in found]
    for name in inputs:
        if name not in specs or specs[name].section == "hidden":
            declared = ", ".join(s.name for s in specs.values() if s.section != "hidden") or "none"
            problems.append(Problem(nid, name, EXTRA_INPUT, f"{class_type} has no input '{_name(name)}' (its "
                                    f"inputs: {declared})", class_type))
    # VALIDATE_INPUTS runs unless one of its inputs has a bad value; a missing one reaches it as None (unknown,
    # like a linked one), so its other checks are reported together with the missing input
    if (names or takes_kwargs) and not names & {p.input for p in problems if p.kind != MISSING_INPUT}:
        problems += _custom_validation(nid, class_type, cls, specs, inputs, prompt, registry)
    return problems


def _check_link(spec: InputSpec, link: tuple[str, int], prompt: Mapping, registry: Registry) -> list[tuple[str, str]]:
    src, index = link
    if src not in prompt:
        return [(DANGLING_LINK, f"linked to node {src}, which is not in the workflow")]
    src_type = _class_type(prompt[src])
    src_cls = registry.get(src_type) if src_type else None
    if src_cls is None:
        return []  # the source node's own problem is reported on it
    outputs = return_types(src_cls)
    if not 0 <= index < len(outputs):
        return [(BAD_OUTPUT_INDEX, f"linked to output {index} of node {src} ({src_type}), which has "
                 f"{len(outputs)} output(s)")]
    if not types_match(outputs[index], spec.type):
        return [(TYPE_MISMATCH, f"expects {spec.type} but is linked to output {index} of node {src} ({src_type}), "
                 f"which is {outputs[index]}")]
    return []


def _check_constant(spec: InputSpec, raw: Any, skip_limits: bool) -> list[tuple[str, str]]:
    if isinstance(raw, list):
        return [(WRONG_TYPE, f"a list is a link and must be [node_id, output_index], got {shorten(raw)} (a list "
                 "constant is written {\"__value__\": [...]})")]
    value = unwrap(raw)
    if spec.type not in WIDGET_TYPES:
        members = {t.strip() for t in spec.type.split(",")}
        if "*" in members or members & WIDGET_TYPES:
            return []
        return [(WRONG_TYPE, f"expects a link from a {spec.type} output, got the constant {shorten(value)}")]
    if spec.type in ("INT", "FLOAT") and isinstance(value, float) and not math.isfinite(value):
        return [(NOT_FINITE, f"value {value} is not a finite number (NaN and infinity are refused)")]
    if spec.type == "FLOAT" and _is_number(value) and abs(value) > sys.float_info.max:
        return [(OUT_OF_RANGE, f"value {shorten(value)} is too large for a FLOAT")]
    if spec.type == "STRING" and isinstance(value, str) and len(value) > MAX_STRING:
        return [(TOO_LONG, f"a text of {len(value)} characters is longer than the limit of {MAX_STRING} "
                 f"(starts {shorten(value[:40])})")]
    ok, value = coerce(spec, value)
    if not ok:
        return [(WRONG_TYPE, f"expects {spec.type}, got {type(value).__name__} {shorten(value)}")]
    if skip_limits:
        return []
    low, high = spec.options.get("min"), spec.options.get("max")
    if spec.type in ("INT", "FLOAT") and low is not None and value < low:
        return [(OUT_OF_RANGE, f"value {shorten(value)} is below the minimum {low}")]
    if spec.type in ("INT", "FLOAT") and high is not None and value > high:
        return [(OUT_OF_RANGE, f"value {shorten(value)} is above the maximum {high}")]
    if spec.type == "COMBO" and spec.choices is not None and value not in spec.choices:
        shown = ", ".join(shorten(c, 40) for c in spec.choices[:12]) + (", ..." if len(spec.choices) > 12 else "")
        return [(NOT_IN_CHOICES, f"value {shorten(value)} is not one of the choices: {shown or '(none available)'}")]
    return []


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _custom_validation_args(cls: type) -> tuple[set[str], bool]:
    """(the parameter names of cls.VALIDATE_INPUTS, whether it takes **kwargs); empty when it has none."""
    fn = getattr(cls, "VALIDATE_INPUTS", None)
    if fn is None:
        return set(), False
    params = inspect.signature(fn).parameters.values()
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return names, any(p.kind is p.VAR_KEYWORD for p in params)


def _custom_validation(nid: str, class_type: str, cls: type, specs: dict[str, InputSpec], inputs: Mapping,
                       prompt: Mapping, registry: Registry) -> list[Problem]:
    names, takes_kwargs = _custom_validation_args(cls)
    kwargs: dict[str, Any] = {}
    received: dict[str, str] = {}
    for name, value in inputs.items():
        if name not in specs or not (takes_kwargs or name in names):
            continue
        link = as_link(value)
        if link is None:
            kwargs[name] = coerce(specs[name], unwrap(value))[1]
        else:
            kwargs[name] = None  # linked values are unknown before running, as in ComfyUI
            src_cls = registry.get(_class_type(prompt.get(link[0])) or "")
            types = return_types(src_cls) if src_cls is not None else ()
            if 0 <= link[1] < len(types):
                received[name] = types[link[1]]
    for name in names:
        if name not in kwargs and name in specs and specs[name].section == "required":
            kwargs[name] = None  # missing (reported as such): unknown to the check
    if "input_types" in names:
        kwargs["input_types"] = received
    checked = sorted(names - {"input_types"})
    where = checked[0] if len(checked) == 1 else None
    try:
        result = cls.VALIDATE_INPUTS(**kwargs)
    except Exception as exc:  # report it like a failed check; the run must not start
        return [Problem(nid, where, CUSTOM_VALIDATION, f"VALIDATE_INPUTS raised {type(exc).__name__}: "
                        f"{_clip(str(exc))}", class_type)]
    if result is True:
        return []
    message = _clip(result) if isinstance(result, str) else f"VALIDATE_INPUTS returned {shorten(result)}"
    return [Problem(nid, where, CUSTOM_VALIDATION, message, class_type)]


def _clip(text: str) -> str:
    """A node's message cut to MAX_MESSAGE characters (it may quote a huge value)."""
    return text if len(text) <= MAX_MESSAGE else f"{text[:MAX_MESSAGE]}… ({len(text)} characters)"


def _name(text: str, limit: int = 60) -> str:
    """A node id, class or input name as shown in a message: cut to ``limit`` characters."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"
