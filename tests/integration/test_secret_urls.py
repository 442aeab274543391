"""Store passwords and http base URLs: canary passwords in DATABASE_URL and REDIS_URL never show.

The stack runs against a redis-server of the test's own that requires a password, and
PostgreSQL reached with a canary password in the URL (the test server trusts local
connections, so any password works and the canary really travels through every process).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from oaksend.models.db import make_engine
from oaksend.models.repository import Outbox
from oaksend.worker.enqueue import Producer
from oaksend.migrations.runner import upgrade
from oaksend.worker.settings import Settings
from tests.support import (
    API_KEY,
    CHATBOT,
    ROOT,
    Stack,
    free_port,
    reset_pg,
    stack_env,
    unavailable,
    wait_until,
)

DB_PW = "CANARY-db-7c1e9a"
REDIS_PW = "CANARY-redis-3f8b2d"
PHONE = "+14155550175"


@pytest.fixture
def passworded_redis(tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        unavailable("redis-server", FileNotFoundError("redis-server is not on PATH"))
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--requirepass", REDIS_PW, "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://:{REDIS_PW}@127.0.0.1:{port}/0"
    probe = redis.Redis.from_url(url)

    def up() -> bool:
        try:
            return bool(probe.ping())
        except redis.RedisError:
            return False

    try:
        wait_until(up, 10, what="a redis-server with a password")
        yield url
    finally:
        probe.close()
        proc.terminate()
        proc.wait(10)


def with_password(url: str, password: str) -> str:
    scheme, rest = url.split("://", 1)
    userinfo, host = rest.split("@", 1)
    return f"{scheme}://{userinfo.split(':')[0]}:{password}@{host}"


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "oaksend.worker.cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_store_passwords_appear_in_no_log_output_or_error(pg_database: str, passworded_redis: str,
                                                          sandbox: Any, tmp_path: Path) -> None:
    reset_pg(pg_database)
    database_url = with_password(pg_database, DB_PW)
    upgrade(database_url)
    env = stack_env(database_url, sandbox, queue=f"oaksend-test-{uuid.uuid4().hex[:8]}", REDIS_URL=passworded_redis)
    stack = Stack(env, tmp_path)
    settings = Settings(database_url=database_url, redis_url=passworded_redis, _env_file=None)  # type: ignore[call-arg]
    outbox = Outbox(make_engine(database_url))
    producer = Producer(settings, outbox=outbox)
    try:
        stack.start_dispatcher()
        stack.start_worker("worker0", concurrency=2)
        stack.wait_ready()
        sandbox.script(PHONE, ["success:session-huge"])
        mid = producer.send(CHATBOT, PHONE, "canary reminder")
        wait_until(lambda: outbox.get(mid).state == "sent", 20, what="the send")

        outputs = [cli(env, *args) for args in (["show", str(mid)], ["list", "--json"], ["stats"])]
        assert all(out.returncode == 0 for out in outputs), [o.stderr for o in outputs]
        # Services that are down: the one-line errors name them without the password.
        down_redis = cli(env, "--redis-url", f"redis://:{REDIS_PW}@127.0.0.1:1/0", "chatbot", "pause", CHATBOT)
        down_db = cli(env, "--database-url", f"postgresql://app:{DB_PW}@127.0.0.1:1/app", "list")
        bad_db = cli(env, "--database-url", f"postgresql://app:{DB_PW}@127.0.0.1:notaport/app", "list")
        assert (down_redis.returncode, down_db.returncode, bad_db.returncode) == (4, 4, 2)
        for out in (down_redis, down_db, bad_db):
            assert out.stderr.count("\n") == 1 and out.stderr.startswith("oaksend: "), out.stderr
        assert "DATABASE_URL" in bad_db.stderr
        # The Settings object as an application would print or log it.
        shown = repr(settings) + str(settings)
    finally:
        stack.stop()
        producer.close()
        outbox.engine.dispose()

    logs = stack.log_of("dispatcher") + stack.log_of("worker0") + sandbox.log_path.read_text()
    assert "ready." in logs and "message " in logs  # the logs are real
    everything = logs + shown + "".join(o.stdout + o.stderr for o in (*outputs, down_redis, down_db, bad_db))
    for canary in (DB_PW, REDIS_PW, API_KEY):
        assert canary not in everything, canary
    assert PHONE not in logs


def test_an_http_base_url_is_refused_unless_loopback_or_allowed(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEWOAKS_", "OAKSEND_"))}
    env.update({"NEWOAKS_API_KEY": API_KEY, "DATABASE_URL": f"sqlite:///{tmp_path}/x.db",
                "NEWOAKS_BASE_URL": "http://api.example.com"})
    refused = cli(env, "worker")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert refused.stderr.startswith("oaksend: NEWOAKS_BASE_URL: ") and "https" in refused.stderr
    assert API_KEY not in refused.stderr + refused.stdout
    allowed = cli({**env, "OAKSEND_ALLOW_INSECURE_BASE_URL": "1"}, "migrate")
    assert allowed.returncode == 0, allowed.stderr
