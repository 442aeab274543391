"""Liveness in Redis: worker beats and the active dispatcher's heartbeat (see the shared contract).

- Each worker process beats every second: `ZADD oaksend:workers <unix_s> <hostname>:<pid>`,
  and removes itself on a clean shutdown. It is alive while its score is younger
  than `OAKSEND_WORKER_HEARTBEAT_TTL_S`.
- The active dispatcher writes `oaksend:dispatcher:heartbeat` = `{"name", "at"}` with a
  10 s expiry on every loop iteration; standbys do not.

Minimal writer and reader; the send path's owner may extend it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from typing import Any

import redis

log = logging.getLogger(__name__)

WORKERS_KEY = "oaksend:workers"
DISPATCHER_KEY = "oaksend:dispatcher:heartbeat"
#: Worker beat period.
BEAT_EVERY_S = 1.0
#: The dispatcher heartbeat key expires this long after its last write.
DISPATCHER_KEY_TTL_MS = 10_000
#: Entries of workers gone for this long are dropped from the sorted set.
FORGET_AFTER_S = 3600.0


def worker_id() -> str:
    """This process's id in `oaksend:workers`."""
    return f"{socket.gethostname()}:{os.getpid()}"


def beat_worker(client: redis.Redis, wid: str, now_s: float) -> None:
    pipe = client.pipeline(transaction=False)
    pipe.zadd(WORKERS_KEY, {wid: now_s})
    pipe.zremrangebyscore(WORKERS_KEY, "-inf", now_s - FORGET_AFTER_S)
    pipe.execute()


def remove_worker(client: redis.Redis, wid: str) -> None:
    client.zrem(WORKERS_KEY, wid)


def beat_dispatcher(client: redis.Redis, name: str, now_s: float) -> None:
    client.set(DISPATCHER_KEY, json.dumps({"name": name, "at": now_s}), px=DISPATCHER_KEY_TTL_MS)


def alive_workers(client: redis.Redis, now_s: float, ttl_s: float) -> list[str]:
    """Ids of workers that beat within the last `ttl_s` seconds."""
    return [m.decode() if isinstance(m, bytes) else str(m)
            for m in client.zrangebyscore(WORKERS_KEY, now_s - ttl_s, "+inf")]


def dispatcher_heartbeat(client: redis.Redis) -> dict[str, Any] | None:
    """The active dispatcher's last heartbeat ({"name", "at"}), or None."""
    raw = client.get(DISPATCHER_KEY)
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class WorkerBeat:
    """A daemon thread that beats for this worker process until stopped."""

    def __init__(self, redis_url: str, wid: str | None = None) -> None:
        self.client = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
        self.wid = wid or worker_id()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="oaksend-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                beat_worker(self.client, self.wid, time.time())
            except redis.RedisError:
                pass  # health reports the outage; beats resume when Redis does
            self._stop.wait(BEAT_EVERY_S)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2)
        try:
            remove_worker(self.client, self.wid)
        except redis.RedisError:
            pass
        self.client.close()


def attach_worker_beat(redis_url: str) -> None:
    """Beat from the moment the Celery worker is ready until it shuts down."""
    from celery.signals import worker_ready, worker_shutdown

    beat = WorkerBeat(redis_url)
    worker_ready.connect(lambda **_: beat.start(), weak=False)
    worker_shutdown.connect(lambda **_: beat.stop(), weak=False)
