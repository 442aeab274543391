"""Liveness in Redis, on Redis's own clock: worker processes and the active dispatcher say they are alive.

Keys (named in worker/keys.py, under the deployment's prefix):
- `<prefix>:workers`, a sorted set: member "<hostname>:<pid>" per worker process, score
  Redis's `TIME` (seconds, float) at its last beat. Beats every second; a clean
  shutdown removes the member. Alive = score younger than the TTL.
- `<prefix>:dispatcher:heartbeat`: `{"name": ..., "at": <Redis TIME>}` with a 10 s
  expiry, written by the active dispatcher on every loop iteration.

One clock judges: every beat is stamped by Redis (a script reads `TIME` and writes the
score), and the dispatcher reads Redis's time with the scores. A host whose clock is a
minute off is neither dead nor immortal.

Silence means "maybe dead", never "dead": `LivenessView` judges a worker only over time
it has watched without a gap. A Redis that stalls (a fork, a slow fsync, `DEBUG SLEEP`)
delays every beat and every read alike; the view notices the gap in its own reads and
watches a whole TTL again before it judges anyone.
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
from typing import Any

import redis

from oaksend.worker.keys import Keys

log = logging.getLogger(__name__)

BEAT_EVERY_S = 1.0
DISPATCHER_TTL_MS = 10_000
#: Members that have not beaten for a day are removed from the set by the dispatcher.
STALE_MEMBER_S = 86400.0

#: ZADD with Redis's own time as the score; returns that time.
_BEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZADD', KEYS[1], now, ARGV[1])
return tostring(now)
"""
#: The dispatcher's heartbeat, stamped with Redis's time.
_DISPATCHER_BEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('SET', KEYS[1], '{"name": ' .. cjson.encode(ARGV[1]) .. ', "at": ' .. string.format('%.6f', now) .. '}',
           'PX', ARGV[2])
return tostring(now)
"""


def redis_time(client: redis.Redis) -> float:
    """Redis's clock, seconds since the epoch."""
    seconds, micros = client.time()
    return float(seconds) + float(micros) / 1e6


def worker_id() -> str:
    """This process's worker id: "<hostname>:<pid>"."""
    return f"{socket.gethostname()}:{os.getpid()}"


def beat(client: redis.Redis, keys: Keys, member: str) -> float:
    """Say `member` is alive, stamped with Redis's time (returned)."""
    return float(client.eval(_BEAT, 1, keys.workers, member))


def alive_workers(redis_client: redis.Redis, keys: Keys, ttl_s: float) -> list[str]:
    """Workers whose last beat is younger than `ttl_s` on Redis's clock."""
    now_s = redis_time(redis_client)
    members = redis_client.zrangebyscore(keys.workers, now_s - ttl_s, "+inf")
    return [m.decode() if isinstance(m, bytes) else str(m) for m in members]


def stopped_beating(scores: Mapping[str, float], now_s: float, ttl_s: float, horizon_s: float,
                    since_s: float = float("-inf")) -> dict[str, float]:
    """Pure: the members silent for at least `ttl_s` of watched time (since `since_s`), whose last beat
    is less than `horizon_s` old.

    Member -> its last beat (Redis time). A member that left the set (a clean shutdown)
    is not among them, nor one that stopped so long ago that nothing it held is still leased.
    """
    return {m: score for m, score in scores.items()
            if now_s - max(score, since_s) >= ttl_s and now_s - score < horizon_s}


def write_dispatcher_heartbeat(redis_client: redis.Redis, keys: Keys, name: str) -> None:
    redis_client.eval(_DISPATCHER_BEAT, 1, keys.dispatcher_heartbeat, name, DISPATCHER_TTL_MS)


def dispatcher_heartbeat(redis_client: redis.Redis, keys: Keys) -> dict[str, Any] | None:
    """The active dispatcher's last heartbeat, with `age_s` on Redis's clock; None when no dispatcher is active."""
    with redis_client.pipeline(transaction=True) as pipe:
        pipe.get(keys.dispatcher_heartbeat)
        pipe.time()
        raw, (seconds, micros) = pipe.execute()
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    return {**value, "age_s": float(seconds) + float(micros) / 1e6 - float(value.get("at", 0))}


