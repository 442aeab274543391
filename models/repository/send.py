"""The workers' part of the repository: claim, hand back, record an attempt."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Integer, Text, bindparam, exists, func, update
from sqlalchemy.orm import Session

from oaksend.models.fit import fit_attempt, fits_int64
from oaksend.models.records import AttemptRecord, Transition, Work
from oaksend.models.repository.base import Repository
from oaksend.models.tables import (
    Attempt,
    Message,
    SuppressedNumber,
    UTCDateTime,
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
_suppressed = SuppressedNumber.__table__
_IS_SUPPRESSED = exists().where(_suppressed.c.to_phone == _messages.c.to_phone)
_SUPPRESSED_VALUES = {"state": "failed", "last_outcome": "final",
                      "last_reason": "number suppressed (STOP or landline) before sending",
                      "lease_token": None, "lease_until": None, "claimed_by": None, "calling_at": None}
_WORK_COLUMNS = (_messages.c.id, _messages.c.serial_number, _messages.c.to_phone, _messages.c.body,
                 _messages.c.segments, _messages.c.attempts, _messages.c.failures, _messages.c.deadline_at,
                 _messages.c.quiet)
# A group's statements: the ids are one expanding parameter, so each statement is built once too.
_GROUP_IDS = _messages.c.id.in_(bindparam("b_ids", expanding=True))
_NOW = bindparam("b_now", type_=UTCDateTime())
_DISPATCHED_TO_US = (_GROUP_IDS, _messages.c.state == "dispatched", _messages.c.lease_token == bindparam("b_token"))
_CLAIM_SUPPRESSED = update(_messages).where(*_DISPATCHED_TO_US, _IS_SUPPRESSED).values(updated_at=_NOW,
                                                                                        **_SUPPRESSED_VALUES)
_CLAIM_GROUP = (
    update(_messages).where(*_DISPATCHED_TO_US)
    .values(state="sending", lease_until=bindparam("b_lease", type_=UTCDateTime()),
            claimed_by=bindparam("b_worker"), calling_at=None, updated_at=_NOW)
    .returning(*_WORK_COLUMNS)
)
_UNMARKED_OURS = (_GROUP_IDS, _messages.c.state == "sending", _messages.c.lease_token == bindparam("b_token"),
                  _messages.c.calling_at.is_(None))
_MARK_CALLING = (update(_messages).where(*_UNMARKED_OURS, ~_IS_SUPPRESSED).values(calling_at=_NOW)
                 .returning(_messages.c.id))
_MARK_SUPPRESSED = (update(_messages).where(*_UNMARKED_OURS, _IS_SUPPRESSED)
                    .values(updated_at=_NOW, **_SUPPRESSED_VALUES).returning(_messages.c.id))
_RECORD_VALUES = {
    "state": bindparam("b_state"),
    "attempts": _messages.c.attempts + 1,
    "failures": _messages.c.failures + bindparam("b_failures", type_=Integer()),
    "ambiguous": _messages.c.ambiguous + bindparam("b_ambiguous", type_=Integer()),
    "lease_token": None,
    "lease_until": None,
    "claimed_by": None,
    "calling_at": None,
    "last_outcome": bindparam("b_outcome"),
    "last_reason": bindparam("b_reason"),
    "updated_at": _NOW,
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



def _record_params(message_id: int, token: str, attempt: AttemptRecord, change: Transition,
                   now: datetime) -> dict[str, Any]:
    return {
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
# The same, after a rescue already counted this call through its "worker_lost" stand-in.
_RECORD_LATE_SENT_REPLACED = (
    update(_messages)
    .where(_messages.c.id == bindparam("b_id"), _messages.c.state.in_(("pending", "dispatched", "unknown")))
    .values(**{k: v for k, v in _RECORD_VALUES.items() if k not in ("attempts", "failures", "ambiguous")})
)


class SendRepository(Repository):
    # -- working --------------------------------------------------------------------------
    # -- groups: one round trip for the messages of a task --------------------------------
    def claim_group(self, ids: Sequence[int], token: str, now: datetime, lease_until: datetime,
                    worker: str) -> tuple[list[Work], int]:
        """Claim the messages of a task still dispatched under `token`: they become `sending`,
        held by `worker`, with no call marker yet. Those to a suppressed number fail instead.

        Returns (the claimed work, in id order; how many failed as suppressed).
        """
        params = {"b_ids": list(ids), "b_token": token, "b_now": now}
        with self.engine.begin() as conn:
            stopped = conn.execute(_CLAIM_SUPPRESSED, params).rowcount
            rows = conn.execute(_CLAIM_GROUP, {**params, "b_lease": lease_until, "b_worker": worker}).all()
        return sorted((Work(*r) for r in rows), key=lambda w: w.id), stopped

    def mark_calling(self, ids: Sequence[int], token: str, now: datetime) -> tuple[list[int], list[int]]:
        """Just before their requests leave: mark claimed messages as "may have been called".

        A number suppressed since the claim (a STOP answered to another message) is
        checked here, the last moment: those messages fail without a call.
        Returns (ids marked, ids failed as suppressed); others are no longer ours.
        """
        params = {"b_ids": list(ids), "b_token": token, "b_now": now}
        with self.engine.begin() as conn:
            marked = [r[0] for r in conn.execute(_MARK_CALLING, params)]
            stopped: list[int] = []
            if len(marked) < len(ids):
                stopped = [r[0] for r in conn.execute(_MARK_SUPPRESSED, params)]
        return marked, stopped

    def give_back_group(self, ids: Sequence[int], token: str, now: datetime, due_at: datetime | None,
                        reason: str, *, unmark: bool = False) -> int:
        """Claimed but not called (throttled, paused, Redis away): pending again, no attempt used.

        Only rows not marked calling, unless `unmark`: the worker knows their request never started.
        """
        values: dict[str, Any] = {"state": "pending", "lease_token": None, "lease_until": None, "claimed_by": None,
                                  "calling_at": None, "last_reason": reason, "updated_at": now}
        if due_at is not None:
            values["next_attempt_at"] = due_at
        with self.engine.begin() as conn:
            return conn.execute(
                update(_messages)
                .where(_messages.c.id.in_(list(ids)), _messages.c.state.in_(("dispatched", "sending")),
                       _messages.c.lease_token == token,
                       *(() if unmark else (_messages.c.calling_at.is_(None),)))
                .values(**values)
            ).rowcount

    def expire_group(self, ids: Sequence[int], token: str, now: datetime, reason: str) -> int:
        """Claimed messages too close to (or past) their deadline: expired, no call made."""
        with self.engine.begin() as conn:
            return conn.execute(
                update(_messages)
                .where(_messages.c.id.in_(list(ids)), _messages.c.state.in_(("dispatched", "sending")),
                       _messages.c.lease_token == token, _messages.c.calling_at.is_(None))
                .values(state="expired", lease_token=None, lease_until=None, claimed_by=None, calling_at=None,
                        last_outcome="expired", last_reason=reason, updated_at=now)
            ).rowcount

    def record_group(self, token: str, outcomes: Sequence[tuple[Work, AttemptRecord, Transition]],
                     now: datetime) -> list[bool]:
        """Write the attempts and new states of a group in ONE transaction (two executemany).

        Falls back to one message at a time when a row is no longer ours (its lease was
        taken), so that each message's outcome stays exact. Returns, per message,
        whether its row was still ours.
        """
        if not outcomes:
            return []
        # Every value made to fit its column first (`models.fit`): an odd response never fails the write.
        outcomes = [(work, fit_attempt(attempt), change) for work, attempt, change in outcomes]
        simple = all(change.pause_until is None and not change.suppress_number for _, _, change in outcomes)
        if simple:
            params = [_record_params(work.id, token, attempt, change, now) for work, attempt, change in outcomes]
            with self.engine.connect() as conn, conn.begin() as tx:
                changed = conn.execute(_RECORD, params).rowcount
                if changed == len(outcomes):
                    conn.execute(_INSERT_ATTEMPT, [{"message_id": work.id, **attempt.__dict__}
                                                   for work, attempt, _ in outcomes])
                    return [True] * len(outcomes)
                tx.rollback()
        return [self.record(work.id, work.serial_number, work.to_phone, token, attempt, change, now)
                for work, attempt, change in outcomes]

    def claim(self, message_id: int, token: str, now: datetime, lease_until: datetime) -> bool:
        """Move one dispatched message to sending, if it is still ours. Atomic."""
        with self.engine.begin() as conn:
            params = {"b_id": message_id, "b_token": token, "b_lease": lease_until, "b_now": now}
            return bool(conn.execute(_CLAIM, params).rowcount)

    def record(self, message_id: int, serial_number: str, to_phone: str, token: str,
               attempt: AttemptRecord, change: Transition, now: datetime) -> bool:
        """Write the attempt and the message's new state in ONE transaction.

        The attempt row is written even if the lease was lost meanwhile: the call
        was made and the audit trail must show it. Returns whether the message
        row was still ours and changed. The attempt's values are made to fit their
        columns first (`models.fit`), so an odd response can never fail the write.
        """
        attempt = fit_attempt(attempt)
        params = _record_params(message_id, token, attempt, change, now)
        with self.engine.begin() as conn:
            mine = conn.execute(_RECORD, params).rowcount
            row = {"message_id": message_id, **attempt.__dict__}
            replaced = 0
            if not mine:
                # Taken from us meanwhile: if a rescue wrote a "worker_lost" stand-in for
                # this very call, the real outcome replaces it (one call, one attempt row).
                replaced = conn.execute(
                    update(_attempts)
                    .where(_attempts.c.message_id == message_id, _attempts.c.number == attempt.number,
                           _attempts.c.reason == "worker_lost")
                    .values(**{k: v for k, v in row.items() if k not in ("message_id", "number")})
                ).rowcount
                if change.sent:
                    late = _RECORD_LATE_SENT_REPLACED if replaced else _RECORD_LATE_SENT
                    mine = conn.execute(late, params).rowcount
            if not replaced:
                conn.execute(_INSERT_ATTEMPT, row)
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
        # Every message to it not yet called stops: waiting, dispatched, or claimed by a
        # worker that has not marked it calling (that worker then finds it gone).
        unsent = (Message.state.in_(("pending", "dispatched"))
                  | ((Message.state == "sending") & Message.calling_at.is_(None)))
        s.execute(
            update(Message)
            .where(Message.to_phone == to_phone, unsent)
            .values(state="failed", last_outcome="final", last_reason=f"number suppressed: {reason}",
                    lease_token=None, lease_until=None, claimed_by=None, updated_at=now)
        )

