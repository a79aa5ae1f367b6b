"""Imports run one way: consumers -> store -> worker, and inside worker from the running core up
to the commands. Every module of the three packages belongs to one layer below; a module may
import its own layer's modules and any lower layer's, never a higher one nor a sibling of the same
rank. Imports inside functions and under TYPE_CHECKING count too: a lazy import is still an arrow.
A new module must be placed in LAYERS, so where it sits is a decision, not an accident.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("consumers", "store", "worker")

# (layer, rank, module prefixes). Lower ranks are imported by higher ones, never the reverse;
# layers of one rank do not import each other.
LAYERS: tuple[tuple[str, int, tuple[str, ...]], ...] = (
    ("consumers", 0, ("consumers",)),
    ("store", 1, ("store",)),
    ("worker core", 2, ("worker.exit_codes", "worker.logs", "worker.timeparse",
                        "worker.yaml_files", "worker.signals", "worker.settings")),
    ("rules", 3, ("worker.rules",)),
    ("report rendering", 3, ("worker.report",)),
    ("curation", 4, ("worker.curation",)),
    ("running worker", 4, ("worker.loop", "worker.tag_writer", "worker.maintenance")),
    ("wiring", 5, ("worker.app",)),
    ("http", 5, ("worker.serve",)),
    ("demo", 6, ("worker.demo",)),
    ("cli", 7, ("worker.cli",)),
    ("entry points", 8, ("worker", "worker.__main__")),
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> tuple[str, int] | None:
    """The layer of the longest matching prefix (``worker`` alone is the package's own
    ``__init__``, not everything below it)."""
    best: tuple[str, int, str] | None = None
    for name, rank, prefixes in LAYERS:
        for prefix in prefixes:
            exact_only = prefix == "worker"
            hit = module == prefix or (not exact_only and module.startswith(prefix + "."))
            if hit and (best is None or len(prefix) > len(best[2])):
                best = (name, rank, prefix)
    return None if best is None else (best[0], best[1])


def imported(source: str) -> Iterator[str]:
    """Every module of our packages that ``source`` imports, anywhere in the file. For
    ``from a.b import c`` that is ``a.b.c`` when ``c`` is a module, else ``a.b``: both are
    yielded and the caller keeps the names that are modules."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        else:
            continue
        yield from (n for n in names if n.split(".")[0] in PACKAGES)


def problems(module: str, targets: set[str], known: set[str]) -> list[str]:
    """What is wrong with ``module`` importing ``targets`` (module names; others ignored)."""
    mine = layer_of(module)
    if mine is None:
        return [f"{module} is in no layer: place it in LAYERS"]
    out = []
    for target in sorted(t for t in targets if t in known and t != module):
        theirs = layer_of(target)
        if theirs is None:
            continue  # reported as the target's own problem
        if theirs[1] > mine[1] or (theirs[1] == mine[1] and theirs[0] != mine[0]):
            out.append(f"{module} ({mine[0]}) imports {target} ({theirs[0]})")
    return out


def tree() -> dict[str, set[str]]:
    graph = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            graph[module_name(path)] = set(imported(path.read_text()))
    return graph


def test_imports_run_one_way() -> None:
    graph = tree()
    assert len(graph) > 60  # the walk found the packages
    known = set(graph)
    found = [p for module, targets in sorted(graph.items())
             for p in problems(module, targets, known)]
    assert found == []


@pytest.mark.parametrize(("module", "target"), [
    ("consumers.formats", "store.models"),
    ("store.metrics", "worker.settings"),
    ("worker.rules.engine", "worker.loop"),
    ("worker.loop", "worker.curation.curator"),
    ("worker.app", "worker.cli.main"),
    ("worker.settings", "worker.rules.engine"),
])
def test_an_upward_or_sideways_import_is_reported(module: str, target: str) -> None:
    """The check can fail: each of these arrows, added to the real tree, is reported."""
    assert problems(module, {target}, {module, target}) != []


def test_a_module_outside_every_layer_is_reported() -> None:
    assert problems("worker.newthing", set(), set()) == [
        "worker.newthing is in no layer: place it in LAYERS"]
