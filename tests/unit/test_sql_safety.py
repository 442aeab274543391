"""SQL is parameterized everywhere: no query text in oaksend is built from values."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted(p for d in ("worker", "models", "migrations", "sandbox") for p in (ROOT / d).rglob("*.py"))
RAW_SQL_CALLS = {"text", "exec_driver_sql", "execute"}


def _name(func: ast.expr) -> str:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def _built(node: ast.expr) -> bool:
    """True when a string is assembled at run time (f-string, %, +, .format)."""
    if isinstance(node, ast.JoinedStr):
        return any(isinstance(v, ast.FormattedValue) for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mod, ast.Add)):
        return True
    if isinstance(node, ast.Call) and _name(node.func) == "format":
        return True
    return False


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_query_is_built_from_strings(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    offenders = [
        f"{path.name}:{node.lineno}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and _name(node.func) in RAW_SQL_CALLS and node.args and _built(node.args[0])
    ]
    assert offenders == []


def test_the_scan_sees_sources() -> None:
    assert any(p.parent.name == "repository" for p in SOURCES)
    bad = ast.parse('conn.execute(text(f"DELETE FROM t WHERE id = {x}"))')
    call = next(n for n in ast.walk(bad) if isinstance(n, ast.Call) and _name(n.func) == "text")
    assert _built(call.args[0])
