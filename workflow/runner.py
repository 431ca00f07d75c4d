"""``svd-lab run WORKFLOW.json [--set NODE.INPUT=VALUE ...] [--output-dir DIR]``: the command behind it.

Exit codes: 0 success, 1 a node failed while running, 2 the workflow could not be loaded, overridden or
validated (nothing ran), 130 interrupted.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TextIO

from . import runtime
from .convert import load_workflow
from .core_nodes import check_core_nodes
from .errors import NodeExecutionError, WorkflowError
from .execute import NodeOutput, execute
from .overrides import apply_overrides
from .progress import TextProgress
from .spec import Registry
from .validate import validate


def run_workflow_cli(path: str | Path, sets: Iterable[str] | None, output_dir: str | Path | None,
                     registry: Registry, *, stdout: TextIO | None = None, stderr: TextIO | None = None,
                     host: runtime.Host | None = None) -> int:
    """Load, override, validate and run a workflow, printing problems, progress and output files; the exit code.
    ``host``: the owner of the registry's nodes (see :mod:`workflow.runtime`)."""
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    try:
        prompt, ui_workflow = load_workflow(path, registry)
        check_core_nodes((node["class_type"] for node in prompt.values()), registry)  # one message, before the rest
        prompt = apply_overrides(prompt, sets or (), registry)
    except WorkflowError as exc:
        print(f"svd-lab: error: {exc}", file=err)
        return 2
    problems = validate(prompt, registry)
    if problems:
        print(f"svd-lab: {path}: {len(problems)} problem(s), nothing was run:", file=err)
        for problem in problems:
            print(f"  {problem}", file=err)
        return 2
    host = host or runtime.GENERIC
    out_dir = Path(output_dir) if output_dir is not None else Path(host.folder("output"))
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"svd-lab: error: cannot create the output folder {out_dir}: {exc.strerror or exc}", file=err)
        return 2
    try:
        results = execute(prompt, registry, progress=TextProgress(err), ui_workflow=ui_workflow, output_dir=out_dir,
                          host=host)
    except NodeExecutionError as exc:
        print(f"svd-lab: error: {exc}", file=err)
        return 1
    except KeyboardInterrupt:
        print("svd-lab: interrupted", file=err)
        return 130
    with host.headless_run(output_dir=out_dir):
        lines = describe_outputs(results, host)
    print("\n".join(lines) if lines else f"done: {len(results)} node(s) ran; no node reported output files",
          file=out)
    return 0


def describe_outputs(results: Mapping[str, NodeOutput], host: runtime.Host = runtime.GENERIC) -> list[str]:
    """One line per file or text an output node reported in its UI dict."""
    lines = []
    for nid, result in results.items():
        for key, items in result.ui.items():
            for item in items:
                text = _describe_item(item, host)
                if text is not None:
                    lines.append(f"node {nid} ({result.class_type}) {key}: {text}")
    return lines


def _describe_item(item: Any, host: runtime.Host) -> str | None:
    if isinstance(item, Mapping):
        path = runtime.resolve_ui_file(dict(item), host)
        return str(path) if path is not None else None
    if isinstance(item, str):
        return item
    return None
