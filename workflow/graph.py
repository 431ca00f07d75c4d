"""Graph helpers over an API-format prompt: links, cycles, and the order nodes run in."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .spec import as_link


def id_key(node_id: str) -> tuple:
    """Sort key: numeric ids numerically ("2" < "10"), then anything else ("5:3" subgraph ids) as text."""
    parts = str(node_id).replace(":", ".").split(".")
    # ASCII digits only ("³" is a digit int() refuses), and few of them (int() refuses 4300 digits)
    return tuple((0, int(p), "") if p.isascii() and p.isdigit() and len(p) < 40 else (1, 0, p) for p in parts)


def sorted_ids(ids: Iterable[str]) -> list[str]:
    return sorted(ids, key=id_key)


def node_links(node: Any) -> list[tuple[str, str, int]]:
    """``(input_name, source_id, output_index)`` for every linked input of an API-format node."""
    inputs = node.get("inputs") if isinstance(node, Mapping) else None
    if not isinstance(inputs, Mapping):
        return []
    links = []
    for name, value in inputs.items():
        link = as_link(value)
        if link is not None:
            links.append((name, *link))
    return links


def strongly_connected(edges: Mapping[str, Sequence[str]], order: Sequence[str]) -> list[list[str]]:
    """Tarjan's strongly connected components of the graph ``edges`` (node -> the nodes it points at), visiting
    roots in ``order``; each component lists its members (the graph's one cycle finder: workflow links and the
    pack's import graph)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(root: str) -> None:  # iterative, so long chains cannot hit the recursion limit
        work = [(root, iter(edges[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            nid, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(edges[child])))
                elif child in on_stack:
                    low[nid] = min(low[nid], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[nid])
            if low[nid] == index[nid]:
                members = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    members.append(top)
                    if top == nid:
                        break
                components.append(members)

    for nid in order:
        if nid not in index:
            visit(nid)
    return components


def find_cycles(prompt: Mapping[str, Any]) -> list[list[str]]:
    """Every set of nodes that depend on each other through links (Tarjan's SCC), each sorted, self-loops included."""
    edges = {nid: [src for _, src, _ in node_links(node) if src in prompt] for nid, node in prompt.items()}
    cycles = [sorted_ids(members) for members in strongly_connected(edges, sorted_ids(prompt))
              if len(members) > 1 or members[0] in edges[members[0]]]
    return sorted(cycles, key=lambda c: id_key(c[0]))


def execution_order(prompt: Mapping[str, Any], targets: Iterable[str]) -> list[str]:
    """The nodes ``targets`` need, each after its sources (depth-first, inputs in order). The graph must be acyclic."""
    order: list[str] = []
    seen: set[str] = set()
    for target in targets:
        if target in seen:
            continue
        seen.add(target)
        work = [(target, iter(node_links(prompt[target])))]
        while work:
            nid, links = work[-1]
            link = next(links, None)
            if link is None:
                work.pop()
                order.append(nid)
                continue
            src = link[1]
            if src in prompt and src not in seen:
                seen.add(src)
                work.append((src, iter(node_links(prompt[src]))))
    return order
