"""The package's layers, read from its import statements: nothing points upward, nothing loops.

Layers, top to bottom: cli → run → services / download → ledger → domain
modules at the package root.  The ledger knows nothing of HTTP or files, the
download layer nothing of the ledger, the services nothing of HTTP; only the
CLI knows the run layer.  Ruff's banned-api rule keeps ``sqlalchemy`` and
``httpx`` in their layers; this test keeps docstokg's own modules in theirs.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

import docstokg

PACKAGE = Path(docstokg.__file__).parent

#: What each layer may not import (a module's layer is its first dotted part below docstokg).
FORBIDDEN: Mapping[str, frozenset[str]] = {
    "ledger": frozenset({"services", "download", "run", "cli", "testing"}),
    "migrations": frozenset({"services", "download", "run", "cli", "testing"}),
    "download": frozenset({"ledger", "services", "run", "cli", "testing"}),
    "services": frozenset({"download", "run", "cli", "testing"}),
    "run": frozenset({"cli", "testing"}),
    "testing": frozenset({"ledger", "services", "download", "run", "cli"}),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> Iterator[str]:
    """The docstokg modules ``path`` imports, at any depth of its code (lazy imports count)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] == "docstokg":
                yield node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.split(".")[0] == "docstokg")


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        if "versions" in path.parts:
            continue
        name = _module_name(path)
        graph[name] = {m for m in _imports(path) if m != name}
    return graph


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and _is_package(parts[1])) else "root"


def _is_package(name: str) -> bool:
    return (PACKAGE / name / "__init__.py").exists()


def _cycle_from(graph: Mapping[str, set[str]], start: str) -> list[str] | None:
    """A path start → … → start through modules of different packages' inits, if any."""
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    seen: set[str] = set()
    while stack:
        module, path = stack.pop()
        for target in sorted(graph.get(module, ())):
            if target == start:
                return [*path, start]
            if target not in seen and target in graph:
                seen.add(target)
                stack.append((target, [*path, target]))
    return None


def _without_package_inits(graph: Mapping[str, set[str]]) -> dict[str, set[str]]:
    """The graph with each package's ``__init__`` edge to its own modules dropped.

    A package's ``__init__`` re-exports its modules, and those modules import
    siblings through the package: that is how packages are read, not a loop.
    """
    return {
        module: {t for t in targets if not t.startswith(module + ".")}
        for module, targets in graph.items()
    }


def test_no_layer_imports_one_above_it_or_beside_it() -> None:
    wrong = [
        f"{module} imports {target}"
        for module, targets in import_graph().items()
        for target in targets
        if _layer(target) in FORBIDDEN.get(_layer(module), frozenset())
    ]
    assert wrong == []


def test_no_two_modules_import_each_other_even_through_others() -> None:
    graph = _without_package_inits(import_graph())
    cycles = [cycle for module in sorted(graph) if (cycle := _cycle_from(graph, module))]
    assert cycles == [], "\n".join(" → ".join(cycle) for cycle in cycles)


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"docstokg.a": {"docstokg.b"}, "docstokg.b": {"docstokg.a"}}, True),
        ({"docstokg.a": {"docstokg.b"}, "docstokg.b": {"docstokg.c"}, "docstokg.c": set()}, False),
    ],
)
def test_the_cycle_finder_finds_a_loop_and_only_a_loop(
    graph: dict[str, set[str]], expected: bool
) -> None:
    assert (_cycle_from(graph, "docstokg.a") is not None) is expected
