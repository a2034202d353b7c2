"""The package's imports go one way: no cycle among pyro_vae's modules, counting imports made
inside functions as well as at the top of a module."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "pyro_vae"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports anywhere in its source (``from pyro_vae import
    a`` counts as importing the submodule ``pyro_vae.a`` where one exists, else the package)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                    and node.module.split(".")[0] == "pyro_vae":
                submodules = {f"{node.module}.{a.name}" for a in node.names} & modules.keys()
                graph[name] |= submodules
                if len(submodules) < len(node.names) and node.module in modules:
                    graph[name].add(node.module)
            elif isinstance(node, ast.Import):
                graph[name] |= {a.name for a in node.names if a.name in modules}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_package_import_graph_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 30 and "pyro_vae.training" in graph["pyro_vae"]
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_training_loop_and_the_commands_name_no_model_kind():
    """A kind supplies hooks and capabilities; the loop, the summary and the commands call
    them and never compare ``kind`` with a built-in kind's name."""
    from pyro_vae.registry import MODEL_KINDS

    kinds = set(MODEL_KINDS.choices())
    files = [PACKAGE / "training.py", PACKAGE / "summary.py", PACKAGE / "fitting.py",
             *PACKAGE.glob("cli*.py"), *PACKAGE.glob("cli/*.py")]
    named = {f"{path.name}:{node.lineno}: {node.value!r}"
             for path in files for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
             if isinstance(node, ast.Constant) and node.value in kinds}
    assert len(files) >= 5 and not named, sorted(named)
