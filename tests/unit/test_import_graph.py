"""No import cycle among our packages, imports inside functions included.

The graph is read from the source (ast), not from an interpreter's `sys.modules`, so an
import that runs only on one code path (inside a function, under a branch, in a `try`)
counts as much as one at the top of a module: a cycle dodged by a lazy import is still a
cycle in the design (DESIGN.md: data flows one way).

Edges: `import a.b.c` -> the deepest of our modules it names (a.b.c, else a.b, else a);
`from a.b import c` -> a.b.c when that is a module of ours, else a.b; relative imports are
resolved against the importing module. The implicit import of parent packages (`import a.b`
runs a/__init__.py first) is not an edge: every package that re-exports its submodules
would otherwise form a cycle with each of them.

`if TYPE_CHECKING:` imports count too. They never run, but the dependency they state is
real (the annotation names the other module's type), and excluding them would make
`TYPE_CHECKING` a way to hide a cycle from this test.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Folders holding import packages, relative to the repository root. The client package
# moves from client/ to clients/python/edgesam_client/; whichever exists is checked.
PACKAGE_DIRS = (
    "engine",
    "service",
    "client",
    "clients/python/edgesam_client",
)


def find_modules(root: Path, package_dirs: tuple[str, ...]) -> dict[str, Path]:
    """Dotted module name -> source file, for every package folder present under root."""
    modules: dict[str, Path] = {}
    for folder in package_dirs:
        base = root / folder
        if not (base / "__init__.py").is_file():
            continue
        for path in sorted(base.rglob("*.py")):
            parts = [base.name, *path.relative_to(base).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _deepest(name: str, modules: dict[str, Path]) -> str | None:
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> dict[str, int]:
    """The modules of ours that `name` imports anywhere in its source -> first line."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: dict[str, int] = {}

    def add(target: str | None, line: int) -> None:
        if target is not None and target != name:
            found.setdefault(target, line)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(_deepest(alias.name, modules), node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            for alias in node.names:
                full = f"{base}.{alias.name}"
                add(full if full in modules else _deepest(base, modules), node.lineno)
    return found


def import_graph(root: Path, package_dirs: tuple[str, ...]) -> dict[str, dict[str, int]]:
    modules = find_modules(root, package_dirs)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; the components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def describe(component: list[str], graph: dict[str, dict[str, int]]) -> str:
    """The component's internal edges, `a -> b (line n)`, one per line."""
    members = set(component)
    lines = [
        f"    {src} -> {dst} (line {line})"
        for src in component
        for dst, line in sorted(graph[src].items())
        if dst in members
    ]
    return "cycle among " + ", ".join(component) + ":\n" + "\n".join(lines)


def test_the_graph_covers_our_packages() -> None:
    graph = import_graph(ROOT, PACKAGE_DIRS)
    assert "engine" in graph and "service" in graph
    assert any(name in graph for name in ("client", "edgesam_client"))
    assert "engine.backends.base" in graph["engine.backends.torch_backend"]


def test_no_import_cycles() -> None:
    graph = import_graph(ROOT, PACKAGE_DIRS)
    cycles = strongly_connected(graph)
    assert not cycles, "\n".join(describe(c, graph) for c in cycles)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import pkg.a\n", {"pkg.a"}),
        ("from pkg import a\n", {"pkg.a"}),
        ("from . import a\n", {"pkg.a"}),
        ("from .a import thing\n", {"pkg.a"}),
        ("from .sub import c\n", {"pkg.sub.c"}),
        ("from pkg import name_in_init\n", {"pkg"}),
        ("def f():\n    from pkg.a import x\n", {"pkg.a"}),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.a\n", {"pkg.a"}),
        ("import os\nimport pkgx\n", set()),
    ],
)
def test_edges(tmp_path: Path, source: str, expected: set[str]) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    for rel in ("__init__.py", "a.py", "sub/__init__.py", "sub/c.py"):
        (pkg / rel).write_text("")
    (pkg / "b.py").write_text(source)
    assert set(import_graph(tmp_path, ("pkg",))["pkg.b"]) == expected


def test_a_cycle_through_a_lazy_import_is_found(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import g\n")
    (pkg / "b.py").write_text("def g():\n    from pkg import a\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    graph = import_graph(tmp_path, ("pkg",))
    assert strongly_connected(graph) == [["pkg.a", "pkg.b"]]
    assert "pkg.b -> pkg.a (line 2)" in describe(["pkg.a", "pkg.b"], graph)
