"""Headless workflow runner, validation: one test per rule (node types, inputs, links, types, cycles, values,
VALIDATE_INPUTS), every problem reported, nothing run when validation fails.

Uses small fake V1 node classes (workflow_support), so it runs without the pack's nodes (and without ComfyUI).
"""

from __future__ import annotations

import pytest
from workflow_support import CALLS, REGISTRY, base_prompt, n, only, reset_calls

from comfyui_svd_lab.workflow import (
    ValidationError,
    execute,
    validate,
)


@pytest.fixture(autouse=True)
def _reset():
    reset_calls()


# ---------------------------------------------------------------- validation: one test per rule


def test_valid_prompt_has_no_problems():
    assert validate(base_prompt(), REGISTRY) == []


def test_unknown_node_type():
    prompt = base_prompt() | {"5": n("Nummber", value=1)}
    p = only(validate(prompt, REGISTRY))
    assert (p.node_id, p.input, p.kind) == ("5", None, "unknown_node_type")
    assert "Nummber" in p.message and "did you mean Number" in p.message


def test_missing_required_input():
    prompt = base_prompt()
    del prompt["3"]["inputs"]["b"]
    p = only(validate(prompt, REGISTRY))
    assert (p.node_id, p.input, p.kind) == ("3", "b", "missing_input")


def test_missing_optional_input_is_fine_but_undeclared_input_is_not():
    prompt = base_prompt()
    prompt["3"]["inputs"]["bogus"] = 1
    p = only(validate(prompt, REGISTRY))
    assert (p.node_id, p.input, p.kind) == ("3", "bogus", "extra_input") and "a, b, scale" in p.message


def test_dangling_link():
    prompt = base_prompt()
    prompt["3"]["inputs"]["b"] = ["42", 0]
    p = only(validate(prompt, REGISTRY))
    assert (p.node_id, p.input, p.kind) == ("3", "b", "dangling_link") and "node 42" in p.message


def test_wrong_output_index():
    prompt = base_prompt()
    prompt["3"]["inputs"]["b"] = ["2", 1]
    p = only(validate(prompt, REGISTRY))
    assert (p.node_id, p.input, p.kind) == ("3", "b", "bad_output_index") and "1 output(s)" in p.message


def test_type_mismatch():
    prompt = base_prompt() | {"5": n("Latent")}
    prompt["3"]["inputs"]["b"] = ["5", 0]
    p = only(validate(prompt, REGISTRY))
    assert (p.node_id, p.input, p.kind) == ("3", "b", "type_mismatch")
    assert "expects INT" in p.message and "LATENT" in p.message


def test_any_type_and_unions_match():
    prompt = {"1": n("Latent"), "2": n("Blend", x=["1", 0]), "3": n("Show", value=["2", 0])}
    assert validate(prompt, REGISTRY) == []


def test_cycle_names_its_nodes():
    prompt = base_prompt() | {"5": n("Add", a=["6", 0], b=1), "6": n("Add", a=["5", 0], b=1)}
    p = only(validate(prompt, REGISTRY))
    assert (p.node_id, p.kind) == ("5", "cycle") and "nodes 5, 6" in p.message


@pytest.mark.parametrize(("value", "words"), [(0, "below the minimum 1"), (51, "above the maximum 50")])
def test_value_out_of_range(value, words):
    prompt = base_prompt()
    prompt["3"]["inputs"]["a"] = value
    p = only(validate(prompt, REGISTRY))
    assert (p.node_id, p.input, p.kind) == ("3", "a", "out_of_range") and words in p.message
    if value == 0:
        assert str(p) == "node 3 (Add) input 'a': value 0 is below the minimum 1"


def test_value_not_in_choices():
    prompt = {"1": n("Number", value=1), "2": n("Sampler", seed=1, steps=2, sampler="dpm", model=["1", 0]),
              "3": n("Show", value=["2", 0])}
    p = only(validate(prompt, REGISTRY))
    assert (p.node_id, p.input, p.kind) == ("2", "sampler", "not_in_choices") and "'euler'" in p.message


@pytest.mark.parametrize("value", ["3", 2.5, True, None])
def test_wrong_primitive_type(value):
    prompt = base_prompt()
    prompt["1"]["inputs"]["value"] = value
    p = only(validate(prompt, REGISTRY))
    assert (p.node_id, p.input, p.kind) == ("1", "value", "wrong_type") and "expects INT" in p.message


