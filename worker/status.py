"""The status API for application code: read messages and their attempts, cancel, retry.

    from oaksend import Status, load_settings

    status = Status(load_settings())
    message = status.get_message(981)            # MessageStatus, with its attempt history
    message.state, message.session_id, [a.reason for a in message.attempt_history]
    page = status.list_messages(state="failed", chatbot="3254a9d0...", since=yesterday, limit=100)
    more = status.list_messages(state="failed", cursor=page.next_cursor)
    status.retry([981], actor="alice")           # {981: "retried"}
    status.cancel([982, 983])                    # {982: "cancelled", 983: "is sent; ..."}

Everything returned is a frozen dataclass of plain values (no ORM objects, no
open sessions). `oaksend show|list|retry|cancel` are thin layers over this.
Errors: `NotFound` for an unknown id (get_message), `ValidationError` naming the
argument for bad input; retry/cancel report per id instead of raising.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from oaksend.errors import NotFound, ValidationError
from oaksend.models.db import make_engine
from oaksend.models.records import priority_name
from oaksend.models.repository import Outbox
from oaksend.models.tables import STATES
from oaksend.worker.clock import utcnow
from oaksend.worker.settings import Settings

#: Result of retry / cancel for one id when it was done.
RETRIED, CANCELLED, NOT_FOUND = "retried", "cancelled", "not found"
MAX_PAGE = 1000


@dataclass(frozen=True)
class AttemptStatus:
    """One call made to the API for a message (append-only history)."""

    number: int
    started_at: datetime
    latency_ms: float | None
    http_status: int | None
    success: bool | None
    code: int | None
    message: str | None
    data_status: str | None
    data_message: str | None
    session_id: int | None
    #: A SessionID that does not fit a signed 64-bit integer, kept as the API sent it.
    session_id_text: str | None
    #: Odd but harmless parts of the answer (values clamped, unusual shapes), as text.
    anomalies: str | None
    classification: str
    reason: str
    error: str | None
    worker: str | None


@dataclass(frozen=True)
class OperatorActionStatus:
    """An operator's retry or cancel of a message."""

    action: str
    from_state: str
    actor: str | None
    at: datetime
    note: str | None


@dataclass(frozen=True)
class MessageStatus:
    """A message as stored. `attempts` counts calls; `attempt_history` holds them (get_message only)."""

    id: int
    chatbot: str
    to: str
    text: str
    segments: int
    state: str
    #: "high", "normal" or "bulk": a chatbot's due messages go out most urgent first.
    priority: str
    attempts: int
    failures: int
    ambiguous: int
    next_attempt_at: datetime
    deadline_at: datetime | None
    idempotency_key: str | None
    last_outcome: str | None
    last_reason: str | None
    session_id: int | None
    session_id_text: str | None
    metadata: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None
    #: None in list results (not loaded); a tuple, oldest first, from get_message.
    attempt_history: tuple[AttemptStatus, ...] | None = None
    operator_actions: tuple[OperatorActionStatus, ...] | None = None


@dataclass(frozen=True)
class MessagePage:
    """One page of list_messages, newest first; pass `next_cursor` back for the next (None: last page)."""

    messages: tuple[MessageStatus, ...]
    next_cursor: str | None


