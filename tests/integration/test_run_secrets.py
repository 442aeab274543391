"""`oaksend run` hands settings to its children by environment, never on a command line `ps` shows; only the
workers hold the API key; and no child outlives `oaksend run`, even when it is SIGKILLed."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from oaksend.worker.ops.supervisor import child_environ, children_environ
from tests.integration.test_ops_run import alive, children, oaksend
from tests.support import API_KEY, Sandbox, flush_redis, stack_env, wait_until


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; the parent-death signal is Linux's")
def test_children_get_settings_by_environment_the_key_only_in_workers_and_die_with_run(
        pg_database: str, sandbox: Sandbox, tmp_path: Path) -> None:
    from oaksend.migrations.runner import upgrade
    from tests.support import reset_pg

    reset_pg(pg_database)
    upgrade(pg_database)
    flush_redis()
    # A password the test server's trust authentication ignores: a marker to look for in every command line.
    url = pg_database.replace("://postgres@", "://postgres:run-marker-pw@")
    assert "run-marker-pw" in url
    env = stack_env(pg_database, sandbox, queue=f"oaksend-run-{uuid.uuid4().hex[:8]}")
    del env["DATABASE_URL"]  # only on `oaksend run`'s own command line
    log = open(tmp_path / "run.log", "wb")
    run = subprocess.Popen([sys.executable, "-m", "oaksend.worker.cli", "--database-url", url, "run", "--workers", "1",
                            "--concurrency", "2", "--grace", "20"], env=env, stdout=log, stderr=subprocess.STDOUT)
    kids: dict[int, str] = {}
    try:
        wait_until(lambda: len(children(run.pid)) == 3, 30, 0.2, "a dispatcher, a worker and a scheduler")
        kids = children(run.pid)
        roles = {pid: next(r for r in ("worker", "dispatcher", "scheduler") if f" {r}" in cmd)
                 for pid, cmd in kids.items()}
        assert sorted(roles.values()) == ["dispatcher", "scheduler", "worker"]
        for pid, cmd in kids.items():
            assert "run-marker-pw" not in cmd and "--database-url" not in cmd and "--redis-url" not in cmd
            environ = environ_of(pid)
            assert environ["DATABASE_URL"] == url  # by environment
            has_key = environ.get("NEWOAKS_API_KEY") == API_KEY
            assert has_key is (roles[pid] == "worker"), (roles[pid], sorted(environ))

        # The children work with what they were given: the stores are reached, the worker is alive.
        def healthy() -> bool:
            result = oaksend({**env, "DATABASE_URL": url}, "health", "--json", "--only", "database,dispatcher,workers")
            return result.returncode == 0 and json.loads(result.stdout)["checks"]["workers"]["detail"] == "1 alive"

        wait_until(healthy, 60, 0.5, "the children to come up with settings from their environment")

        run.send_signal(signal.SIGKILL)  # no chance to stop its children itself
        run.wait(10)
        for pid in kids:
            wait_until(lambda pid=pid: not alive(pid), 30, 0.2, f"{roles[pid]} ({pid}) to die with `oaksend run`")
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        for pid in kids:  # this test's own children only, should the parent-death signal have failed
            if alive(pid):
                import os

                os.kill(pid, signal.SIGKILL)
        log.close()
    assert "run-marker-pw" not in (tmp_path / "run.log").read_text(errors="replace")


def test_the_children_environment() -> None:
    environ = {"PATH": "/bin", "OAKSEND_ENV_FILE": "/etc/oaksend.env", "oaksend_database_url": "sqlite:///old.db",
               "NEWOAKS_API_KEY": "k-env", "REDIS_URL": "redis://r/1"}
    env_file = {"newoaks_region": "eu", "REDIS_URL": "redis://from-file/2", "OAKSEND_LEASE_S": "9", "EMPTY": None}
    base = children_environ(environ, env_file, database_url="postgresql://u:pw@db/x")
    # The environment wins over the file (as in Settings), the file is not read again by a child,
    # the command line's URL replaces every spelling of it.
    assert base == {"PATH": "/bin", "NEWOAKS_API_KEY": "k-env", "REDIS_URL": "redis://r/1", "NEWOAKS_REGION": "eu",
                    "OAKSEND_LEASE_S": "9", "DATABASE_URL": "postgresql://u:pw@db/x"}
    worker = child_environ({**base, "NEWOAKS_API_KEY_FILE": "/run/secrets/key"}, api_key=True)
    dispatcher = child_environ({**base, "NEWOAKS_API_KEY_FILE": "/run/secrets/key", "newoaks_api_key": "x"},
                               api_key=False)
    assert worker["NEWOAKS_API_KEY"] == "k-env" and worker["NEWOAKS_API_KEY_FILE"] == "/run/secrets/key"
    assert not any(k.upper().startswith("NEWOAKS_API_KEY") for k in dispatcher)
    assert dispatcher["DATABASE_URL"] == "postgresql://u:pw@db/x"
