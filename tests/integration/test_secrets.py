"""A canary API key must never reach Redis, the database, logs or CLI output; numbers are masked in logs."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import redis
from sqlalchemy import MetaData, select

from tests.support import API_KEY, CHATBOT, REDIS_URL, ROOT, wait_until

PHONES = ["+14155550140", "+14155550141", "+14155550142", "+14155550143"]
TEXT = "canary text 7f3a: your appointment"


def redis_dump() -> bytes:
    client = redis.Redis.from_url(REDIS_URL)
    chunks: list[bytes] = []
    try:
        for key in client.scan_iter(count=1000):
            chunks.append(key)
            kind = client.type(key)
            if kind == b"string":
                chunks.append(client.get(key) or b"")
            elif kind == b"list":
                chunks.extend(client.lrange(key, 0, -1))
            elif kind == b"hash":
                for k, v in client.hgetall(key).items():
                    chunks += [k, v]
            elif kind == b"set":
                chunks.extend(client.smembers(key))
            elif kind == b"zset":
                chunks.extend(m for m, _ in client.zrange(key, 0, -1, withscores=True))
    finally:
        client.close()
    return b"\n".join(chunks)


def database_dump(outbox: Any) -> str:
    meta = MetaData()
    meta.reflect(outbox.engine)
    lines: list[str] = []
    with outbox.engine.connect() as conn:
        for table in meta.sorted_tables:
            for row in conn.execute(select(table)):
                lines.append(repr(tuple(row)))
    return "\n".join(lines)


def test_canary_key_is_nowhere(make_stack: Any, producer: Any, outbox: Any, sandbox: Any, settings: Any) -> None:
    # First only the dispatcher: tasks wait in the broker, where we can read them.
    stack = make_stack(workers=0)
    sandbox.script(PHONES[1], ["503"])
    sandbox.script(PHONES[2], ["400"])
    sandbox.script(PHONES[3], ["malformed:html"])
    ids = [producer.send(CHATBOT, phone, TEXT) for phone in PHONES]
    wait_until(lambda: all(outbox.get(i).state == "dispatched" for i in ids), 10, what="dispatch")
    # Rows are leased before their tasks are published: wait for the broker's queue itself.
    queue = stack.env["OAKSEND_QUEUE_NAME"].encode()
    wait_until(lambda: queue in redis_dump(), 10, what="the tasks in the broker's queue")
    queued = redis_dump()
    assert queue in queued  # we really read the broker's queue
    for secret in (API_KEY.encode(), TEXT.encode(), *(p.encode() for p in PHONES), PHONES[0][1:].encode()):
        assert secret not in queued, f"{secret!r} found in Redis"

    stack.start_worker("worker-late")
    stack.wait_ready()
    wait_until(lambda: all(outbox.get(i).state in {"sent", "failed"} for i in ids), 20, what="sends")

    assert API_KEY.encode() not in redis_dump()
    dump = database_dump(outbox)
    assert TEXT in dump  # the dump is real
    assert API_KEY not in dump
    logs = stack.logs() + sandbox.log_path.read_text()
    assert "message " in logs  # the worker did log each send
    assert API_KEY not in logs
    for phone in PHONES:
        assert phone not in logs, "phone numbers must be masked in logs"

    env = dict(stack.env)
    for args in (["show", str(ids[1]), "--json"], ["list", "--json"], ["chatbot", "show", CHATBOT], ["stats"]):
        out = subprocess.run([sys.executable, "-m", "oaksend.worker.cli", *args], env=env, cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert API_KEY not in out.stdout + out.stderr


def test_a_bad_key_is_refused_without_printing_it(tmp_path: Any) -> None:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEWOAKS_", "OAKSEND_"))}
    env.update({"NEWOAKS_API_KEY": f" {API_KEY} ", "DATABASE_URL": f"sqlite:///{tmp_path}/x.db",
                "REDIS_URL": REDIS_URL})
    out = subprocess.run([sys.executable, "-m", "oaksend.worker.cli", "worker"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "NEWOAKS_API_KEY" in out.stderr
    assert API_KEY not in out.stderr + out.stdout
