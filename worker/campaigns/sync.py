"""Keeping a campaign in step with the application: a new audience, one recipient added, moved or removed.

`AudienceSync` is a part of the `Campaigns` service (oaksend.worker.campaigns.service),
which provides the outbox, the clock and the checking of rows. Every change is one
transaction (the caller's, when given): unsent reminders whose time moved are
cancelled and written anew, removed recipients' are cancelled, new ones added;
a reminder already sent stays sent.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session

from oaksend.errors import InvalidTransition, ValidationError
from oaksend.worker.campaigns.audience import AudienceError, Recipient, RowError, check_columns, from_dicts
from oaksend.worker.campaigns.plan import CampaignPlan, Planned, message_row, recipient_prefix
from oaksend.worker.campaigns.spec import BAD_ROWS, CHANGEABLE, HELD, Result, needed_columns
from oaksend.worker.enqueue import wake


class AudienceSync:
    """update / upsert_recipient / remove_recipient of the Campaigns service."""

    settings: Any
    outbox: Any
    redis: Any
    clock: Callable[[], datetime]
    _get: Callable[..., Any]
    _stored: Callable[..., Any]
    _recipients: Callable[..., Any]
    _capped: Callable[..., Any]
    _spread: Callable[..., Any]
    _cron_window: Callable[..., Any]

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
            check_columns(header, spec, needed_columns(plan.schedule, plan.template.names))
            old_keys = self.outbox.recipient_keys(s, campaign_id)
            new_keys: set[str] = set()
            window = self._cron_window(c, now)
            for recipient, planned in self._recipients(rows, spec, plan, now, errors, counts, window):
                if errors:
                    continue
                new_keys.add(recipient.key)
                self._sync(s, c, plan, recipient, planned, now, result, paused=c.state in HELD)
            if errors:
                s.rollback()
                raise AudienceError(errors, counts[BAD_ROWS])
            gone = old_keys - new_keys
            for key in gone:
                result.cancelled += self._cancel_recipient(s, campaign_id, key, now)
            self.outbox.drop_recipients(s, campaign_id, list(gone))
            del counts[BAD_ROWS]
            self.outbox.add_skipped(s, campaign_id, counts, now)
            self.outbox.set_campaign(s, campaign_id, (c.state,), now,
                                     recipients=self.outbox.count_recipients(s, campaign_id))
            self._reopen(s, c, result, now)
            if c.rate_cap_per_s and result.messages and c.state not in HELD:
                self._spread(s, campaign_id, c.rate_cap_per_s)
            result.skipped = counts
        wake(self.redis, self.settings.keys)
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
            check_columns(header, spec, needed_columns(plan.schedule, plan.template.names))
            errors: list[RowError] = []
            counts: Counter[str] = Counter()
            result = Result(id=campaign_id)
            window = self._cron_window(c, now)
            for recipient, planned in self._recipients(rows, spec, plan, now, errors, counts, window):
                self._sync(s, c, plan, recipient, planned, now, result, paused=c.state in HELD)
            if errors:
                raise ValidationError(f"row.{errors[0].column}", errors[0].why)
            del counts[BAD_ROWS]
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
            event.listen(session, "after_commit", lambda _s: wake(self.redis, self.settings.keys), once=True)
            return out
        with self.outbox.session() as s:
            out = work(s)
        wake(self.redis, self.settings.keys)
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


__all__ = ["AudienceSync"]
