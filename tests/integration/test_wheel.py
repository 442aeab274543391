"""The built wheel, installed in a fresh venv, used from an application that has its own `worker.py`,
`models.py`, `sandbox.py`, `migrations/` and `alembic.ini`.

One wheel and one venv per test session. Packages come from a local wheelhouse
($OAKSEND_TEST_WHEELHOUSE, default ~/.cache/oaksend-tests/wheelhouse) so the test
runs offline once the wheelhouse is filled; it is filled from the package index
the first time (and whenever a dependency is missing).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import CHATBOT, REDIS_URL, ROOT, unavailable

pytestmark = pytest.mark.slow

WHEELHOUSE = Path(os.environ.get("OAKSEND_TEST_WHEELHOUSE", Path.home() / ".cache" / "oaksend-tests" / "wheelhouse"))
IGNORE = shutil.ignore_patterns(".venv", ".git", "__pycache__", "build", "dist", "*.egg-info", "var", ".pytest_cache",
                                ".hypothesis", "*.db", "*.db-*")


@dataclass
class Installed:
    wheel: Path
    venv: Path

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)


def run(args: list[str], cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s)


def offline_then_online(offline: list[str], fill: list[str]) -> subprocess.CompletedProcess[str]:
    """Try from the wheelhouse alone; if something is missing, fill the wheelhouse from the index and retry."""
    done = run(offline)
    if done.returncode == 0:
        return done
    filled = run(fill)
    if filled.returncode != 0:
        unavailable("the package index (to fill the test wheelhouse)", RuntimeError(filled.stderr.strip()[-300:]))
    return run(offline)


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    base = tmp_path_factory.mktemp("wheel")
    WHEELHOUSE.mkdir(parents=True, exist_ok=True)
    source = base / "src"
    shutil.copytree(ROOT, source, ignore=IGNORE)
    dist = base / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    built = offline_then_online(
        [*pip, "wheel", "--no-deps", "--no-index", "--find-links", str(WHEELHOUSE), "-w", str(dist), str(source)],
        [*pip, "download", "-d", str(WHEELHOUSE), "setuptools>=77"],
    )
    assert built.returncode == 0, built.stderr[-2000:]
    [wheel] = dist.glob("oaksend-*.whl")

    venv = base / "venv"
    made = run([sys.executable, "-m", "venv", str(venv)])
    assert made.returncode == 0, made.stderr
    vpip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    done = offline_then_online(
        [*vpip, "install", "--no-index", "--find-links", str(WHEELHOUSE), str(wheel)],
        [*vpip, "download", "-d", str(WHEELHOUSE), str(wheel)],
    )
    for stale in WHEELHOUSE.glob("oaksend-*.whl"):  # `pip download` copies the wheel itself in too
        stale.unlink()
    assert done.returncode == 0, done.stderr[-2000:]
    yield Installed(wheel, venv)


def test_the_wheels_only_top_level_package_is_oaksend(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as zf:
        names = zf.namelist()
    top = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
    assert top == {"oaksend"}
    for needed in ("oaksend/__init__.py", "oaksend/py.typed", "oaksend/worker/cli/__init__.py", "oaksend/models/repository/enqueue.py",
                   "oaksend/migrations/env.py", "oaksend/migrations/script.py.mako", "oaksend/sandbox/server.py",
                   "oaksend/web/templates/story.html", "oaksend/web/static/app.js", "oaksend/web/static/app.css"):
        assert needed in names
    assert any(n.startswith("oaksend/migrations/versions/") and n.endswith(".py") for n in names)
    assert not any(n.startswith("tests/") or n.startswith("bench/") for n in names)


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    """An application's checkout with modules and folders named like oaksend's source folders."""
    app = tmp_path / "app"
    (app / "migrations" / "versions").mkdir(parents=True)
    (app / "worker.py").write_text("WHO = 'the application worker'\n")
    (app / "models.py").write_text("WHO = 'the application models'\n")
    (app / "sandbox.py").write_text("WHO = 'the application sandbox'\n")
    (app / "migrations" / "__init__.py").write_text("")
    (app / "migrations" / "env.py").write_text("raise RuntimeError('the application env.py ran')\n")
    (app / "alembic.ini").write_text("[alembic]\nscript_location = migrations\n")
    return app


def test_an_application_migrates_enqueues_and_runs_the_cli(installed: Installed, app_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OAKSEND_", "NEWOAKS_", "PYTHON", "VIRTUAL_ENV")) and k not in {"DATABASE_URL",
                                                                                             "REDIS_URL"}}
    env.update(DATABASE_URL=f"sqlite:///{app_dir / 'app.db'}", REDIS_URL=REDIS_URL, PYTHONUNBUFFERED="1")

    migrated = run([installed.bin("oaksend"), "migrate"], cwd=app_dir, env=env)
    assert migrated.returncode == 0, migrated.stderr

    script = (
        "import worker, models, sandbox\n"
        "assert worker.WHO == 'the application worker', worker.__file__\n"
        "assert models.WHO == 'the application models' and sandbox.WHO == 'the application sandbox'\n"
        "import oaksend\n"
        "assert '/venv/' in oaksend.__file__, oaksend.__file__\n"
        "from oaksend import Producer, Status, load_settings\n"
        "settings = load_settings()\n"
        "producer = Producer(settings)\n"
        f"mid = producer.send({CHATBOT!r}, '+14155550123', 'from the application', idempotency_key='k1')\n"
        f"assert producer.send({CHATBOT!r}, '+14155550123', 'from the application', idempotency_key='k1') == mid\n"
        "producer.close()\n"
        "with Status(settings) as status:\n"
        "    message = status.get_message(mid)\n"
        "print(mid, message.state, message.text)\n"
    )
    enqueued = run([installed.bin("python"), "-c", script], cwd=app_dir, env=env)
    assert enqueued.returncode == 0, enqueued.stderr
    mid, state, *_ = enqueued.stdout.split()
    assert state == "pending" and int(mid) > 0

    listed = run([installed.bin("oaksend"), "list", "--json"], cwd=app_dir, env=env)
    assert listed.returncode == 0, listed.stderr
    assert f'"id": {mid}' in listed.stdout

    helped = run([installed.bin("oaksend"), "worker", "--help"], cwd=app_dir, env=env)
    assert helped.returncode == 0, helped.stderr
    assert "usage: oaksend worker" in helped.stdout
