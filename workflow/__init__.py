"""Headless execution of saved workflows made of V1-style node classes (no ComfyUI server needed).

Generic over a node registry ``{class_type: class}`` (the pack's ``NODE_CLASS_MAPPINGS``)::

    prompt, ui = load_workflow("example_workflows/image_to_video.json", registry)  # API or UI format
    prompt = apply_overrides(prompt, ["3.seed=5"], registry)
    problems = validate(prompt, registry)          # every problem, each naming its node and input
    results = execute(prompt, registry, ui_workflow=ui, progress=TextProgress())
    run_workflow_cli(path, sets, output_dir, registry)   # all of the above, for `svd-lab run`

Workflow files are read by ``svd_model.jsonfile`` (BOM, UTF-16, size and depth limits) and their shape is
checked by ``workflow.schema`` (each problem names its JSON path) before conversion; the validator refuses
NaN/Inf numbers and over-long texts itself. The runner needs no torch (``execute`` uses it when it is
installed). The nodes' owner hands the runner a host (``execute(..., host=...)``, see ``workflow.runtime``):
where its nodes write and where their progress goes for the run (this pack: ``nodes.bridge``); output nodes
return ``{"ui": {key: [{"filename", "subfolder", "type"}]}, "result": ()}`` and the CLI prints those files.
"""

from __future__ import annotations

from .convert import check_api, load_workflow, ui_to_api
from .core_nodes import CORE_NODES, CoreNodesError, check_core_nodes
from .errors import NodeExecutionError, ValidationError, WorkflowError
from .execute import NodeOutput, execute, ui_outputs
from .overrides import apply_overrides, parse_value
from .progress import TextProgress, report, set_reporter
from .runner import describe_outputs, run_workflow_cli
from .validate import Problem, validate

__all__ = [
    "CORE_NODES",
    "CoreNodesError",
    "NodeExecutionError",
    "NodeOutput",
    "Problem",
    "TextProgress",
    "ValidationError",
    "WorkflowError",
    "apply_overrides",
    "check_api",
    "check_core_nodes",
    "describe_outputs",
    "execute",
    "load_workflow",
    "parse_value",
    "report",
    "run_workflow_cli",
    "set_reporter",
    "ui_outputs",
    "ui_to_api",
    "validate",
]
