"""The operations part of the repository: audit, settling `unknown` messages, stats; retention (retention.py)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from oaksend.models.repository.retention import RetentionRepository
from oaksend.models.tables import (
    Attempt,
    Chatbot,
    Message,
    OperatorAction,
    OperatorAudit,
)

#: What `resolve` may turn an `unknown` message into.
RESOLUTIONS = ("sent", "failed")


class OpsRepository(RetentionRepository):
    # -- the operator audit ---------------------------------------------------------------
    def record_audit(self, command: str, selection: dict[str, Any], count: int, actor: str | None,
                     now: datetime, note: str | None = None) -> int:
        """Record one finished operator command over a selection; returns the audit row's id.

        Commands write their intent before acting instead (OperatorRepository.begin_audit).
        """
        with self.session() as s:
            row = OperatorAudit(command=command, selection=selection, count=count, actor=actor, at=now, note=note,
                                state="done", finished_at=now)
            s.add(row)
            s.flush()
            return int(row.id)

    def audit_log(self, *, since: datetime | None = None, command: str | None = None,
                  limit: int = 50) -> list[OperatorAudit]:
        """Audit rows, newest first."""
        with self.session() as s:
            q = select(OperatorAudit)
            if since is not None:
                q = q.where(OperatorAudit.at >= since)
            if command:
                q = q.where(OperatorAudit.command == command)
            return list(s.scalars(q.order_by(OperatorAudit.id.desc()).limit(limit)))

    # -- odd responses ----------------------------------------------------------------------
    def anomalous_attempts(self, *, since: datetime | None = None, limit: int = 50) -> list[Attempt]:
        """Attempts whose response differed from the documented envelope (`anomalies` not empty), newest first.

        By start time, then by id (the later recorded first). No index serves it: it is an
        operator's look through the attempts, not a hot path.
        """
        with self.session() as s:
            q = select(Attempt).where(Attempt.anomalies.is_not(None), Attempt.anomalies != "")
            if since is not None:
                q = q.where(Attempt.started_at >= since)
            return list(s.scalars(q.order_by(Attempt.started_at.desc(), Attempt.id.desc()).limit(limit)))

    # -- settling unknown messages --------------------------------------------------------
    def resolve(self, ids: Sequence[int], outcome: str, note: str, actor: str | None,
                now: datetime) -> dict[int, str]:
        """Settle `unknown` messages as sent or failed after a check by hand, in one transaction.

        Returns, per id, "resolved" or why not. Only `unknown` messages change; each gets an
        operator action. The command's audit row is the caller's (written before, as its intent).
        """
        if outcome not in RESOLUTIONS:
            raise ValueError(f"outcome must be one of {RESOLUTIONS}")
        out: dict[int, str] = {}
        with self.session() as s:
            for mid in ids:
                row = s.get(Message, mid, with_for_update=True)
                if row is None:
                    out[mid] = "not found"
                    continue
                if row.state != "unknown":
                    out[mid] = f"is {row.state}; only unknown messages can be resolved"
                    continue
                s.add(OperatorAction(message_id=mid, action=f"resolve {outcome}", from_state=row.state, actor=actor,
                                     at=now, note=note))
                row.state, row.updated_at = outcome, now
                row.lease_token = row.lease_until = None
                row.last_outcome, row.last_reason = outcome, f"resolved by operator: {note}"
                if outcome == "sent":
                    row.sent_at = now
                out[mid] = "resolved"
        return out

    # -- numbers for operators and metrics ------------------------------------------------
    def counts_by_chatbot(self) -> list[tuple[str, str, int]]:
        """(chatbot, state, messages) for every pair that has messages."""
        with self.session() as s:
            rows = s.execute(
                select(Message.serial_number, Message.state, func.count())
                .group_by(Message.serial_number, Message.state)
                .order_by(Message.serial_number, Message.state)
            )
            return [(sn, state, n) for sn, state, n in rows]

    def oldest_due_at(self, now: datetime) -> datetime | None:
        """The due time of the oldest message that is due and not yet being sent (pending or dispatched)."""
        with self.session() as s:
            return s.scalar(
                select(func.min(Message.next_attempt_at))
                .where(Message.state.in_(("pending", "dispatched")), Message.next_attempt_at <= now)
            )

    def attempt_counts(self, since: datetime) -> list[tuple[str, int | None, int]]:
        """(classification, Code, attempts) for attempts started since `since`."""
        with self.session() as s:
            rows = s.execute(
                select(Attempt.classification, Attempt.code, func.count())
                .where(Attempt.started_at >= since)
                .group_by(Attempt.classification, Attempt.code)
                .order_by(Attempt.classification, Attempt.code)
            )
            return [(c, code, n) for c, code, n in rows]

    def latency_percentiles(self, since: datetime, quantiles: Sequence[float]) -> dict[float, float | None]:
        """API latency (ms) at each quantile over attempts that got an HTTP answer since `since`.

        Nearest-rank, computed in the database (count, then one ordered probe per
        quantile) so that a busy hour's attempts never travel to the client.
        """
        where = (Attempt.started_at >= since, Attempt.latency_ms.is_not(None), Attempt.http_status.is_not(None))
        out: dict[float, float | None] = {}
        with self.session() as s:
            n = s.scalar(select(func.count()).select_from(Attempt).where(*where)) or 0
            for q in quantiles:
                if n == 0:
                    out[q] = None
                    continue
                rank = min(n - 1, max(0, round(q * n + 0.5) - 1))
                out[q] = s.scalar(select(Attempt.latency_ms).where(*where).order_by(Attempt.latency_ms)
                                  .offset(rank).limit(1))
        return out

    def sent_per_minute(self, since: datetime) -> dict[str, int]:
        """Messages sent per minute since `since`, keyed by 'YYYY-MM-DDTHH:MM' (UTC)."""
        with self.session() as s:
            if s.get_bind().dialect.name == "postgresql":
                minute = func.to_char(func.date_trunc("minute", func.timezone("UTC", Message.sent_at)),
                                      'YYYY-MM-DD"T"HH24:MI')
            else:
                minute = func.strftime("%Y-%m-%dT%H:%M", Message.sent_at)
            rows = s.execute(
                select(minute.label("minute"), func.count())
                .where(Message.state == "sent", Message.sent_at >= since)
                .group_by("minute")
            )
            return {m: n for m, n in rows}

    def paused_chatbots(self, now: datetime) -> dict[str, str | None]:
        """Chatbots paused now, with the reason."""
        with self.session() as s:
            rows = s.execute(select(Chatbot.serial_number, Chatbot.pause_reason).where(Chatbot.paused_until > now))
            return {sn: reason for sn, reason in rows}