def test_constant_for_a_socket_type():
    prompt = {"1": n("Blend", x=3), "2": n("Show", value=["1", 0])}
    p = only(validate(prompt, REGISTRY))
    assert (p.node_id, p.input, p.kind) == ("1", "x", "wrong_type") and "link" in p.message


def test_validate_inputs_string_is_a_problem_and_replaces_the_range_check_it_declares():
    prompt = {"1": n("Sized", width=32, height=64), "2": n("Show", value=["1", 0])}
    p = only(validate(prompt, REGISTRY))  # 32 < min 64 is not reported: VALIDATE_INPUTS takes `width`
    assert (p.node_id, p.input, p.kind, p.message) == ("1", "width", "custom_validation",
                                                       "width 32 is not a multiple of 64")
    prompt["1"]["inputs"] |= {"width": 128, "height": 32}  # `height` keeps ComfyUI's range check
    assert only(validate(prompt, REGISTRY)).kind == "out_of_range"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_floats_are_refused_also_where_validate_inputs_takes_the_input(value):
    cases = ((n("Add", a=1, b=2, scale=value), "scale"), (n("Strength", name="x", strength=value), "strength"))
    for node, name in cases:
        p = only(validate({"1": node, "2": n("Show", value=["1", 0])}, REGISTRY))
        assert (p.input, p.kind) == (name, "not_finite")
        assert f"value {value} is not a finite number" in p.message
    p = only(validate({"1": n("Number", value=value), "2": n("Show", value=["1", 0])}, REGISTRY))
    assert (p.input, p.kind) == ("value", "not_finite")  # INT too


def test_huge_numbers_and_long_texts_are_refused_and_not_echoed():
    prompt = {"1": n("Add", a=1, b=2, scale=10**400), "2": n("Show", value=["1", 0], label="y" * 100_000)}
    problems = validate(prompt, REGISTRY)
    assert [(p.input, p.kind) for p in problems] == [("scale", "out_of_range"), ("label", "too_long")]
    assert "too large for a FLOAT" in problems[0].message and "(401 characters as text)" in problems[0].message
    assert "a text of 100000 characters is longer than the limit of 65536" in problems[1].message
    assert all(len(str(p)) < 300 for p in problems)
    long_name = "Q" * 100_000
    p = only(validate({"1": n(long_name), "2": n("Show", value=1)}, REGISTRY))
    assert p.kind == "unknown_node_type" and "(100000 characters)" in str(p) and len(str(p)) < 400


def test_a_missing_input_does_not_hide_the_nodes_own_check():
    problems = validate({"1": n("Strength", strength=9.0), "2": n("Show", value=["1", 0])}, REGISTRY)
    assert [(p.input, p.kind) for p in problems] == [("name", "missing_input"), (None, "custom_validation")]
    assert problems[1].message == "strength 9.0 is outside -5..5"


def test_node_ids_with_non_ascii_digits_sort_and_validate():
    prompt = {"³": n("Number", value=1), "٣": n("Number", value=2), "10": n("Add", a=["³", 0], b=["٣", 0]),
              "2": n("Show", value=["10", 0])}
    assert validate(prompt, REGISTRY) == []
    assert list(execute(prompt, REGISTRY)) == ["³", "٣", "10", "2"]


def test_no_output_node():
    prompt = {"1": n("Number", value=1)}
    p = only(validate(prompt, REGISTRY))
    assert (p.node_id, p.kind) == (None, "no_output") and str(p).startswith("workflow: ")


def test_every_problem_is_reported():
    prompt = base_prompt() | {"5": n("Nope"), "6": n("Add", a=0, b="x", extra=1)}
    kinds = sorted((p.node_id, p.input, p.kind) for p in validate(prompt, REGISTRY))
    assert kinds == [("5", None, "unknown_node_type"), ("6", "a", "out_of_range"), ("6", "b", "wrong_type"),
                     ("6", "extra", "extra_input")]


def test_nothing_runs_when_validation_fails():
    prompt = base_prompt()
    prompt["3"]["inputs"]["a"] = 0
    with pytest.raises(ValidationError, match="below the minimum") as info:
        execute(prompt, REGISTRY)
    assert len(info.value.problems) == 1 and CALLS == []
