"""The pack's import graph: no cycles, every package listed for installation, and a curation import that stays
clear of the diffusion stack.

The graph is read from the source with :mod:`ast` (nothing is imported): one node per module of the installed
package (the repository root is ``comfyui_svd_lab``), one edge per ``import`` / ``from ... import`` naming another
module of the pack. Imports inside functions count like module-level ones (a call-time import closes a cycle just
as well, it only hides it until the call); imports under ``if TYPE_CHECKING:`` never run and are left out.
Third-party imports (torch, av, ray, ...) are not part of the graph, wherever they are.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from comfyui_svd_lab.workflow.graph import strongly_connected

REPO = Path(__file__).resolve().parents[2]
ROOT_PACKAGE = "comfyui_svd_lab"
#: Folders of the repository that are not part of the installed package.
NOT_PACKAGED = frozenset({"tests", "bench", "scripts", "example_workflows", "web", "build", "dist"})


# ------------------------------------------------------------------------------------------ the graph


def module_files() -> dict[str, Path]:
    """Module name -> file for every .py of the package (root modules and every package folder below it)."""
    found: dict[str, Path] = {}
    for path in sorted(REPO.rglob("*.py")):
        rel = path.relative_to(REPO)
        top = rel.parts[0]
        if len(rel.parts) > 1 and (top in NOT_PACKAGED or top.startswith(".") or top.endswith(".egg-info")):
            continue
        parts = [ROOT_PACKAGE, *rel.with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, except the body of ``if TYPE_CHECKING:``."""
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))


def _package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def imports_of(module: str, path: Path, modules: set[str]) -> set[str]:
    """The pack's modules that ``module`` imports: ``from pkg import name`` counts pkg.name when that is a
    module, and pkg itself unless every name imported is a submodule."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in _import_nodes(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            if node.level:
                base = _package_of(module, path).split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            subs = [f"{target}.{alias.name}" for alias in node.names]
            # ``from pkg import sub``: only the submodule (pkg is its parent, already being imported); any name
            # that is not a submodule is read from pkg's __init__, an edge to pkg.
            names = subs if all(s in modules for s in subs) else [target, *subs]
        found |= {name for name in names if name in modules}
    found.discard(module)
    return found


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    names = set(files)
    return {module: imports_of(module, path, names) for module, path in files.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (the runner's Tarjan), each printed
    as a path that returns to its start: [a, b, c, a]."""
    edges = {module: sorted(targets) for module, targets in graph.items()}
    components = [set(c) for c in strongly_connected(edges, sorted(graph)) if len(c) > 1]
    return [_cycle_in(graph, component) for component in components]


def _cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first search back to it)."""
    start = min(component)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node] & component):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, node, start]
                if child not in parents:
                    parents[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"no cycle in the component {sorted(component)}")


# ------------------------------------------------------------------------------------------ the tests


def test_the_graph_sees_the_whole_pack() -> None:
    """The walker finds the pack's modules and their edges (a walker that finds nothing proves nothing)."""
    graph = import_graph()
    curation = f"{ROOT_PACKAGE}.svd_model.curation"
    assert {f"{curation}.scoring", f"{curation}.records"} <= graph[f"{curation}.pipeline"]
    assert f"{ROOT_PACKAGE}.svd_model.errors" in graph[f"{curation}.records"]
    assert f"{ROOT_PACKAGE}.nodes" in graph[ROOT_PACKAGE]
    for folder in ("svd_model", "nodes", "training_nodes", "workflow"):
        assert any(m.startswith(f"{ROOT_PACKAGE}.{folder}.") for m in graph), folder
    assert not any(".tests." in m or ".bench." in m for m in graph)
    assert sum(len(edges) for edges in graph.values()) > 2 * len(graph)


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
        ({"a": {"b"}, "b": {"a"}}, [["a", "b", "a"]]),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c", "a"]]),
        ({"a": {"b", "x"}, "b": {"a"}, "x": {"y"}, "y": {"x"}}, [["a", "b", "a"], ["x", "y", "x"]]),
    ],
    ids=["acyclic", "pair", "triangle", "two-components"],
)
def test_find_cycles(graph: dict[str, set[str]], expected: list[list[str]]) -> None:
    assert sorted(find_cycles(graph)) == expected


