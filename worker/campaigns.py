"""Campaigns: an audience and a schedule become outbox messages, each exactly once.

    from oaksend.worker.campaigns import Campaigns, CampaignSpec
    from oaksend.worker.audience import read_csv

    campaigns = Campaigns(load_settings())
    spec = CampaignSpec(name="reminders", chatbot="3254a9d0...", template="Hi {first_name}, ...",
                        schedule=parse_schedule(before="appointment_at:24h,2h"), tz="America/New_York")
    campaign_id = campaigns.create(spec, read_csv("bookings.csv")).id

One-off and relative campaigns are written out in full when created (every
reminder is an outbox row with its own send time and deadline); cron campaigns
are materialized by the scheduler's `tick` within a horizon. Every message's
idempotency key names (campaign, recipient key, occurrence), and rows are
inserted with ON CONFLICT DO NOTHING: ticks, restarts and a second scheduler
never make a second message. Quiet hours and the deadline go with each message
and are checked again when it is sent (oaksend.worker.quiet.at_send).

Application code keeps a campaign in step with its own data, in its own
transaction: `upsert_recipient(campaign_id, row, session=...)` when a booking is
made or moved, `remove_recipient(campaign_id, key, session=...)` when it is
cancelled. A reminder already sent stays sent.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import redis
from sqlalchemy import event
from sqlalchemy.orm import Session

from oaksend.errors import InvalidTransition, NotFound, ValidationError
from oaksend.models.db import make_engine
from oaksend.models.repository import Outbox
from oaksend.worker.audience import (
    AudienceError,
    AudienceSpec,
    Recipient,
    RowError,
    RowProblem,
    check_columns,
    check_row,
    from_dicts,
)
from oaksend.worker.clock import utcnow
from oaksend.worker.enqueue import wake
from oaksend.worker.plan import (
    CAP_WINDOW,
    DEFAULT_DEADLINE,
    CampaignPlan,
    Planned,
    apply_frequency_cap,
    message_row,
    plan_from_row,
    recipient_prefix,
)
from oaksend.worker.quiet import parse_window
from oaksend.worker.schedule import Cron, Once, Relative, Schedule, once_at, parse_duration, zone
from oaksend.worker.segments import count_segments, encoding
from oaksend.worker.settings import Settings
from oaksend.worker.template import parse as parse_template
from oaksend.worker.validation import _serial_number

log = logging.getLogger(__name__)

#: Rows written per statement while creating a campaign.
CHUNK = 2000
#: A create that writes at least this many messages refreshes the database's statistics.
ANALYZE_AFTER = 5000
#: Bad rows kept to show (all are counted).
MAX_ERRORS_KEPT = 100
#: How far ahead the scheduler materializes cron occurrences.
CRON_HORIZON = timedelta(hours=6)
#: The bad-row count's key in a skip Counter (no cause can be named so); removed before counts are shown.
_BAD_ROWS = "\x00bad rows"
#: Open states a campaign can be paused, resumed or cancelled from.
LIVE = ("draft", "scheduled", "running")
#: States whose audience may change (a finished relative campaign takes new bookings and runs again).
CHANGEABLE = (*LIVE, "paused", "finished")


@dataclass(frozen=True)
class CampaignSpec:
    """What `oaksend campaign create` (or application code) asks for; checked by `Campaigns.create`."""

    name: str
    chatbot: str
    template: str
    schedule: Schedule
    tz: str = "UTC"
    audience: AudienceSpec = field(default_factory=AudienceSpec)
    quiet_hours: str | None = "21:00-08:00"
    deadline: str | None = None
    rate_cap_per_s: float | None = None
    missed: str = "send"
    frequency_cap: int | None = None


@dataclass
class Result:
    """What a create / update / tick did."""

    id: int = 0
    recipients: int = 0
    messages: int = 0
    cancelled: int = 0
    moved: int = 0
    skipped: Counter[str] = field(default_factory=Counter)


def schedule_json(schedule: Schedule) -> tuple[str, dict[str, Any]]:
    if isinstance(schedule, Once):
        return "once", {"at": schedule.at.isoformat()}
    if isinstance(schedule, Relative):
        return "relative", {"column": schedule.column, "offsets_s": [o.total_seconds() for o in schedule.offsets]}
    return "cron", {"cron": schedule.expr}


def schedule_from_json(kind: str, data: dict[str, Any]) -> Schedule:
    if kind == "once":
        return Once(datetime.fromisoformat(data["at"]))
    if kind == "relative":
        return Relative(data["column"], tuple(timedelta(seconds=s) for s in data["offsets_s"]))
    return Cron(data["cron"])


def _needed_columns(spec_schedule: Schedule, template_names: tuple[str, ...]) -> list[str]:
    from oaksend.worker.template import BUILTINS

    needed = [n for n in template_names if n not in BUILTINS]
    if isinstance(spec_schedule, Relative):
        needed.append(spec_schedule.column)
    return needed


class Campaigns:
    """The campaign service: create, preview, update, pause, resume, cancel, and the scheduler's tick."""

    def __init__(self, settings: Settings, *, outbox: Outbox | None = None, redis_client: redis.Redis | None = None,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.settings = settings
        self.outbox = outbox or Outbox(make_engine(settings.database_url, schema=settings.db_schema))
        self.redis = redis_client or redis.Redis.from_url(settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
        self.clock = clock

    # -- checking a spec ------------------------------------------------------------------
    def _plan(self, spec: CampaignSpec, header: list[str]) -> CampaignPlan:
        if not isinstance(spec.name, str) or not spec.name.strip() or len(spec.name) > 200:
            raise ValidationError("name", "is required (at most 200 characters)")
        _serial_number(spec.chatbot)
        tz = zone(spec.tz, "tz")
        template = parse_template(spec.template, header)
        check_columns(header, spec.audience, _needed_columns(spec.schedule, template.names))
        if spec.frequency_cap is not None and (not isinstance(spec.frequency_cap, int) or spec.frequency_cap < 1):
            raise ValidationError("frequency_cap", "must be a whole number of messages, at least 1")
        if spec.missed not in ("send", "skip"):
            raise ValidationError("missed", "must be send or skip")
        deadline = parse_duration(spec.deadline, "deadline") if spec.deadline else None
        if isinstance(spec.schedule, Once):
            at = once_at(spec.schedule, tz)
            if at + (deadline or DEFAULT_DEADLINE) <= self.clock():
                raise ValidationError("at", f"{at.astimezone(tz):%Y-%m-%d %H:%M %Z} is past (and so is its deadline)")
        if spec.rate_cap_per_s is not None:
            if spec.rate_cap_per_s <= 0:
                raise ValidationError("rate_cap", "must be greater than 0 (messages per second)")
            limit = self._chatbot_rate(spec.chatbot)
            if spec.rate_cap_per_s > limit:
                raise ValidationError("rate_cap", f"{spec.rate_cap_per_s:g}/s is above the chatbot's limit ({limit:g}/s)")
        return CampaignPlan(spec.name.strip(), template, spec.schedule, tz, parse_window(spec.quiet_hours),
                            deadline, spec.missed)

    def _chatbot_rate(self, chatbot: str) -> float:
        row = self.outbox.chatbots([chatbot]).get(chatbot)
        return row.rate_per_s if row is not None and row.rate_per_s else self.settings.default_rate_per_s

    def _recipients(self, rows: Iterator[tuple[int, dict[str, str]]], spec: AudienceSpec, plan: CampaignPlan,
                    now: datetime, errors: list[RowError], counts: Counter[str],
                    window: tuple[datetime, datetime] | None) -> Iterator[tuple[Recipient, list[Planned]]]:
        """Check each row; yield the good ones with their planned messages; collect the bad ones."""
        seen: dict[str, int] = {}
        for row_no, values in rows:
            try:
                recipient = check_row(row_no, values, spec, plan.tz)
                if recipient.key in seen:
                    raise RowProblem(RowError(row_no, spec.key, f"duplicate key (row {seen[recipient.key]} has it too)"))
                seen[recipient.key] = row_no
                planned, skipped = plan.occurrences(recipient, now, window=window, row=row_no)
            except RowProblem as exc:
                self._error(errors, counts, exc.error)
                continue
            except ValidationError as exc:
                column = exc.field.rsplit("column ", 1)[-1]
                self._error(errors, counts, RowError(row_no, column, exc.message))
                continue
            counts.update(skipped)
            yield recipient, planned

    @staticmethod
    def _error(errors: list[RowError], counts: Counter[str], error: RowError) -> None:
        counts[_BAD_ROWS] += 1
        if len(errors) < MAX_ERRORS_KEPT:
            errors.append(error)

    # -- create ---------------------------------------------------------------------------
    def create(self, spec: CampaignSpec, audience: tuple[list[str], Iterator[tuple[int, dict[str, str]]]] | list[dict[str, Any]]) -> Result:
        """Check everything, then write the campaign, its recipients and its messages in ONE transaction.

        `audience` is `read_csv(path)` or a list of dicts. Raises ValidationError (AudienceError
        listing bad rows) and then nothing is written. Suppressed numbers are skipped and counted.
        """
        header, rows = from_dicts(audience) if isinstance(audience, list) else audience
        plan = self._plan(spec, header)
        now = self.clock()
        result = Result()
        kind, sched = schedule_json(spec.schedule)
        window = (now - timedelta(seconds=1), now + CRON_HORIZON) if kind == "cron" else None
        errors: list[RowError] = []
        counts: Counter[str] = Counter()
        with self.outbox.session() as s:
            suppressed = self.outbox.suppressed_set(s)
            cid = self.outbox.add_campaign(s, {
                "name": plan.name, "serial_number": spec.chatbot, "template": spec.template,
                "schedule_kind": kind, "schedule": sched, "tz": plan.tz.key,
                "phone_column": spec.audience.phone_column, "key_column": spec.audience.key_column,
                "tz_column": spec.audience.tz_column, "quiet_hours": str(plan.quiet) if plan.quiet else None,
                "deadline_s": plan.deadline.total_seconds() if plan.deadline else None,
                "rate_cap_per_s": spec.rate_cap_per_s, "frequency_cap": spec.frequency_cap,
                "missed": spec.missed, "state": "scheduled",
                "skipped": {}, "recipients": 0,
                "materialized_until": window[1] if window else None, "created_at": now, "updated_at": now,
            })
            result.id = cid
            recipients: list[dict[str, Any]] = []
            messages: list[dict[str, Any]] = []
            for recipient, planned in self._recipients(rows, spec.audience, plan, now, errors, counts, window):
                if errors:
                    continue  # keep checking, to list every bad row; nothing will be kept
                result.recipients += 1
                recipients.append({"key": recipient.key, "phone": recipient.phone, "tz": recipient.zone.key,
                                   "data": recipient.values})
                if recipient.phone in suppressed:
                    counts["suppressed"] += len(planned)
                else:
                    quiet = plan.quiet_compact(recipient)
                    messages += [message_row(cid, spec.chatbot, recipient, p, quiet, now) for p in planned]
                if len(recipients) >= CHUNK or len(messages) >= CHUNK:
                    self._flush(s, cid, recipients, messages, result, spec.frequency_cap, counts)
            if errors:
                s.rollback()
                raise AudienceError(errors, counts[_BAD_ROWS])
            self._flush(s, cid, recipients, messages, result, spec.frequency_cap, counts)
            if result.recipients == 0:
                s.rollback()
                raise ValidationError("audience", "has no recipients")
            del counts[_BAD_ROWS]
            result.skipped = counts
            self.outbox.set_campaign(s, cid, ("scheduled",), now, recipients=result.recipients, skipped=dict(counts))
            if spec.rate_cap_per_s:
                self._spread(s, cid, spec.rate_cap_per_s)
        if result.messages >= ANALYZE_AFTER:
            self.outbox.analyze()
        wake(self.redis)
        log.info("campaign %s created: %d recipients, %d messages, skipped %s", cid, result.recipients,
                 result.messages, dict(result.skipped))
        return result

    def _flush(self, s: Session, cid: int, recipients: list[dict[str, Any]], messages: list[dict[str, Any]],
               result: Result, cap: int | None, counts: Counter[str]) -> None:
        self.outbox.copy_recipients(s, cid, recipients)
        rows = self._capped(s, messages, cap, counts)
        self.outbox.copy_campaign_messages(s, rows)
        result.messages += len(rows)
        recipients.clear()
        messages.clear()

    def _capped(self, s: Session, rows: list[dict[str, Any]], cap: int | None,
                counts: Counter[str]) -> list[dict[str, Any]]:
        """The rows the frequency cap lets through (all of them without a cap); the others are counted."""
        if not cap or not rows:
            return rows
        lo = min(r["next_attempt_at"] for r in rows) - CAP_WINDOW
        hi = max(r["next_attempt_at"] for r in rows) + CAP_WINDOW
        existing = self.outbox.campaign_times(s, [r["to_phone"] for r in rows], lo, hi)
        kept, skipped = apply_frequency_cap(rows, existing, cap)
        counts["frequency_cap"] += skipped
        return kept

    def _spread(self, s: Session, cid: int, rate_per_s: float) -> None:
        from oaksend.worker.schedule import spread

        rows = self.outbox.pending_times(s, cid)
        times = spread([at for _, at in rows], rate_per_s)
        self.outbox.spread_campaign(s, cid, [(mid, new) for (mid, old), new in zip(rows, times) if new != old])

    # -- preview --------------------------------------------------------------------------
    def preview(self, spec: CampaignSpec, audience: Any, limit: int = 5) -> list[dict[str, Any]]:
        """The first `limit` messages as they would be written (local and UTC times, segments); writes nothing."""
        header, rows = from_dicts(audience) if isinstance(audience, list) else audience
        plan = self._plan(spec, header)
        now = self.clock()
        window = (now - timedelta(seconds=1), now + CRON_HORIZON) if isinstance(spec.schedule, Cron) else None
        return self._preview(plan, rows, spec.audience, now, window, limit)

    def preview_id(self, campaign_id: int, limit: int = 5) -> list[dict[str, Any]]:
        """The first `limit` messages of a stored campaign, rendered from its recipients."""
        campaign = self._get(campaign_id)
        plan, spec = self._stored(campaign)
        now = self.clock()
        window = (now - timedelta(seconds=1), now + CRON_HORIZON) if campaign.schedule_kind == "cron" else None

        def rows() -> Iterator[tuple[int, dict[str, str]]]:
            n = 0
            for page in self.outbox.recipient_pages(campaign_id, page=max(limit, 1)):
                for r in page:
                    n += 1
                    yield n, dict(r.data)

        return self._preview(plan, rows(), spec, now, window, limit)

    def _preview(self, plan: CampaignPlan, rows: Iterator[tuple[int, dict[str, str]]], spec: AudienceSpec,
                 now: datetime, window: Any, limit: int) -> list[dict[str, Any]]:
        errors: list[RowError] = []
        counts: Counter[str] = Counter()
        out: list[dict[str, Any]] = []
        for recipient, planned in self._recipients(rows, spec, plan, now, errors, counts, window):
            for p in planned:
                out.append({"recipient": recipient.key, "to": recipient.phone, "zone": recipient.zone.key,
                            "send_at_local": p.send_at.astimezone(recipient.zone).isoformat(),
                            "send_at_utc": p.send_at.isoformat(), "deadline_utc": p.deadline_at.isoformat(),
                            "text": p.body, "segments": count_segments(p.body), "encoding": encoding(p.body)})
            if len(out) >= limit:
                break
        if errors:
            raise AudienceError(errors, counts[_BAD_ROWS])
        return out[:limit]

    # -- reading --------------------------------------------------------------------------
    def _get(self, campaign_id: int, session: Session | None = None) -> Any:
        campaign = self.outbox.campaign(campaign_id, session)
        if campaign is None:
            raise NotFound(f"campaign {campaign_id} not found")
        return campaign

    def _stored(self, campaign: Any) -> tuple[CampaignPlan, AudienceSpec]:
        schedule = schedule_from_json(campaign.schedule_kind, campaign.schedule)
        spec = AudienceSpec(campaign.phone_column, campaign.key_column, campaign.tz_column)
        header = [c for c in (campaign.phone_column, campaign.key_column, campaign.tz_column) if c]
        # Stored templates were checked against the audience at creation; check names only loosely now.
        template = parse_template(campaign.template, _template_names(campaign.template) + header)
        return plan_from_row(campaign, template, schedule), spec

    def get(self, campaign_id: int) -> Any:
        return self._get(campaign_id)

    def list(self) -> list[Any]:
        return self.outbox.campaigns()

    def show(self, campaign_id: int) -> dict[str, Any]:
        """Counts by message state, skipped by cause, the next send time and an ETA at the chatbot's rate."""
        c = self._get(campaign_id)
        counts = self.outbox.campaign_counts(campaign_id)
        expired = self.outbox.campaign_expired_reasons(campaign_id)
        skipped = dict(c.skipped or {})
        quiet_expired = sum(n for reason, n in expired.items() if reason.startswith("quiet hours"))
        if quiet_expired:
            skipped["quiet_hours_at_send"] = quiet_expired
        deadline_expired = sum(n for reason, n in expired.items() if not reason.startswith("quiet hours"))
        if deadline_expired:
            skipped["deadline_at_send"] = deadline_expired
        first, pending = self.outbox.campaign_next_send(campaign_id)
        from oaksend.models.repository.campaigns import PAUSED_AFTER

        held = first is not None and first.replace(tzinfo=None) >= PAUSED_AFTER
        rate = min(self._chatbot_rate(c.serial_number), c.rate_cap_per_s or float("inf"))
        now = self.clock()
        eta = None
        if pending and first is not None and not held:
            eta = max(first, now) + timedelta(seconds=pending / rate)
        kind, data = c.schedule_kind, c.schedule
        return {
            "id": c.id, "name": c.name, "chatbot": c.serial_number, "state": c.state,
            "schedule": {"kind": kind, **data}, "tz": c.tz, "quiet_hours": c.quiet_hours or "off",
            "deadline_s": c.deadline_s, "rate_cap_per_s": c.rate_cap_per_s, "frequency_cap": c.frequency_cap,
            "missed": c.missed,
            "recipients": c.recipients, "messages": counts, "skipped": skipped,
            "next_send_at": None if first is None or held else first.isoformat(),
            "eta": eta.isoformat() if eta else None, "priority": "bulk",
            "created_at": c.created_at.isoformat(), "updated_at": c.updated_at.isoformat(),
        }

    # -- state changes --------------------------------------------------------------------
    def pause(self, campaign_id: int) -> int:
        """Keep every unsent message pending and undispatched; returns how many were held."""
        now = self.clock()
        with self.outbox.session() as s:
            c = self._get(campaign_id, s)
            if not self.outbox.set_campaign(s, campaign_id, LIVE, now, state="paused"):
                raise InvalidTransition(f"campaign {campaign_id} is {c.state}; only a scheduled or running one can be paused")
            return self.outbox.hold_campaign(s, campaign_id, now)

    def resume(self, campaign_id: int) -> int:
        """Release a paused campaign's messages at their own times; returns how many."""
        now = self.clock()
        with self.outbox.session() as s:
            c = self._get(campaign_id, s)
            state = "running" if self.outbox.campaign_sent_any(s, campaign_id) else "scheduled"
            if not self.outbox.set_campaign(s, campaign_id, ("paused",), now, state=state):
                raise InvalidTransition(f"campaign {campaign_id} is {c.state}; only a paused one can be resumed")
            n = self.outbox.release_campaign(s, campaign_id, now)
        wake(self.redis)
        return n

    def cancel(self, campaign_id: int) -> int:
        """Cancel every unsent message of the campaign; returns how many."""
        now = self.clock()
        with self.outbox.session() as s:
            c = self._get(campaign_id, s)
            if not self.outbox.set_campaign(s, campaign_id, (*LIVE, "paused"), now, state="cancelled"):
                raise InvalidTransition(f"campaign {campaign_id} is {c.state}; it cannot be cancelled")
            return self.outbox.cancel_campaign_messages(s, campaign_id, now, "campaign cancelled")

    # -- keeping in step with the application ---------------------------------------------
    def update(self, campaign_id: int, audience: Any) -> Result:
        """Replace the audience: unsent reminders of changed recipients are rescheduled, removed
        recipients' are cancelled, new recipients get theirs. All checked first; one transaction."""
        header, rows = from_dicts(audience) if isinstance(audience, list) else audience
        now = self.clock()
        result = Result(id=campaign_id)
        errors: list[RowError] = []
        counts: Counter[str] = Counter()
        with self.outbox.session() as s:
            c = self._get(campaign_id, s)
            if c.state not in CHANGEABLE:
                raise InvalidTransition(f"campaign {campaign_id} is {c.state}; it cannot be updated")
            plan, spec = self._stored(c)
            check_columns(header, spec, _needed_columns(plan.schedule, plan.template.names))
            old_keys = self.outbox.recipient_keys(s, campaign_id)
            new_keys: set[str] = set()
            window = self._cron_window(c, now)
            for recipient, planned in self._recipients(rows, spec, plan, now, errors, counts, window):
                if errors:
                    continue
                new_keys.add(recipient.key)
                self._sync(s, c, plan, recipient, planned, now, result, paused=c.state == "paused")
            if errors:
                s.rollback()
                raise AudienceError(errors, counts[_BAD_ROWS])
            gone = old_keys - new_keys
            for key in gone:
                result.cancelled += self._cancel_recipient(s, campaign_id, key, now)
            self.outbox.drop_recipients(s, campaign_id, list(gone))
            del counts[_BAD_ROWS]
            self.outbox.add_skipped(s, campaign_id, counts, now)
            self.outbox.set_campaign(s, campaign_id, (c.state,), now,
                                     recipients=self.outbox.count_recipients(s, campaign_id))
            self._reopen(s, c, result, now)
            if c.rate_cap_per_s and result.messages and c.state != "paused":
                self._spread(s, campaign_id, c.rate_cap_per_s)
            result.skipped = counts
        wake(self.redis)
        return result

    def upsert_recipient(self, campaign_id: int, row: dict[str, Any], *, session: Session | None = None) -> Result:
        """Add or change one recipient (a booking made or moved), in the caller's transaction when given.

        Unsent reminders for a changed time are cancelled and new ones written; a sent one stays sent.
        """
        def work(s: Session) -> Result:
            now = self.clock()
            c = self._get(campaign_id, s)
            if c.state not in CHANGEABLE:
                raise InvalidTransition(f"campaign {campaign_id} is {c.state}; its recipients cannot change")
            plan, spec = self._stored(c)
            header, rows = from_dicts([row])
            check_columns(header, spec, _needed_columns(plan.schedule, plan.template.names))
            errors: list[RowError] = []
            counts: Counter[str] = Counter()
            result = Result(id=campaign_id)
            for recipient, planned in self._recipients(rows, spec, plan, now, errors, counts, self._cron_window(c, now)):
                self._sync(s, c, plan, recipient, planned, now, result, paused=c.state == "paused")
            if errors:
                raise ValidationError(f"row.{errors[0].column}", errors[0].why)
            del counts[_BAD_ROWS]
            self.outbox.add_skipped(s, campaign_id, counts, now)
            self._reopen(s, c, result, now)
            result.skipped = counts
            return result

        return self._in(session, work)

    def remove_recipient(self, campaign_id: int, key: str, *, session: Session | None = None) -> int:
        """Remove one recipient (a cancelled booking): its unsent reminders are cancelled with it."""
        def work(s: Session) -> int:
            now = self.clock()
            self._get(campaign_id, s)
            n = self._cancel_recipient(s, campaign_id, key, now)
            self.outbox.drop_recipients(s, campaign_id, [key])
            return n

        return self._in(session, work)

    def _reopen(self, s: Session, c: Any, result: Result, now: datetime) -> None:
        """A finished campaign that got new messages runs again."""
        if c.state == "finished" and result.messages:
            self.outbox.set_campaign(s, c.id, ("finished",), now, state="running")

    def _in(self, session: Session | None, work: Callable[[Session], Any]) -> Any:
        if session is not None:
            out = work(session)
            session.flush()
            event.listen(session, "after_commit", lambda _s: wake(self.redis), once=True)
            return out
        with self.outbox.session() as s:
            out = work(s)
        wake(self.redis)
        return out

    def _cancel_recipient(self, s: Session, campaign_id: int, key: str, now: datetime) -> int:
        rows = self.outbox.open_campaign_messages(s, campaign_id, recipient_prefix(campaign_id, key))
        return self.outbox.cancel_campaign_messages(s, campaign_id, now, "campaign: recipient removed",
                                                    [m.id for m in rows])

    def _sync(self, s: Session, c: Any, plan: CampaignPlan, recipient: Recipient, planned: list[Planned],
              now: datetime, result: Result, *, paused: bool) -> None:
        """Bring one recipient's messages in line with `planned` (cron: within the materialized window)."""
        from oaksend.models.repository.campaigns import PAUSE_SHIFT

        self.outbox.put_recipients(s, c.id, [{"key": recipient.key, "phone": recipient.phone,
                                             "tz": recipient.zone.key, "data": recipient.values}])
        quiet = plan.quiet_compact(recipient)
        wanted = {row["idempotency_key"]: row for row in
                  (message_row(c.id, c.serial_number, recipient, p, quiet, now) for p in planned)}
        open_rows = {m.idempotency_key: m for m in
                     self.outbox.open_campaign_messages(s, c.id, recipient_prefix(c.id, recipient.key))}
        existing = self.outbox.campaign_messages_by_key(s, c.id, list(wanted))
        stale = [m.id for key, m in open_rows.items() if key not in wanted]
        if stale:
            result.cancelled += self.outbox.cancel_campaign_messages(s, c.id, now, "campaign: rescheduled", stale)
        new_rows = []
        for key, row in wanted.items():
            if paused:
                row["next_attempt_at"] = row["next_attempt_at"] + PAUSE_SHIFT
            have = existing.get(key)
            if have is None:
                new_rows.append(row)
            elif have.state == "pending" and (have.body != row["body"] or have.to_phone != row["to_phone"]
                                              or have.quiet != row["quiet"]):
                self.outbox.reschedule_message(s, have.id, now, {
                    "body": row["body"], "segments": row["segments"], "to_phone": row["to_phone"],
                    "quiet": row["quiet"]})
                result.moved += 1
        if recipient.phone in self.outbox.is_suppressed([recipient.phone], session=s):
            result.skipped["suppressed"] += len(new_rows)
            return
        new_rows = self._capped(s, new_rows, c.frequency_cap, result.skipped)
        self.outbox.insert_campaign_messages(s, new_rows)
        result.messages += len(new_rows)

    # -- the scheduler's tick -------------------------------------------------------------
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
                elif c.schedule_kind != "cron" and not self.outbox.campaign_open(s, c.id):
                    if self.outbox.set_campaign(s, c.id, ("scheduled", "running"), now, state="finished"):
                        stats["finished"] += 1
        if stats["messages"]:
            wake(self.redis)
        return dict(stats)

    def _materialize(self, c: Any, now: datetime, horizon: timedelta) -> int:
        start = c.materialized_until or c.created_at
        if c.missed == "skip":
            start = max(start, now - timedelta(minutes=5))
        end = now + horizon
        if end <= start:
            return 0
        plan, spec = self._stored(c)
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

    def close(self) -> None:
        self.redis.close()
        self.outbox.engine.dispose()


def _template_names(text: str) -> list[str]:
    from string import Formatter

    try:
        return [name for _, name, _, _ in Formatter().parse(text) if name]
    except ValueError:
        return []


__all__ = ["CRON_HORIZON", "CampaignSpec", "Campaigns", "Result"]
