"""The scheduler's tick: cron occurrences materialized within a horizon, campaign states moved along.

`CronTicks` is a part of the `Campaigns` service (oaksend.worker.campaigns.service),
kept apart so that each file reads as one concern; it uses the service's outbox,
Redis client, clock and stored plans.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from oaksend.errors import ValidationError
from oaksend.worker.campaigns.audience import Recipient
from oaksend.worker.campaigns.plan import message_row
from oaksend.worker.campaigns.schedule import zone
from oaksend.worker.campaigns.spec import CRON_HORIZON
from oaksend.worker.enqueue import wake

__all__ = ["CronTicks"]

log = logging.getLogger(__name__)


class CronTicks:
    """tick / materialize of the Campaigns service."""

    settings: Any
    outbox: Any
    redis: Any
    clock: Callable[[], datetime]
    _stored: Callable[..., Any]
    _capped: Callable[..., Any]
    _spread: Callable[..., Any]

    def _cron_window(self, c: Any, now: datetime) -> tuple[datetime, datetime] | None:
        if c.schedule_kind != "cron":
            return None
        return (now - timedelta(seconds=1), c.materialized_until or now)

    def tick(self, now: datetime | None = None, horizon: timedelta = CRON_HORIZON) -> dict[str, int]:
        """Materialize cron occurrences within `horizon` and move campaign states along.

        Safe to run in several processes at once: materializing is idempotent (ON CONFLICT
        DO NOTHING on the occurrence's key) and state changes are conditional.
        """
        now = now or self.clock()
        stats: Counter[str] = Counter()
        for c in self.outbox.campaigns(("scheduled", "running")):
            if c.schedule_kind == "cron":
                stats["messages"] += self._materialize(c, now, horizon)
            with self.outbox.session() as s:
                if c.state == "scheduled" and self.outbox.campaign_sent_any(s, c.id):
                    if self.outbox.set_campaign(s, c.id, ("scheduled",), now, state="running"):
                        stats["running"] += 1
                elif (c.schedule_kind != "cron" and not self.outbox.campaign_open(s, c.id)
                      and self.outbox.set_campaign(s, c.id, ("scheduled", "running"), now, state="finished")):
                    stats["finished"] += 1
        if stats["messages"]:
            wake(self.redis, self.settings.keys)
        return dict(stats)

    def _materialize(self, c: Any, now: datetime, horizon: timedelta) -> int:
        start = c.materialized_until or c.created_at
        if c.missed == "skip":
            start = max(start, now - timedelta(minutes=5))
        end = now + horizon
        if end <= start:
            return 0
        plan, _ = self._stored(c)
        written = 0
        counts: Counter[str] = Counter()
        for page in self.outbox.recipient_pages(c.id):
            rows = []
            with self.outbox.session() as s:
                suppressed = self.outbox.suppressed_set(s) if page else set()
                for r in page:
                    recipient = Recipient(r.key, r.phone, zone(r.tz), dict(r.data))
                    try:
                        planned, skipped = plan.occurrences(recipient, now, window=(start, end))
                    except ValidationError as exc:
                        log.warning("campaign %s recipient %s: %s", c.id, r.key, exc)
                        continue
                    counts.update(skipped)
                    if r.phone in suppressed:
                        counts["suppressed"] += len(planned)
                        continue
                    quiet = plan.quiet_compact(recipient)
                    rows += [message_row(c.id, c.serial_number, recipient, p, quiet, now) for p in planned]
                rows = self._capped(s, rows, c.frequency_cap, counts)
                self.outbox.insert_campaign_messages(s, rows)
                written += len(rows)
        with self.outbox.session() as s:
            # Only the first of two racing schedulers moves the mark (and counts the skips).
            if self.outbox.set_campaign_mark(s, c.id, c.materialized_until, end, now):
                self.outbox.add_skipped(s, c.id, counts, now)
                if c.rate_cap_per_s and written:
                    self._spread(s, c.id, c.rate_cap_per_s)
        return written
