"""Campaigns: an audience and a schedule become outbox messages, each exactly once.

    from oaksend import Campaigns, CampaignSpec
    from oaksend.worker.campaigns.audience import read_csv

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
and are checked again when it is sent (oaksend.worker.message.quiet.at_send).

Application code keeps a campaign in step with its own data, in its own
transaction: `upsert_recipient(campaign_id, row, session=...)` when a booking is
made or moved, `remove_recipient(campaign_id, key, session=...)` when it is
cancelled. A reminder already sent stays sent.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import redis
from sqlalchemy.orm import Session

from oaksend.errors import InvalidTransition, NotFound, ValidationError
from oaksend.models.db import make_engine
from oaksend.models.repository import Outbox
from oaksend.models.repository.bulk import BulkWriter
from oaksend.models.repository.campaigns import PAUSED_AFTER
from oaksend.worker.campaigns.audience import (
    AudienceError,
    AudienceSpec,
    Recipient,
    RowError,
    RowProblem,
    check_columns,
    check_row,
    from_dicts,
)
from oaksend.worker.campaigns.build import MAX_ERRORS_KEPT, RECIPIENT_COLUMNS, Builder, Built, build_all, planned_for
from oaksend.worker.campaigns.caps import capped
from oaksend.worker.campaigns.plan import (
    DEFAULT_DEADLINE,
    MESSAGE_COLUMNS,
    CampaignPlan,
    Planned,
    plan_from_row,
    summary,
    why_empty,
)
from oaksend.worker.campaigns.previews import Previews
from oaksend.worker.campaigns.schedule import Once, once_at, parse_duration, zone
from oaksend.worker.campaigns.spec import (
    BAD_ROWS,
    CRON_HORIZON,
    LIVE,
    CampaignSpec,
    Result,
    needed_columns,
    schedule_from_json,
    schedule_json,
)
from oaksend.worker.campaigns.sync import AudienceSync
from oaksend.worker.campaigns.template import parse as parse_template
from oaksend.worker.campaigns.template import placeholder_names
from oaksend.worker.campaigns.ticks import CronTicks
from oaksend.worker.clock import utcnow
from oaksend.worker.enqueue import wake
from oaksend.worker.message.quiet import parse_window
from oaksend.worker.message.segments import count_segments, encoding
from oaksend.worker.message.validation import check_serial_number
from oaksend.worker.settings import Settings

log = logging.getLogger(__name__)
#: A create that writes at least this many messages refreshes the database's statistics.
ANALYZE_AFTER = 5000


class Campaigns(AudienceSync, CronTicks, Previews):
    """The campaign service: create, preview, update, pause, resume, cancel, and the scheduler's tick."""

    def __init__(self, settings: Settings, *, outbox: Outbox | None = None, redis_client: redis.Redis | None = None,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.settings = settings
        self.outbox = outbox or Outbox(make_engine(settings.database_url, schema=settings.db_schema))
        self.redis = redis_client or redis.Redis.from_url(settings.redis_url, socket_timeout=2,
                                                          socket_connect_timeout=2)
        self.clock = clock

    # -- checking a spec ------------------------------------------------------------------
    def _plan(self, spec: CampaignSpec, header: list[str]) -> CampaignPlan:
        if not isinstance(spec.name, str) or not spec.name.strip() or len(spec.name) > 200:
            raise ValidationError("name", "is required (at most 200 characters)")
        check_serial_number(spec.chatbot)
        if not (spec.tz or self.settings.campaign_timezone):
            raise ValidationError("tz", "is required (e.g. America/New_York), or set OAKSEND_CAMPAIGN_TIMEZONE")
        tz = zone(spec.tz or self.settings.campaign_timezone or "", "tz")
        template = parse_template(spec.template, header)
        check_columns(header, spec.audience, needed_columns(spec.schedule, template.names))
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
                raise ValidationError("rate_cap",
                                      f"{spec.rate_cap_per_s:g}/s is above the chatbot's limit ({limit:g}/s)")
        if spec.max_segments is not None and (not isinstance(spec.max_segments, int) or spec.max_segments < 1):
            raise ValidationError("max_segments", "must be a whole number of segments, at least 1")
        return CampaignPlan(spec.name.strip(), template, spec.schedule, tz, parse_window(spec.quiet_hours),
                            deadline, spec.missed, tz_column=spec.audience.tz_column,
                            key_secret=self.settings.key_secret, max_segments=spec.max_segments)

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
                    raise RowProblem(RowError(row_no, spec.key,
                                              f"duplicate key (row {seen[recipient.key]} has it too)"))
                seen[recipient.key] = row_no
                planned, skipped = planned_for(plan, recipient, now, window, row_no)
            except RowProblem as exc:
                self._error(errors, counts, exc.error)
                continue
            counts.update(skipped)
            yield recipient, planned

    @staticmethod
    def _error(errors: list[RowError], counts: Counter[str], error: RowError) -> None:
        counts[BAD_ROWS] += 1
        if len(errors) < MAX_ERRORS_KEPT:
            errors.append(error)

    # -- create ---------------------------------------------------------------------------
    def create(self, spec: CampaignSpec,
               audience: tuple[list[str], Iterator[tuple[int, dict[str, str]]]] | list[dict[str, Any]]) -> Result:
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
                "max_segments": spec.max_segments,
                "missed": spec.missed, "state": "draft" if spec.draft else "scheduled",
                "skipped": {}, "recipients": 0,
                "materialized_until": window[1] if window else None, "created_at": now, "updated_at": now,
            })
            result.id = cid
            capping = bool(spec.frequency_cap or self.settings.frequency_cap)  # rows as dicts: the caps read them
            builder = Builder(plan, spec.audience, cid, spec.chatbot, now, window, frozenset(suppressed),
                              copy_text=self.outbox.is_postgres() and not capping)
            # Rows are built on every core (forked before the writer's thread starts); the database
            # stores each batch while the next one is built (models.repository.bulk).
            batches = build_all(builder, rows, parallel=builder.copy_text,
                                processes=self.settings.campaign_processes)
            first = next(batches, None)
            seen: dict[str, int] = {}
            with self.outbox.bulk_writer(s) as writer:
                for built in itertools.chain([first] if first is not None else [], batches):
                    for row_no, key in built.keys:
                        if key in seen:
                            built.error(RowError(row_no, spec.audience.key,
                                                 f"duplicate key (row {seen[key]} has it too)"))
                        else:
                            seen[key] = row_no
                    errors += built.errors
                    counts.update(built.counts)
                    if not counts[BAD_ROWS]:
                        self._write(writer, built, result, spec.frequency_cap, counts)
            if counts[BAD_ROWS]:
                s.rollback()
                errors.sort(key=lambda e: e.row)
                raise AudienceError(errors[:MAX_ERRORS_KEPT], counts[BAD_ROWS])
            if result.recipients == 0:
                s.rollback()
                raise ValidationError("audience", "has no recipients")
            if not result.messages and kind != "cron" and not spec.allow_empty:
                s.rollback()  # (a cron campaign's first occurrence may lie beyond the horizon)
                why = why_empty(summary(counts)[0], result.recipients)
                raise ValidationError("campaign", f"would write 0 messages: {why} (--allow-empty to create it anyway)")
            del counts[BAD_ROWS]
            result.skipped = counts
            self.outbox.set_campaign(s, cid, ("draft", "scheduled"), now, recipients=result.recipients,
                                     skipped=dict(counts))
            if spec.rate_cap_per_s:
                self._spread(s, cid, spec.rate_cap_per_s)  # deadlines move with the send times
            result.expiring = self.expiring(s, cid, spec.chatbot, spec.rate_cap_per_s, now)
            if spec.draft:
                self.outbox.hold_campaign(s, cid, now)  # in this transaction: never visible unheld
        if result.messages >= ANALYZE_AFTER:
            self.outbox.analyze()
        wake(self.redis, self.settings.keys)
        log.info("campaign %s created: %d recipients, %d messages, skipped %s", cid, result.recipients,
                 result.messages, dict(result.skipped))
        return result

    def _write(self, writer: BulkWriter, built: Built, result: Result, cap: int | None,
               counts: Counter[str]) -> None:
        """Hand a built batch to the writer (the frequency cap first looks at what is stored)."""
        result.recipients += len(built.recipients)
        self.outbox.copy_recipients(writer, built.recipients, RECIPIENT_COLUMNS)
        rows = built.messages
        if cap or self.settings.frequency_cap:
            rows = writer.call(lambda s: self._capped(s, built.messages, cap, counts))
        self.outbox.copy_campaign_messages(writer, rows, MESSAGE_COLUMNS)
        result.messages += len(rows)

    def _capped(self, s: Session, rows: list[dict[str, Any]], cap: int | None,
                counts: Counter[str]) -> list[dict[str, Any]]:
        """The rows the frequency caps (the campaign's, the deployment's) let through; the others are counted."""
        return capped(self.outbox, s, rows, cap, self.settings.frequency_cap, counts)

    # -- preview --------------------------------------------------------------------------
    def preview(self, spec: CampaignSpec, audience: Any, limit: int = 5) -> list[dict[str, Any]]:
        """The first `limit` messages as they would be written (local and UTC times, segments); writes nothing."""
        header, rows = from_dicts(audience) if isinstance(audience, list) else audience
        plan = self._plan(spec, header)
        now = self.clock()
        window = self.preview_window(spec.schedule, plan.tz, now, limit)
        return self._preview(plan, rows, spec.audience, now, window, limit)

    def preview_id(self, campaign_id: int, limit: int = 5) -> list[dict[str, Any]]:
        """The first `limit` messages of a stored campaign, rendered from its recipients."""
        campaign = self._get(campaign_id)
        plan, spec = self._stored(campaign)
        now = self.clock()
        window = self.preview_window(plan.schedule, plan.tz, now, limit)

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
                            "quiet_zones": [z.key for z in plan.zones_of(recipient).quiet],
                            "send_at_local": p.send_at.astimezone(recipient.zone).isoformat(),
                            "send_at_utc": p.send_at.isoformat(), "deadline_utc": p.deadline_at.isoformat(),
                            "text": p.body, "segments": count_segments(p.body), "encoding": encoding(p.body)})
            if len(out) >= limit:
                break
        if errors:
            raise AudienceError(errors, counts[BAD_ROWS])
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
        template = parse_template(campaign.template, placeholder_names(campaign.template) + header)
        return plan_from_row(campaign, template, schedule, key_secret=self.settings.key_secret), spec

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
        first, _ = self.outbox.campaign_next_send(campaign_id)
        held = first is not None and first.replace(tzinfo=None) >= PAUSED_AFTER
        first, eta = (None, None) if held else self.next_send(c, first, self.clock())
        kind, data = c.schedule_kind, c.schedule
        return {
            "id": c.id, "name": c.name, "chatbot": c.serial_number, "state": c.state,
            "schedule": {"kind": kind, **data}, "tz": c.tz, "quiet_hours": c.quiet_hours or "off",
            "deadline_s": c.deadline_s, "rate_cap_per_s": c.rate_cap_per_s, "frequency_cap": c.frequency_cap,
            "max_segments": c.max_segments,
            "missed": c.missed, "recipients": c.recipients, "messages": counts, "skipped": skipped,
            "next_send_at": None if first is None else first.isoformat(), "last_error": c.last_error,
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
                raise InvalidTransition(
                    f"campaign {campaign_id} is {c.state}; only a scheduled or running one can be paused")
            return self.outbox.hold_campaign(s, campaign_id, now)

    def start(self, campaign_id: int) -> int:
        """Schedule a draft: its messages go at their own times; returns how many."""
        now = self.clock()
        with self.outbox.session() as s:
            c = self._get(campaign_id, s)
            if not self.outbox.set_campaign(s, campaign_id, ("draft",), now, state="scheduled"):
                raise InvalidTransition(f"campaign {campaign_id} is {c.state}; only a draft can be started")
            n = self.outbox.release_campaign(s, campaign_id, now)
        wake(self.redis, self.settings.keys)
        return n

    def resume(self, campaign_id: int) -> int:
        """Release a paused campaign's messages at their own times; returns how many."""
        now = self.clock()
        with self.outbox.session() as s:
            c = self._get(campaign_id, s)
            state = "running" if self.outbox.campaign_sent_any(s, campaign_id) else "scheduled"
            if not self.outbox.set_campaign(s, campaign_id, ("paused",), now, state=state):
                raise InvalidTransition(f"campaign {campaign_id} is {c.state}; only a paused one can be resumed")
            n = self.outbox.release_campaign(s, campaign_id, now)
        wake(self.redis, self.settings.keys)
        return n

    def cancel(self, campaign_id: int) -> int:
        """Cancel every unsent message of the campaign; returns how many."""
        now = self.clock()
        with self.outbox.session() as s:
            c = self._get(campaign_id, s)
            if not self.outbox.set_campaign(s, campaign_id, (*LIVE, "paused"), now, state="cancelled"):
                raise InvalidTransition(f"campaign {campaign_id} is {c.state}; it cannot be cancelled")
            return self.outbox.cancel_campaign_messages(s, campaign_id, now, "campaign cancelled")

    def close(self) -> None:
        self.redis.close()
        self.outbox.engine.dispose()


__all__ = ["CRON_HORIZON", "CampaignSpec", "Campaigns", "Result"]
