"""Headless workflow runner, UI -> API conversion: widget values, links, muted / bypassed nodes, reroutes,
primitives, API files and prompt bodies, and malformed workflows.

Uses small fake V1 node classes (workflow_support), so it runs without the pack's nodes (and without ComfyUI).
"""

from __future__ import annotations

import json

import pytest
from workflow_support import REGISTRY, n, only

from comfyui_svd_lab.workflow import (
    Problem,
    WorkflowError,
    load_workflow,
    validate,
)

# ---------------------------------------------------------------- UI -> API conversion


def ui_node(node_id, kind, widgets=None, inputs=(), mode=0):
    return {"id": node_id, "type": kind, "mode": mode, "inputs": list(inputs), "outputs": [],
            "widgets_values": widgets if widgets is not None else []}


def socket(name, kind, link, widget=False):
    return {"name": name, "type": kind, "link": link} | ({"widget": {"name": name}} if widget else {})


def ui(nodes, links):
    return {"last_node_id": 99, "last_link_id": 99, "nodes": nodes, "links": links, "version": 0.4}


def test_ui_widgets_values_skip_control_after_generate_and_take_links():
    workflow = ui([ui_node(1, "Number", [7]),
                   ui_node(2, "Sampler", [42, "randomize", 20, "heun", 9, "fixed", True, ["a", "b"]],
                           [socket("model", "INT", 1), socket("steps", "INT", 2, widget=True)]),
                   ui_node(3, "Show", ["", ""], [socket("value", "LATENT", 3)])],
                  [[1, 1, 0, 2, 0, "INT"], [2, 1, 0, 2, 1, "INT"], [3, 2, 0, 3, 0, "LATENT"]])
    prompt, kept = load_workflow(workflow, REGISTRY)
    assert kept == workflow
    assert prompt["2"]["inputs"] == {"seed": 42, "steps": ["1", 0], "sampler": "heun", "model": ["1", 0],
                                     "strength": 9, "flag": True, "tags": {"__value__": ["a", "b"]}}
    assert prompt["1"] == {"class_type": "Number", "inputs": {"value": 7}, "_meta": {"title": "Number"}}
    assert validate(prompt, REGISTRY) == [Problem("2", "tags", "wrong_type", "expects STRING, got list ['a', 'b']",
                                                  "Sampler")]


def test_ui_missing_trailing_widget_values_take_defaults_and_old_files_without_control_value():
    workflow = ui([ui_node(1, "Number", [1]), ui_node(2, "Sampler", [5, 10, "euler"], [socket("model", "INT", 1)]),
                   ui_node(3, "Show", None, [socket("value", "LATENT", 2)])],
                  [[1, 1, 0, 2, 0, "INT"], [2, 2, 0, 3, 0, "LATENT"]])
    prompt, _ = load_workflow(workflow, REGISTRY)
    assert prompt["2"]["inputs"] | {} == {"seed": 5, "steps": 10, "sampler": "euler", "model": ["1", 0],
                                          "strength": 3, "flag": False, "tags": "x"}
    assert prompt["3"]["inputs"] == {"value": ["2", 0], "label": ""}


# The editor saves the upload button's value after every other widget (seen in ComfyUI 0.8.0's frontend 1.35.9:
# a node with an upload combo and a path STRING serialises ["x.png", "", "image"]).
@pytest.mark.parametrize("values", [["b.png", "y", "increment-wrap", "", 4, "image"], ["b.png", "y", 4]])
def test_ui_upload_and_combo_control_extras(values):
    workflow = ui([ui_node(1, "Pick", values), ui_node(2, "Show", [""], [socket("value", "STRING", 1)])],
                  [[1, 1, 0, 2, 0, "STRING"]])
    prompt, _ = load_workflow(workflow, REGISTRY)
    assert prompt["1"]["inputs"] == {"image": "b.png", "mode": "y", "count": 4}
    assert validate(prompt, REGISTRY) == []


