"""The import graph, built from the source: no cycles, and imports only downward (tiledcorr.layers)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tiledcorr.layers import LAYERS, STANDALONE

ROOT = Path(__file__).resolve().parents[1] / "tiledcorr"


def module_name(path: Path) -> str:
    parts = ("tiledcorr", *path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in ROOT.rglob("*.py")}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The tiledcorr modules ``name`` imports, anywhere in the file (functions included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # ``from pkg import sub`` imports the submodule; ``from pkg import name`` the package.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # ``import tiledcorr.x.y`` -> the module that exists
                target = target.rpartition(".")[0]
            if target.startswith("tiledcorr") and target != name:
                found.add(target)
                # Importing a subpackage's module runs that subpackage's __init__ too.
                parent = target.rpartition(".")[0]
                if parent not in ("tiledcorr", "") and parent != package and not name.startswith(parent + "."):
                    found.add(parent)
    return found


def component(name: str) -> str:
    """``tiledcorr.planning.planner`` -> ``planning``; ``tiledcorr`` -> ``__init__``."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer_index() -> dict[str, int]:
    return {c: i for i, layer in enumerate(LAYERS) for c in layer}


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Imports against the declared order, and imports by the standalone modules."""
    index, problems = layer_index(), []
    for source, targets in sorted(graph.items()):
        src = component(source)
        if src not in index:
            problems.append(f"{source}: component {src!r} is in no layer of tiledcorr.layers")
            continue
        for target in sorted(targets):
            dst = component(target)
            if src in STANDALONE:
                problems.append(f"{source} imports {target}, but {src} must import nothing of tiledcorr")
            elif dst != src and index.get(dst, len(LAYERS)) >= index[src]:
                problems.append(f"{source} ({src}, layer {index[src]}) imports {target} ({dst}, layer {index.get(dst)})")
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle found by a depth-first search (each reported once, from where it was entered)."""
    found, state = [], {}
    for start in sorted(graph):
        stack = [(start, iter(sorted(graph.get(start, ()))))]
        path, state[start] = [start], "open"
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop(), path.pop()
                state[node] = "done"
            elif state.get(child) == "open":
                found.append(path[path.index(child):] + [child])
            elif child not in state:
                state[child] = "open"
                stack.append((child, iter(sorted(graph.get(child, ())))))
                path.append(child)
    return found


def build_graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def test_no_import_cycles():
    graph = build_graph()
    # The package's own __init__ imports everything (it is the public namespace) and every module's
    # import runs it first; leave it out of cycle detection, as Python does once it has started.
    graph = {k: {t for t in v if t != "tiledcorr"} for k, v in graph.items()}
    assert cycles(graph) == []


def test_imports_follow_the_declared_layers():
    assert violations(build_graph()) == []


def test_every_component_is_declared():
    declared = set(layer_index())
    assert {component(name) for name in modules()} <= declared


def test_the_checks_can_fail():
    """The graph checks report a cycle, an upward import and an import by the reference."""
    assert cycles({"tiledcorr.a": {"tiledcorr.b"}, "tiledcorr.b": {"tiledcorr.a"}}) == [
        ["tiledcorr.a", "tiledcorr.b", "tiledcorr.a"]]
    assert violations({"tiledcorr.planning.planner": {"tiledcorr.execution.engine"}})
    assert violations({"tiledcorr.reference": {"tiledcorr.errors"}})
    assert not violations({"tiledcorr.execution.engine": {"tiledcorr.planning.planner"}})


def test_function_level_imports_are_seen(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text("def f():\n    from .planning import planner\n")
    known = {"tiledcorr.planning", "tiledcorr.planning.planner", "tiledcorr.mod"}
    assert "tiledcorr.planning.planner" in imports_of("tiledcorr.mod", source, known)


@pytest.mark.parametrize("name", ["tiledcorr.planning.planner", "tiledcorr.planning.registry"])
def test_the_planner_imports_nothing_that_executes(name):
    graph = build_graph()
    executing = ("execution", "strategies", "reductions", "library", "ops")
    assert not [t for t in graph[name] if component(t) in executing]
