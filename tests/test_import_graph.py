"""No import cycles in src/fbrs (issue 15), checked on the source with `ast`, so nothing is imported.

Two levels:
* modules: every import counts, the ones inside functions too (a lazy import that closes a cycle is still a
  cycle: it only moves the failure to the first call). `if TYPE_CHECKING:` blocks are ignored.
* packages (fbrs.models, fbrs.inference, ...): the sub-packages form layers, and no import goes against them;
  the command-line modules (`*/cli.py`, `fbrs.cli`) are the entry points on top and may import any layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _modules() -> dict[str, tuple[Path, bool]]:
    modules = {}
    for path in (SRC / "fbrs").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        modules[".".join(parts)] = (path, is_package)
    return modules


def _imported(module: str, is_package: bool, node: ast.Import | ast.ImportFrom, known: set[str]) -> set[str]:
    """The fbrs modules an import statement loads (`from a import b` loads a, and a.b if b is a module)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = module.split(".") if is_package else module.split(".")[:-1]
        if node.level > 1:
            base = base[: len(base) - (node.level - 1)]
        elif node.level == 0:
            base = []
        target = ".".join(base + ([node.module] if node.module else []))
        names = [target] + [f"{target}.{alias.name}" for alias in node.names]
    return {name for name in names if name in known}


def _imports_in(node: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement under `node`, in functions too, except in `if TYPE_CHECKING:` blocks."""
    found: list[ast.Import | ast.ImportFrom] = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            found.append(child)
        elif not (isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test)):
            found.extend(_imports_in(child))
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the fbrs modules it imports anywhere in its body (functions included, TYPE_CHECKING not)."""
    modules = _modules()
    known = set(modules)
    graph: dict[str, set[str]] = {}
    for module, (path, is_package) in modules.items():
        found: set[str] = set()
        for statement in _imports_in(ast.parse(path.read_text(encoding="utf-8"))):
            found.update(_imported(module, is_package, statement, known))
        # A module imports its parent packages implicitly; that is not an edge of a cycle we can remove.
        graph[module] = {name for name in found if name != module and not module.startswith(name + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in graph.get(node, ()):
            if successor not in index:
                connect(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
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
            connect(node)
    return found


def _layer(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def test_no_module_import_cycle() -> None:
    assert cycles(import_graph()) == []


def test_no_package_import_cycle() -> None:
    packages: dict[str, set[str]] = {}
    for module, imported in import_graph().items():
        if module == "fbrs.cli" or module.endswith(".cli") or module == "fbrs":
            continue  # entry points and the public facade sit above every layer
        for name in imported:
            if _layer(name) != _layer(module):
                packages.setdefault(_layer(module), set()).add(_layer(name))
    assert cycles(packages) == []


def test_the_checker_sees_cycles() -> None:
    """The checker itself: a known cycle is found, a chain is not."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    graph = import_graph()
    assert "fbrs.inference.predictor" in graph and graph["fbrs.inference.predictor"]  # it parsed real imports
