"""`oaksend health` against real processes: it fails when Redis, the dispatcher, every worker,
the database or the backlog is wrong, names each failed part, and passes again when they return."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from oaksend.worker.cli import main
from tests.support import CHATBOT, Sandbox, Stack, free_port, reset_pg, stack_env, unavailable, wait_until


class RedisServer:
    """A private redis-server that can be stopped and started again on the same port."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            unavailable("redis-server", FileNotFoundError("redis-server is not on PATH"))
        self.binary, self.directory, self.port = binary, directory, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.directory)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        probe = redis.Redis.from_url(self.url)

        def up() -> bool:
            try:
                return bool(probe.ping())
            except redis.ConnectionError:
                return False

        try:
            wait_until(up, 10, what="the private redis-server")
        finally:
            probe.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_outbox(pg_database: str) -> str:
    from oaksend.migrations.runner import upgrade

    reset_pg(pg_database)
    upgrade(pg_database)
    return pg_database


def health(capsys: pytest.CaptureFixture[str], db: str, redis_url: str, *extra: str) -> tuple[int, dict[str, Any], str]:
    """Run `oaksend health --json` through the entry point: (exit code, checks, stderr)."""
    capsys.readouterr()
    code = main(["--database-url", db, "--redis-url", redis_url, "health", "--json", *extra])
    out = capsys.readouterr()
    return code, json.loads(out.out)["checks"], out.err


def failed(checks: dict[str, Any]) -> set[str]:
    return {part for part, c in checks.items() if not c["ok"]}


@pytest.fixture
def fast_health(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OAKSEND_HEALTH_DISPATCHER_MAX_AGE_S", "2")
    monkeypatch.setenv("OAKSEND_WORKER_HEARTBEAT_TTL_S", "3")


@pytest.mark.slow
def test_health_fails_for_each_part_down_and_passes_when_it_returns(
        pg_outbox: str, private_redis: RedisServer, sandbox: Sandbox, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], fast_health: None) -> None:
    db, url = pg_outbox, private_redis.url

    def until(expected_failed: set[str], timeout_s: float = 30) -> dict[str, Any]:
        seen: dict[str, Any] = {}

        def probe() -> bool:
            code, checks, err = health(capsys, db, url)
            seen.update(code=code, checks=checks, err=err)
            return failed(checks) == expected_failed and code == (1 if expected_failed else 0)

        try:
            wait_until(probe, timeout_s, 0.3, f"health to fail exactly on {sorted(expected_failed)}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last: {seen}") from None
        for part in expected_failed:  # the one-line error names every failed part
            assert part in seen["err"]
        return seen

    # Nothing runs yet: the stores answer, but there is no dispatcher and no worker.
    seen = until({"dispatcher", "workers"}, timeout_s=5)
    assert "no active dispatcher heartbeat" in seen["checks"]["dispatcher"]["detail"]

    env = stack_env(db, sandbox, queue="oaksend-health", REDIS_URL=url, OAKSEND_HEALTH_DISPATCHER_MAX_AGE_S="2",
                    OAKSEND_WORKER_HEARTBEAT_TTL_S="3")
    stack = Stack(env, tmp_path)
    try:
        dispatcher = stack.start_dispatcher("dispatcher-a")
        worker = stack.start_worker("worker-a", concurrency=2)
        stack.wait_ready()
        until(set())

        # Every worker stopped (a clean stop removes its beat at once): only `workers` fails.
        worker.send_signal(signal.SIGTERM)
        worker.wait(20)
        until({"workers"})
        stack.start_worker("worker-b", concurrency=2)
        until(set())

        # The active dispatcher killed: its heartbeat ages past the limit.
        dispatcher.send_signal(signal.SIGKILL)
        dispatcher.wait(10)
        until({"dispatcher"})
        stack.start_dispatcher("dispatcher-b")
        until(set())

        # Redis down: Redis, and the dispatcher and workers it vouches for, fail; the database still answers.
        private_redis.stop()
        seen = until({"redis", "dispatcher", "workers"})
        assert seen["checks"]["database"]["ok"]
        private_redis.start()
        # Celery 5.7's consumer can die when its broker connection drops at the wrong moment
        # (kombu's reconnect raises AttributeError: 'NoneType' object has no attribute
        # 'hostname'); a supervisor restarts it (`oaksend run`, compose), and so does this test.
        revived: list[str] = []

        def revive_then_probe() -> bool:
            dead = [n for n, p, _ in stack.procs if n == "worker-b" and p.poll() is not None]
            if dead and not revived:
                revived.append(dead[0])
                stack.start_worker("worker-c", concurrency=2)
            code, checks, _ = health(capsys, db, url)
            return code == 0 and not failed(checks)

        wait_until(revive_then_probe, 45, 0.3, "health to pass once Redis is back")
    finally:
        stack.stop()


def test_backlog_and_database_failures_are_named(pg_outbox: str, redis_url: str, capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from oaksend.worker.enqueue import Producer
    from oaksend.worker.settings import Settings

    monkeypatch.setenv("OAKSEND_HEALTH_MAX_DUE_AGE_S", "1")
    code, checks, _ = health(capsys, pg_outbox, redis_url, "--only", "database,backlog")
    assert code == 0 and checks["backlog"]["detail"] == "nothing due"

    producer = Producer(Settings(database_url=pg_outbox, redis_url=redis_url, _env_file=None))  # type: ignore[call-arg]
    try:
        producer.send(CHATBOT, "+14155550123", "nobody dispatches this")
    finally:
        producer.close()
    time.sleep(1.5)
    code, checks, err = health(capsys, pg_outbox, redis_url, "--only", "database,backlog")
    assert code == 1 and failed(checks) == {"backlog"}
    assert "oldest due message waiting" in checks["backlog"]["detail"] and "backlog" in err

    # A database that does not answer: named, without the URL's password, within the probe timeout.
    dead = f"postgresql://oaksend:s3cret-pw@127.0.0.1:{free_port()}/oaksend"
    capsys.readouterr()
    code = main(["--database-url", dead, "--redis-url", redis_url, "health", "--only", "database,redis,backlog"])
    out = capsys.readouterr()
    assert code == 1
    assert "database" in out.err and "backlog" in out.err and "redis" not in out.err.split("unhealthy:")[1]
    assert "s3cret-pw" not in out.out + out.err


def test_health_rejects_an_unknown_part(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["health", "--only", "database,disk"]) == 2
    assert capsys.readouterr().err.strip() == ("oaksend: only: unknown part 'disk' "
                                                "(choose from database, redis, dispatcher, workers, backlog)")
