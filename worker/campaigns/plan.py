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
from oaksend.models.keyhash import digest
from oaksend.models.records import PRIORITIES
from oaksend.worker.campaigns.audience import Recipient
from oaksend.worker.campaigns.schedule import (
    Cron,
    Once,
    Relative,
    Schedule,
    anchor_at,
    cron_occurrences,
    occurrence_label,
    once_at,
    relative_times,
    zone,
)
from oaksend.worker.campaigns.template import Template
from oaksend.worker.message.quiet import (
    QuietHours,
    RecipientZones,
    compact,
    next_allowed_in_all,
    parse_window,
    recipient_zones,
)
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
#: A skip-count key for recipients whose quiet hours fell back to the campaign's zone, by cause
#: (e.g. "campaign_zone:number_has_no_zone"): counted once per recipient when a campaign is created.
FALLBACK = "campaign_zone:"


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
    #: The audience's zone column: a row that fills it is in that zone, whatever its number says.
    tz_column: str | None = None
    #: OAKSEND_KEY_HASH_SECRET: message keys hold a keyed digest of the recipient's key (oaksend.models.keyhash).
    key_secret: str | None = None
    #: --max-segments: a recipient whose text is longer is skipped ("too_many_segments"), never sent.
    max_segments: int | None = None

    def occurrences(self, recipient: Recipient, now: datetime, *, window: tuple[datetime, datetime] | None = None,
                    row: int | None = None) -> tuple[list[Planned], Counter[str]]:
        """The messages for one recipient (cron: those in `window`), and what was skipped, by cause.

        Raises ValidationError naming the column (and row) when the recipient's data cannot be used.
        """
        prefix = f"row {row}, column " if row is not None else ""
        times: list[tuple[str, datetime, datetime]] = []
        superseded = 0
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
            for at, following in cron_occurrences(self.schedule.expr, self.tz, *window):
                if following is not None and following <= now:
                    superseded += 1  # catch-up sends the latest missed occurrence only
                    continue
                # Moot once the next occurrence is due (schedule.cron_occurrences).
                deadline = at + (self.deadline or DEFAULT_DEADLINE)
                times.append((occurrence_label(at), at, deadline if following is None else min(deadline, following)))
        body = self.render(recipient, prefix)
        if self.max_segments is not None and times and count_segments(body) > self.max_segments:
            return [], Counter({"too_many_segments": len(times)})
        zones = self.zones_of(recipient).quiet
        skipped: Counter[str] = Counter({"missed": superseded} if superseded else {})
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
            allowed = _next_allowed(at, self.quiet, zones)
            if allowed is None or allowed >= deadline:
                skipped["quiet_hours"] += 1
                continue
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
        return compact(self.quiet, self.zones_of(recipient).token)

    def zones_of(self, recipient: Recipient) -> RecipientZones:
        """Where quiet hours hold for this recipient (a stored recipient's are worked out again)."""
        if recipient.zones is not None:
            return recipient.zones
        if self.tz_column and recipient.values.get(self.tz_column, "").strip():
            return recipient_zones(recipient.zone.key, recipient.phone, self.tz)
        return _phone_zones(recipient.phone, recipient.zone)


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


def idempotency_key(campaign_id: int, recipient_key: str, occurrence: str, secret: str | None) -> str:
    """One key per (campaign, recipient, occurrence); the digest's fixed length keeps 'a' and 'a:b' apart."""
    return f"{recipient_prefix(campaign_id, recipient_key, secret)}{occurrence}"


def recipient_prefix(campaign_id: int, recipient_key: str, secret: str | None) -> str:
    """The start of every key of one recipient: its key (often the phone number) only as a keyed digest."""
    return f"oaksend-campaign:{campaign_id}:{digest(recipient_key, secret)}:"


def message_row(campaign_id: int, chatbot: str, recipient: Recipient, planned: Planned, quiet: str | None,
                now: datetime, *, key_secret: str | None) -> dict[str, Any]:
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
        "idempotency_key": idempotency_key(campaign_id, recipient.key, planned.occurrence, key_secret),
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
_next_allowed = lru_cache(maxsize=4096)(next_allowed_in_all)
#: A stored recipient's zones (cron ticks, updates): the number is parsed once per process.
_phone_zones = lru_cache(maxsize=65536)(lambda phone, home: recipient_zones(None, phone, home))


def summary(counts: Counter[str] | dict[str, int]) -> tuple[dict[str, int], dict[str, int]]:
    """(messages skipped by cause, recipients that fell back to the campaign's zone by cause) of a skip count."""
    skipped = {k: n for k, n in sorted(counts.items()) if n and not k.startswith(FALLBACK) and k.isprintable()}
    fallback = {k[len(FALLBACK):]: n for k, n in sorted(counts.items()) if n and k.startswith(FALLBACK)}
    return skipped, fallback


def why_empty(skipped: dict[str, int], recipients: int) -> str:
    """One line saying why a campaign has no message to write."""
    if not recipients:
        return "the audience has no recipients"
    if not skipped:
        return f"{recipients} recipient(s), but the schedule gives no occurrence"
    causes = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in skipped.items())
    return f"{recipients} recipient(s), every message skipped ({causes})"


def plan_from_row(campaign: Any, template: Template, schedule: Schedule, *, key_secret: str | None) -> CampaignPlan:
    """A CampaignPlan from a stored campaign row."""
    return CampaignPlan(
        name=campaign.name,
        template=template,
        schedule=schedule,
        tz=zone(campaign.tz),
        quiet=parse_window(campaign.quiet_hours or "off"),
        deadline=timedelta(seconds=campaign.deadline_s) if campaign.deadline_s else None,
        missed=campaign.missed,
        tz_column=campaign.tz_column,
        key_secret=key_secret,
        max_segments=campaign.max_segments,
    )


__all__ = ["CAUSES", "FALLBACK", "CampaignPlan", "Planned", "idempotency_key", "message_row", "plan_from_row",
           "recipient_prefix", "summary", "why_empty"]
