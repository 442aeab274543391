"""The scheduler's tick: cron occurrences materialized within a horizon, campaign states moved along.

`CronTicks` is a part of the `Campaigns` service (oaksend.worker.campaigns.service),
kept apart so that each file reads as one concern; it uses the service's outbox,
Redis client, clock and stored plans.

What a tick costs follows what is due, not the audience. Cron times are the
campaign's (its zone), so they are computed once per campaign per tick, and the
first one after the materialized window is stored (`next_fire_at`, indexed): a
cron campaign whose next occurrence is beyond the horizon is not even read, and
its recipients are read only when an occurrence is to be written.

Catch-up after downtime (the scheduler's, the dispatcher's, a pause) sends the
latest missed occurrence only: a cron message's deadline stops at the next
occurrence (schedule.cron_occurrences), and occurrences whose successor is
already due are counted as missed, never written.

One campaign that cannot be ticked (a bad stored zone, a template that no longer
renders) is logged and marked (`last_error`), and the others go on; only an
unavailable database or Redis stops a tick, and the scheduler retries it.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import redis
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session

from oaksend.errors import ValidationError
from oaksend.models.repository.campaign_ticks import CampaignTickRepository
from oaksend.worker.campaigns.audience import Recipient
from oaksend.worker.campaigns.plan import CampaignPlan, message_row
from oaksend.worker.campaigns.schedule import (
    Cron,
    anchor_of,
    cron_next,
    cron_occurrences,
    cron_upcoming,
    finish_at,
    late_at_rate,
    spread_deadlines,
    zone,
)
from oaksend.worker.campaigns.spec import CRON_HORIZON
from oaksend.worker.enqueue import wake
from oaksend.worker.logs import mask_key, mask_phone

__all__ = ["CronTicks"]

log = logging.getLogger(__name__)

#: A service gone (not one campaign's fault): the tick stops and the scheduler retries it.
UNAVAILABLE = (redis.RedisError, OperationalError, InterfaceError, PoolTimeout, OSError)
#: The skip cause of recipients whose stored row cannot be used (a bad zone, a template error).
INVALID = "invalid"

KeepAlive = Callable[[], bool]


class _LostLock(Exception):
    """The scheduler lost its lock mid-tick: the active one carries on."""


class CronTicks:
    """tick / materialize / spread of the Campaigns service."""

    settings: Any
    outbox: Any
    redis: Any
    clock: Callable[[], datetime]
    _stored: Callable[..., Any]
    _capped: Callable[..., Any]
    _chatbot_rate: Callable[..., float]

    @property
    def ticks_repo(self) -> CampaignTickRepository:
        repo = self.__dict__.get("_ticks_repo")
        if repo is None:
            repo = self.__dict__["_ticks_repo"] = CampaignTickRepository(self.outbox.engine)
        return repo

    def _cron_window(self, c: Any, now: datetime) -> tuple[datetime, datetime] | None:
        if c.schedule_kind != "cron":
            return None
        return (now - timedelta(seconds=1), c.materialized_until or now)

    def tick(self, now: datetime | None = None, horizon: timedelta = CRON_HORIZON,
             keep_alive: KeepAlive | None = None) -> dict[str, int]:
        """Materialize cron occurrences within `horizon` and move campaign states along.

        Safe to run in several processes at once: materializing is idempotent (ON CONFLICT
        DO NOTHING on the occurrence's key) and state changes are conditional. `keep_alive`
        (the scheduler's lock renewal) is called between pages of work; False stops the tick.
        """
        now = now or self.clock()
        stats: Counter[str] = Counter()
        for c in self.ticks_repo.campaigns_to_tick(now + horizon):
            try:
                problem = self._tick_one(c, now, horizon, stats, keep_alive)
            except _LostLock:
                stats["lock_lost"] += 1
                break
            except UNAVAILABLE:
                raise
            except Exception as exc:  # one bad campaign is marked, never stops the others
                problem = f"{type(exc).__name__}: {exc}"
                log.error("campaign %s not ticked: %s", c.id, problem, exc_info=not isinstance(exc, ValidationError))
                stats["errors"] += 1
            if problem is not None or c.last_error is not None:
                self.ticks_repo.set_error(c.id, problem, now)
        if stats["messages"]:
            wake(self.redis, self.settings.keys)
        return dict(stats)

    def _tick_one(self, c: Any, now: datetime, horizon: timedelta, stats: Counter[str],
                  keep_alive: KeepAlive | None) -> str | None:
        """One campaign's tick; returns what went wrong with some of its recipients, if anything."""
        problem = None
        if c.schedule_kind == "cron" and (c.next_fire_at is None or c.next_fire_at <= now + horizon):
            written, problem = self._materialize(c, now, horizon, keep_alive)
            stats["messages"] += written
        repo = self.ticks_repo
        with self.outbox.session() as s:
            if c.state == "scheduled" and repo.sent_any(s, c.id):
                if self.outbox.set_campaign(s, c.id, ("scheduled",), now, state="running"):
                    stats["running"] += 1
            elif (c.schedule_kind != "cron" and not repo.open_any(s, c.id)
                  and self.outbox.set_campaign(s, c.id, ("scheduled", "running"), now, state="finished")):
                stats["finished"] += 1
        return problem

    def _materialize(self, c: Any, now: datetime, horizon: timedelta,
                     keep_alive: KeepAlive | None) -> tuple[int, str | None]:
        plan, _ = self._stored(c)
        assert isinstance(plan.schedule, Cron)
        expr = plan.schedule.expr
        start = c.materialized_until or c.created_at
        end = max(now + horizon, start)
        counts: Counter[str] = Counter()
        occurrences = cron_occurrences(expr, plan.tz, start, end)
        # Occurrences whose successor is due are moot for everyone: skip them once, not per recipient.
        stale = [at for at, following in occurrences if following is not None and following <= now]
        if stale:
            start = stale[-1]
            occurrences = cron_occurrences(expr, plan.tz, start, end)
            with self.outbox.session() as s:
                counts["missed"] += len(stale) * self.outbox.count_recipients(s, c.id)
        written, problem = 0, None
        if occurrences:
            written, problem = self._write_occurrences(c, plan, now, (start, end), counts, keep_alive)
        with self.outbox.session() as s:
            # Only the first of two racing schedulers moves the mark (and counts the skips).
            if self.ticks_repo.move_mark(s, c.id, c.materialized_until, end, cron_next(expr, plan.tz, end), now):
                self.outbox.add_skipped(s, c.id, counts, now)
                if c.rate_cap_per_s and written:
                    self._spread(s, c.id, c.rate_cap_per_s)
        return written, problem

    def _write_occurrences(self, c: Any, plan: CampaignPlan, now: datetime, window: tuple[datetime, datetime],
                           counts: Counter[str], keep_alive: KeepAlive | None) -> tuple[int, str | None]:
        written = 0
        suppressed: set[str] | None = None
        bad: list[str] = []
        for page in self.ticks_repo.recipient_pages(c.id):
            if keep_alive is not None and not keep_alive():
                raise _LostLock
            with self.outbox.session() as s:
                if suppressed is None:
                    suppressed = self.outbox.suppressed_set(s)
                rows = self._page_rows(c, plan, page, now, window, suppressed, counts, bad)
                rows = self._capped(s, rows, c.frequency_cap, counts)
                self.ticks_repo.insert_messages(s, rows)
            written += len(rows)
        problem = f"{counts[INVALID]} recipient(s) not materialized; first: {bad[0]}" if bad else None
        return written, problem

    def _page_rows(self, c: Any, plan: CampaignPlan, page: list[Any], now: datetime,
                   window: tuple[datetime, datetime], suppressed: set[str], counts: Counter[str],
                   bad: list[str]) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for r in page:
            try:
                recipient = Recipient(r.key, r.phone, zone(r.tz), dict(r.data))
                planned, skipped = plan.occurrences(recipient, now, window=window)
            except ValidationError as exc:
                counts[INVALID] += 1
                who = mask_phone(r.key) if r.key == r.phone else r.key
                if not bad:
                    bad.append(f"recipient {who}: {exc}")
                log.warning("campaign %s recipient %s: %s", c.id, mask_key(r.key), exc)
                continue
            counts.update(skipped)
            if r.phone in suppressed:
                counts["suppressed"] += len(planned)
                continue
            quiet = plan.quiet_compact(recipient)
            rows += [message_row(c.id, c.serial_number, recipient, p, quiet, now, key_secret=plan.key_secret)
                     for p in planned]
        return rows

    # -- the rate cap ---------------------------------------------------------------------
    def _spread(self, s: Session, cid: int, rate_per_s: float) -> int:
        """Space a campaign's pending messages at most `rate_per_s` apart: a message spaced later
        gets its deadline moved by as much (never past a reminder's appointment).
        Returns how many are certain to expire even so."""
        rows = self.ticks_repo.pending_schedule(s, cid)
        planned = [(at, deadline, anchor_of(occurrence)) for _, at, deadline, occurrence in rows]
        spaced = spread_deadlines(planned, rate_per_s)
        moves = [(mid, at, deadline) for (mid, old, old_deadline, _), (at, deadline) in zip(rows, spaced, strict=True)
                 if at != old or deadline != old_deadline]
        self.ticks_repo.move_messages(s, moves)
        return sum(1 for at, deadline in spaced if deadline is not None and at >= deadline)

    def expiring(self, s: Session, cid: int, chatbot: str, rate_cap_per_s: float | None, now: datetime) -> int:
        """How many of a campaign's pending messages are certain to expire: even alone on the chatbot,
        at its limit (or the campaign's rate cap), they cannot go out before their deadlines."""
        limit = self.ticks_repo.chatbot_rate(s, chatbot) or self.settings.default_rate_per_s
        rate = min(limit, rate_cap_per_s or float("inf"))
        rows = self.ticks_repo.pending_schedule(s, cid)
        late = late_at_rate([(at, deadline) for _, at, deadline, _ in rows], rate, now)
        if late:
            log.warning("campaign %s: %d of %d message(s) certain to expire at %g/s", cid, late, len(rows), rate)
        return late

    @staticmethod
    def preview_window(schedule: Any, tz: Any, now: datetime, limit: int) -> tuple[datetime, datetime] | None:
        """A cron preview's window: up to the next `limit` occurrences, however far (a weekly cron)."""
        if not isinstance(schedule, Cron):
            return None
        start = now - timedelta(seconds=1)
        upcoming = cron_upcoming(schedule.expr, tz, start, max(limit, 1))
        return (start, upcoming[-1] if upcoming else now)

    # -- what `show` tells ------------------------------------------------------------------
    def next_send(self, c: Any, first_pending: datetime | None, now: datetime) -> tuple[datetime | None,
                                                                                        datetime | None]:
        """(next send, ETA) of a campaign: its first pending message (a cron campaign with none
        materialized: its next occurrence), and when its pending messages are all out at the
        chatbot's rate (or the campaign's cap), from their own send times."""
        rate = min(self._chatbot_rate(c.serial_number), c.rate_cap_per_s or float("inf"))
        times = self.ticks_repo.pending_send_times(c.id)
        eta = finish_at(times, rate, now)
        first = first_pending if times else None
        if first is None and c.schedule_kind == "cron" and c.state in ("scheduled", "running"):
            plan, _ = self._stored(c)
            assert isinstance(plan.schedule, Cron)
            first = c.next_fire_at or cron_next(plan.schedule.expr, plan.tz, max(now, c.materialized_until or now))
        return first, eta
