"""Shape checks of a workflow before it is converted or validated: each problem names its JSON path.

UI format (what the ComfyUI editor saves, LiteGraph's serialisation) -- the fields the runner reads::

    nodes[i]               object: id (integer or non-empty string, unique), type (non-empty string),
                           mode (integer), title (string), inputs / outputs (lists of objects),
                           widgets_values (list, object or null)
    nodes[i].inputs[j]     name (string), type (string), link (integer link id or null), widget ({"name"})
    nodes[i].outputs[j]    links (list of integer link ids, or null)
    links[k]               [id, origin_id, origin_slot, target_id, target_slot, type?] or an object with
                           those keys; ids integers (node ids may be strings), slots integers >= 0, unique ids
    definitions            object; definitions.subgraphs a list of objects with a string "id"

API format: ``{node_id: {"class_type": non-empty string, "inputs": object}}`` where a list input is a link
``[node_id, output_index]`` (as in ComfyUI, where every list is a link; list constants are ``{"__value__": [...]}``).

Problems are collected (all of them, the first ``MAX_LISTED`` shown) and raised as one WorkflowError, e.g.
``UI workflow: nodes[3].inputs[1].link must be an integer link id or null, got list [1, 2]``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..svd_model.errors import shorten
from .errors import WorkflowError

MAX_LISTED = 20
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_:-]{1,40}")


def key_path(parent: str, key: Any) -> str:
    """``parent.key`` for a plain key, ``parent["odd key"]`` otherwise (long keys shortened)."""
    if isinstance(key, str) and _PLAIN_KEY.fullmatch(key):
        return f"{parent}.{key}" if parent else key
    return f"{parent}[{shorten(key, 40)}]"


def _got(value: Any) -> str:
    return f"{type(value).__name__} {shorten(value)}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_node_id(value: Any) -> bool:
    return _is_int(value) or (isinstance(value, str) and value != "")


def raise_if_any(where: str, problems: list[str]) -> None:
    """One WorkflowError for ``problems`` (``where``: "UI workflow" or "API workflow"), if there are any."""
    if not problems:
        return
    if len(problems) == 1:
        raise WorkflowError(f"{where}: {problems[0]}")
    shown = "\n".join(f"  {p}" for p in problems[:MAX_LISTED])
    more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    raise WorkflowError(f"{where}: {len(problems)} problems:\n{shown}{more}")


# ------------------------------------------------------------------------------------------------ UI format


def ui_problems(ui: Mapping) -> list[str]:
    """Every shape problem of a UI-format workflow, each starting with its JSON path."""
    problems: list[str] = []
    nodes, links = ui.get("nodes"), ui.get("links")
    if not isinstance(nodes, list):
        problems.append(f"\"nodes\" must be a list, got {_got(nodes)}")
    else:
        seen: dict[str, int] = {}
        for i, node in enumerate(nodes):
            problems += _node_problems(f"nodes[{i}]", node)
            if isinstance(node, Mapping) and _is_node_id(node.get("id")):
                key = str(node["id"])
                if key in seen:
                    problems.append(f"nodes[{i}].id {shorten(node['id'])} is used by nodes[{seen[key]}] too; "
                                    "node ids must be unique")
                seen.setdefault(key, i)
    if not isinstance(links, list):
        problems.append(f"\"links\" must be a list, got {_got(links)}")
    else:
        seen_links: dict[Any, int] = {}
        for k, link in enumerate(links):
            link_id = _link_problems(f"links[{k}]", link, problems)
            if link_id is not None:
                if link_id in seen_links:
                    problems.append(f"links[{k}] has the id {link_id} of links[{seen_links[link_id]}] too; link ids "
                                    "must be unique")
                seen_links.setdefault(link_id, k)
    problems += _definitions_problems(ui)
    return problems


def _node_problems(path: str, node: Any) -> list[str]:
    if not isinstance(node, Mapping):
        return [f"{path} must be an object, got {_got(node)}"]
    problems = []
    if "id" not in node:
        problems.append(f"{path} has no \"id\"")
    elif not _is_node_id(node["id"]):
        problems.append(f"{path}.id must be an integer or a non-empty string, got {_got(node['id'])}")
    kind = node.get("type")
    if not isinstance(kind, str) or not kind:
        problems.append(f"{path}.type must be a non-empty string (the node class), got {_got(kind)}")
    if "mode" in node and not _is_int(node["mode"]):
        problems.append(f"{path}.mode must be an integer (0 always, 2 muted, 4 bypassed), got {_got(node['mode'])}")
    if node.get("title") is not None and not isinstance(node["title"], str):
        problems.append(f"{path}.title must be a string, got {_got(node['title'])}")
    values = node.get("widgets_values")
    if values is not None and not isinstance(values, (list, Mapping)):
        problems.append(f"{path}.widgets_values must be a list (or an object by widget name), got {_got(values)}")
    for section, check in (("inputs", _input_problems), ("outputs", _output_problems)):
        entries = node.get(section)
        if entries is None:
            continue
        if not isinstance(entries, list):
            problems.append(f"{path}.{section} must be a list, got {_got(entries)}")
            continue
        for j, entry in enumerate(entries):
            where = f"{path}.{section}[{j}]"
            problems += check(where, entry) if isinstance(entry, Mapping) else \
                [f"{where} must be an object, got {_got(entry)}"]
    return problems


def _input_problems(path: str, entry: Mapping) -> list[str]:
    problems = []
    if entry.get("name") is not None and not isinstance(entry["name"], str):
        problems.append(f"{path}.name must be a string, got {_got(entry['name'])}")
    if entry.get("type") is not None and not isinstance(entry["type"], (str, int)):
        problems.append(f"{path}.type must be a type name string, got {_got(entry['type'])}")
    link = entry.get("link")
    if link is not None and not _is_int(link):
        problems.append(f"{path}.link must be an integer link id or null, got {_got(link)}")
    widget = entry.get("widget")
    if widget is not None and not (isinstance(widget, Mapping) and isinstance(widget.get("name", ""), str)):
        problems.append(f"{path}.widget must be an object with a string \"name\", got {_got(widget)}")
    return problems


def _output_problems(path: str, entry: Mapping) -> list[str]:
    links = entry.get("links")
    if links is None:
        return []
    if not isinstance(links, list):
        return [f"{path}.links must be a list of integer link ids or null, got {_got(links)}"]
    return [f"{path}.links[{i}] must be an integer link id, got {_got(v)}" for i, v in enumerate(links)
            if not _is_int(v)]


_LINK_FIELDS = ("id", "origin_id", "origin_slot", "target_id", "target_slot", "type")


def _link_problems(path: str, link: Any, problems: list[str]) -> int | None:
    """Append the problems of one link; its id when it is a well-formed integer."""
    if isinstance(link, Mapping):
        missing = [k for k in _LINK_FIELDS[:3] if k not in link]
        if missing:
            keys = shorten(sorted(map(str, link)))
            problems.append(f"{path} (an object) needs {', '.join(missing)}; got the keys {keys}")
            return None
        fields = [(f"{path}.{k}", k, link.get(k)) for k in _LINK_FIELDS]
    elif isinstance(link, list):
        if len(link) not in (5, 6):
            problems.append(f"{path} must be [id, origin_id, origin_slot, target_id, target_slot, type] "
                            f"(6 entries), got {len(link)} entries: {shorten(link)}")
            return None
        fields = [(f"{path}[{i}]", k, v) for i, (k, v) in enumerate(zip(_LINK_FIELDS, link, strict=False))]
    else:
        problems.append(f"{path} must be a list [id, origin_id, origin_slot, target_id, target_slot, type] or an "
                        f"object, got {_got(link)}")
        return None
    before = len(problems)
    for where, name, value in fields:
        if name == "id" and not _is_int(value):
            problems.append(f"{where} (the link id) must be an integer, got {_got(value)}")
        elif name in ("origin_id", "target_id") and value is not None and not _is_node_id(value):
            problems.append(f"{where} ({name}) must be a node id (integer or string), got {_got(value)}")
        elif name in ("origin_slot", "target_slot") and value is not None and not (_is_int(value) and value >= 0):
            problems.append(f"{where} ({name}) must be an integer >= 0, got {_got(value)}")
        elif name == "type" and value is not None and not isinstance(value, (str, int)):
            problems.append(f"{where} (the link type) must be a type name string, got {_got(value)}")
    ok = len(problems) == before
    if ok and (fields[1][2] is None or fields[2][2] is None):
        problems.append(f"{path} has no origin (origin_id and origin_slot are needed)")
        return None
    return fields[0][2] if ok else None


def _definitions_problems(ui: Mapping) -> list[str]:
    definitions = ui.get("definitions")
    if definitions is None:
        return []
    if not isinstance(definitions, Mapping):
        return [f"definitions must be an object, got {_got(definitions)}"]
    subgraphs = definitions.get("subgraphs")
    if subgraphs is None:
        return []
    if not isinstance(subgraphs, list):
        return [f"definitions.subgraphs must be a list, got {_got(subgraphs)}"]
    return [f"definitions.subgraphs[{i}] must be an object with a string \"id\", got {_got(sg)}"
            for i, sg in enumerate(subgraphs) if not (isinstance(sg, Mapping) and isinstance(sg.get("id"), str))]


# ------------------------------------------------------------------------------------------------ API format


def api_problems(prompt: Mapping) -> list[str]:
    """Every shape problem of an API-format prompt, each starting with its JSON path."""
    problems: list[str] = []
    for key, node in prompt.items():
        path = key_path("", str(key))
        if str(key) == "":
            problems.append("a node has the empty id \"\"; node ids must be non-empty")
        if not isinstance(node, Mapping):
            problems.append(f"{path} must be an object {{\"class_type\", \"inputs\"}}, got {_got(node)}")
            continue
        kind = node.get("class_type")
        if not isinstance(kind, str) or not kind:
            problems.append(f"{path}.class_type must be a non-empty string (the node's class), got {_got(kind)}")
        inputs = node.get("inputs", {})
        if not isinstance(inputs, Mapping):
            problems.append(f"{path}.inputs must be an object {{input name: value}}, got {_got(inputs)}")
            continue
        for name, value in inputs.items():
            if isinstance(value, list) and not _is_link(value):
                problems.append(f"{key_path(path + '.inputs', name)}: a link must be [node_id, output_index] "
                                f"(a string or integer id and an integer >= 0), got {shorten(value)}; a list "
                                "constant is written {\"__value__\": [...]}")
    return problems


def _is_link(value: list) -> bool:
    return len(value) == 2 and _is_node_id(value[0]) and _is_int(value[1]) and value[1] >= 0
