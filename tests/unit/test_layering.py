"""Layering, read from the source: which module may import which, and how big a module may grow.

Imports are read with `ast`, at every depth: top-level, inside functions (lazy), under
TYPE_CHECKING, and the strings given to `__import__` / `importlib.import_module`. The
rules (each test below): no import cycle, lazy imports included; `models` imports nothing
from `worker`; the pure modules import no database, broker or HTTP library, directly or
through the oaksend modules they load; only `newoaks` talks HTTP, and only its client
imports httpx; no module imports another's underscore name; the dispatcher publishes by
task name without loading the send stack; no module above 400 lines, no function above 80.

The checks take the source root as an argument, so the tests at the end plant each kind
of violation in a copy of the tree and watch the check fail.
"""

from __future__ import annotations

import ast
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Source folder -> the package it is installed as (pyproject's package-dir).
PACKAGES = {"oaksend": "oaksend", "worker": "oaksend.worker", "models": "oaksend.models",
            "migrations": "oaksend.migrations", "sandbox": "oaksend.sandbox"}

#: Pure: decisions and values, no I/O. Packages stand for every module in them.
PURE = ("oaksend.worker.message", "oaksend.worker.delivery.classify", "oaksend.worker.delivery.transition",
        "oaksend.worker.delivery.backoff", "oaksend.worker.delivery.fairness", "oaksend.worker.campaigns.schedule",
        "oaksend.worker.campaigns.plan", "oaksend.worker.campaigns.template", "oaksend.worker.newoaks.envelope",
        "oaksend.worker.newoaks.outcome", "oaksend.worker.newoaks.endpoint", "oaksend.models.records",
        "oaksend.models.fit")
#: Libraries a pure module never loads.
IMPURE_LIBRARIES = ("httpx", "httpcore", "h11", "redis", "sqlalchemy", "celery", "kombu", "psycopg", "alembic")
#: The HTTP stack: only newoaks' client imports it (httpx; nothing of ours below its client API).
HTTP_LIBRARIES = ("httpx", "httpcore", "h11")
#: The two outside ports that speak HTTP: the NewOaks API, and the status webhooks' receivers (issue 22).
HTTP_HOMES = {"oaksend.worker.newoaks.client", "oaksend.worker.webhooks.client"}
HTTPX_HOME = "oaksend.worker.newoaks.client"
#: Modules the process that only publishes (the dispatcher) must never load.
SEND_STACK = ("oaksend.worker.delivery.sender", "oaksend.worker.newoaks.client", "oaksend.worker.delivery.classify")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


@dataclass(frozen=True)
class Import:
    """One import of a module: where it is (line), whether it runs when the importer is loaded."""

    target: str
    line: int
    top_level: bool
    names: tuple[str, ...] = ()


class Tree:
    """The oaksend source under `root` (a checkout, or a copy a test plants faults in)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.modules = {self.module_name(p): p for folder in PACKAGES for p in (root / folder).rglob("*.py")}
        self._imports: dict[str, list[Import]] = {}

    def module_name(self, path: Path) -> str:
        rel = path.relative_to(self.root)
        parts = [PACKAGES[rel.parts[0]], *rel.parts[1:]]
        parts[-1] = parts[-1].removesuffix(".py")
        if parts[-1] == "__init__":
            parts.pop()
        return ".".join(parts)

    def imports(self, name: str) -> list[Import]:
        """Every import `name` makes (oaksend modules and third-party packages alike)."""
        if name not in self._imports:
            self._imports[name] = list(self._read(name))
        return self._imports[name]

    def _read(self, name: str) -> list[Import]:
        path = self.modules[name]
        tree = ast.parse(path.read_text(), filename=str(path))
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        top = _top_level_nodes(tree)
        found: list[Import] = []
        for node in ast.walk(tree):
            runs = id(node) in top
            if isinstance(node, ast.Import):
                found += [Import(alias.name, node.lineno, runs) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                names = tuple(alias.name for alias in node.names)
                submodules = [f"{base}.{n}" for n in names if f"{base}.{n}" in self.modules]
                if submodules and len(submodules) == len(names):
                    # `from pkg import sub`: the submodule is what is imported (and pkg's __init__ runs).
                    found += [Import(sub, node.lineno, runs) for sub in submodules]
                    found.append(Import(base, node.lineno, runs))
                else:
                    found.append(Import(base, node.lineno, runs, names))
            elif isinstance(node, ast.Call) and _is_dynamic_import(node.func):
                first = node.args[0] if node.args else None
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    found.append(Import(first.value, node.lineno, runs))
        return found

    def oaksend_imports(self, name: str, *, top_level_only: bool) -> set[str]:
        return {i.target for i in self.imports(name)
                if i.target in self.modules and i.target != name and (i.top_level or not top_level_only)}

    def loads(self, name: str) -> set[str]:
        """The oaksend modules loading `name` runs (its top-level imports, transitively, with parent packages)."""
        seen: set[str] = set()
        todo = [name]
        while todo:
            current = todo.pop()
            if current in seen:
                continue
            seen.add(current)
            todo += self.oaksend_imports(current, top_level_only=True)
            todo += [p for p in _parents(current) if p in self.modules]
        return seen


def _top_level_nodes(tree: ast.Module) -> set[int]:
    """ids of the nodes that run when the module is imported (not in functions, not under TYPE_CHECKING)."""
    top: set[int] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            return
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        top.add(id(node))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return top


def _is_dynamic_import(func: ast.expr) -> bool:
    if isinstance(func, ast.Name):
        return func.id in {"__import__", "import_module"}
    return isinstance(func, ast.Attribute) and func.attr == "import_module"


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _in(name: str, prefixes: tuple[str, ...] | set[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


# -- the checks: each returns what is wrong, [] when nothing is ------------------------------------
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


def import_cycles(tree: Tree) -> list[list[str]]:
    """Cycles among oaksend modules, lazy imports included. A package's `__init__` importing its
    own submodules is how a package is built, not a cycle: those edges are left out."""
    graph = {name: {t for t in tree.oaksend_imports(name, top_level_only=False) if not _in(name, {t})}
             for name in tree.modules}
    return cycles(graph)


def models_importing_worker(tree: Tree) -> list[str]:
    return [f"{name} imports {i.target} (line {i.line})" for name in sorted(tree.modules)
            if name.startswith("oaksend.models") for i in tree.imports(name) if _in(i.target, {"oaksend.worker"})]


def impure_pure_modules(tree: Tree) -> list[str]:
    """Pure modules that import a database, broker or HTTP library, or load an oaksend module that does."""
    out = []
    for name in sorted(n for n in tree.modules if _in(n, PURE)):
        for loaded in sorted(tree.loads(name)):
            for i in tree.imports(loaded):
                if i.top_level and _in(i.target, IMPURE_LIBRARIES):
                    via = "" if loaded == name else f" through {loaded}"
                    out.append(f"{name} loads {i.target}{via}")
    return out


def http_outside_newoaks(tree: Tree) -> list[str]:
    """The service's HTTP is newoaks' (the sandbox, a separate fake server, has its own)."""
    out = []
    for name in sorted(n for n in tree.modules if not _in(n, {"oaksend.sandbox"})):
        for i in tree.imports(name):
            if _in(i.target, HTTP_LIBRARIES) and name not in HTTP_HOMES:
                out.append(f"{name} imports {i.target} (line {i.line}): only newoaks' client talks HTTP")
            elif _in(i.target, {"httpx"}) and name not in HTTP_HOMES:
                out.append(f"{name} imports httpx (line {i.line}): only {HTTPX_HOME} does")
    return out


def underscore_imports(tree: Tree) -> list[str]:
    """`from oaksend.x import _private` across modules (a module's own names are its business)."""
    return [f"{name} imports {i.target}.{n} (line {i.line})" for name in sorted(tree.modules)
            for i in tree.imports(name) if _in(i.target, {"oaksend"})
            for n in i.names if n.startswith("_") and not n.startswith("__")]


def send_stack_in_publisher(tree: Tree) -> list[str]:
    return [f"{publisher} loads {m}" for publisher in ("oaksend.worker.delivery.dispatcher", "oaksend.worker.delivery.app")
            for m in sorted(tree.loads(publisher)) if m in SEND_STACK]


def oversized(tree: Tree) -> list[str]:
    out = []
    for name, path in sorted(tree.modules.items()):
        if ".versions." in name:
            continue
        text = path.read_text()
        if (lines := len(text.splitlines())) > MAX_MODULE_LINES:
            out.append(f"{name}: {lines} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    out.append(f"{name}.{node.name}: {length} lines")
    return out


CHECKS = [import_cycles, models_importing_worker, impure_pure_modules, http_outside_newoaks, underscore_imports,
          send_stack_in_publisher, oversized]

# -- on the source ---------------------------------------------------------------------------------
TREE = Tree(ROOT)


def test_the_source_map_is_complete() -> None:
    assert {"oaksend", "oaksend.worker.enqueue", "oaksend.models.repository.enqueue", "oaksend.worker.status",
            "oaksend.sandbox.server", "oaksend.migrations.env", "oaksend.worker.delivery.task",
            "oaksend.worker.newoaks.client"} <= set(TREE.modules)
    for pure in PURE:
        assert any(_in(m, {pure}) for m in TREE.modules), f"{pure} is listed as pure but does not exist"


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_the_source_keeps_its_layers(check: object) -> None:
    assert check(TREE) == []  # type: ignore[operator]


def test_the_cycle_check_can_fail() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_every_subpackage_ships_in_the_wheel() -> None:
    """pyproject lists packages one by one: a new subpackage folder must be listed too."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    assert config["package-dir"] == {v: k for k, v in PACKAGES.items()}
    on_disk = {TREE.module_name(init) for folder in PACKAGES for init in (ROOT / folder).rglob("__init__.py")}
    on_disk.add("oaksend.migrations.versions")  # scripts only, no __init__.py: listed so they ship
    assert on_disk == listed


# -- each check fails on a planted fault -----------------------------------------------------------
@pytest.fixture(scope="module")
def copy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("src")
    for folder in PACKAGES:
        shutil.copytree(ROOT / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def _plant(root: Path, rel: str, code: str) -> Tree:
    """The tree with `code` appended to the file `rel` (restored by the caller's fixture copy)."""
    path = root / rel
    path.write_text(path.read_text() + "\n\n" + code + "\n")
    return Tree(root)


@pytest.fixture
def planted(copy_root: Path) -> object:
    saved = {p: p.read_text() for p in copy_root.rglob("*.py")}
    yield copy_root
    for p, text in saved.items():
        p.write_text(text)


PLANTS = [
    # a cycle at the top level: the classifier importing the code that applies its decisions
    ("worker/delivery/classify.py", "from oaksend.worker.delivery.transition import plan", import_cycles,
     "oaksend.worker.delivery.classify"),
    # a lazy back-import, hidden in a function
    ("worker/settings.py", "def _late():\n    from oaksend.worker.enqueue import Producer\n    return Producer",
     import_cycles, "oaksend.worker.settings"),
    # the same through an import string
    ("worker/keys.py", "def _late():\n    return __import__('oaksend.worker.settings', fromlist=['x'])",
     import_cycles, "oaksend.worker.keys"),
    ("models/tables.py", "def _late():\n    import oaksend.worker.settings\n", models_importing_worker,
     "oaksend.models.tables"),
    ("worker/campaigns/template.py", "import sqlalchemy", impure_pure_modules, "oaksend.worker.campaigns.template"),
    # impure through another oaksend module
    ("worker/delivery/backoff.py", "from oaksend.worker.clock import utcnow\nfrom oaksend.models.db import make_engine",
     impure_pure_modules, "through oaksend.models.db"),
    ("worker/status.py", "import httpx", http_outside_newoaks, "oaksend.worker.status"),
    ("worker/enqueue.py", "from oaksend.worker.message.validation import _priority", underscore_imports,
     "_priority"),
    ("worker/delivery/task.py", "from oaksend.worker.delivery.sender import Sender", send_stack_in_publisher,
     "oaksend.worker.delivery.sender"),
    ("worker/clock.py", "def big():\n" + "    x = 1\n" * 90, oversized, "oaksend.worker.clock.big"),
]


@pytest.mark.parametrize(("rel", "code", "check", "named"), PLANTS,
                         ids=[f"{p[2].__name__}:{p[0]}" for p in PLANTS])
def test_a_planted_fault_is_found(planted: Path, rel: str, code: str, check: object, named: str) -> None:
    assert check(Tree(planted)) == []  # type: ignore[operator]
    found = check(_plant(planted, rel, code))  # type: ignore[operator]
    assert found and any(named in str(f) for f in found), found
