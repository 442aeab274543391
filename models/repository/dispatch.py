"""The dispatcher's part of the repository: due work, leases, rescue, expiry."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import bindparam, func, select, update

from oaksend.models.repository.base import Repository
from oaksend.models.tables import (
    Attempt,
    Message,
)


class DispatchRepository(Repository):
    # -- dispatching ----------------------------------------------------------------------
    def due_chatbots(self, now: datetime) -> list[str]:
        """Chatbots with at least one due pending message, in a stable order.

        A loose index scan over the partial index of pending rows: one probe per
        chatbot with waiting messages, whatever the size of each backlog.
        """
        # Core, not text: the schema translate map (OAKSEND_DB_SCHEMA) applies to it.
        table = Message.__table__
        bots = (
            select(func.min(table.c.serial_number).label("sn")).where(table.c.state == "pending")
            .cte("bots", recursive=True)
        )
        m = table.alias("m")
        following = (
            select(func.min(m.c.serial_number)).where(m.c.state == "pending", m.c.serial_number > bots.c.sn)
            .scalar_subquery()
        )
        bots = bots.union_all(select(following).where(bots.c.sn.is_not(None)))
        walk = select(bots.c.sn).where(bots.c.sn.is_not(None))
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

