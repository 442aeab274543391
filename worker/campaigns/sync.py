"""Keeping a campaign in step with the application: a new audience, one recipient added, moved or removed.

`AudienceSync` is a part of the `Campaigns` service (oaksend.worker.campaigns.service),
which provides the outbox, the clock and the checking of rows. Reminders follow the
booking (oaksend.models.follow): whatever the data says now is what stays scheduled.
A reminder the data no longer asks for is cancelled; one it asks for again (an
appointment moved back, a booking re-added) is revived; a reminder already sent for
an appointment time is never sent again.

`update` diffs a whole audience in bulk: its reminders go into temporary tables and
a few set-based statements compare them with the outbox (models.repository.campaign_sync),
so its cost is the audience's rows, not queries per row. `upsert_recipient` and
`remove_recipient` change one recipient in the caller's transaction when given one.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session

from oaksend.errors import InvalidTransition, NotFound, ValidationError
from oaksend.models.follow import (
    ADD,
    CAPPED,
    CHANGE,
    REMOVED,
    RESCHEDULED,
    REVIVE,
    REVIVED,
    SUPPRESSED,
    Stored,
    Wanted,
    action,
    is_stale,
)
from oaksend.worker.campaigns.audience import AudienceError, Recipient, RowError, check_columns, from_dicts
from oaksend.worker.campaigns.build import MAX_ERRORS_KEPT, RECIPIENT_COLUMNS, Builder, build_all
from oaksend.worker.campaigns.plan import MESSAGE_COLUMNS, CampaignPlan, Planned, message_row, recipient_prefix
from oaksend.worker.campaigns.schedule import occurrence_label
from oaksend.worker.campaigns.spec import BAD_ROWS, CHANGEABLE, HELD, Result, needed_columns
from oaksend.worker.enqueue import wake


@dataclass
class SyncResult(Result):
    """What an update (or one recipient's change) did, or with `dry_run` would do.

    `messages` counts reminders written to be sent: added and revived (`revived` of them);
    `moved` those whose text, number or quiet hours changed; `cancelled` those no longer asked for.
    """

    revived: int = 0
    recipients_added: int = 0
    recipients_changed: int = 0
    recipients_removed: int = 0
    dry_run: bool = False


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

    def update(self, campaign_id: int, audience: Any, *, partial: bool = False, dry_run: bool = False) -> SyncResult:
        """Make the campaign's reminders what `audience` asks for, in one transaction; all rows checked first.

        Recipients absent from the audience are removed (their unsent reminders cancelled), unless
        `partial`: then the audience holds only some recipients and the others are left alone.
        `dry_run` counts what would be added, revived, changed and cancelled, and writes nothing
        (its frequency cap still counts the reminders the update would cancel).
        """
        header, rows = from_dicts(audience) if isinstance(audience, list) else audience
        now = self.clock()
        result = SyncResult(id=campaign_id, dry_run=dry_run)
        with self.outbox.session() as s:
            c = self.outbox.campaign(campaign_id, s, lock=True)  # two updates of one campaign take turns
            if c is None:
                raise NotFound(f"campaign {campaign_id} not found")
            if c.state not in CHANGEABLE:
                raise InvalidTransition(f"campaign {campaign_id} is {c.state}; it cannot be updated")
            plan, spec = self._stored(c)
            check_columns(header, spec, needed_columns(plan.schedule, plan.template.names))
            tables = self.outbox.sync_tables(s, MESSAGE_COLUMNS, RECIPIENT_COLUMNS)
            counts = self._load(s, c, plan, spec, rows, now, tables)
            self.outbox.sync_ready(s, tables)
            self.outbox.classify(s, tables, c.id)
            self.outbox.skip_suppressed(s, tables)
            window = self._cron_window(c, now)
            scope = dict(partial=partial, scope_after=occurrence_label(window[0]) if window else None)
            people = self.outbox.recipient_counts(s, tables, c.id, partial=partial)
            result.recipients_added, result.recipients_changed = people["added"], people["changed"]
            result.recipients_removed = people["removed"]
            if dry_run:
                result.cancelled = self.outbox.count_stale(s, tables, c.id, **scope)
            else:
                result.cancelled = self.outbox.cancel_stale(s, tables, c.id, now, **scope)
            if c.frequency_cap or self.settings.frequency_cap:
                self._cap(s, tables, c.frequency_cap)
            actions = self.outbox.sync_counts(s, tables)
            counts.update({cause: actions.get(cause, 0) for cause in (SUPPRESSED, CAPPED)})
            result.skipped = +counts
            if dry_run:
                s.rollback()
                result.revived, result.moved = actions.get(REVIVE, 0), actions.get(CHANGE, 0)
                result.messages = actions.get(ADD, 0) + result.revived
                return result
            done = self.outbox.apply(s, tables, now)
            result.revived, result.moved, result.messages = done[REVIVE], done[CHANGE], done[ADD] + done[REVIVE]
            self.outbox.sync_recipients(s, tables, c.id, partial=partial)
            self.outbox.sync_done(s, tables)
            self._finish(s, c, result, now)
        wake(self.redis, self.settings.keys)
        return result

    def _load(self, s: Session, c: Any, plan: CampaignPlan, spec: Any, rows: Iterator[tuple[int, dict[str, str]]],
              now: datetime, tables: Any) -> Counter[str]:
        """Check every row and load what the audience asks for into the update's temporary tables.

        Raises AudienceError (after rolling back) listing the bad rows; returns the skips by cause.
        """
        from oaksend.models.repository.campaigns import PAUSE_SHIFT

        paused = c.state in HELD
        copy_text = tables.postgres and not paused  # a held campaign's times move: dict rows
        builder = Builder(plan, spec, c.id, c.serial_number, now, self._cron_window(c, now), frozenset(),
                          copy_text=copy_text)
        batches = build_all(builder, rows, parallel=copy_text, processes=self.settings.campaign_processes)
        first = next(batches, None)  # forks the builders (if it does) before the writer's thread starts
        errors: list[RowError] = []
        counts: Counter[str] = Counter()
        seen: dict[str, int] = {}
        with self.outbox.sync_writer(s, tables) as writer:
            for built in itertools.chain([first] if first is not None else [], batches):
                for row_no, key in built.keys:
                    if key in seen:
                        built.error(RowError(row_no, spec.key, f"duplicate key (row {seen[key]} has it too)"))
                    else:
                        seen[key] = row_no
                errors += built.errors
                counts.update(built.counts)
                if counts[BAD_ROWS]:
                    continue
                if paused:
                    for row in built.messages:
                        row["next_attempt_at"] += PAUSE_SHIFT
                self.outbox.load(writer, tables.audience, built.recipients, RECIPIENT_COLUMNS)
                self.outbox.load(writer, tables.wanted, built.messages, MESSAGE_COLUMNS)
        if counts[BAD_ROWS]:
            s.rollback()
            errors.sort(key=lambda e: e.row)
            raise AudienceError(errors[:MAX_ERRORS_KEPT], counts[BAD_ROWS])
        del counts[BAD_ROWS]
        return counts

    def _cap(self, s: Session, tables: Any, cap: int) -> None:
        """The frequency cap over the reminders about to be written: those over it are marked CAPPED."""
        candidates = self.outbox.candidates(s, tables)
        kept = {r["idempotency_key"] for r in self._capped(s, candidates, cap, Counter())}
        self.outbox.mark(s, tables, [r["idempotency_key"] for r in candidates if r["idempotency_key"] not in kept],
                         CAPPED)

    def _finish(self, s: Session, c: Any, result: Result, now: datetime) -> None:
        """The campaign's counts, its state (a finished one runs again), its rate cap over the new messages."""
        self.outbox.add_skipped(s, c.id, result.skipped, now)
        self.outbox.set_campaign(s, c.id, (c.state,), now, recipients=self.outbox.count_recipients(s, c.id))
        self._reopen(s, c, result, now)
        if c.rate_cap_per_s and result.messages and c.state not in HELD:
            self._spread(s, c.id, c.rate_cap_per_s)

    def upsert_recipient(self, campaign_id: int, row: dict[str, Any], *,
                         session: Session | None = None) -> SyncResult:
        """Add or change one recipient (a booking made or moved), in the caller's transaction when given.

        Its reminders follow: those no longer asked for are cancelled, those asked for again revived,
        new ones written; one already sent stays sent.
        """
        def work(s: Session) -> SyncResult:
            now = self.clock()
            c = self._get(campaign_id, s)
            if c.state not in CHANGEABLE:
                raise InvalidTransition(f"campaign {campaign_id} is {c.state}; its recipients cannot change")
            plan, spec = self._stored(c)
            header, rows = from_dicts([row])
            check_columns(header, spec, needed_columns(plan.schedule, plan.template.names))
            errors: list[RowError] = []
            counts: Counter[str] = Counter()
            result = SyncResult(id=campaign_id)
            window = self._cron_window(c, now)
            scope_after = occurrence_label(window[0]) if window else None
            for recipient, planned in self._recipients(rows, spec, plan, now, errors, counts, window):
                self._sync(s, c, plan, recipient, planned, now, result, scope_after)
            if errors:
                raise ValidationError(f"row.{errors[0].column}", errors[0].why)
            del counts[BAD_ROWS]
            result.skipped.update(counts)
            self.outbox.add_skipped(s, campaign_id, result.skipped, now)
            self._reopen(s, c, result, now)
            return result

        return self._in(session, work)

    def remove_recipient(self, campaign_id: int, key: str, *, session: Session | None = None) -> int:
        """Remove one recipient (a cancelled booking): its unsent reminders are cancelled with it."""
        def work(s: Session) -> int:
            now = self.clock()
            plan, _ = self._stored(self._get(campaign_id, s))
            rows = self.outbox.open_campaign_messages(s, campaign_id, recipient_prefix(campaign_id, key,
                                                                                      plan.key_secret))
            n = self.outbox.cancel_campaign_messages(s, campaign_id, now, REMOVED, [m.id for m in rows])
            self.outbox.drop_recipients(s, campaign_id, [key])
            return int(n)

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

    def _sync(self, s: Session, c: Any, plan: CampaignPlan, recipient: Recipient, planned: list[Planned],
              now: datetime, result: SyncResult, scope_after: str | None) -> None:
        """Bring one recipient's reminders in line with `planned` (models.follow's rule, row by row)."""
        from oaksend.models.repository.campaigns import PAUSE_SHIFT

        self.outbox.put_recipients(s, c.id, [{"key": recipient.key, "phone": recipient.phone,
                                             "tz": recipient.zone.key, "data": recipient.values}])
        quiet = plan.quiet_compact(recipient)
        wanted = {row["idempotency_key"]: row for row in
                  (message_row(c.id, c.serial_number, recipient, p, quiet, now, key_secret=plan.key_secret)
                   for p in planned)}
        prefix = recipient_prefix(c.id, recipient.key, plan.key_secret)
        stale = [m.id for m in self.outbox.open_campaign_messages(s, c.id, prefix)
                 if m.idempotency_key not in wanted
                 and is_stale(m.state, str((m.meta or {}).get("occurrence", "")), scope_after)]
        if stale:
            result.cancelled += self.outbox.cancel_campaign_messages(s, c.id, now, RESCHEDULED, stale)
        stored = self.outbox.campaign_messages_by_key(s, c.id, list(wanted))
        writes: list[tuple[dict[str, Any], Any]] = []
        for key, row in wanted.items():
            if c.state in HELD:
                row["next_attempt_at"] = row["next_attempt_at"] + PAUSE_SHIFT
            have = stored.get(key)
            decided = action(Wanted(row["body"], row["to_phone"], row["quiet"]),
                             None if have is None else Stored(have.state, have.last_reason, have.body, have.to_phone,
                                                              have.quiet))
            if decided == CHANGE:
                self.outbox.reschedule_message(s, have.id, now, {
                    "body": row["body"], "segments": row["segments"], "to_phone": row["to_phone"],
                    "quiet": row["quiet"]})
                result.moved += 1
            elif decided in (ADD, REVIVE):
                writes.append((row, have))
        if writes and recipient.phone in self.outbox.is_suppressed([recipient.phone], session=s):
            result.skipped[SUPPRESSED] += len(writes)
            return
        kept = {id(r) for r in self._capped(s, [row for row, _ in writes], c.frequency_cap, result.skipped)}
        revived = 0
        for row, have in writes:
            if id(row) in kept and have is not None:
                values = {k: row[k] for k in ("next_attempt_at", "deadline_at", "body", "segments", "to_phone",
                                              "quiet")}
                revived += self.outbox.revive_message(s, have.id, now, values, REVIVED)
        inserts = [row for row, have in writes if id(row) in kept and have is None]
        self.outbox.insert_campaign_messages(s, inserts)
        result.revived += revived
        result.messages += len(inserts) + revived


__all__ = ["AudienceSync", "SyncResult"]
