"""Fuzz: hostile values for every number and text widget of every node class of the pack, through the headless
validator (``workflow.validate``), which must refuse each one naming the node's input; and for every field of
the training config (``config_from_dict``), which must refuse each one naming the dotted key.

The registry is walked at collection time (``NODE_CLASS_MAPPINGS``, each class's ``INPUT_TYPES``): for every
INT/FLOAT widget NaN, +Inf and -Inf (refused by the validator itself, whatever the node's VALIDATE_INPUTS
does), a value past the declared maximum and one below the declared minimum (range errors, from the
validator or, for inputs the node checks itself as ComfyUI lets it, from its VALIDATE_INPUTS), and values of
the wrong type (a numeric string, a bool, a list that is no link, a fractional float for INT, an integer
beyond the float range for FLOAT); for every STRING widget a text over the length limit. The rest of the node's
widgets keep their declared defaults.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any

import pytest

from comfyui_svd_lab import NODE_CLASS_MAPPINGS as REGISTRY
from comfyui_svd_lab.nodes import bridge
from comfyui_svd_lab.svd_model.errors import ConfigError
from comfyui_svd_lab.svd_model.training.config import TrainConfig, config_from_dict
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


# ------------------------------------------------------------------------------------------------ training config


def _config_fields(cls: type = TrainConfig, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted name, type hint) of every leaf field of the training config."""
    out = []
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            out += _config_fields(hint, f"{prefix}{f.name}.")
        else:
            out.append((prefix + f.name, hint))
    return out


CONFIG_FIELDS = _config_fields()
FLOAT_FIELDS = [name for name, hint in CONFIG_FIELDS if hint is float or typing.get_args(hint) == (float, float)]
INT_FIELDS = [name for name, hint in CONFIG_FIELDS if hint is int]
# fields where a negative number makes no sense (seeds and log-normal means may be negative)
NON_NEGATIVE = ["data.num_frames", "data.fps", "data.width", "data.height", "data.windows_per_clip",
                "data.motion_bucket_id", "cache.aug_draws", "cache.shard_clips", "cache.encode_frames",
                "objective.p_std", "objective.cond_aug_std", "objective.cond_dropout", "lora.rank", "lora.alpha",
                "lora.dropout", "optim.lr", "optim.eps", "optim.weight_decay", "optim.warmup_steps",
                "optim.min_lr_ratio", "optim.grad_clip", "optim.grad_accum", "validation.every", "validation.steps",
                "validation.min_cfg", "validation.max_cfg", "validation.cond_aug", "steps", "batch_size",
                "ema_decay", "save_every", "keep_checkpoints", "log_every"]


def _nested(dotted: str, value: Any) -> dict[str, Any]:
    *parents, leaf = dotted.split(".")
    tree: dict[str, Any] = {leaf: value}
    for part in reversed(parents):
        tree = {part: tree}
    return tree


def _config_cases() -> list[Any]:
    cases = []
    for name in FLOAT_FIELDS:
        pair = name == "optim.betas"
        for label, value in NOT_FINITE:
            cases.append(pytest.param(name, [value, 0.9] if pair else value, f"{name} must be a finite number",
                                      id=f"{name}-{label}"))
        cases.append(pytest.param(name, [10**400, 0.9] if pair else 10**400, "is too large for a float",
                                  id=f"{name}-int_beyond_float"))
        cases.append(pytest.param(name, "0.5", f"{name} must be a list, got '0.5'" if pair
                                  else f"{name} = '0.5' has the wrong type (expected float)", id=f"{name}-string"))
    for name in INT_FIELDS:
        cases.append(pytest.param(name, 2.5, f"{name} = 2.5 has the wrong type (expected int)", id=f"{name}-fraction"))
        cases.append(pytest.param(name, True, f"{name} = True has the wrong type (expected int)", id=f"{name}-bool"))
    for name in NON_NEGATIVE:
        cases.append(pytest.param(name, -1, name, id=f"{name}-negative"))
    return cases


def test_the_config_walk_found_the_fields():
    assert {"optim.lr", "optim.betas", "validation.min_cfg", "objective.p_mean", "ema_decay"} <= set(FLOAT_FIELDS)
    assert len(FLOAT_FIELDS) >= 15 and len(INT_FIELDS) >= 15 and set(NON_NEGATIVE) <= {n for n, _ in CONFIG_FIELDS}


@pytest.mark.parametrize(("name", "value", "expect"), _config_cases())
def test_training_config_refuses(name, value, expect):
    with pytest.raises(ConfigError) as info:
        config_from_dict(_nested(name, value))
    message = str(info.value)
    assert expect in message and name.split(".")[-1] in message and len(message) < 600, message
