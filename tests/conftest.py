"""Fixtures on real services: Redis, PostgreSQL, SQLite, the sandbox API, oaksend processes.

In CI (CI=true) a missing service fails the run; elsewhere it skips.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support import (
    REDIS_URL,
    Sandbox,
    Stack,
    ensure_pg_database,
    flush_redis,
    reset_pg,
    stack_env,
    unavailable,
)


@pytest.fixture(scope="session")
def redis_url() -> str:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        unavailable("Redis", exc)
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture(scope="session")
def pg_database() -> str:
    try:
        return ensure_pg_database()
    except Exception as exc:  # noqa: BLE001 - any driver error means: not reachable
        unavailable("PostgreSQL", exc)
        raise


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty outbox on each backend."""
    from oaksend.migrations.runner import upgrade

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/oaksend.db"
    else:
        url = request.getfixturevalue("pg_database")
        reset_pg(url)
    upgrade(url)
    return url


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    sb = Sandbox(tmp_path / "sandbox.log")
    try:
        yield sb
    finally:
        sb.stop()


@pytest.fixture
def settings(database_url: str, redis_url: str) -> Any:
    from oaksend.worker.settings import Settings

    return Settings(database_url=database_url, redis_url=redis_url, _env_file=None)  # type: ignore[call-arg]


@pytest.fixture
def outbox(settings: Any) -> Iterator[Any]:
    from oaksend.models.db import make_engine
    from oaksend.models.repository import Outbox

    box = Outbox(make_engine(settings.database_url))
    yield box
    box.engine.dispose()


@pytest.fixture
def producer(settings: Any, outbox: Any) -> Iterator[Any]:
    from oaksend.worker.enqueue import Producer

    p = Producer(settings, outbox=outbox)
    yield p
    p.redis.close()


@pytest.fixture
def make_stack(database_url: str, sandbox: Sandbox, tmp_path: Path, redis_url: str) -> Iterator[Callable[..., Stack]]:
    """Start dispatcher and worker processes with settings overrides (env var names)."""
    stacks: list[Stack] = []

    def make(workers: int = 1, dispatcher: bool = True, concurrency: int = 4, **overrides: Any) -> Stack:
        flush_redis()
        env = stack_env(database_url, sandbox, queue=f"oaksend-test-{uuid.uuid4().hex[:8]}", **overrides)
        stack = Stack(env, tmp_path)
        stacks.append(stack)
        if dispatcher:
            stack.start_dispatcher()
        for i in range(workers):
            stack.start_worker(f"worker{i}", concurrency=concurrency)
        stack.wait_ready()
        return stack

    yield make
    for stack in stacks:
        stack.stop()


#: Fault run summaries as they reached this process's reports (from pytest-xdist's workers too).
_FAULT_SUMMARIES: list[str] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A fault run's summary line travels in its test's report, which xdist sends to the controller."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when == "call":
        from tests.faults.report import SUMMARIES

        report.user_properties.extend(("fault_summary", line) for line in SUMMARIES)
        SUMMARIES.clear()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _FAULT_SUMMARIES.extend(value for name, value in report.user_properties if name == "fault_summary")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print each fault run's figures (accepted, sent, ..., lost, drain time) at the end."""
    if _FAULT_SUMMARIES:
        terminalreporter.section("fault run summaries")
        for line in _FAULT_SUMMARIES:
            terminalreporter.write_line(line)
