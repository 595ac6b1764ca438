"""The package's import structure: no import cycles between modules, and the shared layers (``models``,
``runtime``) import nothing from ``methods``."""

from __future__ import annotations

import ast
from pathlib import Path

import dyninfer

ROOT = Path(dyninfer.__file__).parent


def _module(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, *, top_level_only: bool) -> set[str]:
    """Modules of the package that ``path`` imports (at module level only, or anywhere)."""
    tree = ast.parse(path.read_text())
    pkg = _module(path) if path.name == "__init__.py" else _module(path).rpartition(".")[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("dyninfer"):
                for alias in node.names:  # `from . import x` may name a submodule
                    sub = f"{target}.{alias.name}"
                    out.add(sub if (ROOT.parent / sub.replace(".", "/")).with_suffix(".py").exists()
                            or (ROOT.parent / sub.replace(".", "/")).is_dir() else target)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("dyninfer")}
    return out


def _graph(top_level_only: bool) -> dict[str, set[str]]:
    return {_module(p): _imports(p, top_level_only=top_level_only) for p in ROOT.rglob("*.py")}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every back edge of a depth-first search, as the cycle it closes."""
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph or nxt == node:
                continue
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif state.get(nxt) is None:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
    return cycles


def test_no_import_cycles_between_modules():
    assert _cycles(_graph(top_level_only=True)) == []


def test_the_cycle_finder_finds_cycles():
    graph = _graph(top_level_only=True)
    graph["dyninfer.runtime.cost"] = graph["dyninfer.runtime.cost"] | {"dyninfer.methods.base"}
    assert _cycles(graph)
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_models_and_runtime_import_nothing_from_methods():
    for layer in ("models", "runtime"):
        for p in (ROOT / layer).rglob("*.py"):
            bad = {m for m in _imports(p, top_level_only=False) if m.startswith("dyninfer.methods")}
            assert not bad, f"{p.relative_to(ROOT)} imports {bad}"


def test_the_graph_is_read_correctly():
    graph = _graph(top_level_only=True)
    assert "dyninfer.runtime.cost" in graph["dyninfer.runtime.sequential"] or \
        "dyninfer.runtime.base" in graph["dyninfer.runtime.sequential"]
    assert "dyninfer.methods.base" in graph["dyninfer.methods.cascade.method"]