class WorkerHeartbeat:
    """A daemon thread that beats for this worker process every second until stopped."""

    def __init__(self, client: redis.Redis, keys: Keys, member: str | None = None) -> None:
        self.redis = client
        self.keys = keys
        self.member = member or worker_id()
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
            beat(self.redis, self.keys, self.member)
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
    """The dispatcher's view of which workers are alive, on Redis's clock, robust to stalls and lost keys.

    Nothing is judged until the view has read the set for a whole TTL without a gap: a read
    more than `max_gap_s` (Redis time) after the previous one, or one that itself took that
    long, means Redis stalled or this process paused, and every beat may have been held up
    with it; a Redis restart or a FLUSHALL empties the set (workers re-add themselves within a
    second). After that a worker is dead when it has not beaten for a TTL of watched time: its
    last beat (or, absent from the set, the last time the view saw it) and the start of the
    watch, whichever is later, at least a TTL ago.
    """

    def __init__(self, ttl_s: float, keys: Keys, *, max_gap_s: float | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.keys = keys
        #: A beat is due every second: reads further apart than the TTL less one beat leave no margin.
        self.max_gap_s = max_gap_s if max_gap_s is not None else max(BEAT_EVERY_S, ttl_s - BEAT_EVERY_S)
        self.monotonic = monotonic
        self._since: float | None = None  # Redis time since which the view has watched without a gap
        self.now_s: float | None = None  # Redis time of the last read
        self._seen: dict[str, float] = {}  # member -> Redis time it was last seen alive
        self._scores: dict[str, float] = {}  # member -> its last beat (Redis time)
        self._pruned: float | None = None

    def interrupted(self) -> None:
        """Redis failed or this dispatcher just became active: watch again before judging."""
        self._since = None

    def observe(self, client: redis.Redis) -> None:
        started = self.monotonic()
        with client.pipeline(transaction=True) as pipe:
            pipe.time()
            pipe.zrange(self.keys.workers, 0, -1, withscores=True)
            (seconds, micros), pairs = pipe.execute()
        now = float(seconds) + float(micros) / 1e6
        took = self.monotonic() - started
        last, self.now_s = self.now_s, now
        if self._since is None or last is None or not 0 <= now - last <= self.max_gap_s or took > self.max_gap_s:
            if self._since is not None:
                log.info("liveness: %.1fs between reads of Redis (a stall or a pause); watching a TTL again "
                         "before judging any worker", now - (last or now))
            self._since = now
            self._seen.clear()
        if self._pruned is None or now - self._pruned > 60:
            client.zremrangebyscore(self.keys.workers, "-inf", now - STALE_MEMBER_S)
            self._pruned = now
        self._scores = {(m.decode() if isinstance(m, bytes) else str(m)): float(score) for m, score in pairs}
        for member, score in self._scores.items():
            if now - score < self.ttl_s:
                self._seen[member] = now
        if len(self._seen) > 1000:
            cutoff = now - 10 * self.ttl_s
            self._seen = {m: t for m, t in self._seen.items() if t >= cutoff}

    def _watched(self) -> tuple[float, float] | None:
        """(start of the watch, now) once the view has watched a whole TTL, else None."""
        if self._since is None or self.now_s is None or self.now_s - self._since < self.ttl_s:
            return None
        return self._since, self.now_s

    def stopped(self, horizon_s: float) -> dict[str, float]:
        """Workers in the set that stopped beating within `horizon_s` (none until the view has watched a TTL)."""
        watched = self._watched()
        if watched is None:
            return {}
        since, now = watched
        return stopped_beating(self._scores, now, self.ttl_s, horizon_s, since)

    def dead(self, owners: list[str]) -> list[str]:
        """Those of `owners` not beating for a TTL of watched time (none until the view has watched a TTL)."""
        watched = self._watched()
        if watched is None:
            return []
        since, now = watched
        out = []
        for owner in owners:
            last = self._scores.get(owner, self._seen.get(owner, since))
            if now - max(last, since) >= self.ttl_s:
                out.append(owner)
        return out
