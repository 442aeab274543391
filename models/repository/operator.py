"""The operators' part of the repository: chatbot limits and pauses, reading, retry, cancel,
the audit's intent rows, and rehearsals (an action's own statements, rolled back)."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Self

from sqlalchemy import func, insert, inspect, select, update
from sqlalchemy.orm import sessionmaker

from oaksend.models.repository.base import Repository, chunks
from oaksend.models.tables import (
    RETRYABLE_STATES,
    Attempt,
    Chatbot,
    Message,
    OperatorAction,
    OperatorAudit,
    SuppressedNumber,
)

_audit = OperatorAudit.__table__


class OperatorRepository(Repository):
    # -- chatbots -------------------------------------------------------------------------
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
            actions = list(s.scalars(
                select(OperatorAction).where(OperatorAction.message_id == message_id).order_by(OperatorAction.id)
            ))
            return attempts, actions

    def list(self, *, states: Sequence[str] = (), serial_number: str | None = None,
             since: datetime | None = None, until: datetime | None = None, limit: int = 100,
             after_id: int | None = None, before_id: int | None = None) -> list[Message]:
        """Messages matching the filters: newest first, or oldest first from `after_id` (paging by id)."""
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
            if before_id is not None:
                q = q.where(Message.id < before_id)
            return list(s.scalars(q.order_by(Message.id.desc() if after_id is None else Message.id).limit(limit)))

    def counts(self) -> dict[str, int]:
        """Messages per state."""
        with self.session() as s:
            return {state: n for state, n in s.execute(select(Message.state, func.count()).group_by(Message.state))}

    def operator_retry(self, ids: Sequence[int], now: datetime, actor: str | None,
                       deadline_at: datetime | None, *, renew_deadline_at: datetime) -> dict[int, str]:
        """Send failed / unknown / expired / cancelled messages again; history is kept.

        Returns, per id, "retried" or why not. The retry gets a fresh attempt budget
        and a deadline, never none: `deadline_at` when given, else its own while still
        ahead, else `renew_deadline_at` (an expired message needs a new one).
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
                if not row.to_phone or not row.body:
                    out[mid] = "is anonymized (no number or text left); it can never be sent again"
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
                elif row.deadline_at is None or row.deadline_at <= now:
                    row.deadline_at = renew_deadline_at
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


    def state_counts(self, ids: Sequence[int]) -> dict[str, int]:
        """Of these message ids, how many are in each state."""
        out: dict[str, int] = {}
        with self.session() as s:
            for part in chunks(ids, 500):
                q = select(Message.state, func.count()).where(Message.id.in_(list(part))).group_by(Message.state)
                for state, n in s.execute(q):
                    out[state] = out.get(state, 0) + n
        return out

    # -- the operator audit: the intent first, committed; completed after -------------------
    def begin_audit(self, command: str, selection: dict[str, Any], actor: str, now: datetime,
                    note: str | None = None, result: dict[str, Any] | None = None) -> int:
        """Write (and commit) a command's intent, state 'started', before it acts; returns its id."""
        with self.session() as s:
            row = OperatorAudit(command=command, selection=selection, count=0, actor=actor, at=now, note=note,
                                state="started", result=result)
            s.add(row)
            s.flush()
            return int(row.id)

    def begin_audit_any_schema(self, command: str, selection: dict[str, Any], actor: str,
                               now: datetime) -> int | None:
        """`begin_audit` for `migrate`, on a database at any revision: the columns the table has now.

        None when there is no audit table yet (an empty database: the intent cannot be written first).
        """
        with self.engine.begin() as conn:
            names = self._audit_columns(conn)
            if not names:
                return None
            values = {"command": command, "selection": selection, "count": 0, "actor": actor, "at": now,
                      "state": "started"}
            result = conn.execute(insert(_audit).values({k: v for k, v in values.items() if k in names}))
            key = result.inserted_primary_key
            assert key is not None  # an INSERT of one row
            return int(key[0])

    def finish_audit_any_schema(self, audit_id: int, state: str, result: dict[str, Any], now: datetime) -> None:
        """`finish_audit` for `migrate`: where the table predates revision 0015, the outcome goes in `note`."""
        with self.engine.begin() as conn:
            names = self._audit_columns(conn)
            values: dict[str, Any] = {"state": state, "result": result, "finished_at": now}
            if "state" not in names:
                values = {"note": f"{state}: {result}"}
            conn.execute(update(_audit).where(_audit.c.id == audit_id)
                         .values({k: v for k, v in values.items() if k in names}))

    def _audit_columns(self, conn: Any) -> set[str]:
        """The audit table's columns in this database (none: no table yet)."""
        found = inspect(conn)
        if not found.has_table(_audit.name, schema=self.schema):
            return set()
        return {c["name"] for c in found.get_columns(_audit.name, schema=self.schema)}

    def progress_audit(self, audit_id: int, count: int) -> None:
        """The messages changed so far by a command still running (an interrupted one keeps this count)."""
        with self.session() as s:
            s.execute(update(OperatorAudit).where(OperatorAudit.id == audit_id).values(count=count))

    def finish_audit(self, audit_id: int, state: str, count: int, result: dict[str, Any] | None,
                     now: datetime) -> None:
        """Complete an intent: 'done' or 'failed', with what the command changed."""
        with self.session() as s:
            s.execute(update(OperatorAudit).where(OperatorAudit.id == audit_id)
                      .values(state=state, count=count, result=result, finished_at=now))

    # -- rehearsals ---------------------------------------------------------------------------
    @contextmanager
    def rehearsal(self) -> Iterator[Self]:
        """This repository on one transaction that is rolled back at the end.

        An action run on it executes its own statements (each of its transactions is a
        savepoint here), so its counts are exactly what it would change now; nothing is kept.
        On PostgreSQL the rows it touched stay locked until the rollback: keep it short.
        """
        with self.engine.connect() as conn:
            outer = conn.begin()
            try:
                box = copy.copy(self)
                box._sessions = sessionmaker(conn, expire_on_commit=False, join_transaction_mode="create_savepoint")
                yield box
            finally:
                outer.rollback()
