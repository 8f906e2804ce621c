"""headreg's modules import one another without cycles, counting imports inside functions too.

A cycle hidden in a function still ties two modules into one unit: neither can be understood, tested or
imported without the other, and the order they are first imported in decides what works. Shared formats and
helpers live in leaf modules instead (``saved``, ``isolation``, ``cli.output``).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "headreg"


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package's __init__)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_graph() -> dict[str, set[str]]:
    """Every headreg module -> the headreg modules it imports anywhere in its file (functions included).

    ``from . import x`` counts as importing the submodule ``x`` when there is one, else the package itself (a
    name read from a package's ``__init__``, such as ``from . import __version__``, depends on that package).
    Importing ``a.b.c`` also runs the packages ``a`` and ``a.b``; those count unless they contain the importer
    (a module's own parent packages are always imported before it, and are not an edge it chose).
    """
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        here = name.split(".") if is_package else name.split(".")[:-1]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = here[: len(here) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:
                    targets.add(f"{module}.{alias.name}" if f"{module}.{alias.name}" in modules else module)
        own = set(_ancestors(name))
        edges = set()
        for target in targets:
            while target and target not in modules:  # `import headreg.x.attr` style: the longest module prefix
                target = target.rpartition(".")[0]
            if target and target.split(".")[0] == "headreg":
                edges |= ({target} | set(_ancestors(target)) - own) - {name}
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
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
                    cycles.append(sorted(component))
    return cycles


def test_headreg_has_no_import_cycles():
    graph = import_graph()
    cycles = find_cycles(graph)
    described = [
        "; ".join(f"{module} -> {', '.join(sorted(graph[module] & set(cycle)))}" for module in cycle)
        for cycle in cycles
    ]
    assert not cycles, "import cycles in headreg/:\n" + "\n".join(described)


def test_the_cycle_finder_sees_function_level_and_relative_imports():
    """The graph is read from the real files: these edges exist only as relative imports inside functions."""
    graph = import_graph()
    assert "headreg.plugins" in graph["headreg.installed"]  # `from .plugins import get_registry` in a function
    assert "headreg.export.pipeline" in graph["headreg.cli.export"]  # `from ..export.pipeline import ...`
    assert "headreg.export" in graph["headreg.cli.export"]  # importing a submodule runs its package
    assert "headreg" not in graph["headreg.cli.export"]  # ... but a module's own parents are not its choice
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
