"""Running a validated API-format prompt in-process, the way ComfyUI's executor runs V1 node classes.

- Only the nodes the output nodes (``OUTPUT_NODE = True``) need run, each once, sources first.
- Each node gets its own instance of its class (ComfyUI keeps one object per node id); ``FUNCTION`` is called
  with its required and optional inputs as keyword arguments, plus the hidden inputs it declares:
  ``PROMPT`` (the API prompt), ``EXTRA_PNGINFO`` (``{"workflow": ui_workflow}``, None without a UI workflow),
  ``UNIQUE_ID`` (the node id), ``DYNPROMPT``/``AUTH_TOKEN_COMFY_ORG``/``API_KEY_COMFY_ORG`` (None); the ``hidden``
  argument of ``execute`` overrides these by kind.
- A node returns a tuple matching ``RETURN_TYPES`` or ``{"ui": {...}, "result": (...)}``; ``OUTPUT_IS_LIST`` and
  ``INPUT_IS_LIST`` follow ComfyUI's list semantics (a node fed lists is called once per element).
  Lazy inputs are evaluated eagerly; ``IS_CHANGED`` is not consulted (nothing is cached between runs).
- Everything runs under ``torch.inference_mode()`` like in ComfyUI; a node that trains leaves it itself
  (``with torch.inference_mode(False), torch.enable_grad(): ...``).
- An exception in a node becomes ``NodeExecutionError(node_id, class_type, original)``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import runtime
from .errors import NodeExecutionError, ValidationError
from .graph import execution_order, sorted_ids
from .progress import ProgressListener
from .spec import InputSpec, Registry, as_link, coerce, input_specs, is_output_node, return_types, unwrap
from .validate import validate

log = logging.getLogger(__name__)


@dataclass
class NodeOutput:
    """What one node produced. ``values[j]`` is output slot j as a list (ComfyUI's internal form)."""

    node_id: str
    class_type: str
    values: list[list[Any]]
    output_is_list: tuple[bool, ...]
    ui: dict[str, list] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def result(self) -> tuple:
        """One entry per output: the value, or the list of values for list outputs (or several calls)."""
        pairs = zip(self.values, self.output_is_list, strict=True)
        return tuple(v if is_list or len(v) != 1 else v[0] for v, is_list in pairs)


def execute(prompt: Mapping[str, Any], registry: Registry, *, hidden: Mapping[str, Any] | None = None,
            progress: ProgressListener | None = None, on_node: Callable[[NodeOutput], None] | None = None,
            ui_workflow: dict | None = None, output_dir: Any = None,
            host: runtime.Host | None = None) -> dict[str, NodeOutput]:
    """Validate, then run the nodes the output nodes need; returns ``{node_id: NodeOutput}`` for every node run.

    ``progress`` gets the node counter and, through the host, each node's own progress; ``on_node(output)`` is
    called after each node; ``output_dir`` is where the host's nodes write during the run (``host``: the nodes'
    owner, e.g. this pack's ``nodes.bridge``; default ``workflow.runtime.GENERIC``). Raises ValidationError
    (nothing ran) or NodeExecutionError.
    """
    problems = validate(prompt, registry)
    if problems:
        raise ValidationError(problems)
    targets = [nid for nid in sorted_ids(prompt) if is_output_node(registry[prompt[nid]["class_type"]])]
    order = execution_order(prompt, targets)
    hidden_values = {"PROMPT": prompt, "EXTRA_PNGINFO": {"workflow": ui_workflow} if ui_workflow else None,
                     "DYNPROMPT": None, "AUTH_TOKEN_COMFY_ORG": None, "API_KEY_COMFY_ORG": None, **(hidden or {})}
    results: dict[str, NodeOutput] = {}
    run = (host or runtime.GENERIC).headless_run(output_dir=output_dir,
                                                 reporter=progress.update if progress is not None else None)
    with _inference_mode(), run:
        if progress is not None:
            progress.start(len(order))
        for index, nid in enumerate(order, 1):
            class_type = prompt[nid]["class_type"]
            log.info("running node %s (%s), %d of %d", nid, class_type, index, len(order))
            if progress is not None:
                progress.node_started(index, nid, class_type)
            results[nid] = out = _run_node(nid, prompt[nid], registry[class_type], results, hidden_values)
            if progress is not None:
                progress.node_finished(nid, class_type, out.seconds)
            if on_node is not None:
                on_node(out)
        if progress is not None:
            progress.finish()
    return results


def ui_outputs(results: Mapping[str, NodeOutput]) -> dict[str, dict[str, list]]:
    """``{node_id: ui dict}`` for the nodes that returned UI data (what ComfyUI's history calls outputs)."""
    return {nid: out.ui for nid, out in results.items() if out.ui}


@contextlib.contextmanager
def _inference_mode() -> Iterator[None]:
    try:
        import torch
    except ImportError:  # the runner itself does not need torch
        yield
        return
    with torch.inference_mode():
        yield


def _run_node(nid: str, node: Mapping, cls: type, results: Mapping[str, NodeOutput],
              hidden_values: Mapping[str, Any]) -> NodeOutput:
    class_type = node["class_type"]
    inputs = _gather_inputs(nid, node, input_specs(cls), results, hidden_values)
    start = time.perf_counter()
    try:
        function = getattr(cls(), cls.FUNCTION)
    except Exception as exc:
        raise NodeExecutionError(nid, class_type, exc) from exc
    returns = []
    for kwargs in _calls(inputs, bool(getattr(cls, "INPUT_IS_LIST", False))):
        try:
            returns.append(function(**kwargs))
        except Exception as exc:
            raise NodeExecutionError(nid, class_type, exc) from exc
    out = _collect(nid, class_type, cls, returns)
    out.seconds = time.perf_counter() - start
    return out


def _gather_inputs(nid: str, node: Mapping, specs: Mapping[str, InputSpec], results: Mapping[str, NodeOutput],
                   hidden_values: Mapping[str, Any]) -> dict[str, list]:
    """Every keyword argument as a list of values (one per call unless lists flow in)."""
    given = node.get("inputs", {})
    inputs: dict[str, list] = {}
    for name, spec in specs.items():
        if spec.section == "hidden":
            inputs[name] = [nid if spec.type == "UNIQUE_ID" else hidden_values.get(spec.type)]
        elif name in given:
            link = as_link(given[name])
            if link is not None:
                inputs[name] = results[link[0]].values[link[1]]
            else:
                inputs[name] = [coerce(spec, unwrap(given[name]))[1]]
    return inputs


def _calls(inputs: dict[str, list], input_is_list: bool) -> list[dict[str, Any]]:
    """Keyword arguments of each call: all lists at once for INPUT_IS_LIST, else one call per list element."""
    if input_is_list:
        return [inputs]
    if any(len(v) == 0 for v in inputs.values()):
        return []  # an empty list flowed in: ComfyUI runs the node zero times
    count = max((len(v) for v in inputs.values()), default=1)
    return [{k: v[min(i, len(v) - 1)] for k, v in inputs.items()} for i in range(count)]


def _collect(nid: str, class_type: str, cls: type, returns: list[Any]) -> NodeOutput:
    types = return_types(cls)
    flags = tuple(getattr(cls, "OUTPUT_IS_LIST", ()) or ())
    is_list = tuple(bool(flags[j]) if j < len(flags) else False for j in range(len(types)))
    values: list[list[Any]] = [[] for _ in types]
    ui: dict[str, list] = {}
    for returned in returns:
        result = returned
        if isinstance(returned, Mapping):
            if "expand" in returned:
                raise NodeExecutionError(nid, class_type, NotImplementedError(
                    "the node returned a graph expansion, which the headless runner does not support"))
            for key, items in (returned.get("ui") or {}).items():
                ui.setdefault(key, []).extend(items if isinstance(items, (list, tuple)) else [items])
            result = returned.get("result", ())
        if result is None and not types:
            result = ()
        if not isinstance(result, (tuple, list)) or len(result) != len(types):
            raise NodeExecutionError(nid, class_type, TypeError(
                f"{cls.FUNCTION}() returned {type(result).__name__} {result!r:.60}, expected a tuple of "
                f"{len(types)} value(s) matching RETURN_TYPES {types}"))
        for j, value in enumerate(result):
            if is_list[j]:
                values[j].extend(value)
            else:
                values[j].append(value)
    return NodeOutput(nid, class_type, values, is_list, ui)