class Status:
    """Read and act on messages. Thread-safe; build one per process and `close()` it."""

    def __init__(self, settings: Settings, *, outbox: Outbox | None = None, redis_client: Any = None) -> None:
        self.settings = settings
        self._own_outbox = outbox is None
        self.outbox = outbox or Outbox(make_engine(settings.database_url, schema=settings.db_schema))
        self._redis = redis_client
        self._own_redis = redis_client is None

    # -- reading --------------------------------------------------------------------------
    def get_message(self, message_id: int) -> MessageStatus:
        """The message with its attempts and operator actions; NotFound when there is none."""
        mid = _id(message_id, "message_id")
        row = self.outbox.get(mid)
        if row is None:
            raise NotFound(f"message {mid} not found")
        attempts, actions = self.outbox.history(mid)
        return _message(row, tuple(_attempt(a) for a in attempts), tuple(_action(a) for a in actions))

    def list_messages(self, *, state: str | Iterable[str] | None = None, chatbot: str | None = None,
                      since: datetime | None = None, until: datetime | None = None, limit: int = 50,
                      cursor: str | None = None) -> MessagePage:
        """Messages newest first, filtered by state(s), chatbot and creation time [since, until)."""
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_PAGE:
            raise ValidationError("limit", f"must be an integer from 1 to {MAX_PAGE}")
        before = _cursor(cursor)
        rows = self.outbox.list(states=_states(state), serial_number=_chatbot(chatbot), since=_time(since, "since"),
                                until=_time(until, "until"), limit=limit + 1, before_id=before)
        more = len(rows) > limit
        rows = rows[:limit]
        return MessagePage(tuple(_message(r) for r in rows), str(rows[-1].id) if more else None)

    def select_ids(self, *, state: str | Iterable[str], chatbot: str | None = None, since: datetime | None = None,
                   until: datetime | None = None, page: int = 5000) -> list[int]:
        """Every id matching a selection, oldest first (for bulk retry / cancel)."""
        states = _states(state)
        if not states:
            raise ValidationError("state", "select at least one state")
        ids: list[int] = []
        for chunk in self._walk(states, _chatbot(chatbot), _time(since, "since"), _time(until, "until"), page):
            ids += chunk
        return ids

    def _walk(self, states: Sequence[str], chatbot: str | None, since: datetime | None, until: datetime | None,
              page: int) -> Iterator[list[int]]:
        after = 0
        while True:
            rows = self.outbox.list(states=states, serial_number=chatbot, since=since, until=until, limit=page,
                                    after_id=after)
            if rows:
                yield [r.id for r in rows]
            if len(rows) < page:
                return
            after = rows[-1].id

    def counts(self) -> dict[str, int]:
        """Messages per state."""
        return self.outbox.counts()

    # -- acting ---------------------------------------------------------------------------
    def retry(self, ids: Iterable[int], *, actor: str | None = None, deadline: datetime | None = None,
              now: datetime | None = None) -> dict[int, str]:
        """Send failed / unknown / expired / cancelled messages again, keeping their history.

        Each gets a fresh attempt budget and a deadline: `deadline` when given; else
        its own when still ahead, or now + DEFAULT_DEADLINE_S (an expired message
        is never retried without one). Returns, per id, "retried" or why not.
        """
        now = now or utcnow()
        checked = _time(deadline, "deadline")
        if checked is not None and checked <= now:
            raise ValidationError("deadline", "has already passed")
        renewed = now + timedelta(seconds=self.settings.default_deadline_s)
        out = self.outbox.operator_retry(_ids(ids), now, _actor(actor), deadline, renew_deadline_at=renewed)
        if RETRIED in out.values():
            self._wake()
        return out

    def cancel(self, ids: Iterable[int], *, actor: str | None = None, now: datetime | None = None) -> dict[int, str]:
        """Cancel messages not sent yet (pending or dispatched). Returns, per id, "cancelled" or why not."""
        return self.outbox.cancel(_ids(ids), now or utcnow(), _actor(actor))

    def _wake(self) -> None:
        import redis

        from oaksend.worker.enqueue import wake

        if self._redis is None:
            self._redis = redis.Redis.from_url(self.settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
        wake(self._redis, self.settings.keys)

    def close(self) -> None:
        if self._own_redis and self._redis is not None:
            self._redis.close()
        if self._own_outbox:
            self.outbox.engine.dispose()

    def __enter__(self) -> Status:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


# -- argument checks: one-line ValidationError naming the argument ---------------------------
def _id(value: object, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValidationError(field, "must be a positive integer message id")
    return value


def _ids(values: Iterable[int]) -> list[int]:
    if isinstance(values, int | str | bytes):
        raise ValidationError("ids", "must be a list of message ids")
    return [_id(v, "ids") for v in values]


def _states(value: str | Iterable[str] | None) -> list[str]:
    if value is None:
        return []
    states = [value] if isinstance(value, str) else list(value)
    bad = [s for s in states if s not in STATES]
    if bad:
        raise ValidationError("state", f"{bad[0]!r} is not a state (one of {', '.join(STATES)})")
    return states


def _chatbot(value: object) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ValidationError("chatbot", "must be a chatbot SerialNumber")
    return value


def _time(value: object, field: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise ValidationError(field, "must be a timezone-aware datetime")
    return value


def _actor(value: object) -> str | None:
    if value is not None and (not isinstance(value, str) or len(value) > 200):
        raise ValidationError("actor", "must be a string of at most 200 characters")
    return value


def _cursor(value: object) -> int | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.isdigit():
        raise ValidationError("cursor", "is not a cursor returned by list_messages")
    return int(value)


# -- rows to values --------------------------------------------------------------------------
def _message(row: Any, attempts: tuple[AttemptStatus, ...] | None = None,
             actions: tuple[OperatorActionStatus, ...] | None = None) -> MessageStatus:
    return MessageStatus(
        id=row.id, chatbot=row.serial_number, to=row.to_phone, text=row.body, segments=row.segments,
        state=row.state, priority=priority_name(row.priority), attempts=row.attempts, failures=row.failures,
        ambiguous=row.ambiguous,
        next_attempt_at=row.next_attempt_at, deadline_at=row.deadline_at, idempotency_key=row.idempotency_key,
        last_outcome=row.last_outcome, last_reason=row.last_reason, session_id=row.session_id,
        session_id_text=row.session_id_text, metadata=row.meta,
        created_at=row.created_at, updated_at=row.updated_at, sent_at=row.sent_at,
        attempt_history=attempts, operator_actions=actions,
    )


def _attempt(a: Any) -> AttemptStatus:
    return AttemptStatus(
        number=a.number, started_at=a.started_at, latency_ms=a.latency_ms, http_status=a.http_status,
        success=a.success, code=a.code, message=a.message, data_status=a.data_status,
        data_message=a.data_message, session_id=a.session_id, session_id_text=a.session_id_text,
        anomalies=a.anomalies, classification=a.classification,
        reason=a.reason, error=a.error, worker=a.worker,
    )


def _action(a: Any) -> OperatorActionStatus:
    return OperatorActionStatus(action=a.action, from_state=a.from_state, actor=a.actor, at=a.at, note=a.note)
