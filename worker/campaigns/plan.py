"""Pure: a campaign's plan for one recipient: which messages, at what times, with what text.

`CampaignPlan` holds what a campaign decides with (template, schedule, zones,
quiet hours, deadline rule, missed policy); `occurrences(recipient, now)` returns
the messages to write and the skipped ones by cause. Time is passed in.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from oaksend.errors import ValidationError
from oaksend.models.records import PRIORITIES
from oaksend.worker.campaigns.audience import Recipient
from oaksend.worker.campaigns.schedule import (
    Cron,
    Once,
    Relative,
    Schedule,
    anchor_at,
    cron_times,
    occurrence_label,
    once_at,
    relative_times,
    zone,
)
from oaksend.worker.campaigns.template import Template
from oaksend.worker.message.quiet import QuietHours, compact, next_allowed, parse_window
from oaksend.worker.message.segments import count_segments
from oaksend.worker.message.validation import MAX_BODY_CHARS

#: With --missed skip, an occurrence this late is still "on time" (a scheduler's restart, a slow tick).
MISSED_GRACE = timedelta(minutes=5)
#: The deadline of a once or cron message when none is given.
DEFAULT_DEADLINE = timedelta(hours=3)
#: Campaign messages are bulk: a chatbot's normal and high messages go out before them.
BULK = PRIORITIES.index("bulk")
#: Skip causes shown by `campaign show`.
CAUSES = ("quiet_hours", "deadline", "missed", "suppressed", "frequency_cap")


@dataclass(frozen=True)
class Planned:
    """One message to write: its occurrence id, send time, deadline and text."""

    occurrence: str
    send_at: datetime
    deadline_at: datetime
    body: str


@dataclass(frozen=True)
class CampaignPlan:
    name: str
    template: Template
    schedule: Schedule
    tz: ZoneInfo
    quiet: QuietHours | None
    deadline: timedelta | None
    missed: str = "send"

    def occurrences(self, recipient: Recipient, now: datetime, *, window: tuple[datetime, datetime] | None = None,
                    row: int | None = None) -> tuple[list[Planned], Counter[str]]:
        """The messages for one recipient (cron: those in `window`), and what was skipped, by cause.

        Raises ValidationError naming the column (and row) when the recipient's data cannot be used.
        """
        prefix = f"row {row}, column " if row is not None else ""
        times: list[tuple[str, datetime, datetime]] = []
        if isinstance(self.schedule, Once):
            at = once_at(self.schedule, self.tz)
            times.append((occurrence_label(at), at, at + (self.deadline or DEFAULT_DEADLINE)))
        elif isinstance(self.schedule, Relative):
            column = self.schedule.column
            value = recipient.values.get(column, "")
            if not value.strip():
                raise ValidationError(f"{prefix}{column}", "is empty (the reminders are relative to it)")
            anchor = anchor_at(value, recipient.zone, f"{prefix}{column}")
            for label, at in relative_times(anchor, self.schedule.offsets):
                # Never after the appointment; a --deadline may make it earlier still.
                deadline = anchor if self.deadline is None else min(anchor, at + self.deadline)
                times.append((label, at, deadline))
        else:
            assert isinstance(self.schedule, Cron)
            if window is None:
                return [], Counter()
            for at in cron_times(self.schedule.expr, self.tz, *window):
                times.append((occurrence_label(at), at, at + (self.deadline or DEFAULT_DEADLINE)))
        body = self.render(recipient, prefix)
        skipped: Counter[str] = Counter()
        out: list[Planned] = []
        for label, at, deadline in times:
            if at < now:
                if self.missed == "skip" and at < now - MISSED_GRACE:
                    skipped["missed"] += 1
                    continue
                at = now
            if at >= deadline:
                skipped["deadline"] += 1
                continue
            allowed = _next_allowed(at, self.quiet, recipient.zone)
            if allowed >= deadline:
                skipped["quiet_hours"] += 1
                continue
            if self.missed == "skip":
                # Skipping missed sends holds at send time too: an outage later must not send this late.
                deadline = min(deadline, allowed + MISSED_GRACE)
            out.append(Planned(label, allowed, deadline, body))
        return out, skipped

    def render(self, recipient: Recipient, prefix: str = "") -> str:
        values = {**recipient.values, "phone": recipient.phone, "campaign": self.name}
        body = self.template.render(values, recipient.zone, prefix)
        if len(body) > MAX_BODY_CHARS:
            raise ValidationError(f"{prefix}template",
                                  f"renders to {len(body)} characters; the API takes at most {MAX_BODY_CHARS}")
        if not body.strip():
            raise ValidationError(f"{prefix}template", "renders to an empty text")
        return body

    def quiet_compact(self, recipient: Recipient) -> str | None:
        return compact(self.quiet, recipient.zone)


#: The frequency cap's window: at most N campaign messages per number within this much of each other.
CAP_WINDOW = timedelta(hours=24)


def apply_frequency_cap(rows: list[dict[str, Any]], existing: dict[str, list[datetime]],
                        cap: int) -> tuple[list[dict[str, Any]], int]:
    """Pure: keep a message only if its number has fewer than `cap` campaign messages within 24 h of it.

    `existing` (number -> send times, of every campaign) grows with each kept message, so the
    cap holds within this batch too. Earlier messages win. Returns (kept rows, how many were skipped).
    """
    kept: list[dict[str, Any]] = []
    skipped = 0
    for row in sorted(rows, key=lambda r: r["next_attempt_at"]):
        at = row["next_attempt_at"]
        times = existing.setdefault(row["to_phone"], [])
        if sum(1 for t in times if abs(t - at) < CAP_WINDOW) >= cap:
            skipped += 1
            continue
        times.append(at)
        kept.append(row)
    return kept, skipped


def idempotency_key(campaign_id: int, recipient_key: str, occurrence: str) -> str:
    """One key per (campaign, recipient, occurrence); the key's length keeps 'a' and 'a:b' apart."""
    return f"{recipient_prefix(campaign_id, recipient_key)}{occurrence}"


