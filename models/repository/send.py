"""The workers' part of the repository: claim, hand back, record an attempt."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Integer, Text, bindparam, func, select, update
from sqlalchemy.orm import Session

from oaksend.models.fit import fit_attempt, fits_int64
from oaksend.models.records import AttemptRecord, Transition, Work
from oaksend.models.repository.base import Repository
from oaksend.models.tables import (
    UTCDateTime,
    Attempt,
    Message,
    SuppressedNumber,
)

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
    "session_id_text": func.coalesce(bindparam("b_session_text", type_=Text()), _messages.c.session_id_text),
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



class SendRepository(Repository):
    # -- working --------------------------------------------------------------------------
    def load_dispatched(self, ids: Sequence[int], token: str) -> list[Work]:
        """The messages of a task that are still dispatched under its token."""
        with self.engine.begin() as s:
            rows = s.execute(
                select(
                    Message.id, Message.serial_number, Message.to_phone, Message.body, Message.segments,
                    Message.attempts, Message.failures, Message.deadline_at, Message.quiet,
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
        row was still ours and changed. The attempt's values are made to fit their
        columns first (`models.fit`), so an odd response can never fail the write.
        """
        attempt = fit_attempt(attempt)
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
            "b_session": change.session_id if change.sent and fits_int64(change.session_id) else None,
            # A SessionID that is not a 64-bit integer travels on the attempt only.
            "b_session_text": attempt.session_id_text if change.sent else None,
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

