"""The package's shape, checked against docs/architecture.md: the folder tree is the map.

- The layer table in docs/architecture.md lists every subpackage of src/vaelab, bottom to top, with its modules; the
  table and the tree must agree exactly (a new module is one new row entry, a stale entry fails).
- A module imports only from its own package or from packages below it in that order, counting imports inside
  functions and under TYPE_CHECKING (a lazy import that dodges the order still breaks it); the top-level modules
  (`api`, `__init__`, `__main__`) may import anything. Imports are absolute (`from vaelab.runs.run_dir import RunDir`).
- No import cycle between modules, no module over 400 lines, no function over 60.
- Tests share helpers through conftest.py (and the *_helpers.py modules), never by importing another test module.
Read from the source with `ast`; nothing is imported."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "vaelab"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
MAX_LINES = 400
MAX_FUNCTION = 60
TOP = "top"          # api, __init__, __main__: the public names and the entry point, above every layer


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    """Every module as its dotted name under vaelab ("core.errors"; a subpackage's __init__ is "core"; the
    package's own __init__ is "__init__")."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def layer_of(name: str) -> str:
    head = name.split(".")[0]
    return head if (PACKAGE / head).is_dir() else TOP


def _resolve(dotted: str, known: dict[str, Path]) -> str | None:
    """The longest known module that `dotted` (a path under vaelab, "" for vaelab itself) names."""
    parts = dotted.split(".") if dotted else []
    while parts:
        if ".".join(parts) in known:
            return ".".join(parts)
        parts.pop()
    return "__init__"


def imports_of(path: Path, known: dict[str, Path]) -> set[str]:
    """The package modules `path` imports anywhere in its body: `import vaelab.a.b`, `from vaelab.a.b import c`
    (an edge to a.b.c when that is a module, else to a.b), `from vaelab import x` and
    `__import__("vaelab.x")` / `importlib.import_module("vaelab.x")`. A relative import is reported as "relative"."""
    found: set[str | None] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level:
            found.add("relative")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "vaelab":
            base = (node.module or "").removeprefix("vaelab").lstrip(".")
            for alias in node.names:
                sub = f"{base}.{alias.name}" if base else alias.name
                found.add(sub if sub in known else _resolve(base, known))
        elif isinstance(node, ast.Import):
            found |= {_resolve(a.name.removeprefix("vaelab").lstrip("."), known) for a in node.names
                      if a.name.split(".")[0] == "vaelab"}
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            name = node.args[0].value
            if func in ("__import__", "import_module") and isinstance(name, str) and name.startswith("vaelab."):
                found.add(_resolve(name.removeprefix("vaelab."), known))
    found.discard(None)
    return found


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(path, known) - {name} for name, path in known.items()}


def documented_layers(text: str | None = None) -> list[tuple[str, list[str]]]:
    """The layer table of docs/architecture.md, bottom to top: rows `| \\`pkg\\` | \\`mod\\`, \\`mod\\` | rule |`."""
    text = ARCHITECTURE.read_text() if text is None else text
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) >= 3 and re.fullmatch(r"`\w+/?`", cells[0]):
            rows.append((cells[0].strip("`/"), re.findall(r"`(\w+)`", cells[1])))
    return rows


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module: each holds at least one cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
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


def test_the_scanner_sees_lazy_typing_and_package_imports(tmp_path):
    pkg = tmp_path / "vaelab"
    (pkg / "low").mkdir(parents=True)
    (pkg / "high").mkdir()
    for name in ("__init__.py", "low/__init__.py", "low/b.py", "low/c.py", "high/__init__.py", "high/a.py"):
        (pkg / name).write_text("")
    (pkg / "high" / "a.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from vaelab.low.b import B\n"
        "def f():\n    from vaelab.low import c\n    from vaelab import __version__\n    __import__('vaelab.low')\n"
        "from . import x\n")
    known = modules(pkg)
    assert set(known) == {"__init__", "low", "low.b", "low.c", "high", "high.a"}
    assert imports_of(pkg / "high" / "a.py", known) == {"low.b", "low.c", "__init__", "low", "relative"}
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert strongly_connected(graph) == [["a", "b", "c"]]


def test_the_table_reader_reads_rows_in_order():
    text = "| layer | modules | rule |\n|---|---|---|\n| `core/` | `errors`, `atomic` | x |\n| `data` | `npz` | y |\n"
    assert documented_layers(text) == [("core", ["errors", "atomic"]), ("data", ["npz"])]


def test_the_architecture_table_is_the_tree():
    """Every subpackage is a row of docs/architecture.md's table and every module is listed in its row."""
    table = dict(documented_layers())
    tree: dict[str, set[str]] = {}
    for name in modules():
        if "." in name:
            package, module = name.split(".", 1)
            tree.setdefault(package, set()).add(module)
        elif layer_of(name) != TOP:
            tree.setdefault(name, set())
    assert set(table) == set(tree), f"table rows {sorted(table)} vs subpackages {sorted(tree)}"
    for package, listed in table.items():
        assert set(listed) == tree[package], (
            f"docs/architecture.md's row for {package}/ lists {sorted(listed)}, "
            f"the folder holds {sorted(tree[package])}")


def test_imports_go_down_the_layers():
    """A module imports from its own package or from a package below it in the table's order, never above."""
    order = {package: rank for rank, (package, _) in enumerate(documented_layers())}
    order[TOP] = len(order)
    upward = []
    for name, targets in import_graph().items():
        assert "relative" not in targets, f"{name} uses a relative import: write `from vaelab.<package>.<module>`"
        for target in targets:
            if order[layer_of(target)] > order[layer_of(name)]:
                upward.append(f"{name} -> {target} ({layer_of(name)} is below {layer_of(target)})")
    assert not upward, "imports that climb the layers (move what both need below them):\n" + "\n".join(upward)


def test_no_import_cycle():
    graph = import_graph()
    cycles = strongly_connected(graph)
    assert not cycles, "import cycles in src/vaelab (move what both sides need below them):\n" + "\n".join(
        ", ".join(c) for c in cycles)


@pytest.mark.parametrize("name", sorted(modules()))
def test_functions_are_under_60_lines(name):
    """The brief's function rule, counted from `def` to the last line of the body (docstring included)."""
    tree = ast.parse(modules()[name].read_text())
    long = [f"{n.name} ({n.end_lineno - n.lineno + 1} lines)" for n in ast.walk(tree)
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.end_lineno - n.lineno + 1 > MAX_FUNCTION]
    assert not long, f"{modules()[name]}: {', '.join(long)} over {MAX_FUNCTION} lines: split along a seam"


@pytest.mark.parametrize("name", sorted(modules()))
def test_module_is_under_400_lines(name):
    lines = len(modules()[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{modules()[name]} has {lines} lines (limit {MAX_LINES}): split it along a seam"


def test_no_test_imports_another_test_module():
    """Shared test helpers live in conftest.py or a *_helpers.py module, so each test file stands alone."""
    offenders = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            offenders += [f"{path.name} imports {n}" for n in names if n.split(".")[0].startswith("test_")]
    assert not offenders, "\n".join(offenders)


def test_no_test_skips_when_vaelab_itself_is_missing():
    """An importorskip of a vaelab module would turn a broken module of the project into a skip, not a failure."""
    offenders = [p.name for p in (ROOT / "tests").glob("test_*.py")
                 if re.search(r"importorskip\(\s*[\"']vaelab", p.read_text())]
    assert not offenders, offenders
