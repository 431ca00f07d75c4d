"""Fuzz: hostile values for every number and text widget of every node class of the pack, through the headless
validator (``workflow.validate``), which must refuse each one naming the node's input.

The registry is walked at collection time (``NODE_CLASS_MAPPINGS``, each class's ``INPUT_TYPES``): for every
INT/FLOAT widget NaN, +Inf and -Inf (refused by the validator itself, whatever the node's VALIDATE_INPUTS
does), a value past the declared maximum and one below the declared minimum (range errors, from the
validator or, for inputs the node checks itself as ComfyUI lets it, from its VALIDATE_INPUTS), and values of
the wrong type (a numeric string, a bool, a list that is no link, a fractional float for INT, an integer
beyond the float range for FLOAT); for every STRING widget a text over the length limit. The rest of the node's
widgets keep their declared defaults.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from comfyui_svd_lab import NODE_CLASS_MAPPINGS as REGISTRY
from comfyui_svd_lab.nodes import bridge
from comfyui_svd_lab.workflow import validate
from comfyui_svd_lab.workflow.spec import input_specs
from comfyui_svd_lab.workflow.validate import MAX_STRING

NOT_FINITE = [("nan", math.nan), ("inf", math.inf), ("minus_inf", -math.inf)]


def _widgets(types: tuple[str, ...]) -> list[tuple[str, str, Any]]:
    return [(class_type, spec.name, spec) for class_type, cls in sorted(REGISTRY.items())
            for spec in input_specs(cls).values() if spec.is_widget and spec.type in types]


NUMBERS = _widgets(("INT", "FLOAT"))
TEXTS = _widgets(("STRING",))


def _cases() -> list[Any]:
    cases = []
    for class_type, name, spec in NUMBERS:
        base = f"{class_type}.{name}"
        for label, value in NOT_FINITE:
            cases.append(pytest.param(class_type, name, value, "not_finite", id=f"{base}-{label}"))
        low, high = spec.options.get("min"), spec.options.get("max")
        step = 1 if spec.type == "INT" else None
        if high is not None:
            cases.append(pytest.param(class_type, name, high + (step or max(1.0, abs(high))), "range",
                                      id=f"{base}-above_max"))
        if low is not None:
            cases.append(pytest.param(class_type, name, low - (step or max(1.0, abs(low))), "range",
                                      id=f"{base}-below_min"))
        wrong = [("numeric_string", "5"), ("bool", True), ("list", [1, 2, 3])]
        wrong.append(("fraction", 2.5) if spec.type == "INT" else ("int_beyond_float", 10**400))
        for label, value in wrong:
            kind = "range" if label == "int_beyond_float" else "wrong_type"
            cases.append(pytest.param(class_type, name, value, kind, id=f"{base}-{label}"))
    for class_type, name, _ in TEXTS:
        cases.append(pytest.param(class_type, name, "x" * (MAX_STRING + 1), "too_long", id=f"{class_type}.{name}-long"))
    return cases


CASES = _cases()


def test_the_registry_walk_found_the_pack():
    assert len(REGISTRY) >= 30 and len(NUMBERS) >= 80 and len(TEXTS) >= 10
    assert ("SVDLab_Sampler", "min_cfg") in {(c, n) for c, n, _ in NUMBERS}


@pytest.fixture
def folders(sandbox):
    bridge.configure(models_dirs=[sandbox.folder("models")], output_dir=sandbox.folder("output"),
                     input_dir=sandbox.folder("input"), temp_dir=sandbox.folder("temp"))
    yield sandbox
    bridge.reset()


def _defaults(cls: type) -> dict[str, Any]:
    values = {}
    for spec in input_specs(cls).values():
        if not spec.is_widget:
            continue
        if "default" in spec.options:
            values[spec.name] = spec.options["default"]
        elif spec.choices:
            values[spec.name] = spec.choices[0]
    return values


EXPECTED = {  # kind of case -> (Problem.kind, words one of which the message has)
    "not_finite": ("not_finite", ("is not a finite number (NaN and infinity are refused)",)),
    "range": ("out_of_range", ("is below the minimum", "is above the maximum", "is too large for a FLOAT")),
    "wrong_type": ("wrong_type", ("expects INT, got", "expects FLOAT, got", "a list is a link")),
    "too_long": ("too_long", (f"characters is longer than the limit of {MAX_STRING}",)),
}


def _refuses(kind: str, problem, name: str) -> bool:
    if kind == "range" and problem.kind == "custom_validation":  # the node checks this input itself
        return name in problem.message
    want, words = EXPECTED[kind]
    return problem.input == name and problem.kind == want and any(w in problem.message for w in words)


@pytest.mark.parametrize(("class_type", "name", "value", "kind"), CASES)
def test_validator_refuses(class_type, name, value, kind, folders, no_process):
    cls = REGISTRY[class_type]
    inputs = {**_defaults(cls), name: value}
    problems = validate({"1": {"class_type": class_type, "inputs": inputs}}, REGISTRY)
    mine = [p for p in problems if p.node_id == "1" and _refuses(kind, p, name)]
    assert mine, f"{class_type}.{name} = {str(value)[:40]} not refused as {kind}: {[str(p) for p in problems]}"
    assert all(len(str(p)) < 1000 for p in problems)  # values are never echoed whole
