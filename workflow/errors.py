"""Exceptions of the headless workflow runner."""

from __future__ import annotations

MAX_DETAIL = 2000  # characters shown of a failed node's exception message


class WorkflowError(Exception):
    """A workflow file or prompt cannot be read, converted, overridden or run."""


class ValidationError(WorkflowError):
    """The prompt failed validation; ``problems`` lists every problem found (nothing was run)."""

    def __init__(self, problems: list) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"the workflow has {len(self.problems)} problem(s):\n{lines}")


class NodeExecutionError(WorkflowError):
    """A node's FUNCTION raised; ``original`` is the exception it raised (also chained as ``__cause__``)."""

    def __init__(self, node_id: str, class_type: str, original: BaseException) -> None:
        self.node_id = node_id
        self.class_type = class_type
        self.original = original
        detail = str(original) or "(no message)"
        if len(detail) > MAX_DETAIL:  # a node's message may quote a huge value
            detail = f"{detail[:MAX_DETAIL]}… ({len(detail)} characters)"
        super().__init__(f"node {node_id} ({class_type}) failed: {type(original).__name__}: {detail}")
