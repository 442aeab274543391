"""Liveness in Redis: worker processes and the active dispatcher say they are alive.

Keys (named in worker/keys.py, under the deployment's prefix):
- `<prefix>:workers`, a sorted set: member "<hostname>:<pid>" per worker process, score
  the unix time (seconds, float) of its last beat. Beats every second; a clean
  shutdown removes the member. Alive = score younger than the TTL.
- `<prefix>:dispatcher:heartbeat`: `{"name": ..., "at": <unix seconds>}` with a 10 s
  expiry, written by the active dispatcher on every loop iteration.

The dispatcher's rescue uses `LivenessView` to tell a dead worker from a Redis that
just lost its keys: a worker counts as dead only after the view has watched the set
without interruption for a whole TTL and not seen it beat.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, cast

import redis

from oaksend.worker.keys import Keys

log = logging.getLogger(__name__)

BEAT_EVERY_S = 1.0
DISPATCHER_TTL_MS = 10_000
#: Members that have not beaten for a day are removed from the set by the dispatcher.
STALE_MEMBER_S = 86400.0


def worker_id() -> str:
    """This process's worker id: "<hostname>:<pid>"."""
    return f"{socket.gethostname()}:{os.getpid()}"


def beat(client: redis.Redis, keys: Keys, member: str, now_s: float) -> None:
    client.zadd(keys.workers, {member: now_s})


def alive_workers(redis_client: redis.Redis, keys: Keys, now_s: float, ttl_s: float) -> list[str]:
    """Workers whose last beat is younger than `ttl_s`."""
    members = redis_client.zrangebyscore(keys.workers, now_s - ttl_s, "+inf")
    return [m.decode() if isinstance(m, bytes) else str(m) for m in members]


def stopped_beating(scores: Mapping[str, float], wall_s: float, ttl_s: float, horizon_s: float) -> dict[str, float]:
    """Pure: the members whose last beat is at least `ttl_s` old and less than `horizon_s` old.

    Member -> its last beat (unix seconds). A member that left the set (a clean shutdown)
    is not among them, nor one that stopped so long ago that nothing it held is still leased.
    """
    return {m: score for m, score in scores.items() if ttl_s <= wall_s - score < horizon_s}


def write_dispatcher_heartbeat(redis_client: redis.Redis, keys: Keys, name: str, now_s: float) -> None:
    redis_client.set(keys.dispatcher_heartbeat, json.dumps({"name": name, "at": now_s}), px=DISPATCHER_TTL_MS)


def dispatcher_heartbeat(redis_client: redis.Redis, keys: Keys) -> dict[str, Any] | None:
    """The active dispatcher's last heartbeat, or None when no dispatcher is active."""
    raw = redis_client.get(keys.dispatcher_heartbeat)
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class WorkerHeartbeat:
    """A daemon thread that beats for this worker process every second until stopped."""

    def __init__(self, client: redis.Redis, keys: Keys, member: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.redis = client
        self.keys = keys
        self.member = member or worker_id()
        self.clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._beat_once()  # alive before the first message is claimed
        self._thread = threading.Thread(target=self._run, name="oaksend-heartbeat", daemon=True)
        self._thread.start()

    def _beat_once(self) -> bool:
        try:
            beat(self.redis, self.keys, self.member, self.clock())
            return True
        except redis.RedisError:
            return False

    def _run(self) -> None:
        failing = False
        while not self._stop.wait(BEAT_EVERY_S):
            ok = self._beat_once()
            if ok == failing:
                log.log(logging.INFO if ok else logging.WARNING,
                        "heartbeat %s", "restored" if ok else "failing: Redis unavailable")
            failing = not ok

    def stop(self) -> None:
        """Stop beating and leave the set (a clean shutdown)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None
        with contextlib.suppress(redis.RedisError):
            self.redis.zrem(self.keys.workers, self.member)


class LivenessView:
    """The dispatcher's view of which workers are alive, robust to Redis losing its keys.

    Nothing is judged until the view has read the set without an error for a whole
    TTL (a Redis restart or a FLUSHALL empties it; workers re-add themselves within
    a second). After that a worker is dead when its last beat is older than the TTL,
    or, if it is absent from the set, when the view has not seen it beat for a TTL.
    """

    def __init__(self, ttl_s: float, keys: Keys, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.ttl_s = ttl_s
        self.keys = keys
        self.clock = clock
        self.wall = wall
        self._since: float | None = None
        self._seen: dict[str, float] = {}  # member -> our monotonic time it was last seen alive
        self._scores: dict[str, float] = {}  # member -> its last beat (unix seconds)
        self._pruned = 0.0

    def interrupted(self) -> None:
        """Redis failed or this dispatcher just became active: watch again before judging."""
        self._since = None

    def observe(self, client: redis.Redis) -> None:
        now, wall = self.clock(), self.wall()
        if now - self._pruned > 60:
            client.zremrangebyscore(self.keys.workers, "-inf", wall - STALE_MEMBER_S)
            self._pruned = now
        # withscores=True: (member, score) pairs (redis-py types every shape of ZRANGE's reply as one).
        pairs = cast("list[tuple[bytes | str, float]]", client.zrange(self.keys.workers, 0, -1, withscores=True))
        if self._since is None:
            self._since = now
            self._seen.clear()
        self._scores = {(m.decode() if isinstance(m, bytes) else str(m)): float(score) for m, score in pairs}
        for member, score in self._scores.items():
            if wall - score < self.ttl_s:
                self._seen[member] = now
        if len(self._seen) > 1000:
            cutoff = now - 10 * self.ttl_s
            self._seen = {m: t for m, t in self._seen.items() if t >= cutoff}

    def stopped(self, horizon_s: float) -> dict[str, float]:
        """Workers in the set that stopped beating within `horizon_s` (none until the view has watched a TTL)."""
        if self._since is None or self.clock() - self._since < self.ttl_s:
            return {}
        return stopped_beating(self._scores, self.wall(), self.ttl_s, horizon_s)

    def dead(self, owners: list[str]) -> list[str]:
        """Those of `owners` certainly not beating (none until the view has watched a TTL)."""
        if self._since is None:
            return []
        now, wall = self.clock(), self.wall()
        if now - self._since < self.ttl_s:
            return []
        out = []
        for owner in owners:
            score = self._scores.get(owner)
            if score is not None:
                if wall - score >= self.ttl_s:
                    out.append(owner)
            elif now - self._seen.get(owner, self._since) >= self.ttl_s:
                out.append(owner)
        return out
