"""Is oaksend healthy? The checks behind `oaksend health` (and the compose healthchecks).

Healthy means all of:
- database: answers a query on oaksend's tables;
- redis: answers PING;
- dispatcher: an active dispatcher's heartbeat is younger than
  `OAKSEND_HEALTH_DISPATCHER_MAX_AGE_S`;
- workers: at least one worker beat within `OAKSEND_WORKER_HEARTBEAT_TTL_S`
  (with `this_host`: a worker of this host, which is what a container's own
  healthcheck wants to know);
- backlog: the oldest due message has waited less than `OAKSEND_HEALTH_MAX_DUE_AGE_S`.
Each check is answered within a few seconds, whatever is down.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from oaksend.worker.settings import Settings

#: Every part, in the order they are reported.
PARTS = ("database", "redis", "dispatcher", "workers", "backlog")
#: Connect and read timeout of each probe, so that a health check never hangs.
PROBE_TIMEOUT_S = 3


@dataclass(frozen=True)
class Check:
    """One part's answer."""

    part: str
    ok: bool
    detail: str


def _error(exc: BaseException) -> str:
    """An error's class and first line, never a URL (which may carry a password)."""
    text = str(getattr(exc, "orig", None) or exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:120]}" if text and "://" not in text else type(exc).__name__


def _database(settings: Settings, now: Any) -> tuple[Check, Any]:
    from oaksend.models.db import make_engine
    from oaksend.models.repository import Outbox

    kwargs: dict[str, Any] = {}
    if not settings.database_url.startswith("sqlite"):
        kwargs = {"connect_args": {"connect_timeout": PROBE_TIMEOUT_S}, "pool_size": 1, "max_overflow": 0}
    try:
        engine = make_engine(settings.database_url, schema=settings.db_schema, **kwargs)
    except Exception as exc:  # noqa: BLE001 - a bad URL is an unhealthy database
        return Check("database", False, _error(exc)), None
    try:
        oldest = Outbox(engine).oldest_due_at(now)
        return Check("database", True, "answers"), oldest
    except Exception as exc:  # noqa: BLE001 - any driver error means: not answering
        return Check("database", False, _error(exc)), None
    finally:
        engine.dispose()


def check(settings: Settings, *, parts: Iterable[str] = PARTS, this_host: bool = False) -> list[Check]:
    """Run the checks named in `parts`; every part answers, none raises."""
    import redis

    from oaksend.worker.clock import utcnow
    from oaksend.worker.delivery.heartbeat import alive_workers, dispatcher_heartbeat

    wanted = set(parts)
    now = utcnow()
    out: list[Check] = []
    oldest = None
    db_ok = False
    if wanted & {"database", "backlog"}:
        db_check, oldest = _database(settings, now)
        db_ok = db_check.ok
        if "database" in wanted:
            out.append(db_check)
    if wanted & {"redis", "dispatcher", "workers"}:
        client = redis.Redis.from_url(settings.redis_url, socket_timeout=PROBE_TIMEOUT_S,
                                      socket_connect_timeout=PROBE_TIMEOUT_S)
        try:
            try:
                client.ping()
                redis_ok, redis_detail = True, "answers"
            except redis.RedisError as exc:
                redis_ok, redis_detail = False, _error(exc)
            if "redis" in wanted:
                out.append(Check("redis", redis_ok, redis_detail))
            if "dispatcher" in wanted:
                out.append(_dispatcher(client, redis_ok, settings, dispatcher_heartbeat))
            if "workers" in wanted:
                out.append(_workers(client, redis_ok, settings, this_host, alive_workers))
        finally:
            client.close()
    if "backlog" in wanted:
        if not db_ok:
            out.append(Check("backlog", False, "unknown: the database does not answer"))
        elif oldest is None:
            out.append(Check("backlog", True, "nothing due"))
        else:
            age = (now - oldest).total_seconds()
            limit = settings.health_max_due_age_s
            out.append(Check("backlog", age <= limit, f"oldest due message waiting {age:.0f}s (limit {limit:.0f}s)"))
    order = {p: i for i, p in enumerate(PARTS)}
    return sorted(out, key=lambda c: order[c.part])


def _dispatcher(client: Any, redis_ok: bool, settings: Settings, read: Any) -> Check:
    if not redis_ok:
        return Check("dispatcher", False, "unknown: Redis does not answer")
    try:
        beat = read(client, settings.keys)
    except Exception as exc:  # noqa: BLE001 - any failure to read the beat is a failed check, not a crash
        return Check("dispatcher", False, _error(exc))
    if beat is None:
        return Check("dispatcher", False, "no active dispatcher heartbeat")
    age = float(beat["age_s"])  # on Redis's clock: this host's clock does not enter
    limit = settings.health_dispatcher_max_age_s
    name = str(beat.get("name", "?"))
    if age > limit:
        return Check("dispatcher", False, f"active dispatcher {name} last beat {age:.1f}s ago (limit {limit:.0f}s)")
    return Check("dispatcher", True, f"{name} active, beat {max(0.0, age):.1f}s ago")


def _workers(client: Any, redis_ok: bool, settings: Settings, this_host: bool, read: Any) -> Check:
    if not redis_ok:
        return Check("workers", False, "unknown: Redis does not answer")
    try:
        alive = read(client, settings.keys, settings.worker_heartbeat_ttl_s)
    except Exception as exc:  # noqa: BLE001 - any failure to read the beats is a failed check, not a crash
        return Check("workers", False, _error(exc))
    if this_host:
        host = socket.gethostname() + ":"
        alive = [w for w in alive if w.startswith(host)]
    where = " on this host" if this_host else ""
    if not alive:
        return Check("workers", False, f"no worker alive{where} (none beat within "
                                       f"{settings.worker_heartbeat_ttl_s:.0f}s)")
    return Check("workers", True, f"{len(alive)} alive{where}")


def healthy(checks: Iterable[Check]) -> bool:
    return all(c.ok for c in checks)
