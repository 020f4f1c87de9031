"""The package's shape (docs/architecture.md): the import graph of src/vaelab has no cycle, counting imports
inside functions and under TYPE_CHECKING too (a lazy import that dodges a cycle is still a cycle), and no module is
over 400 lines. Read from the source with `ast`; nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "vaelab"
MAX_LINES = 400

# Cycles this layout test tolerates for now, each with the reason. An entry whose cycle is gone fails
# `test_allowed_cycles_still_exist`, so the list only shrinks.
MAX_FUNCTION = 60


def modules() -> dict[str, Path]:
    return {p.stem: p for p in sorted(PACKAGE.glob("*.py"))}


def _target(module: str, known: dict[str, Path]) -> str | None:
    """The package module `module` ("x", "x.y" or "") names, "__init__" for the package itself."""
    head = module.split(".")[0]
    return head if head in known else "__init__" if not head else None


def imports_of(path: Path, known: dict[str, Path]) -> set[str]:
    """The package modules `path` imports anywhere in its body: `from . import x`, `from .x import y`, `import
    vaelab.x`, `from vaelab.x import y` and `__import__("vaelab.x")` / `importlib.import_module("vaelab.x")`.
    A name imported from the package that is not a module (`from . import __version__`) is an edge to __init__."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and (node.level == 1 or (node.module or "").split(".")[0] == "vaelab"):
            module = node.module or "" if node.level == 1 else (node.module or "").removeprefix("vaelab").lstrip(".")
            if module:
                found.add(_target(module, known))
            else:
                found |= {a.name if a.name in known else "__init__" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {_target(a.name.removeprefix("vaelab").lstrip("."), known) for a in node.names
                      if a.name.split(".")[0] == "vaelab"}
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            name = node.args[0].value
            if func in ("__import__", "import_module") and isinstance(name, str) and name.startswith("vaelab."):
                found.add(_target(name.removeprefix("vaelab."), known))
    found.discard(None)
    found.discard(path.stem)
    return found


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(path, known) for name, path in known.items()}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module: each holds at least one cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def a_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One concrete cycle inside a strongly connected component, as a list of modules ending where it began."""
    inside = set(component)
    start = component[0]
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:                                    # breadth first: the shortest way back to `start`
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & inside):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if w not in parents:
                    parents[w] = v
                    nxt.append(w)
        frontier = nxt
    return component


def test_the_scanner_sees_lazy_typing_and_package_imports(tmp_path):
    (tmp_path / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\n"
                                   "def f():\n    from . import c, __version__\n    __import__('vaelab.d')\n")
    for name in ("b", "c", "d", "__init__"):
        (tmp_path / f"{name}.py").write_text("")
    known = {p.stem: p for p in tmp_path.glob("*.py")}
    assert imports_of(tmp_path / "a.py", known) == {"b", "c", "d", "__init__"}
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert strongly_connected(graph) == [["a", "b", "c"]]
    assert a_cycle(graph, ["a", "b", "c"]) == ["a", "b", "c", "a"]


def test_no_import_cycle():
    graph = import_graph()
    cycles = strongly_connected(graph)
    assert not cycles, "import cycles in src/vaelab (move what both sides need below them):\n" + "\n".join(
        " -> ".join(a_cycle(graph, c)) + (f"   (all of {', '.join(c)})" if len(c) > 2 else "") for c in cycles)


@pytest.mark.parametrize("name", sorted(modules()))
def test_functions_are_under_60_lines(name):
    """The brief's function rule, counted from `def` to the last line of the body (docstring included)."""
    tree = ast.parse(modules()[name].read_text())
    long = [f"{n.name} ({n.end_lineno - n.lineno + 1} lines)" for n in ast.walk(tree)
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.end_lineno - n.lineno + 1 > MAX_FUNCTION]
    assert not long, f"src/vaelab/{name}.py: {', '.join(long)} over {MAX_FUNCTION} lines: split along a seam"


@pytest.mark.parametrize("name", sorted(modules()))
def test_module_is_under_400_lines(name):
    lines = len(modules()[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"src/vaelab/{name}.py has {lines} lines (limit {MAX_LINES}): split it along a seam"
