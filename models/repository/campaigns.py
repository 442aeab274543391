"""The campaigns' part of the repository: campaigns, recipients, and their outbox messages.

Campaign messages are ordinary outbox rows with `campaign_id` set; each one's
idempotency key names (campaign, recipient key, occurrence), and they are
inserted with ON CONFLICT DO NOTHING, so however often (and by however many
schedulers) an occurrence is materialized, it is one message.

Pause moves a campaign's pending messages a fixed, far distance into the future
(`PAUSE_SHIFT`) and resume moves them back: their own times survive the pause,
the dispatcher simply never finds them due, and their deadlines keep running.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from oaksend.models.repository.base import chunks, dialect_insert, rowcount
from oaksend.models.repository.bulk import BulkWriter
from oaksend.models.repository.campaign_sync import CampaignSyncRepository
from oaksend.models.tables import OPEN_STATES, Campaign, CampaignRecipient, Message, SuppressedNumber

if TYPE_CHECKING:
    from typing_extensions import TypeIs  # typing's own from Python 3.13

#: How far a paused campaign's messages are moved (and moved back on resume); _FORWARD and _BACK say it in SQL.
PAUSE_SHIFT = timedelta(days=365_000)
_FORWARD = text("next_attempt_at + interval '365000 days'")
_BACK = text("next_attempt_at - interval '365000 days'")
#: Pending rows at or after this are a paused campaign's.
PAUSED_AFTER = datetime(2900, 1, 1)
#: default_statistics_target of the ANALYZE after a bulk load (PostgreSQL's default is 100:
#: 300 x target rows are sampled).
QUICK_STATISTICS_TARGET = 20
_messages = Message.__table__
_recipients = CampaignRecipient.__table__


def _are_lines(rows: Sequence[dict[str, Any]] | Sequence[str]) -> TypeIs[Sequence[str]]:
    """A batch of COPY text lines, not of dicts (a batch is all one or all the other)."""
    return bool(rows) and isinstance(rows[0], str)


class CampaignRepository(CampaignSyncRepository):
    """Campaigns, recipients and their messages.

    Every statement a caller's Session may run (upsert_recipient / remove_recipient in the
    application's transaction) carries the schema map, `self._foreign_options`: that
    Session's engine is the application's, which knows nothing of OAKSEND_DB_SCHEMA.
    """

    # -- campaigns ------------------------------------------------------------------------
    def add_campaign(self, session: Session, values: dict[str, Any]) -> int:
        row = Campaign(**values)
        session.add(row)
        session.flush()
        return row.id

    def campaign(self, campaign_id: int, session: Session | None = None, *, lock: bool = False) -> Campaign | None:
        """A campaign (in `session` when given; `lock`: FOR UPDATE, so that two updates take turns)."""
        if session is not None:
            return session.get(Campaign, campaign_id, with_for_update=lock or None,
                               execution_options=self._foreign_options)
        with self.session() as s:
            return s.get(Campaign, campaign_id)

    def campaigns(self, states: Sequence[str] = ()) -> list[Campaign]:
        q = select(Campaign).order_by(Campaign.id)
        if states:
            q = q.where(Campaign.state.in_(list(states)))
        with self.session() as s:
            return list(s.scalars(q))

    def set_campaign(self, session: Session, campaign_id: int, from_states: Sequence[str], now: datetime,
                     **values: Any) -> bool:
        """Change a campaign only while it is in one of `from_states` (conditional, so two racers: one wins)."""
        return bool(rowcount(session.execute(
            update(Campaign).where(Campaign.id == campaign_id, Campaign.state.in_(list(from_states)))
            .values(updated_at=now, **values), execution_options=self._foreign_options
        )))

    def set_campaign_mark(self, session: Session, campaign_id: int, old: datetime | None, new: datetime,
                          now: datetime) -> bool:
        """Move a cron campaign's materialized_until from `old` to `new`; False if another scheduler did."""
        same = Campaign.materialized_until.is_(None) if old is None else Campaign.materialized_until == old
        return bool(rowcount(session.execute(
            update(Campaign).where(Campaign.id == campaign_id, same).values(materialized_until=new, updated_at=now)
        )))

    def add_skipped(self, session: Session, campaign_id: int, counts: dict[str, int], now: datetime) -> None:
        if not any(counts.values()):
            return
        opts = self._foreign_options
        stored = session.execute(select(Campaign.skipped).where(Campaign.id == campaign_id).with_for_update(),
                                 execution_options=opts).first()
        if stored is None:
            return
        merged = dict(stored[0] or {})
        for cause, n in counts.items():
            if n:
                merged[cause] = merged.get(cause, 0) + n
        session.execute(update(Campaign).where(Campaign.id == campaign_id).values(skipped=merged, updated_at=now),
                        execution_options=opts)

    # -- recipients -----------------------------------------------------------------------
    def put_recipients(self, session: Session, campaign_id: int, rows: Sequence[dict[str, Any]]) -> None:
        """Insert or replace recipients (by key) of a campaign."""
        if not rows:
            return
        stmt = dialect_insert(session, _recipients)
        stmt = stmt.on_conflict_do_update(
            index_elements=["campaign_id", "key"],
            set_={"phone": stmt.excluded.phone, "tz": stmt.excluded.tz, "data": stmt.excluded.data},
        )
        session.execute(stmt, [{"campaign_id": campaign_id, **r} for r in rows],
                        execution_options=self._foreign_options)

    def recipient(self, session: Session, campaign_id: int, key: str) -> CampaignRecipient | None:
        return session.scalar(select(CampaignRecipient).where(CampaignRecipient.campaign_id == campaign_id,
                                                              CampaignRecipient.key == key))

    def drop_recipients(self, session: Session, campaign_id: int, keys: Sequence[str]) -> int:
        n = 0
        for chunk in chunks(list(keys), 500):
            n += rowcount(session.execute(_recipients.delete().where(_recipients.c.campaign_id == campaign_id,
                                                                     _recipients.c.key.in_(list(chunk))),
                                          execution_options=self._foreign_options))
        return n

    def recipient_pages(self, campaign_id: int, page: int = 2000) -> Iterator[list[CampaignRecipient]]:
        """Every recipient of a campaign, a page at a time (bounded memory)."""
        after = 0
        while True:
            with self.session() as s:
                rows = list(s.scalars(select(CampaignRecipient)
                                      .where(CampaignRecipient.campaign_id == campaign_id, CampaignRecipient.id > after)
                                      .order_by(CampaignRecipient.id).limit(page)))
            if not rows:
                return
            yield rows
            after = rows[-1].id

    def recipient_keys(self, session: Session, campaign_id: int) -> set[str]:
        return set(session.scalars(select(CampaignRecipient.key).where(CampaignRecipient.campaign_id == campaign_id),
                                   execution_options=self._foreign_options))

    def count_recipients(self, session: Session, campaign_id: int) -> int:
        return session.scalar(select(func.count()).select_from(CampaignRecipient)
                              .where(CampaignRecipient.campaign_id == campaign_id),
                              execution_options=self._foreign_options) or 0

    # -- messages -------------------------------------------------------------------------
    def insert_campaign_messages(self, session: Session, rows: Sequence[dict[str, Any]]) -> int:
        """Insert message rows; one whose idempotency key exists already is left alone."""
        if not rows:
            return 0
        stmt = dialect_insert(session, _messages).on_conflict_do_nothing()
        return rowcount(session.execute(stmt, list(rows), execution_options=self._foreign_options)) or 0

    def bulk_writer(self, session: Session) -> BulkWriter:
        """Writes in `session`'s transaction from a thread of their own (see models.repository.bulk)."""
        return BulkWriter(session, self.schema)

    @staticmethod
    def copy_campaign_messages(writer: BulkWriter, rows: Sequence[dict[str, Any]] | Sequence[str],
                               columns: Sequence[str] = ()) -> None:
        """Write a NEW campaign's messages as fast as the database takes them (COPY on PostgreSQL).

        Rows are dicts, or COPY text lines in `columns` order. Only for a campaign created in
        this transaction: its keys cannot exist yet.
        """
        if _are_lines(rows):
            writer.copy_lines(_messages, columns, rows)
        else:
            writer.copy(_messages, rows, json_columns=("metadata",))

    @staticmethod
    def copy_recipients(writer: BulkWriter, rows: Sequence[dict[str, Any]] | Sequence[str],
                        columns: Sequence[str] = ()) -> None:
        """A new campaign's recipients (dicts with campaign_id, or COPY lines; keys checked unique by the caller)."""
        if _are_lines(rows):
            writer.copy_lines(_recipients, columns, rows)
        else:
            writer.copy(_recipients, rows, json_columns=("data",))

    def is_postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    def analyze(self) -> None:
        """Refresh PostgreSQL's statistics of the outbox after a bulk load.

        Until autovacuum gets to it (a minute or more), the planner believes the table is as
        small as before, and the dispatcher's per-chatbot probes scan 100,000 rows instead of
        reading one index entry: an unrelated message waited 470 ms instead of 30 in the benchmark.

        What fixes that is the table's new size and a rough picture of its columns, so the sample
        is small (QUICK_STATISTICS_TARGET: 6,000 rows, 0.1 s instead of 0.5 on a million-row
        table); the autovacuum's own ANALYZE refines the statistics as the messages change.
        """
        if self.engine.dialect.name != "postgresql":
            return
        from psycopg import sql

        name = sql.Identifier(self.schema, _messages.name) if self.schema else sql.Identifier(_messages.name)
        statement = sql.SQL("ANALYZE {}").format(name)  # an identifier, quoted by psycopg
        with self.engine.begin() as conn:
            driver: Any = conn.connection.driver_connection  # psycopg's, never None while open
            driver.execute("SELECT set_config('default_statistics_target', %s, true)",  # SET LOCAL
                           (str(QUICK_STATISTICS_TARGET),))
            driver.execute(statement)

    def campaign_messages_by_key(self, session: Session, campaign_id: int,
                                 keys: Sequence[str]) -> dict[str, Message]:
        out: dict[str, Message] = {}
        for chunk in chunks(list(keys), 500):
            for row in session.scalars(select(Message).where(Message.campaign_id == campaign_id,
                                                             Message.idempotency_key.in_(list(chunk))),
                                       execution_options=self._foreign_options):
                if row.idempotency_key is not None:  # always: selected by key
                    out[row.idempotency_key] = row
        return out

    def open_campaign_messages(self, session: Session, campaign_id: int,
                               key_prefix: str | None = None) -> list[Message]:
        """A campaign's messages not yet sent (optionally one recipient's: its key prefix)."""
        q = select(Message).where(Message.campaign_id == campaign_id, Message.state.in_(OPEN_STATES))
        if key_prefix is not None:
            escaped = key_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            q = q.where(Message.idempotency_key.like(escaped + "%", escape="\\"))
        return list(session.scalars(q.with_for_update(), execution_options=self._foreign_options))

    def cancel_campaign_messages(self, session: Session, campaign_id: int, now: datetime, reason: str,
                                 ids: Sequence[int] | None = None) -> int:
        """Cancel pending/dispatched messages (all of the campaign's, or these ids).

        A dispatched message's worker then finds it no longer under its lease and skips it;
        one already `sending` is mid-call and finishes.
        """
        q = update(Message).where(Message.campaign_id == campaign_id, Message.state.in_(("pending", "dispatched")))
        values = {"state": "cancelled", "lease_token": None, "lease_until": None, "last_outcome": "cancelled",
                  "last_reason": reason, "updated_at": now}
        opts = self._foreign_options
        if ids is None:
            return rowcount(session.execute(q.values(**values), execution_options=opts))
        n = 0
        for chunk in chunks(list(ids), 500):
            n += rowcount(session.execute(q.where(Message.id.in_(list(chunk))).values(**values),
                                          execution_options=opts))
        return n

    def reschedule_message(self, session: Session, message_id: int, now: datetime, values: dict[str, Any]) -> bool:
        """A pending campaign message's new time or text (a moved appointment, an edited name)."""
        return bool(rowcount(session.execute(
            update(Message).where(Message.id == message_id, Message.state == "pending")
            .values(updated_at=now, **values), execution_options=self._foreign_options
        )))

    def revive_message(self, session: Session, message_id: int, now: datetime, values: dict[str, Any],
                       reason: str) -> bool:
        """A cancelled campaign message pending again, with its new time and text (models.follow.REVIVE)."""
        return bool(rowcount(session.execute(
            update(Message).where(Message.id == message_id, Message.state == "cancelled")
            .values(state="pending", ready=False, failures=0, lease_token=None, lease_until=None, claimed_by=None,
                    calling_at=None, last_reason=reason, updated_at=now, **values),
            execution_options=self._foreign_options
        )))

    def hold_campaign(self, session: Session, campaign_id: int, now: datetime) -> int:
        """Pause: every message of the campaign not yet on its way moves PAUSE_SHIFT ahead (pending).

        Dispatched rows, and rows a worker has claimed but not yet marked calling, go back to
        pending first, keeping their time: the worker's conditional mark then finds them no
        longer its own, and no request leaves. A row marked calling may be on the wire and is
        left alone; if its call needs a retry, the dispatcher does not stage it while the
        campaign is paused (DispatchRepository.stage_due).
        """
        not_called = (Message.state == "dispatched") | ((Message.state == "sending") & Message.calling_at.is_(None))
        session.execute(update(Message).where(Message.campaign_id == campaign_id, not_called)
                        .values(state="pending", ready=False, lease_token=None, lease_until=None, claimed_by=None,
                                updated_at=now))
        return self._shift(session, campaign_id, now, forward=True)

    def release_campaign(self, session: Session, campaign_id: int, now: datetime) -> int:
        """Resume: the paused messages move back to their own times."""
        return self._shift(session, campaign_id, now, forward=False)

    def _shift(self, session: Session, campaign_id: int, now: datetime, *, forward: bool) -> int:
        held = Message.next_attempt_at >= PAUSED_AFTER.replace(tzinfo=now.tzinfo)
        where = [Message.campaign_id == campaign_id, Message.state == "pending", held if not forward else ~held]
        if session.get_bind().dialect.name == "postgresql":
            return rowcount(session.execute(
                update(Message).where(*where).values(next_attempt_at=_FORWARD if forward else _BACK, updated_at=now)
            ))
        # SQLite has no date arithmetic that keeps microseconds: shift in Python, in this
        # transaction (SQLite serializes writers, so nothing changes under us).
        rows = list(session.execute(select(Message.id, Message.next_attempt_at).where(*where)))
        delta = PAUSE_SHIFT if forward else -PAUSE_SHIFT
        for chunk in chunks(rows, 500):
            for mid, at in chunk:
                session.execute(update(Message).where(Message.id == mid, Message.state == "pending")
                                .values(next_attempt_at=at + delta, updated_at=now))
        return len(rows)

    def expire_with_reason(self, message_id: int, token: str, now: datetime, reason: str) -> bool:
        """A held message that cannot be sent in time (quiet hours until past its deadline): expired."""
        with self.engine.begin() as conn:
            return bool(conn.execute(
                update(Message).where(Message.id == message_id, Message.state.in_(("dispatched", "sending")),
                                      Message.lease_token == token)
                .values(state="expired", lease_token=None, lease_until=None, last_outcome="expired",
                        last_reason=reason, updated_at=now)
            ).rowcount)

    def spread_campaign(self, session: Session, campaign_id: int, times: Sequence[tuple[int, datetime]]) -> None:
        for chunk in chunks(list(times), 500):
            for mid, at in chunk:
                session.execute(update(Message).where(Message.id == mid).values(next_attempt_at=at))

    def pending_times(self, session: Session, campaign_id: int) -> list[tuple[int, datetime]]:
        return [(mid, at) for mid, at in session.execute(
            select(Message.id, Message.next_attempt_at)
            .where(Message.campaign_id == campaign_id, Message.state == "pending")
            .order_by(Message.next_attempt_at, Message.id))]

    def campaign_counts(self, campaign_id: int) -> dict[str, int]:
        with self.session() as s:
            rows = s.execute(select(Message.state, func.count()).where(Message.campaign_id == campaign_id)
                             .group_by(Message.state))
            return {state: n for state, n in rows}

    def campaign_expired_reasons(self, campaign_id: int) -> dict[str, int]:
        with self.session() as s:
            rows = s.execute(select(Message.last_reason, func.count())
                             .where(Message.campaign_id == campaign_id, Message.state == "expired")
                             .group_by(Message.last_reason))
            return {reason or "": n for reason, n in rows}

    def campaign_next_send(self, campaign_id: int) -> tuple[datetime | None, int]:
        """The earliest pending send time of a campaign and how many are pending."""
        with self.session() as s:
            first, n = s.execute(select(func.min(Message.next_attempt_at), func.count())
                                 .where(Message.campaign_id == campaign_id, Message.state == "pending")).one()
            return first, n

    def campaign_open(self, session: Session, campaign_id: int) -> int:
        return session.scalar(select(func.count()).select_from(Message)
                              .where(Message.campaign_id == campaign_id, Message.state.in_(OPEN_STATES))) or 0

    def campaign_sent_any(self, session: Session, campaign_id: int) -> bool:
        # Cancelled and expired messages were never sent: a campaign of only those has not run.
        return session.scalar(select(Message.id).where(
            Message.campaign_id == campaign_id,
            Message.state.not_in(("pending", "cancelled", "expired"))).limit(1)) is not None

    def campaign_times(self, session: Session, phones: Sequence[str], lo: datetime,
                       hi: datetime) -> dict[str, list[datetime]]:
        """Send times of every campaign's live or sent messages to these numbers within [lo, hi] (frequency cap)."""
        out: dict[str, list[datetime]] = {}
        for chunk in chunks(sorted(set(phones)), 500):
            rows = session.execute(
                select(Message.to_phone, Message.next_attempt_at)
                .where(Message.campaign_id.is_not(None), Message.to_phone.in_(list(chunk)),
                       Message.state.in_((*OPEN_STATES, "sent")),
                       Message.next_attempt_at >= lo, Message.next_attempt_at <= hi),
                execution_options=self._foreign_options)
            for phone, at in rows:
                out.setdefault(phone, []).append(at)
        return out

    def suppressed_set(self, session: Session) -> set[str]:
        return set(session.scalars(select(SuppressedNumber.to_phone)))