def test_ui_muted_bypassed_notes_reroutes_and_primitives():
    workflow = ui([ui_node(1, "Number", [2]),
                   ui_node(2, "Reroute", None, [socket("", "*", 1)]),
                   ui_node(3, "Add", [1, 1, 1.0], [socket("a", "INT", 2, widget=True)], mode=4),  # bypassed
                   ui_node(4, "Show", ["x"], [socket("value", "INT", 3)]),
                   ui_node(5, "Number", [3], mode=2),  # muted
                   ui_node(6, "Show", [""], [socket("value", "INT", 4)]),
                   ui_node(7, "Note", ["just a note"]), ui_node(8, "MarkdownNote", ["# hi"]),
                   ui_node(9, "PrimitiveNode", [11]),
                   ui_node(10, "Add", [11, 4, 1.0], [socket("a", "INT", 5, widget=True)]),
                   ui_node(11, "Show", [""], [socket("value", "INT", 6)])],
                  [[1, 1, 0, 2, 0, "*"], [2, 2, 0, 3, 0, "INT"], [3, 3, 0, 4, 0, "INT"], [4, 5, 0, 6, 0, "INT"],
                   [5, 9, 0, 10, 0, "INT"], [6, 10, 0, 11, 0, "INT"]])
    prompt, _ = load_workflow(workflow, REGISTRY)
    assert sorted(prompt, key=int) == ["1", "4", "6", "10", "11"]
    assert prompt["4"]["inputs"]["value"] == ["1", 0]  # through the bypassed Add and the reroute
    assert "value" not in prompt["6"]["inputs"]  # its source is muted
    assert prompt["10"]["inputs"]["a"] == 11  # the primitive's value, already in the widget
    p = only(validate(prompt, REGISTRY))
    assert (p.node_id, p.input, p.kind) == ("6", "value", "missing_input")


def test_ui_link_objects_and_prompt_body_and_api_file(tmp_path):
    workflow = ui([ui_node(1, "Number", [4]), ui_node(2, "Show", [""], [socket("value", "INT", 1)])],
                  [{"id": 1, "origin_id": 1, "origin_slot": 0, "target_id": 2, "target_slot": 0, "type": "INT"}])
    prompt, _ = load_workflow(workflow, REGISTRY)
    assert prompt["2"]["inputs"]["value"] == ["1", 0]
    body = {"prompt": prompt, "extra_data": {"extra_pnginfo": {"workflow": workflow}}}
    assert load_workflow(body) == (prompt, workflow)
    path = tmp_path / "api.json"
    path.write_text(json.dumps({3: n("Number", value=1)}))
    assert load_workflow(path) == ({"3": n("Number", value=1)}, None)


@pytest.mark.parametrize(("data", "words"), [
    ([1, 2], "must be a JSON object"),
    ({"a": 1}, "not a ComfyUI workflow"),
    ({"1": {"class_type": "Number", "inputs": [1]}}, "API workflow: 1.inputs must be an object"),
    ({"1": n("Number", value=1), "2": {"type": "Show"}}, "2.class_type must be a non-empty string"),
    ({"nodes": {}, "links": []}, "\"nodes\" must be a list"),
    ({"nodes": [{"id": 1}], "links": []}, "UI workflow: nodes[0].type must be a non-empty string"),
    ({"nodes": [], "links": [[1, 2]]}, "links[0] must be"),
    ({"nodes": [{"id": 1, "type": "1234abcd-0000-0000-0000-000000000000"}], "links": [],
      "definitions": {"subgraphs": [{"id": "1234abcd-0000-0000-0000-000000000000"}]}}, "subgraph"),
])
def test_malformed_structure(data, words):
    with pytest.raises(WorkflowError, match=words.replace("[", r"\[").replace("]", r"\]")):
        load_workflow(data, REGISTRY)


def test_malformed_json_and_missing_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"1": {"class_type": "Number",\n "inputs": }}')
    with pytest.raises(WorkflowError, match="not valid JSON: .* line 2"):
        load_workflow(bad)
    with pytest.raises(WorkflowError, match="workflow not found: .*missing.json"):
        load_workflow(tmp_path / "missing.json")
    with pytest.raises(WorkflowError, match="needs the node registry"):
        load_workflow(ui([], []))