PKG = f"{ROOT_PACKAGE}.svd_model.pkg"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from . import sibling\n", {f"{PKG}.sibling"}),
        ("from . import sibling, CONSTANT\n", {PKG, f"{PKG}.sibling"}),
        ("from .sibling import name\n", {f"{PKG}.sibling"}),
        ("from ..errors import SVDError\n", {f"{ROOT_PACKAGE}.svd_model.errors"}),
        ("from .. import errors\n", {f"{ROOT_PACKAGE}.svd_model.errors"}),
        ("import torch\nfrom typing import TYPE_CHECKING\n", set()),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .sibling import T\n", set()),
        ("import typing\nif typing.TYPE_CHECKING:\n    pass\nelse:\n    from .sibling import T\n", {f"{PKG}.sibling"}),
        ("def f():\n    from .late import g\n    import comfyui_svd_lab.workflow.spec\n",
         {f"{PKG}.late", f"{ROOT_PACKAGE}.workflow.spec"}),
        ("class C:\n    def m(self):\n        try:\n            from . import late\n        except ImportError:\n"
         "            pass\n", {f"{PKG}.late"}),
        ("from . import mod\n", set()),
    ],
    ids=["submodule", "submodule-and-name", "from-sibling", "from-parent-module", "parent-submodule",
         "third-party", "type-checking", "type-checking-else", "function-level", "nested-in-method", "self"],
)
def test_imports_resolve(tmp_path: Path, source: str, expected: set[str]) -> None:
    """Relative imports resolve against the module's package; function-level imports are edges too,
    TYPE_CHECKING-only ones are not, third-party ones never."""
    path = tmp_path / "mod.py"
    path.write_text(source)
    known = {PKG, f"{PKG}.mod", f"{PKG}.sibling", f"{PKG}.late", f"{ROOT_PACKAGE}.svd_model.errors",
             f"{ROOT_PACKAGE}.workflow.spec"}
    assert imports_of(f"{PKG}.mod", path, known) == expected


def test_no_import_cycles() -> None:
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join("  " + " -> ".join(c) for c in cycles)


def test_every_package_is_listed_for_installation() -> None:
    """pyproject.toml lists the packages a (non-editable) install copies; a missing one is absent there."""
    text = (REPO / "pyproject.toml").read_text()
    block = re.search(r"^\[tool\.setuptools\]$.*?^packages = \[(.*?)^\]", text, re.M | re.S)
    assert block, "pyproject.toml has no [tool.setuptools] packages list"
    listed = set(re.findall(r'"([^"]+)"', block.group(1)))
    assert ROOT_PACKAGE in listed
    packages = {m for m, path in module_files().items() if path.name == "__init__.py"}
    assert packages - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert listed - packages == set(), "pyproject.toml lists packages that do not exist"


# ------------------------------------------------------------------------------- curation without diffusion

#: The diffusion stack: networks, sampling, weights loading, pipelines (and the API that re-exports them).
DIFFUSION = ("svd_model.nn", "svd_model.diffusion", "svd_model.weights.loader", "svd_model.pipelines",
             "svd_model.api", "svd_model.nn.model", "svd_model.diffusion.sampling", "svd_model.media.video")
CURATION_ENTRIES = ("svd_model.curation", "svd_model.curation.engine", "svd_model.curation.workers",
                    "svd_model.curation.pipeline")


def test_the_diffusion_stack_names_real_modules() -> None:
    """Every name DIFFUSION forbids exists (a renamed module would make the next test pass vacuously)."""
    modules = set(module_files())
    assert [name for name in DIFFUSION if f"{ROOT_PACKAGE}.{name}" not in modules] == []


@pytest.mark.parametrize("entry", CURATION_ENTRIES)
def test_curation_does_not_import_the_diffusion_stack(entry: str) -> None:
    """Curation workers import the curation package only: no UNet, VAE, sampler or pipeline module (their
    models, e.g. the CLIP scorer, load on first use)."""
    code = (
        f"import json, sys\nimport {ROOT_PACKAGE}.{entry}\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.startswith({ROOT_PACKAGE!r} + '.') or m == 'torch')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert f"{ROOT_PACKAGE}.{entry}" in loaded
    heavy = [m for m in loaded for name in DIFFUSION
             if m == f"{ROOT_PACKAGE}.{name}" or m.startswith(f"{ROOT_PACKAGE}.{name}.")]
    assert heavy == [], f"importing {entry} loads the diffusion stack: {heavy}"
    assert "torch" not in loaded, f"importing {entry} imports torch (workers start slower)"
