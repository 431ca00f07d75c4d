"""What a saved video was generated with: the speed / exactness choices of the pack nodes upstream of a save node.

A video's embedded "prompt" holds every widget of the workflow, but not which of them made *this* video; with
several branches in one prompt (or a prompt that is not kept), a reader cannot tell whether the frames came from
a cached, compiled, fp8 or few-step run. :func:`generation_modes` walks the API prompt upstream from the save
node and collects, for each pack node it passes through, the inputs that trade speed for exactness. Save Video
writes the result as the ``svd_lab_modes`` metadata key (JSON), next to ComfyUI's ``prompt`` / ``workflow``.

Only literal widget values are recorded (a linked input is named as its source node); the prompt is untrusted
input, so the walk is bounded and ignores anything that is not a well-formed node.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..workflow.graph import node_links

#: Metadata key of the record (a JSON object: "<node id> <class_type>" -> {input: value}).
MODES_KEY = "svd_lab_modes"
#: The inputs, on any pack node, that decide speed, memory or exactness of a generation.
MODE_INPUTS = (
    "dtype", "memory", "weight_storage", "attention", "compile",  # Checkpoint Loader
    "unet_name", "variant",  # UNet Loader (few-step files)
    "sampler", "schedule", "steps", "step_cache", "cache_threshold", "denoise",  # Sampler (and samplers in others)
    "precision", "chunk_size", "overlap", "tile_size",  # Decode
)
#: Upper bound on the nodes visited (a prompt is untrusted; real ones have tens of nodes).
MAX_NODES = 10_000


def _plain(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)


def generation_modes(prompt: Any, node_id: Any) -> dict[str, dict[str, Any]]:
    """``{"<id> <class_type>": {input: value}}`` for the pack nodes upstream of ``node_id`` in the API ``prompt``
    that have any of :data:`MODE_INPUTS`; {} when the prompt or the node is missing or malformed."""
    if not isinstance(prompt, Mapping) or node_id is None or str(node_id) not in prompt:
        return {}
    found: dict[str, dict[str, Any]] = {}
    seen, todo = {str(node_id)}, [str(node_id)]
    while todo and len(seen) <= MAX_NODES:
        node = prompt.get(todo.pop())
        for _, source, _ in node_links(node):
            source = str(source)
            if source in seen or source not in prompt:
                continue
            seen.add(source)
            todo.append(source)
            upstream = prompt[source]
            kind = upstream.get("class_type") if isinstance(upstream, Mapping) else None
            inputs = upstream.get("inputs") if isinstance(upstream, Mapping) else None
            if not isinstance(kind, str) or not kind.startswith("SVDLab_") or not isinstance(inputs, Mapping):
                continue
            linked = {name: f"<from node {src}>" for name, src, _ in node_links(upstream)}
            modes = {name: linked.get(name, _plain(inputs[name])) for name in MODE_INPUTS if name in inputs}
            if modes:
                found[f"{source} {kind}"] = modes
    return dict(sorted(found.items()))
