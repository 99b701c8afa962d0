"""The package's layers, read from its own imports: no part imports one above it, and no loops.

The layers, bottom to top (docs/python-api.md shows the same list). A part may import parts of
its own layer or below; among the parts of one layer, and among the modules of one part, the
imports must not go round in a circle. Imports under ``if TYPE_CHECKING:`` are annotations only
and are not counted; imports inside functions are.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "diffmas"

LAYERS: list[set[str]] = [
    {"errors", "config", "prompts", "rundir", "logs"},
    {"options", "agents", "sandbox", "tasks", "kernels"},
    {"models", "kv_trace"},
    {"engine"},
    {"decoding", "latent"},
    {"adapters", "checkpoint"},
    {"methods"},
    {"records"},
    {"train", "evaluate"},
    {"report"},
    {"compare", "demo", "lm_eval_adapter", "api"},
    {"cli", "__main__"},
]
LAYER = {part: i for i, parts in enumerate(LAYERS) for part in parts}


def _modules() -> dict[str, Path]:
    """Dotted module name (``diffmas.methods.base``; a package by its own name) -> file."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ("diffmas",) + path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports_of(name: str) -> set[str]:
    """The package's modules that module ``name`` imports (``from pkg import sub`` names pkg.sub)."""
    tree = ast.parse(MODULES[name].read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if _type_checking_only(node, parents):
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        out |= {t for t in targets if t in MODULES and t != name}
    return out


def part(name: str) -> str:
    return name.split(".")[1] if name.count(".") else name


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_every_part_has_a_layer():
    parts = {part(m) for m in MODULES if m != "diffmas"}
    assert parts - set(LAYER) == set(), "add the new part of the package to LAYERS (and docs/python-api.md)"
    assert set(LAYER) - parts == set(), "LAYERS names a part the package no longer has"


def test_no_import_points_upward():
    upward = []
    for name in MODULES:
        if name == "diffmas":
            continue
        for target in imports_of(name):
            if target != "diffmas" and LAYER[part(target)] > LAYER[part(name)]:
                upward.append(f"{name} imports {target}")
    assert upward == []


def test_parts_do_not_import_in_a_circle():
    graph: dict[str, set[str]] = {}
    for name in MODULES:
        if name != "diffmas":
            graph.setdefault(part(name), set()).update(
                part(t) for t in imports_of(name) if t != "diffmas" and part(t) != part(name)
            )
    assert _cycle(graph) is None


def test_modules_do_not_import_in_a_circle():
    # A package's __init__ re-exports its modules; imports of the package itself are left out.
    graph = {
        name: {t for t in imports_of(name) if MODULES[t].name != "__init__.py"}
        for name in MODULES
        if MODULES[name].name != "__init__.py"
    }
    assert _cycle(graph) is None


@pytest.mark.parametrize("bad", [{"a": {"b"}, "b": {"c"}, "c": {"a"}}, {"a": {"a"}}])
def test_the_cycle_check_finds_cycles(bad):
    assert _cycle(bad) is not None
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
