"""The HTTP API's part of the repository: API keys, idempotency records, webhook endpoints,
the event outbox the send path writes to, and the deliveries of the webhook process."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, delete, exists, insert, select, update
from sqlalchemy.orm import aliased

from oaksend.models.api_tables import ApiKey, IdempotencyRecord, WebhookDelivery, WebhookEndpoint, WebhookEvent
from oaksend.models.repository.base import Repository, dialect_insert

__all__ = ["ApiRepository", "DueDelivery", "Outcome", "announce", "forget_hooks_cache"]

_events = WebhookEvent.__table__
_endpoints = WebhookEndpoint.__table__
_deliveries = WebhookDelivery.__table__
_idem = IdempotencyRecord.__table__
#: Seconds a process trusts its last look at "is any webhook endpoint registered?" (the send path asks).
HOOKS_CACHE_S = 5.0
_hooks_seen: dict[str, tuple[float, bool]] = {}
_ANY_ENDPOINT = select(exists().where(_endpoints.c.removed_at.is_(None)))


def forget_hooks_cache() -> None:
    """Ask the database again at the next outcome (after an endpoint is added or removed here)."""
    _hooks_seen.clear()


def _hooks_on(conn: Connection) -> bool:
    key = conn.engine.url.render_as_string(hide_password=True)
    seen = _hooks_seen.get(key)
    now = time.monotonic()
    if seen is None or now - seen[0] > HOOKS_CACHE_S:
        seen = (now, bool(conn.scalar(_ANY_ENDPOINT)))
        _hooks_seen[key] = seen
    return seen[1]


@dataclass(frozen=True)
class Outcome:
    """An outcome to announce: a message reached `state` (sent, failed, unknown, expired)."""

    message_id: int
    serial_number: str
    state: str
    reason: str | None = None
    session_id: int | str | None = None
    attempt: int | None = None


def announce(conn: Connection, outcomes: Sequence[Outcome], now: datetime) -> None:
    """Write webhook events for `outcomes` on the caller's connection: in the transaction that
    records them. Nothing is written (and, within HOOKS_CACHE_S, nothing is asked) when no
    endpoint is registered."""
    if not outcomes or not _hooks_on(conn):
        return
    stamp = now.isoformat().replace("+00:00", "Z")
    conn.execute(insert(_events), [
        {"message_id": o.message_id, "serial_number": o.serial_number, "event": o.state, "created_at": now,
         "payload": {"type": f"message.{o.state}", "timestamp": stamp,
                     "data": {"id": o.message_id, "chatbot": o.serial_number, "state": o.state,
                              "reason": o.reason, "session_id": o.session_id, "attempt": o.attempt}}}
        for o in outcomes
    ])


@dataclass(frozen=True)
class DueDelivery:
    """A delivery the webhook process may attempt now (the first pending one of its message)."""

    id: int
    event_id: int
    endpoint_id: int
    url: str
    salt: str
    old_salt: str | None
    old_until: datetime | None
    attempts: int
    payload: dict[str, Any]


class ApiRepository(Repository):
    # -- API keys ----------------------------------------------------------------------------
    def create_key(self, *, prefix: str, token_hash: str, name: str, scopes: Sequence[str],
                   chatbots: Sequence[str] | None, rate_limit: int | None, actor: str | None, now: datetime) -> int:
        with self.session() as s:
            row = ApiKey(prefix=prefix, token_hash=token_hash, name=name, scopes=list(scopes),
                         chatbots=None if chatbots is None else list(chatbots), rate_limit=rate_limit,
                         created_by=actor, created_at=now)
            s.add(row)
            s.flush()
            return int(row.id)

    def key_by_hash(self, token_hash: str) -> ApiKey | None:
        """The key whose token hashes to this, revoked or not."""
        with self.session() as s:
            return s.scalars(select(ApiKey).where(ApiKey.token_hash == token_hash)).first()

    def api_keys(self) -> list[ApiKey]:
        with self.session() as s:
            return list(s.scalars(select(ApiKey).order_by(ApiKey.id)))

    def revoke_key(self, prefix: str, now: datetime) -> bool:
        """Revoke the key with this prefix; False when there is none or it is revoked already."""
        with self.engine.begin() as conn:
            t = ApiKey.__table__
            return bool(conn.execute(update(t).where(t.c.prefix == prefix, t.c.revoked_at.is_(None))
                                     .values(revoked_at=now)).rowcount)

    # -- idempotency records -------------------------------------------------------------------
    def idem_begin(self, key_id: int, idem_key: str, request_hash: str, now: datetime,
                   stale_before: datetime) -> tuple[str, int | None, str | None]:
        """Claim (key, Idempotency-Key) for a request. Returns one of:
        ("new", None, None): go on, then `idem_finish`; ("replay", status, body): the first response;
        ("conflict", ...): another body used this key; ("busy", ...): the first request still runs.
        A 'started' record older than `stale_before` (its process died) is taken over."""
        with self.engine.begin() as conn:
            stmt = dialect_insert(conn, _idem).values(key_id=key_id, idem_key=idem_key, request_hash=request_hash,
                                                      state="started", created_at=now)
            if conn.execute(stmt.on_conflict_do_nothing().returning(_idem.c.key_id)).first() is not None:
                return "new", None, None
            row = conn.execute(select(_idem).where(_idem.c.key_id == key_id, _idem.c.idem_key == idem_key)).first()
            if row is None:  # purged between the two statements: the caller may simply try again
                return "busy", None, None
            if row.request_hash != request_hash:
                return "conflict", None, None
            if row.state == "done":
                return "replay", row.status_code, row.response
            took = conn.execute(update(_idem).where(_idem.c.key_id == key_id, _idem.c.idem_key == idem_key,
                                                    _idem.c.state == "started", _idem.c.created_at < stale_before)
                                .values(created_at=now)).rowcount
            return ("new", None, None) if took else ("busy", None, None)

    def idem_finish(self, key_id: int, idem_key: str, status: int, body: str | None) -> None:
        """Keep the response; None `body` forgets the record (a 5xx: the client may try again)."""
        where = and_(_idem.c.key_id == key_id, _idem.c.idem_key == idem_key)
        with self.engine.begin() as conn:
            if body is None:
                conn.execute(delete(_idem).where(where))
            else:
                conn.execute(update(_idem).where(where).values(state="done", status_code=status, response=body))

    def idem_purge(self, before: datetime) -> int:
        with self.engine.begin() as conn:
            return conn.execute(delete(_idem).where(_idem.c.created_at < before)).rowcount

    # -- webhook endpoints ---------------------------------------------------------------------
    def add_endpoint(self, *, url: str, events: Sequence[str], chatbots: Sequence[str] | None, salt: str,
                     actor: str | None, now: datetime) -> int:
        with self.session() as s:
            row = WebhookEndpoint(url=url, events=list(events), chatbots=None if chatbots is None else list(chatbots),
                                  salt=salt, failures=0, created_by=actor, created_at=now)
            s.add(row)
            s.flush()
            endpoint_id = int(row.id)
        forget_hooks_cache()
        return endpoint_id

    def endpoints(self, *, removed: bool = False) -> list[WebhookEndpoint]:
        with self.session() as s:
            q = select(WebhookEndpoint).order_by(WebhookEndpoint.id)
            if not removed:
                q = q.where(WebhookEndpoint.removed_at.is_(None))
            return list(s.scalars(q))

    def endpoint(self, endpoint_id: int) -> WebhookEndpoint | None:
        with self.session() as s:
            row = s.get(WebhookEndpoint, endpoint_id)
            return None if row is None or row.removed_at is not None else row

    def remove_endpoint(self, endpoint_id: int, now: datetime) -> bool:
        """Stop delivering to it (its pending deliveries stay, unsent; its history is kept)."""
        with self.engine.begin() as conn:
            done = bool(conn.execute(update(_endpoints).where(_endpoints.c.id == endpoint_id,
                                                              _endpoints.c.removed_at.is_(None))
                                     .values(removed_at=now)).rowcount)
        forget_hooks_cache()
        return done

    def rotate_endpoint(self, endpoint_id: int, salt: str, old_until: datetime) -> bool:
        """A new secret; the current one keeps signing too until `old_until`."""
        with self.engine.begin() as conn:
            return bool(conn.execute(update(_endpoints).where(_endpoints.c.id == endpoint_id,
                                                              _endpoints.c.removed_at.is_(None))
                                     .values(old_salt=_endpoints.c.salt, old_until=old_until, salt=salt)).rowcount)

    # -- deliveries ------------------------------------------------------------------------------
    def fan_out(self, now: datetime, limit: int = 1000) -> int:
        """Make the deliveries of new events (one per subscribed endpoint); returns the events done."""
        with self.engine.begin() as conn:
            events = conn.execute(select(_events).where(_events.c.fanned_at.is_(None))
                                  .order_by(_events.c.id).limit(limit)).all()
            if not events:
                return 0
            hooks = conn.execute(select(_endpoints).where(_endpoints.c.removed_at.is_(None))).all()
            rows = [{"event_id": e.id, "endpoint_id": h.id, "message_id": e.message_id, "state": "pending",
                     "attempts": 0, "next_attempt_at": now, "created_at": now}
                    for e in events for h in hooks
                    if e.event in h.events and (h.chatbots is None or e.serial_number in h.chatbots)]
            if rows:
                conn.execute(insert(_deliveries), rows)
            conn.execute(update(_events).where(_events.c.id.in_([e.id for e in events])).values(fanned_at=now))
            return len(events)

    def due_deliveries(self, now: datetime, limit: int = 200) -> list[DueDelivery]:
        """Pending deliveries whose time has come, to endpoints not backing off, each the first
        pending one of its message for its endpoint (order per message), oldest first."""
        d, earlier = _deliveries, aliased(WebhookDelivery.__table__)
        blocked = exists().where(earlier.c.endpoint_id == d.c.endpoint_id, earlier.c.message_id == d.c.message_id,
                                 earlier.c.state == "pending", earlier.c.id < d.c.id)
        q = (select(d.c.id, d.c.event_id, d.c.endpoint_id, _endpoints.c.url, _endpoints.c.salt,
                    _endpoints.c.old_salt, _endpoints.c.old_until, d.c.attempts, _events.c.payload)
             .join(_endpoints, _endpoints.c.id == d.c.endpoint_id).join(_events, _events.c.id == d.c.event_id)
             .where(d.c.state == "pending", d.c.next_attempt_at <= now, _endpoints.c.removed_at.is_(None),
                    _endpoints.c.retry_at.is_(None) | (_endpoints.c.retry_at <= now), ~blocked)
             .order_by(d.c.id).limit(limit))
        with self.engine.connect() as conn:
            return [DueDelivery(*r) for r in conn.execute(q)]

    def record_deliveries(self, results: Sequence[tuple[DueDelivery, int | None, str | None, datetime | None]],
                          now: datetime) -> None:
        """(delivery, HTTP status, error, retry at) each; `retry at` None after a failure: out of attempts.

        A 2xx delivers; anything else counts an attempt and makes the endpoint wait until the retry
        time (one failing receiver is not called for every pending event meanwhile)."""
        with self.engine.begin() as conn:
            for due, status, error, retry_at in results:
                ok = status is not None and 200 <= status < 300
                values: dict[str, Any] = {"attempts": _deliveries.c.attempts + 1, "last_status": status,
                                          "last_error": error}
                if ok:
                    values.update(state="delivered", delivered_at=now)
                elif retry_at is None:
                    values.update(state="failed")
                else:
                    values.update(next_attempt_at=retry_at)
                conn.execute(update(_deliveries).where(_deliveries.c.id == due.id, _deliveries.c.state == "pending")
                             .values(**values))
                hook = update(_endpoints).where(_endpoints.c.id == due.endpoint_id)
                conn.execute(hook.values(failures=0, retry_at=None) if ok else
                             hook.values(failures=_endpoints.c.failures + 1, retry_at=retry_at))

    def deliveries(self, *, endpoint_ids: Sequence[int] | None = None, state: str | None = None,
                   limit: int = 100, before_id: int | None = None) -> list[Any]:
        """Deliveries newest first, with their event's type and message."""
        d = _deliveries
        q = (select(d, _events.c.event, _events.c.payload).join(_events, _events.c.id == d.c.event_id)
             .order_by(d.c.id.desc()).limit(limit))
        if endpoint_ids is not None:
            q = q.where(d.c.endpoint_id.in_(list(endpoint_ids)))
        if state is not None:
            q = q.where(d.c.state == state)
        if before_id is not None:
            q = q.where(d.c.id < before_id)
        with self.engine.connect() as conn:
            return list(conn.execute(q).all())

    def retry_delivery(self, delivery_id: int, now: datetime) -> bool:
        """A failed (or delivered) delivery goes out again, with a fresh attempt budget."""
        with self.engine.begin() as conn:
            return bool(conn.execute(update(_deliveries).where(_deliveries.c.id == delivery_id,
                                                               _deliveries.c.state != "pending")
                                     .values(state="pending", attempts=0, next_attempt_at=now)).rowcount)
