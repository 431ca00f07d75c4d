"""ComfyUI core nodes in a workflow: the headless runner refuses it up front with one message naming them
(workflow/core_nodes.py); other unknown types keep their per-node "unknown node type" problem."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import pytest

from comfyui_svd_lab import NODE_CLASS_MAPPINGS as REGISTRY
from comfyui_svd_lab.cli import main
from comfyui_svd_lab.nodes import bridge
from comfyui_svd_lab.workflow import CORE_NODES, CoreNodesError, check_core_nodes, load_workflow, validate

EXAMPLES = Path(__file__).resolve().parents[2] / "example_workflows"
API = json.loads((EXAMPLES / "api" / "svd_image_to_video.json").read_text())
UI = json.loads((EXAMPLES / "svd_image_to_video.json").read_text())


def _with_core_loader(prompt: dict) -> dict:
    """The API example with its image coming from core LoadImage + ImageScale."""
    prompt = copy.deepcopy(prompt)
    prompt["20"] = {"class_type": "LoadImage", "inputs": {"image": "x.png"}}
    prompt["21"] = {"class_type": "ImageScale", "inputs": {"image": ["20", 0], "upscale_method": "area",
                                                           "width": 1024, "height": 576, "crop": "center"}}
    prompt["3"]["inputs"]["image"] = ["21", 0]
    return prompt


def _ui_with(node_type: str, mode: int) -> dict:
    ui = copy.deepcopy(UI)
    ui["nodes"].append({"id": 99, "type": node_type, "mode": mode, "inputs": [], "outputs": [],
                        "widgets_values": [0, "fixed", 20, 8.0, "euler", "normal", 1.0]})
    return ui


def test_the_list_names_real_core_nodes_and_no_pack_node():
    assert {"CheckpointLoaderSimple", "CLIPTextEncode", "EmptyLatentImage", "KSampler", "VAEDecode",
            "LoadImage", "SaveImage", "ImageOnlyCheckpointLoader", "SVD_img2vid_Conditioning"} <= CORE_NODES
    assert not CORE_NODES & set(REGISTRY) and not any(n.startswith("SVDLab") for n in CORE_NODES)


def test_core_nodes_are_one_problem_naming_them_and_the_other_unknown_types():
    prompt = _with_core_loader(API)
    prompt["4"]["class_type"] = "SVDLab_Samplr"  # misspelled pack node: named too, but no per-node problem
    prompt["5"]["inputs"]["overlap"] = -3  # other problems are not reported next to it
    (problem,) = validate(prompt, REGISTRY)
    assert problem.kind == "core_nodes"
    assert problem.message.startswith("this workflow uses ComfyUI core nodes the headless runner cannot run: "
                                      "ImageScale, LoadImage (and node types it does not know: SVDLab_Samplr); "
                                      "run it in ComfyUI: ")
    with pytest.raises(CoreNodesError) as refused:
        check_core_nodes((n["class_type"] for n in prompt.values()), REGISTRY)
    assert refused.value.class_types == ["ImageScale", "LoadImage"] and refused.value.unknown == ["SVDLab_Samplr"]


@pytest.mark.parametrize("class_type, hint", [
    ("SVDLab_Samplr", "did you mean SVDLab_Sampler"),  # a misspelled pack node: still a per-node suggestion
    ("svdlab_sampler", None),
    ("VHS_VideoCombine", None),  # another pack's node: not called a core node
    ("[[[[", None),
])
def test_other_unknown_types_keep_their_per_node_problem(class_type, hint):
    prompt = copy.deepcopy(API)
    prompt["4"]["class_type"] = class_type
    problems = validate(prompt, REGISTRY)
    unknown = [p for p in problems if p.kind == "unknown_node_type"]
    assert [p.node_id for p in unknown] == ["4"] and not [p for p in problems if p.kind == "core_nodes"]
    assert f"unknown node type {class_type!r}" in unknown[0].message
    assert hint is None or hint in unknown[0].message


def test_ui_format_is_refused_before_the_conversion(caplog):
    with caplog.at_level(logging.INFO), pytest.raises(CoreNodesError, match="core nodes .*: KSampler; run it"):
        load_workflow(_ui_with("KSampler", 0), REGISTRY)
    assert not caplog.records  # no "widget value(s) left over" warning for the nodes it does not know


@pytest.mark.parametrize("mode", [2, 4], ids=["muted", "bypassed"])
def test_ui_core_nodes_left_out_of_the_run_do_not_count(mode):
    prompt, _ = load_workflow(_ui_with("KSampler", mode), REGISTRY)
    assert "99" not in prompt
    assert {p.kind for p in validate(prompt, REGISTRY)} <= {"custom_validation"}  # the checkpoint file is missing


def test_cli_puts_the_message_first_also_with_overrides(tmp_path, capsys):
    path = tmp_path / "core.json"
    path.write_text(json.dumps(_with_core_loader(API)))
    try:  # a --set on a core node would be an "unknown node type" error of the override: the message comes first
        assert main(["run", str(path), "--set", "20.image=y.png", "--output-dir", str(tmp_path / "out")]) == 2
    finally:
        bridge.reset()
    err = capsys.readouterr().err
    assert err.startswith("svd-lab: error: this workflow uses ComfyUI core nodes the headless runner cannot run: "
                          "ImageScale, LoadImage; run it in ComfyUI") and err.count("\n") == 1
