"""The layering of ``src/jidoka``: no import cycle between its packages, none between its modules.

The graph is read from the source with :mod:`ast`, so it sees every import: at the top of a
module, inside a function (a lazy import is still a dependency), and under ``TYPE_CHECKING``
(a type that crosses packages both ways means the two packages are one idea, or the type lives in
the wrong one). A node of the package graph is a subpackage (``session``, ``tools``, ...) or a
top-level module (``config``, ``errors``, ...). Between modules only imports that run are
counted: a ``TYPE_CHECKING`` import between two modules of one package is how a type annotation
names its caller, and costs nothing at import time. Top-level modules are modules of one package
(``jidoka``), so between two of them, too, only imports that run make an edge.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import jidoka

SRC = Path(jidoka.__file__).parent
ROOT = "jidoka"


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = (ROOT, *path.relative_to(SRC).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _type_checking_blocks(tree: ast.Module) -> set[int]:
    """Ids of the import nodes inside ``if TYPE_CHECKING:`` blocks."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                inside.update(id(sub) for sub in ast.walk(child))
    return inside


def _imports(module: str, *, runtime_only: bool) -> Iterator[str]:
    """The jidoka modules ``module`` imports (a name imported from a package counts as the
    submodule of that name if there is one, else as the package)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_blocks(tree) if runtime_only else set()
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name in MODULES)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                if submodule in MODULES:
                    yield submodule
                elif target in MODULES:
                    yield target


def _node(module: str) -> str:
    """The package-graph node of a module: its top-level subpackage or module, or the root."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ROOT


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def _witnesses(cycle: list[str], edges: dict[tuple[str, str], list[str]]) -> list[str]:
    members = set(cycle)
    return sorted(
        f"{a} -> {b}: {', '.join(sorted(set(how)))}"
        for (a, b), how in edges.items()
        if a in members and b in members
    )


def test_the_graph_sees_the_packages() -> None:
    """A guard on the walker itself: a graph that missed the imports would find no cycle."""
    graph = _package_graph()[0]
    assert {"session", "tools", "llm", "config", "store", "bus", "server"} <= set(graph)
    assert "config" in graph["session"]
    assert "tools" in graph["llm"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _package_graph() -> tuple[dict[str, set[str]], dict[tuple[str, str], list[str]]]:
    graph: dict[str, set[str]] = {}
    edges: dict[tuple[str, str], list[str]] = {}
    for module in MODULES:
        source = _node(module)
        graph.setdefault(source, set())
        runs = set(_imports(module, runtime_only=True))
        for target in _imports(module, runtime_only=False):
            dest = _node(target)
            # Two top-level modules are modules of one package (jidoka): between them, as
            # between any two modules of a package, only an import that runs makes an edge.
            if target not in runs and module.count(".") == 1 and target.count(".") == 1:
                continue
            if dest != source:
                graph[source].add(dest)
                edges.setdefault((source, dest), []).append(f"{module} imports {target}")
    return graph, edges


def test_no_cycle_between_packages() -> None:
    graph, edges = _package_graph()
    cycles = _cycles(graph)
    assert not cycles, "import cycles between packages:\n" + "\n".join(
        line for cycle in cycles for line in _witnesses(cycle, edges)
    )


def test_no_cycle_between_modules_at_import_time() -> None:
    graph: dict[str, set[str]] = {}
    edges: dict[tuple[str, str], list[str]] = {}
    for module in MODULES:
        for target in _imports(module, runtime_only=True):
            # A module imports its own package's __init__ first anyway; that is not a cycle.
            if target != module and not module.startswith(target + "."):
                graph.setdefault(module, set()).add(target)
                edges.setdefault((module, target), []).append("imports")
    cycles = _cycles(graph)
    assert not cycles, "import cycles between modules:\n" + "\n".join(
        line for cycle in cycles for line in _witnesses(cycle, edges)
    )
