"""Layering, read from the source: `models` never imports `worker`, no import cycle, small repository modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Source folder -> the package it is installed as (pyproject's package-dir).
PACKAGES = {"oaksend": "oaksend", "worker": "oaksend.worker", "models": "oaksend.models",
            "migrations": "oaksend.migrations", "sandbox": "oaksend.sandbox"}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT)
    parts = [PACKAGES[rel.parts[0]], *rel.parts[1:]]
    parts[-1] = parts[-1].removesuffix(".py")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def sources() -> dict[str, Path]:
    return {module_name(p): p for folder in PACKAGES for p in (ROOT / folder).rglob("*.py")}


MODULES = sources()


def imports(path: Path, *, top_level_only: bool) -> set[str]:
    """oaksend modules `path` imports (absolute and relative), optionally only those run at import time."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    nodes: list[ast.AST]
    if top_level_only:
        nodes = []
        for stmt in tree.body:
            if isinstance(stmt, ast.If) and "TYPE_CHECKING" in ast.unparse(stmt.test):
                continue
            if isinstance(stmt, ast.Try | ast.If):
                nodes.extend(ast.walk(stmt))
            else:
                nodes.append(stmt)
    else:
        nodes = list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            # `from pkg import sub` imports the submodule `pkg.sub` when there is one.
            found.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES)
    return {name for name in found if name in MODULES}


def test_the_source_map_is_complete() -> None:
    assert {"oaksend", "oaksend.worker.enqueue", "oaksend.models.repository.enqueue", "oaksend.worker.status",
            "oaksend.sandbox.server", "oaksend.migrations.env"} <= set(MODULES)


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith("oaksend.models")))
def test_models_import_nothing_from_worker(name: str) -> None:
    # Function-level (lazy) imports count too: models must work without the service.
    offending = sorted(m for m in imports(MODULES[name], top_level_only=False) if m.startswith("oaksend.worker"))
    assert offending == [], f"{name} imports {offending}"


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
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

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return found


def test_no_import_cycle() -> None:
    graph = {name: imports(path, top_level_only=True) - {name} for name, path in MODULES.items()}
    assert cycles(graph) == []


def test_the_cycle_check_can_fail(tmp_path: Path) -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


@pytest.mark.parametrize("path", sorted((ROOT / "models" / "repository").glob("*.py")), ids=lambda p: p.name)
def test_repository_modules_stay_small(path: Path) -> None:
    assert len(path.read_text().splitlines()) <= 400


def test_every_subpackage_ships_in_the_wheel() -> None:
    """pyproject lists packages one by one: a new subpackage folder must be listed too."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    assert config["package-dir"] == {v: k for k, v in PACKAGES.items()}
    on_disk = {module_name(init) for folder in PACKAGES for init in (ROOT / folder).rglob("__init__.py")}
    on_disk.add("oaksend.migrations.versions")  # scripts only, no __init__.py: listed so they ship
    assert on_disk == listed
