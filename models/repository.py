"""The one place that holds SQL: every read and write of the outbox goes through `Outbox`.

State changes are conditional UPDATEs (on state and lease token), so two
processes never both win the same message, whatever the database.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, Engine, Integer, bindparam, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from models.tables import (
    RETRYABLE_STATES,
    UTCDateTime,
    Attempt,
    Chatbot,
    Message,
    OperatorAction,
    SuppressedNumber,
)

#: Pause used for "until an operator resumes" (401/403): far enough to mean never.
INDEFINITE = timedelta(days=3650)

_messages = Message.__table__
_attempts = Attempt.__table__

# The send path's statements, built once: building SQLAlchemy constructs per message
# cost more CPU than the rest of a send.
_CLAIM = (
    update(_messages)
    .where(_messages.c.id == bindparam("b_id"), _messages.c.state == "dispatched",
           _messages.c.lease_token == bindparam("b_token"))
    .values(state="sending", lease_until=bindparam("b_lease", type_=UTCDateTime()),
            updated_at=bindparam("b_now", type_=UTCDateTime()))
)
_INSERT_ATTEMPT = _attempts.insert()
_RECORD_VALUES = {
    "state": bindparam("b_state"),
    "attempts": _messages.c.attempts + 1,
    "failures": _messages.c.failures + bindparam("b_failures", type_=Integer()),
    "ambiguous": _messages.c.ambiguous + bindparam("b_ambiguous", type_=Integer()),
    "lease_token": None,
    "lease_until": None,
    "last_outcome": bindparam("b_outcome"),
    "last_reason": bindparam("b_reason"),
    "updated_at": bindparam("b_now", type_=UTCDateTime()),
    "next_attempt_at": func.coalesce(bindparam("b_next", type_=UTCDateTime()), _messages.c.next_attempt_at),
    "session_id": func.coalesce(bindparam("b_session", type_=BigInteger()), _messages.c.session_id),
    "sent_at": func.coalesce(bindparam("b_sent_at", type_=UTCDateTime()), _messages.c.sent_at),
}
_RECORD = (
    update(_messages)
    .where(_messages.c.id == bindparam("b_id"), _messages.c.state == "sending",
           _messages.c.lease_token == bindparam("b_token"))
    .values(**_RECORD_VALUES)
)
# Our lease ran out during a slow call and the row was taken back, but the SMS did go
# out: it is marked sent anyway, so that it is not sent a second time.
_RECORD_LATE_SENT = (
    update(_messages)
    .where(_messages.c.id == bindparam("b_id"), _messages.c.state.in_(("pending", "dispatched", "unknown")))
    .values(**_RECORD_VALUES)
)


@dataclass(frozen=True)
class NewMessage:
    """A validated message, ready to insert (see worker.enqueue for validation)."""

    serial_number: str
    to_phone: str
    body: str
    segments: int
    next_attempt_at: datetime
    deadline_at: datetime | None
    idempotency_key: str | None
    meta: dict[str, Any] | None

    def same_content(self, row: Message) -> bool:
        return (
            row.serial_number == self.serial_number
            and row.to_phone == self.to_phone
            and row.body == self.body
        )


@dataclass(frozen=True)
class Work:
    """What a worker needs of a dispatched message: loaded once per batch."""

    id: int
    serial_number: str
    to_phone: str
    body: str
    segments: int
    attempts: int
    failures: int
    deadline_at: datetime | None


@dataclass(frozen=True)
class AttemptRecord:
    """One call's audit row (see models.tables.Attempt)."""

    number: int
    started_at: datetime
    latency_ms: float | None
    classification: str
    reason: str
    http_status: int | None = None
    success: bool | None = None
    code: int | None = None
    message: str | None = None
    data_status: str | None = None
    data_message: str | None = None
    session_id: int | None = None
    error: str | None = None
    worker: str | None = None


