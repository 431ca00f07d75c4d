"""Headless workflow runner, execution: dependency order, hidden inputs, node errors, list outputs, progress;
overrides and the CLI hook.

Uses small fake V1 node classes (workflow_support), so it runs without the pack's nodes (and without ComfyUI).
"""

from __future__ import annotations

import io
import json

import pytest
from workflow_support import CALLS, REGISTRY, SEEN, base_prompt, n, only, reset_calls

from comfyui_svd_lab.workflow import (
    NodeExecutionError,
    TextProgress,
    WorkflowError,
    apply_overrides,
    execute,
    run_workflow_cli,
    runtime,
    validate,
)
from comfyui_svd_lab.workflow import progress as progress_mod


@pytest.fixture(autouse=True)
def _reset():
    reset_calls()


# ---------------------------------------------------------------- execution


def test_runs_needed_nodes_in_dependency_order_once_each():
    prompt = base_prompt() | {"5": n("Add", a=["1", 0], b=["3", 0]), "6": n("Show", value=["5", 0])}
    order: list[str] = []
    results = execute(prompt, REGISTRY, on_node=lambda out: order.append(out.node_id))
    assert order == ["1", "2", "3", "4", "5", "6"]  # node 9 is not needed by any output
    assert CALLS.count("Number") == 2 and CALLS.count("Add") == 2  # node 1 feeds two nodes, runs once
    assert results["3"].result == (7,) and results["5"].result == (9,)
    assert results["4"].ui == {"text": ["7"]} and results["6"].ui == {"text": ["9"]}


def test_hidden_inputs_inference_mode_and_output_dir(tmp_path):
    prompt, workflow = base_prompt(), {"nodes": [], "links": []}
    execute(prompt, REGISTRY, ui_workflow=workflow, output_dir=tmp_path)
    seen = SEEN[0]
    assert seen["unique_id"] == "4" and seen["prompt"] is prompt and seen["extra_pnginfo"] == {"workflow": workflow}
    assert seen["inference"] and seen["out_dir"] == tmp_path and runtime.output_directory() != tmp_path
    execute(prompt, REGISTRY, hidden={"EXTRA_PNGINFO": {"k": 1}})
    assert SEEN[1]["extra_pnginfo"] == {"k": 1}
    execute(prompt, REGISTRY)
    assert SEEN[2]["extra_pnginfo"] is None


def test_node_exception_names_the_node():
    prompt = {"1": n("Number", value=3), "7": n("Boom", value=["1", 0]), "8": n("Show", value=["7", 0])}
    with pytest.raises(NodeExecutionError) as info:
        execute(prompt, REGISTRY)
    err = info.value
    assert (err.node_id, err.class_type) == ("7", "Boom") and isinstance(err.original, ValueError)
    assert str(err) == "node 7 (Boom) failed: ValueError: frames must be a multiple of 8"
    assert err.__cause__ is err.original and "Show" not in CALLS


def test_list_outputs_call_downstream_nodes_per_element():
    prompt = {"1": n("Spread"), "2": n("Add", a=["1", 0], b=10), "3": n("Show", value=["2", 0])}
    results = execute(prompt, REGISTRY)
    assert results["2"].result == ([11, 12, 13],) and results["3"].ui == {"text": ["11", "12", "13"]}


def test_progress_counter_and_node_reports():
    stream = io.StringIO()
    prompt = {"1": n("Steps", steps=4), "2": n("Show", value=["1", 0])}
    execute(prompt, REGISTRY, progress=TextProgress(stream))
    text = stream.getvalue()
    assert "[1/2] node 1 Steps" in text and "|" + "#" * 24 + "| 4/4" in text and "[2/2] node 2 Show done" in text
    assert progress_mod.get_reporter() is None


# ---------------------------------------------------------------- overrides


def test_overrides_parse_by_declared_type():
    prompt = {"1": n("Number", value=1), "2": n("Sampler", seed=1, steps=2, sampler="euler", model=["1", 0]),
              "3": n("Show", value=["2", 0])}
    out = apply_overrides(prompt, ["2.seed=5", "2.flag=yes", "2.sampler=heun", "2.tags=a=b", "2.model=3",
                                   "3.label= x"], REGISTRY)
    assert out["2"]["inputs"] | {} == {"seed": 5, "steps": 2, "sampler": "heun", "model": 3, "flag": True,
                                       "tags": "a=b"}
    assert out["3"]["inputs"]["label"] == " x" and prompt["2"]["inputs"]["seed"] == 1  # the input is not changed
    assert apply_overrides(base_prompt(), ["3.scale=0.5"], REGISTRY)["3"]["inputs"]["scale"] == 0.5


def test_override_errors_are_all_reported():
    with pytest.raises(WorkflowError) as info:
        apply_overrides(base_prompt(), ["12.value=1", "1.nope=2", "1.value=abc", "justtext"], REGISTRY)
    message = str(info.value)
    assert "no node 12" in message and "no input 'nope'" in message and "expects INT, got 'abc'" in message
    assert "expected NODE_ID.INPUT=VALUE" in message


def test_override_out_of_range_is_left_to_validation():
    prompt = apply_overrides(base_prompt(), ["3.a=0"], REGISTRY)
    assert only(validate(prompt, REGISTRY)).kind == "out_of_range"


# ---------------------------------------------------------------- CLI hook


def test_cli_runs_and_prints_outputs(tmp_path):
    path = tmp_path / "wf.json"
    path.write_text(json.dumps({"1": n("Number", value=2), "2": n("Save", value=["1", 0], prefix="a")}))
    out, err = io.StringIO(), io.StringIO()
    assert run_workflow_cli(path, ["1.value=9"], tmp_path / "o", REGISTRY, stdout=out, stderr=err) == 0
    assert (tmp_path / "o" / "run" / "a.txt").read_text() == "9"
    assert out.getvalue().strip() == f"node 2 (Save) files: {tmp_path / 'o' / 'run' / 'a.txt'}"
    assert "[2/2] node 2 Save" in err.getvalue()


def test_cli_reports_problems_and_failures(tmp_path):
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(base_prompt()))
    err = io.StringIO()
    assert run_workflow_cli(path, ["3.a=0", "3.b=x"], tmp_path, REGISTRY, stderr=err) == 2
    assert "expects INT, got 'x'" in err.getvalue()
    err = io.StringIO()
    assert run_workflow_cli(path, ["3.a=0"], tmp_path, REGISTRY, stderr=err) == 2
    assert "  node 3 (Add) input 'a': value 0 is below the minimum 1\n" in err.getvalue() and CALLS == []
    path.write_text(json.dumps({"1": n("Number", value=3), "2": n("Boom", value=["1", 0]),
                                "3": n("Show", value=["2", 0])}))
    err = io.StringIO()
    assert run_workflow_cli(path, [], tmp_path, REGISTRY, stdout=io.StringIO(), stderr=err) == 1
    assert "node 2 (Boom) failed: ValueError: frames must be a multiple of 8" in err.getvalue()
    path.write_text("{not json")
    assert run_workflow_cli(path, [], tmp_path, REGISTRY, stderr=io.StringIO()) == 2
