"""The dispatcher's part of the repository: due work, leases, rescue, expiry."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Integer, Select, String, bindparam, func, literal_column, select, text, tuple_, update
from sqlalchemy.orm import Session

from oaksend.models.repository.api import Outcome, announce
from oaksend.models.repository.base import Repository, rowcount
from oaksend.models.tables import (
    LEASED,
    PENDING,
    READY,
    WAITING,
    Attempt,
    Campaign,
    Message,
)

#: Not a paused campaign's: its messages wait (a retry recorded during the pause, say) until it resumes.
_NOT_PAUSED = Message.campaign_id.is_(None) | Message.campaign_id.not_in(
    select(Campaign.id).where(Campaign.state == "paused").scalar_subquery())


def _due_chatbots_statement() -> Select[str]:
    """Chatbots with due work, by a loose index scan over the ready index.

    One probe per chatbot that has DUE messages (never per chatbot that only
    waits, never per message), starting after a cursor, so that a long list is
    served a slice per pass, round-robin.
    """
    m = Message.__table__
    first = (select(func.min(m.c.serial_number))
             .where(text(READY), m.c.serial_number > bindparam("after", type_=String())).scalar_subquery())
    bots = select(first.label("sn"), literal_column("1").label("n")).cte("oaksend_bots", recursive=True)
    following = select(func.min(m.c.serial_number)).where(text(READY), m.c.serial_number > bots.c.sn).scalar_subquery()
    bots = bots.union_all(
        select(following, bots.c.n + 1).where(bots.c.sn.is_not(None), bots.c.n < bindparam("limit", type_=Integer()))
    )
    return select(bots.c.sn).where(bots.c.sn.is_not(None))


_DUE_CHATBOTS = _due_chatbots_statement()


#: A message taken back uncalled this many times fails: its workers keep dying before calling it (a
#: poison message). Not the attempts' limit: a take-back is no attempt, and a live worker cut off for
#: a while loses its unmarked messages without anything wrong with them.
LOST_LIMIT = 10


class _TakeBack(NamedTuple):
    """Which `sending` rows the rescue takes, and what they become (see `rescue`)."""

    dead_workers: Sequence[str]
    unmarked_after: datetime | None
    called_before: datetime | None
    limit: int
    lost_limit: int
    policy: str


def lost_outcome(called: bool, failures: int, lost_before: int, limit: int, policy: str, *,
                 lost_limit: int = LOST_LIMIT) -> tuple[str, dict[str, Any]]:
    """Pure: what a message left `sending` by a dead worker becomes: (its count in the rescue, new values).

    Not marked calling ("uncalled"): the API was certainly not called: due again without an
    attempt, or failed once it was taken back `lost_limit` times. Marked ("sending"): an ambiguous
    attempt; the policy decides (retry: due again; hold: unknown), and at `limit` failures it
    ends unknown. Either way it keeps its due time (its place in line).
    """
    if not called:
        if lost_before + 1 >= lost_limit:
            return "uncalled", {"state": "failed", "last_outcome": "final",
                                "last_reason": f"its worker died {lost_before + 1} times before calling"}
        return "uncalled", {"state": "pending", "ready": True, "last_reason": "worker lost before calling; due again"}
    exhausted = failures + 1 >= limit
    new_state = "pending" if policy == "retry" and not exhausted else "unknown"
    reason = "worker lost during the call"
    if exhausted:
        reason = f"attempts exhausted ({failures + 1}/{limit}); last: {reason}"
    return "sending", {"state": new_state, "ready": new_state == "pending", "last_outcome": "ambiguous",
                       "last_reason": reason}


def _unlocked_ids(s: Session, candidates: Select[int]) -> list[int]:
    """The ids `candidates` selects, locked for this transaction; on PostgreSQL rows another
    transaction holds are skipped (never waited for, nor deadlocked on)."""
    if s.get_bind().dialect.name == "postgresql":
        candidates = candidates.with_for_update(skip_locked=True)
    return list(s.scalars(candidates))


class Survey(NamedTuple):
    """What a dispatch pass starts from, read in one transaction (see DispatchRepository.survey)."""

    #: Waiting messages just marked ready.
    staged: int
    #: Messages dispatched and not yet claimed, per chatbot.
    inflight: dict[str, int]
    #: Chatbots with due messages: those after the cursor, then from the start, at most `limit`.
    due: list[str]
    #: The slice after the cursor was full: more chatbots may have due work.
    full: bool


class DispatchRepository(Repository):
    # -- dispatching ----------------------------------------------------------------------
    def survey(self, now: datetime, *, stage_limit: int, after: str, limit: int) -> Survey:
        """Stage what has come due, count what is in flight, list due chatbots: one transaction.

        The due chatbots are those after `after` in serial-number order; when fewer
        than `limit`, the list wraps round to the start (round-robin from a cursor).
        """
        with self.session() as s:
            staged = self._stage_due(s, now, stage_limit)
            inflight = self._inflight_counts(s)
            due = self._due_chatbots(s, after, limit)
            full = len(due) >= limit
            if not full and after:
                seen = set(due)
                due += [sn for sn in self._due_chatbots(s, "", limit - len(due)) if sn not in seen]
            return Survey(staged, inflight, due, full)

    def stage_due(self, now: datetime, limit: int) -> int:
        """Mark up to `limit` waiting messages whose time has come ready; return how many.

        Each message is staged once, in due-time order, through the partial index of
        waiting rows, so a million messages due tomorrow cost nothing today.
        """
        with self.session() as s:
            return self._stage_due(s, now, limit)

    def due_chatbots(self, *, after: str = "", limit: int = 1000) -> list[str]:
        """Up to `limit` chatbots with ready (due) messages, in serial-number order after `after`."""
        with self.session() as s:
            return self._due_chatbots(s, after, limit)

    def inflight_counts(self) -> dict[str, int]:
        """Messages per chatbot dispatched but not yet claimed (those claimed hold a rate slot)."""
        with self.session() as s:
            return self._inflight_counts(s)

    @staticmethod
    def _stage_due(s: Session, now: datetime, limit: int) -> int:
        candidates = (
            select(Message.id)
            .where(text(WAITING), Message.next_attempt_at <= now, _NOT_PAUSED)
            .order_by(Message.next_attempt_at)
            .limit(limit)
        )
        ids = _unlocked_ids(s, candidates)
        if not ids:
            return 0
        return rowcount(s.execute(
            update(Message)
            .where(Message.id.in_(ids), text(WAITING), Message.next_attempt_at <= now)
            .values(ready=True)
            .execution_options(synchronize_session=False)
        ))

    @staticmethod
    def _due_chatbots(s: Session, after: str, limit: int) -> list[str]:
        return list(s.scalars(_DUE_CHATBOTS, {"after": after, "limit": limit}))

    @staticmethod
    def _inflight_counts(s: Session) -> dict[str, int]:
        rows = s.execute(
            select(Message.serial_number, func.count())
            .where(text(LEASED), Message.state == "dispatched")
            .group_by(Message.serial_number)
        )
        return {sn: n for sn, n in rows}

    def next_due_at(self, after: datetime | None = None) -> datetime | None:
        """When the earliest waiting message (due after `after`, if given) becomes due."""
        q = select(func.min(Message.next_attempt_at)).where(text(WAITING))
        if after is not None:
            q = q.where(Message.next_attempt_at > after)
        with self.session() as s:
            return s.scalar(q)

    def lease_due(self, serial_number: str, now: datetime, limit: int, lease_until: datetime) -> tuple[str, list[int]]:
        """Mark up to `limit` due messages of one chatbot dispatched under a new lease token.

        Most urgent priority first, then the earliest due. The lease clears `ready`, so
        whatever makes the message pending again later needs no knowledge of it.
        """
        token = str(uuid.uuid4())
        with self.session() as s:
            candidates = (
                select(Message.id)
                .where(text(READY), Message.serial_number == serial_number, Message.next_attempt_at <= now,
                       _NOT_PAUSED)
                .order_by(Message.priority, Message.next_attempt_at, Message.id)
                .limit(limit)
            )
            if s.get_bind().dialect.name == "postgresql":
                candidates = candidates.with_for_update(skip_locked=True)
            ids = list(s.scalars(candidates))
            if not ids:
                # Listed as due, yet nothing due: code that moved a ready message's time later
                # left it ready, or its campaign was paused since (a rescued call's retry). Back to
                # waiting, so that it is staged again when its time comes (or its campaign resumes).
                s.execute(
                    update(Message)
                    .where(text(READY), Message.serial_number == serial_number,
                           (Message.next_attempt_at > now) | ~_NOT_PAUSED)
                    .values(ready=False)
                    .execution_options(synchronize_session=False)
                )
                return token, []
            leased = list(
                s.scalars(
                    update(Message)
                    .where(Message.id.in_(ids), text(READY))
                    .values(state="dispatched", ready=False, lease_token=token, lease_until=lease_until,
                            updated_at=now)
                    .returning(Message.id)
                    .execution_options(synchronize_session=False)
                )
            )
        return token, sorted(leased)

    def release(self, ids: Sequence[int], token: str, now: datetime) -> int:
        """Give dispatched messages back (publishing to the broker failed)."""
        with self.session() as s:
            res = s.execute(
                update(Message)
                .where(Message.id.in_(list(ids)), Message.state == "dispatched", Message.lease_token == token)
                .values(state="pending", ready=True, lease_token=None, lease_until=None, updated_at=now)
            )
            return rowcount(res)

    def sending_owners(self) -> list[str]:
        """The worker processes holding `sending` rows (for the heartbeat rescue)."""
        with self.session() as s:
            return [o for o in s.scalars(
                select(Message.claimed_by).where(Message.state == "sending", Message.claimed_by.is_not(None))
                .distinct()
            ) if o is not None]

    def rescue(self, now: datetime, ambiguous_policy: str, worker: str, *, max_attempts: int | None = None,
               dead_workers: Sequence[str] = (), unmarked_after: datetime | None = None,
               unstarted_before: datetime | None = None, called_before: datetime | None = None,
               max_lost: int = LOST_LIMIT) -> dict[str, int]:
        """Take back messages whose holder is gone.

        Whatever comes back keeps its due time, so it goes out before messages that
        became due after it (it has waited longest), not behind them.

        dispatched, lease run out: the task never arrived or its worker died before
        claiming: due again, nothing counted.
        dispatched before `unstarted_before` (given when a worker stopped beating: its
        tasks received and not started are among them, and nothing tells whose a task
        is): due again, nothing counted (`unstarted`). A task of a live worker that
        arrives later finds its token gone and skips those rows; rows being claimed at
        this moment (locked) are left to their claim.
        sending, lease run out or held by a worker that stopped beating (`dead_workers`):
        - not marked calling: the API was certainly not called under this claim: due
          again at once, without an attempt (`lost` counts it; after `max_lost` such
          take-backs it fails). This also takes unmarked rows claimed before
          `unmarked_after` from live workers (a worker marks or hands back within its rate
          wait, unless the database failed it): the marker is a conditional UPDATE, so a
          row taken back can no longer be called;
        - marked calling: the SMS may have gone out. Held by a silent worker, it is taken
          only once its call can no longer be in flight: marked before `called_before`
          (the mark plus the call's whole-exchange deadline plus a margin, on the database's
          clock; None: at once). A silent worker may be paused or cut off, not dead: its
          answers still land (`record_group`). Then an ambiguous "worker_lost" attempt is
          recorded and the policy decides (retry: due again; hold: unknown); at
          `max_attempts` it ends unknown.
        """
        counts = {"dispatched": 0, "sending": 0, "uncalled": 0}
        limit = max_attempts if max_attempts is not None else 1 << 30
        with self.session() as s:
            res = s.execute(
                update(Message)
                .where(text(LEASED), Message.state == "dispatched", Message.lease_until < now)
                .values(state="pending", ready=True, lease_token=None, lease_until=None, updated_at=now)
            )
            counts["dispatched"] = rowcount(res)
            if unstarted_before is not None:
                counts["unstarted"] = self._take_back_unstarted(s, unstarted_before, now)
            rule = _TakeBack(dead_workers, unmarked_after, called_before, limit, max_lost, ambiguous_policy)
            counts.update(self._take_back_sending(s, now, worker, rule))
        return counts

    def _take_back_sending(self, s: Session, now: datetime, worker: str, rule: _TakeBack) -> dict[str, int]:
        """The `sending` part of `rescue`: uncalled rows due again, called ones an ambiguous attempt."""
        counts = {"sending": 0, "uncalled": 0}
        unmarked = Message.calling_at.is_(None)
        taken = Message.lease_until < now
        if rule.dead_workers:
            silent = Message.claimed_by.in_(list(rule.dead_workers))
            done_calling = Message.calling_at < (rule.called_before or now)
            taken = taken | (silent & (unmarked | done_calling))
        if rule.unmarked_after is not None:
            taken = taken | (unmarked & (Message.updated_at < rule.unmarked_after))
        lost = list(
            s.execute(
                select(Message.id, Message.attempts, Message.failures, Message.lost, Message.lease_token,
                       Message.calling_at)
                .where(text(LEASED), Message.state == "sending", taken)
                .with_for_update()
            )
        )
        # One UPDATE per outcome (usually two: uncalled and called), not one per message: the rescue
        # runs while a dead worker's messages wait. Each row is still held by its own token.
        groups: dict[tuple[str, tuple[tuple[str, Any], ...]], list[tuple[int, str | None]]] = {}
        for mid, _attempts, failures, lost_before, token, calling_at in lost:
            kind, values = lost_outcome(calling_at is not None, failures, lost_before, rule.limit, rule.policy,
                                        lost_limit=rule.lost_limit)
            groups.setdefault((kind, tuple(sorted(values.items()))), []).append((mid, token))
        rows = {r[0]: r for r in lost}
        for (kind, pairs), held in groups.items():
            counters = ({"lost": Message.lost + 1} if kind == "uncalled" else
                        {"attempts": Message.attempts + 1, "failures": Message.failures + 1,
                         "ambiguous": Message.ambiguous + 1, "calling_at": None})
            changed = list(s.scalars(
                update(Message)
                .where(tuple_(Message.id, Message.lease_token).in_(held), Message.state == "sending")
                .values(lease_token=None, lease_until=None, claimed_by=None, updated_at=now, **counters,
                        **dict(pairs))
                .returning(Message.id)
                .execution_options(synchronize_session=False)
            ))
            counts[kind] += len(changed)
            if kind == "sending":
                s.add_all(
                    Attempt(
                        message_id=mid,
                        number=rows[mid][1] + 1,
                        started_at=rows[mid][5],
                        classification="ambiguous",
                        reason="worker_lost",
                        error="the worker holding this message stopped after its call may have left",
                        worker=worker,
                    )
                    for mid in sorted(changed)
                )
        return counts

    @staticmethod
    def _take_back_unstarted(s: Session, before: datetime, now: datetime) -> int:
        """Dispatched rows leased before `before`: pending again (see `rescue`)."""
        # A worker claiming some of them now holds their locks: those are skipped, never waited for.
        ids = _unlocked_ids(s, select(Message.id).where(text(LEASED), Message.state == "dispatched",
                                                         Message.updated_at < before))
        if not ids:
            return 0
        return rowcount(s.execute(
            update(Message)
            .where(Message.id.in_(ids), Message.state == "dispatched")
            .values(state="pending", ready=True, lease_token=None, lease_until=None, updated_at=now)
            .execution_options(synchronize_session=False)
        ))

    def expire_overdue(self, now: datetime) -> int:
        """Pending messages whose deadline has passed are expired: never sent late."""
        reason = "deadline passed before sending"
        with self.session() as s:
            expired = s.execute(
                update(Message)
                .where(text(PENDING), Message.deadline_at <= now)
                .values(state="expired", last_outcome="expired", last_reason=reason,
                        lease_token=None, lease_until=None, updated_at=now)
                .returning(Message.id, Message.serial_number)
                .execution_options(synchronize_session=False)
            ).all()
            # Status webhooks: announced in the same transaction (nothing is written when no endpoint is registered).
            announce(s.connection(), [Outcome(mid, serial, "expired", reason) for mid, serial in expired], now)
            return len(expired)

