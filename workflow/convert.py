"""Loading workflow files: format detection, API-format checks, and UI -> API conversion.

The conversion follows what the ComfyUI frontend does when it queues a prompt (``graphToPrompt``):
- widget inputs (INT, FLOAT, STRING, BOOLEAN, combos; not ``forceInput``) take the node's positional
  ``widgets_values`` in declaration order (required, then optional); the UI-only values the frontend saves
  after some widgets are skipped: "control_after_generate" after ``seed``/``noise_seed`` INTs and inputs declared
  with ``control_after_generate``, the combo filter text, and (after all other widgets) the upload button of
  ``*_upload`` inputs;
  a missing trailing value falls back to the input's declared ``default``;
- an input with a link takes the link, ``[source_id, output_index]``, also for a widget converted to a socket;
- muted nodes (mode 2) are left out, and inputs fed by them are dropped; bypassed nodes (mode 4) are left out
  and their consumers are fed from the bypassed node's input of the same type (the same slot first);
- UI-only nodes (Note, MarkdownNote) are left out; Reroute nodes are followed to their source; a link from a
  PrimitiveNode is dropped because the target widget already holds the primitive's value;
- a widget value that is a list is written as ``{"__value__": [...]}`` so it is not mistaken for a link.
Subgraphs and legacy group nodes are not expanded: unpack them in ComfyUI or save the workflow in API format.
A workflow whose running nodes include ComfyUI core nodes the registry lacks is refused first, with one
:class:`~.core_nodes.CoreNodesError` naming them (their widget values could not be placed anyway).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..svd_model.errors import ConfigError, shorten
from ..svd_model.jsonfile import check_value_depth, read_json_file
from .core_nodes import check_core_nodes
from .errors import WorkflowError
from .schema import api_problems, raise_if_any, ui_problems
from .spec import CONTROL_VALUES, InputSpec, Registry, input_specs

log = logging.getLogger(__name__)

MODE_MUTED = 2
MODE_BYPASS = 4
UI_ONLY_TYPES = frozenset({"Note", "MarkdownNote", "Reroute", "PrimitiveNode"})
_PRIMITIVE = ("primitive", -1)  # marker: the input keeps its widget value
_MAX_HOPS = 256


def load_workflow(source: str | Path | Mapping, registry: Registry | None = None) -> tuple[dict, dict | None]:
    """Read a workflow: returns ``(api_prompt, ui_workflow)``; ``ui_workflow`` is None for API-format input.

    ``source`` is a path to a JSON file or an already parsed dict: API format ``{id: {"class_type", "inputs"}}``,
    a ``/prompt`` request body ``{"prompt": {...}, "extra_data": {...}}``, or UI format (``nodes`` and ``links``,
    converted with ``registry``'s INPUT_TYPES). Raises WorkflowError for unreadable or malformed input.
    """
    if isinstance(source, (str, Path)):
        data = _read(source)
    else:
        data = source
        try:
            check_value_depth(data, "the workflow")
        except ConfigError as exc:
            raise WorkflowError(str(exc)) from None
    if not isinstance(data, Mapping):
        raise WorkflowError(f"a workflow must be a JSON object, got {type(data).__name__}")
    if "nodes" in data and not (isinstance(data["nodes"], Mapping) and "class_type" in data["nodes"]):
        if registry is None:
            raise WorkflowError("converting a UI-format workflow needs the node registry (NODE_CLASS_MAPPINGS)")
        ui = copy.deepcopy(dict(data))
        return ui_to_api(ui, registry), ui
    if isinstance(data.get("prompt"), Mapping) and "class_type" not in data["prompt"]:
        extra = data.get("extra_data")
        pnginfo = extra.get("extra_pnginfo") if isinstance(extra, Mapping) else None
        ui = pnginfo.get("workflow") if isinstance(pnginfo, Mapping) else None
        return check_api(data["prompt"]), ui if isinstance(ui, dict) else None
    if any(isinstance(v, Mapping) and "class_type" in v for v in data.values()):
        return check_api(data), None
    raise WorkflowError("not a ComfyUI workflow: expected API format ({id: {\"class_type\", \"inputs\"}}) "
                        "or UI format (an object with \"nodes\" and \"links\")")


def _read(path: str | Path) -> Any:
    try:
        return read_json_file(path, what="workflow")
    except ConfigError as exc:
        raise WorkflowError(str(exc)) from None


def check_api(prompt: Mapping) -> dict:
    """A deep copy of an API-format prompt with string ids; WorkflowError naming the JSON path of each problem."""
    if not prompt:
        raise WorkflowError("the workflow has no nodes")
    raise_if_any("API workflow", api_problems(prompt))
    return {str(key): copy.deepcopy({**node, "inputs": dict(node.get("inputs", {}))}) for key, node in prompt.items()}


def ui_to_api(ui: Mapping, registry: Registry) -> dict:
    """Convert a UI-format workflow (as saved by the ComfyUI editor) to an API-format prompt."""
    raise_if_any("UI workflow", ui_problems(ui))
    nodes = _node_table(ui)
    running = (n["type"] for n in nodes.values() if n.get("mode", 0) not in (MODE_MUTED, MODE_BYPASS))
    check_core_nodes((kind for kind in running if kind not in UI_ONLY_TYPES), registry)
    links = _link_table(ui["links"])
    _reject_subgraphs(ui, nodes)
    prompt: dict[str, dict] = {}
    for nid, node in nodes.items():
        kind, mode = node["type"], node.get("mode", 0)
        if kind in UI_ONLY_TYPES or mode in (MODE_MUTED, MODE_BYPASS):
            if mode == MODE_BYPASS and kind not in UI_ONLY_TYPES:
                log.info("node %s (%s) is bypassed: its consumers get its inputs of the same type", nid, kind)
            continue
        cls = registry.get(kind)
        specs = input_specs(cls) if cls is not None else {}
        inputs = _widget_inputs(nid, node, [s for s in specs.values() if s.is_widget])
        _link_inputs(nid, node, specs, inputs, nodes, links)
        prompt[nid] = {"class_type": kind, "inputs": inputs, "_meta": {"title": node.get("title") or kind}}
    if not prompt:
        raise WorkflowError("the workflow has no nodes that run (all are muted, bypassed or notes)")
    return prompt


def _node_table(ui: Mapping) -> dict[str, dict]:
    """node id (as a string) -> node; the shapes were checked by ``schema.ui_problems``."""
    return {str(node["id"]): dict(node) for node in ui["nodes"]}


def _link_table(raw: list) -> dict[int, tuple[str, int, Any]]:
    """link id -> (source node id, source slot, type); links are ``[id, src, slot, dst, dst_slot, type]`` or objects."""
    table: dict[int, tuple[str, int, Any]] = {}
    for link in raw:
        if isinstance(link, Mapping):
            table[link["id"]] = (str(link["origin_id"]), link["origin_slot"], link.get("type"))
        else:
            table[link[0]] = (str(link[1]), link[2], link[5] if len(link) > 5 else None)
    return table


def _reject_subgraphs(ui: Mapping, nodes: dict[str, dict]) -> None:
    subgraphs = {sg["id"] for sg in (ui.get("definitions") or {}).get("subgraphs") or []}
    for nid, node in nodes.items():
        kind = node["type"]
        if kind in subgraphs or kind.startswith(("workflow>", "workflow/")):
            raise WorkflowError(f"node {nid} is a subgraph or group node ({kind}); the headless runner does not "
                                "expand those: unpack it in ComfyUI, or save the workflow in API format")


def _wrap(value: Any) -> Any:
    return {"__value__": value} if isinstance(value, list) else value


def _widget_inputs(nid: str, node: Mapping, widgets: list[InputSpec]) -> dict[str, Any]:
    """Map ``widgets_values`` (a positional list, or a dict by name) onto the widget inputs."""
    values = node.get("widgets_values")
    if values is None:
        values = []
    if isinstance(values, Mapping):
        return {s.name: _wrap(values[s.name]) for s in widgets if s.name in values}
    if not isinstance(values, list):
        raise WorkflowError(f"node {nid} ({node['type']}): widgets_values must be a list, got {shorten(values)}")
    out: dict[str, Any] = {}
    pos = 0
    uploads = sum(extra == "upload" for spec in widgets for extra in spec.widget_extras)
    for k, spec in enumerate(widgets):
        if pos < len(values):
            out[spec.name] = _wrap(values[pos])
            pos += 1
        elif "default" in spec.options:
            out[spec.name] = spec.options["default"]
        left = len(widgets) - k - 1 + uploads
        for extra in spec.widget_extras:
            if pos >= len(values) or extra == "upload":  # the upload button's value is saved last, see below
                continue
            nxt = values[pos]
            if extra == "control":
                skip = isinstance(nxt, str) and nxt in CONTROL_VALUES
            else:  # a filter value: skip it only if the values outnumber the widgets (and uploads) left
                skip = len(values) - pos > left
            pos += skip
    # The frontend adds an upload button after the node's other widgets, so its value ("image") comes last.
    pos = min(len(values), pos + uploads)
    if pos < len(values):
        log.warning("node %s (%s): %d widget value(s) left over and ignored: %r",
                    nid, node["type"], len(values) - pos, values[pos:])
    return out


def _link_inputs(nid: str, node: Mapping, specs: dict[str, InputSpec], inputs: dict,
                 nodes: dict[str, dict], links: dict) -> None:
    """Set each linked input to ``[source_id, slot]``; drop inputs whose source is muted or gone."""
    for entry in node.get("inputs") or []:
        if not isinstance(entry, Mapping) or entry.get("link") is None:
            continue
        widget = entry.get("widget")
        name = widget.get("name") if isinstance(widget, Mapping) and widget.get("name") else entry.get("name")
        if name is None:
            continue
        want = entry.get("type") or (specs[name].type if name in specs else None)
        source = _resolve(nid, entry["link"], want, nodes, links)
        if source is _PRIMITIVE:
            continue
        if source is None:
            inputs.pop(name, None)
        else:
            inputs[name] = [source[0], source[1]]


def _resolve(nid: str, link_id: Any, want: Any, nodes: dict[str, dict], links: dict) -> tuple[str, int] | None:
    """Follow a link back through reroutes and bypassed nodes to the node output that feeds it."""
    for _ in range(_MAX_HOPS):
        if link_id not in links:
            return None  # a stale link id: the editor ignores it as well
        src, slot, link_type = links[link_id]
        want = want or link_type
        source = nodes.get(src)
        if source is None:
            return src, slot  # dangling: validation reports it
        kind, mode = source["type"], source.get("mode", 0)
        if kind == "PrimitiveNode":
            return _PRIMITIVE
        if mode == MODE_MUTED or kind in ("Note", "MarkdownNote"):
            log.info("node %s: an input comes from muted node %s (%s) and is dropped", nid, src, kind)
            return None
        if kind == "Reroute":
            link_id = _input_link(source, 0)
        elif mode == MODE_BYPASS:
            link_id = _bypass_input(source, slot, want)
            if link_id is None:
                log.warning("node %s: source node %s (%s) is bypassed and has no connected %s input to pass "
                            "through; the input is dropped", nid, src, kind, want)
                return None
        else:
            return src, slot
    raise WorkflowError(f"node {nid}: a link loops through reroutes or bypassed nodes")


def _input_link(node: Mapping, index: int) -> Any:
    entries = node.get("inputs") or []
    return entries[index].get("link") if index < len(entries) and isinstance(entries[index], Mapping) else None


def _bypass_input(node: Mapping, slot: int, want: Any) -> Any:
    """The link into a bypassed node's input of type ``want``: the input at the same index first, then any."""
    entries = node.get("inputs") or []
    for i in [slot, *range(len(entries))]:
        if i < len(entries) and isinstance(entries[i], Mapping) and entries[i].get("type") == want:
            if entries[i].get("link") is not None:
                return entries[i]["link"]
    return None