@dataclass(frozen=True)
class Transition:
    """The new state of a message after an attempt (computed by worker.transition)."""

    state: str
    reason: str
    outcome: str
    next_attempt_at: datetime | None = None
    failures_delta: int = 0
    ambiguous_delta: int = 0
    session_id: int | None = None
    sent: bool = False
    #: Pause the chatbot until this time (429, auth failure), with the reason shown to operators.
    pause_until: datetime | None = None
    pause_reason: str | None = None
    suppress_number: bool = False


class Outbox:
    """The outbox repository, handed its engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed on success, rolled back on error."""
        with self._sessions.begin() as session:
            yield session

    # -- producing ------------------------------------------------------------------------
    def add(self, messages: Sequence[NewMessage], now: datetime, session: Session | None = None) -> list[int]:
        """Insert messages (idempotently) and return their ids, in order.

        With `session`, the rows join the caller's transaction and are only
        flushed; the caller commits. Without it, one transaction of our own.
        """
        if session is not None:
            return self._add(session, messages, now)
        for _ in range(3):
            try:
                with self.session() as own:
                    return self._add(own, messages, now)
            except IntegrityError:
                # A concurrent producer inserted one of our idempotency keys first:
                # go round again, and this time it is found and compared.
                continue
        raise RuntimeError("could not insert messages: idempotency keys kept conflicting")

    def _add(self, session: Session, messages: Sequence[NewMessage], now: datetime) -> list[int]:
        from worker.errors import IdempotencyConflict

        keys = [m.idempotency_key for m in messages if m.idempotency_key]
        existing: dict[str, Message] = {}
        if keys:
            for chunk in _chunks(keys, 500):
                for row in session.scalars(select(Message).where(Message.idempotency_key.in_(chunk))):
                    existing[row.idempotency_key] = row  # type: ignore[index]
        ids: list[int | None] = []
        to_insert: list[dict[str, Any]] = []
        positions: list[int] = []
        seen: dict[str, NewMessage] = {}
        for i, m in enumerate(messages):
            key = m.idempotency_key
            if key and key in existing:
                if not m.same_content(existing[key]):
                    raise IdempotencyConflict(
                        "idempotency_key", f"{key!r} was already used for a different message"
                    )
                ids.append(existing[key].id)
                continue
            if key and key in seen:
                if seen[key] != m:
                    raise IdempotencyConflict("idempotency_key", f"{key!r} appears twice with different content")
                ids.append(None)  # filled from the first occurrence below
                positions.append(-1 - list(seen).index(key))
                continue
            if key:
                seen[key] = m
            ids.append(None)
            positions.append(len(to_insert))
            to_insert.append(
                {
                    "serial_number": m.serial_number,
                    "to_phone": m.to_phone,
                    "body": m.body,
                    "segments": m.segments,
                    "state": "pending",
                    "attempts": 0,
                    "failures": 0,
                    "ambiguous": 0,
                    "next_attempt_at": m.next_attempt_at,
                    "deadline_at": m.deadline_at,
                    "idempotency_key": m.idempotency_key,
                    "meta": m.meta,
                    "created_at": now,
                    "updated_at": now,
                }
            )
        new_ids: list[int] = []
        if to_insert:
            result = session.execute(
                insert(Message).returning(Message.id, sort_by_parameter_order=True), to_insert
            )
            new_ids = list(result.scalars())
        key_ids = {}
        pos_iter = iter(positions)
        out: list[int] = []
        for i, current in enumerate(ids):
            if current is not None:
                out.append(current)
                continue
            pos = next(pos_iter)
            if pos >= 0:
                out.append(new_ids[pos])
                key = messages[i].idempotency_key
                if key:
                    key_ids[key] = new_ids[pos]
            else:
                out.append(key_ids[messages[i].idempotency_key])  # type: ignore[index]
        return out

    def is_suppressed(self, to_phones: Iterable[str], session: Session | None = None) -> dict[str, str]:
        """Which of these numbers must not be texted, with the reason (in `session` when given)."""
        phones = list(set(to_phones))
        if session is not None:
            return self._suppressed(session, phones)
        with self.session() as s:
            return self._suppressed(s, phones)

    def _suppressed(self, s: Session, phones: list[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for chunk in _chunks(phones, 500):
            for row in s.scalars(select(SuppressedNumber).where(SuppressedNumber.to_phone.in_(chunk))):
                out[row.to_phone] = row.reason
        return out

    # -- dispatching ----------------------------------------------------------------------
    def due_chatbots(self, now: datetime) -> list[str]:
        """Chatbots with at least one due pending message, in a stable order.

        A loose index scan over the partial index of pending rows: one probe per
        chatbot with waiting messages, whatever the size of each backlog.
        """
        walk = text(
            """
            WITH RECURSIVE bots(sn) AS (
                SELECT min(serial_number) FROM messages WHERE state = 'pending'
                UNION ALL
                SELECT (SELECT min(m.serial_number) FROM messages m
                        WHERE m.state = 'pending' AND m.serial_number > bots.sn)
                FROM bots WHERE bots.sn IS NOT NULL
            )
            SELECT sn FROM bots WHERE sn IS NOT NULL
            """
        )
        earliest = (
            select(func.min(Message.next_attempt_at))
            .where(Message.state == "pending", Message.serial_number == bindparam("sn"))
            .scalar_subquery()
        )
        with self.session() as s:
            bots = [row[0] for row in s.execute(walk)]
            due: list[str] = []
            for sn in bots:
                first = s.scalar(select(earliest), {"sn": sn})
                if first is not None and first <= now:
                    due.append(sn)
            return due

    def inflight_counts(self) -> dict[str, int]:
        """Messages per chatbot dispatched but not yet claimed (those claimed hold a rate slot)."""
        with self.session() as s:
            rows = s.execute(
                select(Message.serial_number, func.count())
                .where(Message.state == "dispatched")
                .group_by(Message.serial_number)
            )
            return {sn: n for sn, n in rows}

    def next_due_at(self, after: datetime | None = None) -> datetime | None:
        """When the earliest pending message (due after `after`, if given) becomes due."""
        q = select(func.min(Message.next_attempt_at)).where(Message.state == "pending")
        if after is not None:
            q = q.where(Message.next_attempt_at > after)
        with self.session() as s:
            return s.scalar(q)

    def lease_due(self, serial_number: str, now: datetime, limit: int, lease_until: datetime) -> tuple[str, list[int]]:
        """Mark up to `limit` due messages of one chatbot dispatched under a new lease token."""
        token = str(uuid.uuid4())
        with self.session() as s:
            candidates = (
                select(Message.id)
                .where(
                    Message.serial_number == serial_number,
                    Message.state == "pending",
                    Message.next_attempt_at <= now,
                )
                .order_by(Message.next_attempt_at, Message.id)
                .limit(limit)
            )
            if s.bind.dialect.name == "postgresql":  # type: ignore[union-attr]
                candidates = candidates.with_for_update(skip_locked=True)
            ids = list(s.scalars(candidates))
            if not ids:
                return token, []
            s.execute(
                update(Message)
                .where(Message.id.in_(ids), Message.state == "pending")
                .values(state="dispatched", lease_token=token, lease_until=lease_until, updated_at=now)
            )
            # Re-read: only rows that really changed under this token count.
            leased = list(
                s.scalars(
                    select(Message.id).where(Message.id.in_(ids), Message.lease_token == token).order_by(Message.id)
                )
            )
        return token, leased

    def release(self, ids: Sequence[int], token: str, now: datetime) -> int:
        """Give dispatched messages back (publishing to the broker failed)."""
        with self.session() as s:
            res = s.execute(
                update(Message)
                .where(Message.id.in_(list(ids)), Message.state == "dispatched", Message.lease_token == token)
                .values(state="pending", lease_token=None, lease_until=None, updated_at=now)
            )
            return res.rowcount

    def rescue(self, now: datetime, ambiguous_policy: str, worker: str) -> dict[str, int]:
        """Take back messages whose lease ran out.

        dispatched: the task never arrived or its worker died before claiming: due again.
        sending: the worker died during the call, so the SMS may have gone out: an
        ambiguous attempt is recorded and the policy decides (retry: due again; hold: unknown).
        """
        counts = {"dispatched": 0, "sending": 0}
        with self.session() as s:
            res = s.execute(
                update(Message)
                .where(Message.state == "dispatched", Message.lease_until < now)
                .values(state="pending", lease_token=None, lease_until=None, next_attempt_at=now, updated_at=now)
            )
            counts["dispatched"] = res.rowcount
            lost = list(
                s.execute(
                    select(Message.id, Message.attempts, Message.lease_token)
                    .where(Message.state == "sending", Message.lease_until < now)
                    .with_for_update()
                )
            )
            for mid, attempts, token in lost:
                new_state = "pending" if ambiguous_policy == "retry" else "unknown"
                changed = s.execute(
                    update(Message)
                    .where(Message.id == mid, Message.state == "sending", Message.lease_token == token)
                    .values(
                        state=new_state,
                        attempts=Message.attempts + 1,
                        failures=Message.failures + 1,
                        ambiguous=Message.ambiguous + 1,
                        lease_token=None,
                        lease_until=None,
                        next_attempt_at=now,
                        last_outcome="ambiguous",
                        last_reason="worker lost during the call (lease expired)",
                        updated_at=now,
                    )
                ).rowcount
                if changed:
                    s.add(
                        Attempt(
                            message_id=mid,
                            number=attempts + 1,
                            started_at=now,
                            classification="ambiguous",
                            reason="worker_lost",
                            error="the worker holding this message stopped before recording the outcome",
                            worker=worker,
                        )
                    )
                    counts["sending"] += 1
        return counts

    def expire_overdue(self, now: datetime) -> int:
        """Pending messages whose deadline has passed are expired: never sent late."""
        with self.session() as s:
            return s.execute(
                update(Message)
                .where(Message.state == "pending", Message.deadline_at.is_not(None), Message.deadline_at <= now)
                .values(state="expired", last_outcome="expired", last_reason="deadline passed before sending",
                        lease_token=None, lease_until=None, updated_at=now)
            ).rowcount

    # -- working --------------------------------------------------------------------------
    def load_dispatched(self, ids: Sequence[int], token: str) -> list[Work]:
        """The messages of a task that are still dispatched under its token."""
        with self.engine.begin() as s:
            rows = s.execute(
                select(
                    Message.id, Message.serial_number, Message.to_phone, Message.body, Message.segments,
                    Message.attempts, Message.failures, Message.deadline_at,
                )
                .where(Message.id.in_(list(ids)), Message.state == "dispatched", Message.lease_token == token)
                .order_by(Message.id)
            )
            return [Work(*r) for r in rows]

    def claim(self, message_id: int, token: str, now: datetime, lease_until: datetime) -> bool:
        """Move one dispatched message to sending, if it is still ours. Atomic."""
        with self.engine.begin() as conn:
            params = {"b_id": message_id, "b_token": token, "b_lease": lease_until, "b_now": now}
            return bool(conn.execute(_CLAIM, params).rowcount)

    def give_back(self, message_id: int, token: str, now: datetime, due_at: datetime | None, reason: str) -> bool:
        """Throttled or paused: pending again without using an attempt.

        `due_at` None keeps the message's time: a paused chatbot is skipped by the
        dispatcher as a whole, and its messages are due the moment it resumes.
        """
        values: dict[str, Any] = {"state": "pending", "lease_token": None, "lease_until": None,
                                  "last_reason": reason, "updated_at": now}
        if due_at is not None:
            values["next_attempt_at"] = due_at
        return self._update_held(message_id, token, ("dispatched", "sending"), values)

    def expire(self, message_id: int, token: str, now: datetime) -> bool:
        """A claimed message whose deadline passed: expired, and no call is made."""
        return self._update_held(message_id, token, ("dispatched", "sending"), {
            "state": "expired", "lease_token": None, "lease_until": None, "last_outcome": "expired",
            "last_reason": "deadline passed before sending", "updated_at": now})

    def _update_held(self, message_id: int, token: str, states: tuple[str, ...], values: dict[str, Any]) -> bool:
        """Change a message only while it is in `states` under our lease token."""
        with self.engine.begin() as s:
            return bool(
                s.execute(
                    update(Message)
                    .where(Message.id == message_id, Message.state.in_(states), Message.lease_token == token)
                    .values(**values)
                ).rowcount
            )

    def record(self, message_id: int, serial_number: str, to_phone: str, token: str,
               attempt: AttemptRecord, change: Transition, now: datetime) -> bool:
        """Write the attempt and the message's new state in ONE transaction.

        The attempt row is written even if the lease was lost meanwhile: the call
        was made and the audit trail must show it. Returns whether the message
        row was still ours and changed.
        """
        params = {
            "b_id": message_id,
            "b_token": token,
            "b_state": change.state,
            "b_failures": change.failures_delta,
            "b_ambiguous": change.ambiguous_delta,
            "b_outcome": change.outcome,
            "b_reason": change.reason,
            "b_now": now,
            "b_next": change.next_attempt_at,
            "b_session": change.session_id if change.sent else None,
            "b_sent_at": now if change.sent else None,
        }
        with self.engine.begin() as conn:
            conn.execute(_INSERT_ATTEMPT, {"message_id": message_id, **attempt.__dict__})
            mine = conn.execute(_RECORD, params).rowcount
            if not mine and change.sent:
                mine = conn.execute(_RECORD_LATE_SENT, params).rowcount
            if change.pause_until is not None or change.suppress_number:
                with Session(bind=conn) as s:
                    if change.pause_until is not None:
                        self._pause(s, serial_number, change.pause_until, change.pause_reason, now)
                    if change.suppress_number:
                        self._suppress(s, to_phone, change.reason, now)
                    s.flush()
            return bool(mine)

    def _suppress(self, s: Session, to_phone: str, reason: str, now: datetime) -> None:
        if s.get(SuppressedNumber, to_phone) is None:
            s.add(SuppressedNumber(to_phone=to_phone, reason=reason[:64], at=now))
        s.execute(
            update(Message)
            .where(Message.to_phone == to_phone, Message.state == "pending")
            .values(state="failed", last_outcome="final", last_reason=f"number suppressed: {reason}", updated_at=now)
        )

    # -- chatbots -------------------------------------------------------------------------
    def _pause(self, s: Session, serial_number: str, until: datetime, reason: str | None, now: datetime) -> None:
        row = s.get(Chatbot, serial_number, with_for_update=True)
        if row is None:
            s.add(Chatbot(serial_number=serial_number, paused_until=until, pause_reason=reason, updated_at=now))
        elif row.paused_until is None or row.paused_until < until:
            row.paused_until, row.pause_reason, row.updated_at = until, reason, now

    def pause(self, serial_number: str, until: datetime, reason: str, now: datetime) -> None:
        with self.session() as s:
            self._pause(s, serial_number, until, reason, now)

    def resume(self, serial_number: str, now: datetime) -> bool:
        with self.session() as s:
            row = s.get(Chatbot, serial_number)
            if row is None or row.paused_until is None:
                return False
            row.paused_until, row.pause_reason, row.updated_at = None, None, now
            return True

    def set_limit(self, serial_number: str, now: datetime, *, rate_per_s: float | None, burst: int | None,
                  segments_per_s: float | None) -> None:
        with self.session() as s:
            row = s.get(Chatbot, serial_number, with_for_update=True)
            if row is None:
                row = Chatbot(serial_number=serial_number, updated_at=now)
                s.add(row)
            row.rate_per_s, row.burst, row.segments_per_s, row.updated_at = rate_per_s, burst, segments_per_s, now

    def chatbots(self, serial_numbers: Iterable[str] | None = None) -> dict[str, Chatbot]:
        """Configured chatbot rows (all, or those named)."""
        with self.session() as s:
            q = select(Chatbot)
            if serial_numbers is not None:
                q = q.where(Chatbot.serial_number.in_(list(serial_numbers)))
            return {c.serial_number: c for c in s.scalars(q)}

    # -- reading for operators ------------------------------------------------------------
    def get(self, message_id: int) -> Message | None:
        with self.session() as s:
            return s.get(Message, message_id)

    def history(self, message_id: int) -> tuple[list[Attempt], list[OperatorAction]]:
        with self.session() as s:
            attempts = list(s.scalars(select(Attempt).where(Attempt.message_id == message_id).order_by(Attempt.id)))
            actions = list(
                s.scalars(select(OperatorAction).where(OperatorAction.message_id == message_id).order_by(OperatorAction.id))
            )
            return attempts, actions

    def list(self, *, states: Sequence[str] = (), serial_number: str | None = None,
             since: datetime | None = None, until: datetime | None = None, limit: int = 100,
             after_id: int | None = None) -> list[Message]:
        with self.session() as s:
            q = select(Message)
            if states:
                q = q.where(Message.state.in_(list(states)))
            if serial_number:
                q = q.where(Message.serial_number == serial_number)
            if since:
                q = q.where(Message.created_at >= since)
            if until:
                q = q.where(Message.created_at < until)
            if after_id is not None:
                q = q.where(Message.id > after_id)
            return list(s.scalars(q.order_by(Message.id.desc() if after_id is None else Message.id).limit(limit)))

    def counts(self) -> dict[str, int]:
        """Messages per state."""
        with self.session() as s:
            return {state: n for state, n in s.execute(select(Message.state, func.count()).group_by(Message.state))}

    def operator_retry(self, ids: Sequence[int], now: datetime, actor: str | None,
                       deadline_at: datetime | None) -> dict[int, str]:
        """Send failed / unknown / expired / cancelled messages again; history is kept.

        Returns, per id, "retried" or why not. The retry gets a fresh attempt budget
        and, when given, a new deadline (an expired message needs one).
        """
        out: dict[int, str] = {}
        with self.session() as s:
            for mid in ids:
                row = s.get(Message, mid, with_for_update=True)
                if row is None:
                    out[mid] = "not found"
                    continue
                if row.state not in RETRYABLE_STATES:
                    out[mid] = f"is {row.state}; only {', '.join(RETRYABLE_STATES)} can be retried"
                    continue
                if s.get(SuppressedNumber, row.to_phone) is not None:
                    out[mid] = "number is suppressed (STOP or landline)"
                    continue
                s.add(OperatorAction(message_id=mid, action="retry", from_state=row.state, actor=actor, at=now))
                from_state = row.state
                row.state, row.failures, row.next_attempt_at = "pending", 0, now
                row.lease_token = row.lease_until = None
                if deadline_at is not None:
                    row.deadline_at = deadline_at
                elif row.deadline_at is not None and row.deadline_at <= now:
                    row.deadline_at = None
                row.last_reason, row.updated_at = f"operator retry from {from_state}", now
                out[mid] = "retried"
        return out

    def cancel(self, ids: Sequence[int], now: datetime, actor: str | None) -> dict[int, str]:
        """Cancel messages that have not been sent (pending or dispatched)."""
        out: dict[int, str] = {}
        with self.session() as s:
            for mid in ids:
                row = s.get(Message, mid, with_for_update=True)
                if row is None:
                    out[mid] = "not found"
                elif row.state not in ("pending", "dispatched"):
                    out[mid] = f"is {row.state}; only pending or dispatched messages can be cancelled"
                else:
                    s.add(OperatorAction(message_id=mid, action="cancel", from_state=row.state, actor=actor, at=now))
                    row.state, row.lease_token, row.lease_until, row.updated_at = "cancelled", None, None, now
                    row.last_outcome, row.last_reason = "cancelled", "cancelled by operator"
                    out[mid] = "cancelled"
        return out


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


__all__ = ["AttemptRecord", "NewMessage", "Outbox", "Transition", "Work", "INDEFINITE"]