def recipient_prefix(campaign_id: int, recipient_key: str) -> str:
    return f"oaksend-campaign:{campaign_id}:{len(recipient_key)}:{recipient_key}:"


def message_row(campaign_id: int, chatbot: str, recipient: Recipient, planned: Planned, quiet: str | None,
                now: datetime) -> dict[str, Any]:
    """An outbox row for a planned message (the repository inserts it as is)."""
    return {
        "serial_number": chatbot,
        "to_phone": recipient.phone,
        "body": planned.body,
        "segments": count_segments(planned.body),
        "state": "pending",
        "attempts": 0,
        "failures": 0,
        "ambiguous": 0,
        "next_attempt_at": planned.send_at,
        "deadline_at": planned.deadline_at,
        "idempotency_key": idempotency_key(campaign_id, recipient.key, planned.occurrence),
        "metadata": {"campaign": campaign_id, "recipient": recipient.key, "occurrence": planned.occurrence},
        "campaign_id": campaign_id,
        "priority": BULK,
        "quiet": quiet,
        "created_at": now,
        "updated_at": now,
    }


#: The keys of message_row, in order: the columns of a campaign's COPY lines.
MESSAGE_COLUMNS = ("serial_number", "to_phone", "body", "segments", "state", "attempts", "failures", "ambiguous",
                   "next_attempt_at", "deadline_at", "idempotency_key", "metadata", "campaign_id", "priority", "quiet",
                   "created_at", "updated_at")


#: next_allowed for planned times (always UTC, so equal keys are the same instant in the same form):
#: send times repeat (appointment slots), and the zones are few.
_next_allowed = lru_cache(maxsize=4096)(next_allowed)


def plan_from_row(campaign: Any, template: Template, schedule: Schedule) -> CampaignPlan:
    """A CampaignPlan from a stored campaign row."""
    return CampaignPlan(
        name=campaign.name,
        template=template,
        schedule=schedule,
        tz=zone(campaign.tz),
        quiet=parse_window(campaign.quiet_hours or "off"),
        deadline=timedelta(seconds=campaign.deadline_s) if campaign.deadline_s else None,
        missed=campaign.missed,
    )


__all__ = ["CAUSES", "CampaignPlan", "Planned", "idempotency_key", "message_row", "plan_from_row", "recipient_prefix"]
