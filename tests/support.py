"""Test support: real services and real processes (sandbox, dispatcher, workers).

Nothing here fakes oaksend's own modules; the only fake is the NewOaks API,
which runs as a real HTTP server (`python -m sandbox`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import create_engine, text

CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
#: pytest-xdist's worker ("gw0", "gw1", ...; "" without xdist): each worker has a Redis database
#: and a PostgreSQL database of its own, so that workers never see each other's rows, tasks or locks.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")


def _own_redis_db(url: str, worker: str) -> str:
    """The Redis URL of this xdist worker: worker N uses the database N below the given one (mod 16)."""
    if not worker:
        return url
    base, _, db = url.rpartition("/")
    if not db.isdigit():  # no database in the URL: database 0
        base, db = url.rstrip("/"), "0"
    return f"{base}/{(int(db) - int(worker.removeprefix('gw'))) % 16}"


REDIS_URL = _own_redis_db(os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15"), XDIST_WORKER)
PG_ADMIN_URL = os.environ.get("TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
PG_DB = os.environ.get("TEST_PG_DATABASE", "oaksend_test") + (f"_{XDIST_WORKER}" if XDIST_WORKER else "")
CHATBOT = "3254a9d0424c4806b9ea3d0763a1b2c3"
API_KEY = "test-key-0c1d2e3f"
ROOT = Path(__file__).resolve().parent.parent


def unavailable(what: str, exc: BaseException) -> None:
    """A missing service fails the run in CI and skips elsewhere."""
    message = f"{what} is not reachable: {type(exc).__name__}: {exc}"
    if CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def pg_url_for(database: str) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + database


def ensure_pg_database() -> str:
    """Create the test database if needed and return its URL."""
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            exists = conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": PG_DB})
            if not exists:
                conn.execute(text(f'CREATE DATABASE "{PG_DB}"'))
    finally:
        admin.dispose()
    return pg_url_for(PG_DB)


def reset_pg(url: str) -> None:
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
    finally:
        engine.dispose()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Any, timeout_s: float, interval_s: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


class Sandbox:
    """The fake NewOaks API as a subprocess, with its HTTP control endpoints."""

    def __init__(self, log_path: Path, api_key: str = API_KEY, args: Iterable[str] = ()) -> None:
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "oaksend.sandbox", "--port", "0", "--api-key", api_key, *args],
            stdout=subprocess.PIPE,
            stderr=self.log,
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if "listening on" not in line:
            self.stop()
            raise RuntimeError(f"sandbox did not start: {line!r}; see {log_path}")
        self.base_url = line.strip().rsplit(" ", 1)[-1]
        self.http = httpx.Client(base_url=self.base_url, timeout=10, headers={"X-Sandbox-Key": api_key})

    def requests(self) -> list[dict[str, Any]]:
        return self.http.get("/_sandbox/requests").json()

    def requests_to(self, phone: str) -> list[dict[str, Any]]:
        return [r for r in self.requests() if r.get("to_phone_number") == phone]

    def stats(self) -> dict[str, Any]:
        return self.http.get("/_sandbox/stats").json()

    def script(self, phone: str, responses: list[str]) -> None:
        r = self.http.post("/_sandbox/script", json={"ToPhoneNumber": phone, "responses": responses})
        r.raise_for_status()

    def configure(self, **values: Any) -> None:
        self.http.post("/_sandbox/config", json=values).raise_for_status()

    def reset(self) -> None:
        self.http.post("/_sandbox/reset").raise_for_status()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        if hasattr(self, "http"):
            self.http.close()
        self.log.close()


@dataclass
class Stack:
    """Dispatcher and worker processes of oaksend against one database, Redis and sandbox."""

    env: dict[str, str]
    tmp: Path
    procs: list[tuple[str, subprocess.Popen[bytes], Any]] = field(default_factory=list)

    def start_dispatcher(self, name: str = "dispatcher") -> subprocess.Popen[bytes]:
        return self._start(name, ["dispatcher", "--log-level", "INFO"])

    def start_worker(self, name: str = "worker", concurrency: int = 4) -> subprocess.Popen[bytes]:
        return self._start(name, ["worker", "--concurrency", str(concurrency), "--log-level", "INFO",
                                  "-n", f"{name}-{uuid.uuid4().hex[:6]}@%h"])

    def _start(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{name}.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "oaksend.worker.cli", *args], env=self.env, stdout=log,
                                stderr=subprocess.STDOUT, cwd=ROOT)
        self.procs.append((name, proc, log))
        return proc

    def wait_ready(self, timeout_s: float = 30) -> None:
        """Until every worker logs `ready` and the dispatcher is active."""
        def ready() -> bool:
            for name, proc, _ in self.procs:
                if proc.poll() is not None:
                    raise AssertionError(f"{name} exited with {proc.returncode}:\n{self.log_of(name)[-3000:]}")
                text_ = self.log_of(name)
                if name.startswith("worker") and " ready." not in text_:
                    return False
                if name.startswith("dispatcher") and "is now active" not in text_ and "started" not in text_:
                    return False
            return True

        wait_until(ready, timeout_s, 0.1, "processes to be ready")

    def log_of(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def logs(self) -> str:
        return "\n".join(self.log_of(name) for name, _, _ in self.procs)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        for _, proc, _ in self.procs:
            if proc.poll() is None:
                proc.send_signal(sig)
        for _, proc, log in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
        self.procs.clear()


def stack_env(database_url: str, sandbox: Sandbox, queue: str, **extra: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OAKSEND_", "NEWOAKS_"))}
    env.update(
        {
            "DATABASE_URL": database_url,
            "REDIS_URL": REDIS_URL,
            "NEWOAKS_BASE_URL": sandbox.base_url,
            "NEWOAKS_API_KEY": API_KEY,
            "OAKSEND_QUEUE_NAME": queue,
            "OAKSEND_BACKOFF_BASE_S": "0.05",
            "OAKSEND_BACKOFF_CAP_S": "0.2",
            "OAKSEND_RETRY_LATER_FLOOR_S": "0.2",
            "OAKSEND_RETRY_AFTER_CAP_S": "1",
            "OAKSEND_DEFAULT_RATE_PER_S": "1000",
            "OAKSEND_DEFAULT_BURST": "100",
            "OAKSEND_READ_TIMEOUT_S": "1",
            "OAKSEND_CONNECT_TIMEOUT_S": "1",
            "OAKSEND_LEASE_S": "5",
            "OAKSEND_DISPATCH_INTERVAL_S": "0.2",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


def flush_redis() -> None:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.flushdb()
    finally:
        client.close()


@contextmanager
def private_redis_server(directory: Path) -> Iterator[str]:
    """A redis-server of the test's own, for FLUSHALL and wake-ups no other run may touch."""
    import shutil

    binary = shutil.which("redis-server")
    if binary is None:
        unavailable("redis-server", FileNotFoundError("redis-server is not on PATH"))
    port = free_port()
    # DEBUG SLEEP stalls it without an error (the fault tests' "Redis stalls"): allowed on this server only.
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--enable-debug-command", "yes", "--dir", str(directory)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    probe = redis.Redis.from_url(url)

    def up() -> bool:
        try:
            return bool(probe.ping())
        except redis.ConnectionError:
            return False

    try:
        wait_until(up, 10, what="a private redis-server")
        yield url
    finally:
        probe.close()
        proc.terminate()
        proc.wait(10)
