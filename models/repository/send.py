"""The workers' part of the repository: claim, hand back, record an attempt."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Connection, Integer, Text, bindparam, case, exists, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from oaksend.models.api_tables import EVENTS
from oaksend.models.fit import fit_attempt, fits_int64
from oaksend.models.records import AttemptRecord, Transition, Work
from oaksend.models.repository.api import Outcome, announce
from oaksend.models.repository.base import Repository, dialect_insert
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
# An anonymized message (retention blanked its number and text) is never called, whatever put it back.
_NOTHING_TO_SEND = or_(_messages.c.to_phone == "", _messages.c.body == "")
_REFUSED = or_(_IS_SUPPRESSED, _NOTHING_TO_SEND)
_MARK_CALLING = (update(_messages).where(*_UNMARKED_OURS, ~_REFUSED).values(calling_at=_NOW)
                 .returning(_messages.c.id))
_MARK_SUPPRESSED = (update(_messages).where(*_UNMARKED_OURS, _REFUSED)
                    .values(updated_at=_NOW, **{**_SUPPRESSED_VALUES, "last_reason": case(
                        (_NOTHING_TO_SEND, "anonymized: no number or text left to send"),
                        else_=_SUPPRESSED_VALUES["last_reason"])})
                    .returning(_messages.c.id))
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
# The row was taken from us during the call (our lease ran out, or our heartbeat fell
# silent), but the SMS did go out: a success always wins, whatever the row became
# meanwhile (due again, unknown, failed, expired, even cancelled), so it is not sent twice.
_RECORD_LATE_SENT = (
    update(_messages)
    .where(_messages.c.id == bindparam("b_id"), _messages.c.state != "sent")
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
    .where(_messages.c.id == bindparam("b_id"), _messages.c.state != "sent")
    .values(**{k: v for k, v in _RECORD_VALUES.items() if k not in ("attempts", "failures", "ambiguous")})
)


_ATTEMPT_VALUES = [c.name for c in _attempts.c if c.name not in ("id", "message_id", "number")]
# The rescue's stand-in for a call whose worker it judged lost, replaced by the call's real answer.
_REPLACE_STAND_IN = (
    update(_attempts)
    .where(_attempts.c.message_id == bindparam("b_id"), _attempts.c.number == bindparam("b_number"),
           _attempts.c.reason == "worker_lost")
    .values(**{name: bindparam(f"v_{name}", type_=_attempts.c[name].type) for name in _ATTEMPT_VALUES})
)


class _Raced(Exception):
    """A row of the batch is no longer ours: the batch is written again, one row at a time."""


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
        checked here, the last moment: those messages fail without a call, as do anonymized
        ones (no number or text left: the API is never called with an empty one).
        Returns (ids marked, ids failed as suppressed or anonymized); others are no longer ours.
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
            expired = conn.execute(
                update(_messages)
                .where(_messages.c.id.in_(list(ids)), _messages.c.state.in_(("dispatched", "sending")),
                       _messages.c.lease_token == token, _messages.c.calling_at.is_(None))
                .values(state="expired", lease_token=None, lease_until=None, claimed_by=None, calling_at=None,
                        last_outcome="expired", last_reason=reason, updated_at=now)
                .returning(_messages.c.id, _messages.c.serial_number)
            ).all()
            announce(conn, [Outcome(mid, serial, "expired", reason) for mid, serial in expired], now)
            return len(expired)

    def record_group(self, token: str, outcomes: Sequence[tuple[Work, AttemptRecord, Transition]],
                     now: datetime, *, again: bool = False) -> list[bool]:
        """Write a batch of answers in ONE transaction, whatever they are (429s, STOPs, pauses); safe to
        run again.

        Each attempt carries its request's id, unique among attempts: answers already written (a
        retry after a database blip whose commit had landed) are skipped, so one call never gets
        two attempt rows. Rows still ours (`sending` under `token`) take their new state in one
        statement; a row taken from us meanwhile (the rescue, after our lease or our heartbeat)
        still gets its answer: the rescue's "worker_lost" stand-in for this call is replaced by it,
        and a success marks the message sent whatever state it is in. Pauses and suppressions are
        upserts. Returns, per answer, whether its message took it.

        `again`: a write of this batch may have landed already (the last try failed without a
        word): answers whose request id is stored are skipped. A first write skips that look-up;
        the unique index still refuses a second row, and the write is then tried again.
        """
        if not outcomes:
            return []
        # Every value made to fit its column first (`models.fit`): an odd response never fails the write.
        fitted = [(work, fit_attempt(attempt), change) for work, attempt, change in outcomes]
        one_by_one = False
        while True:
            try:
                return self._record(token, fitted, now, one_by_one=one_by_one, again=again)
            except _Raced:
                # Some row is no longer ours (taken by the rescue): again, one row at a time, each
                # UPDATE's own count telling whose it is.
                one_by_one = True
            except IntegrityError:
                if again:
                    raise
                again = True  # a request id is stored already: this batch (or part of it) landed before

    def _record(self, token: str, outcomes: list[tuple[Work, AttemptRecord, Transition]], now: datetime, *,
                one_by_one: bool, again: bool) -> list[bool]:
        with self.engine.begin() as conn:
            known = [a.request_id for _, a, _ in outcomes if a.request_id] if again else []
            done = set(conn.scalars(select(_attempts.c.request_id).where(_attempts.c.request_id.in_(known)))
                       ) if known else set()
            todo = [o for o in outcomes if o[1].request_id not in done]
            params = {o[0].id: _record_params(o[0].id, token, o[1], o[2], now) for o in todo}
            if one_by_one:
                ours = {mid for mid, p in params.items() if conn.execute(_RECORD, p).rowcount}
            else:
                # Usually every row is still ours: one statement (its row locks keep the rescue out).
                if params and conn.execute(_RECORD, list(params.values())).rowcount != len(params):
                    raise _Raced
                ours = set(params)
            took = set(ours)
            replaced: set[int] = set()
            for work, attempt, change in todo:
                if work.id in ours:
                    continue
                # Taken from us meanwhile: a "worker_lost" stand-in for this very call is replaced by
                # its real outcome (one call, one attempt row); a success wins whatever the state.
                row = {"message_id": work.id, **attempt.__dict__}
                if conn.execute(_REPLACE_STAND_IN, {"b_id": work.id, "b_number": attempt.number,
                                                    **{f"v_{k}": v for k, v in row.items()}}).rowcount:
                    replaced.add(work.id)
                if change.sent:
                    late = _RECORD_LATE_SENT_REPLACED if work.id in replaced else _RECORD_LATE_SENT
                    if conn.execute(late, params[work.id]).rowcount:
                        took.add(work.id)
            rows = [{"message_id": w.id, **a.__dict__} for w, a, _ in todo if w.id not in replaced]
            if rows:
                conn.execute(_INSERT_ATTEMPT, rows)
            # Status webhooks: the outcomes this batch settled, announced in its own transaction.
            announce(conn, [Outcome(w.id, w.serial_number, c.state, c.reason,
                                    (c.session_id or a.session_id_text) if c.sent else None, a.number)
                            for w, a, c in todo if w.id in took and c.state in EVENTS], now)
            self._side_effects(conn, todo, now)
        return [work.id in took or attempt.request_id in done for work, attempt, _ in outcomes]

    def _side_effects(self, conn: Connection, todo: list[tuple[Work, AttemptRecord, Transition]],
                      now: datetime) -> None:
        """Chatbot pauses and suppressed numbers of a batch, as upserts in its transaction."""
        pauses: dict[str, tuple[datetime, str | None]] = {}
        for work, _, change in todo:
            if change.pause_until is not None and (work.serial_number not in pauses
                                                   or pauses[work.serial_number][0] < change.pause_until):
                pauses[work.serial_number] = (change.pause_until, change.pause_reason)
        for serial_number, (until, reason) in sorted(pauses.items()):
            self._pause(conn, serial_number, until, reason, now)
        for phone, reason in sorted({w.to_phone: c.reason for w, _, c in todo if c.suppress_number}.items()):
            self._suppress(conn, phone, reason, now)

    def claim(self, message_id: int, token: str, now: datetime, lease_until: datetime) -> bool:
        """Move one dispatched message to sending, if it is still ours. Atomic."""
        with self.engine.begin() as conn:
            params = {"b_id": message_id, "b_token": token, "b_lease": lease_until, "b_now": now}
            return bool(conn.execute(_CLAIM, params).rowcount)

    def record(self, message_id: int, serial_number: str, to_phone: str, token: str,
               attempt: AttemptRecord, change: Transition, now: datetime) -> bool:
        """One answer: `record_group` of one (the attempt row is written even if the lease was lost
        meanwhile: the call was made and the audit trail must show it)."""
        work = Work(message_id, serial_number, to_phone, "", 1, max(0, attempt.number - 1), 0, None)
        return self.record_group(token, [(work, attempt, change)], now)[0]

    @staticmethod
    def _suppress(conn: Connection, to_phone: str, reason: str, now: datetime) -> None:
        conn.execute(dialect_insert(conn, _suppressed).values(to_phone=to_phone, reason=reason[:64], at=now)
                     .on_conflict_do_nothing(index_elements=[_suppressed.c.to_phone]))
        # Every message to it not yet called stops: waiting, dispatched, or claimed by a
        # worker that has not marked it calling (that worker then finds it gone).
        unsent = (_messages.c.state.in_(("pending", "dispatched"))
                  | ((_messages.c.state == "sending") & _messages.c.calling_at.is_(None)))
        conn.execute(
            update(_messages)
            .where(_messages.c.to_phone == to_phone, unsent)
            .values(state="failed", last_outcome="final", last_reason=f"number suppressed: {reason}",
                    lease_token=None, lease_until=None, claimed_by=None, updated_at=now)
        )
