"""The scheduler's part of the repository: which campaigns a tick looks at, their marks and errors,
and the spacing of a campaign's pending messages (send times and deadlines together).

A tick's cost follows what is due, not the audience: cron campaigns are read only
when their stored next fire time (indexed) falls within the horizon, and the
state checks are index probes that stop at the first row.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, or_, select, update
from sqlalchemy.orm import Session

from oaksend.models.repository.base import Repository, chunks, dialect_insert, rowcount
from oaksend.models.tables import OPEN_STATES, STATES, Campaign, CampaignRecipient, Chatbot, Message, UTCDateTime

#: Pending rows at or after this are a paused campaign's (models.repository.campaigns.PAUSED_AFTER).
_PAUSED_AFTER = datetime(2900, 1, 1, tzinfo=UTC)
#: Longest last_error kept (a traceback's last line is enough).
MAX_ERROR_CHARS = 500
_messages = Message.__table__
_recipients = CampaignRecipient.__table__
_NOT_PENDING = [s for s in STATES if s != "pending"]


class CampaignTickRepository(Repository):
    """Handed the outbox's engine: `CampaignTickRepository(outbox.engine)`."""

    def campaigns_to_tick(self, until: datetime) -> list[Campaign]:
        """Scheduled or running campaigns with something for a tick to do: a state to move along
        (scheduled ones; running one-off and relative ones), or a cron occurrence before `until`."""
        due = or_(Campaign.schedule_kind != "cron", Campaign.state == "scheduled",
                  Campaign.next_fire_at.is_(None), Campaign.next_fire_at <= until)
        with self.session() as s:
            return list(s.scalars(select(Campaign).where(Campaign.state.in_(("scheduled", "running")), due)
                                  .order_by(Campaign.id)))

    @staticmethod
    def sent_any(session: Session, campaign_id: int) -> bool:
        """Has any message of the campaign left `pending`? One probe per state on the campaign index."""
        return session.scalar(select(Message.id).where(Message.campaign_id == campaign_id,
                                                       Message.state.in_(_NOT_PENDING)).limit(1)) is not None

    @staticmethod
    def open_any(session: Session, campaign_id: int) -> bool:
        return session.scalar(select(Message.id).where(Message.campaign_id == campaign_id,
                                                       Message.state.in_(OPEN_STATES)).limit(1)) is not None

    @staticmethod
    def move_mark(session: Session, campaign_id: int, old: datetime | None, new: datetime,
                  next_fire: datetime | None, now: datetime) -> bool:
        """Move a cron campaign's materialized_until from `old` to `new` and store its next fire time;
        False if another scheduler moved it first."""
        same = Campaign.materialized_until.is_(None) if old is None else Campaign.materialized_until == old
        return bool(rowcount(session.execute(
            update(Campaign).where(Campaign.id == campaign_id, same)
            .values(materialized_until=new, next_fire_at=next_fire, updated_at=now))))

    def set_error(self, campaign_id: int, error: str | None, now: datetime) -> None:
        """Record (or clear, with None) why a campaign could not be ticked; written only when it changes."""
        value = None if error is None else error[:MAX_ERROR_CHARS]
        with self.session() as s:
            s.execute(update(Campaign).where(Campaign.id == campaign_id,
                                             Campaign.last_error.is_distinct_from(value))
                      .values(last_error=value, updated_at=now))

    @staticmethod
    def pending_schedule(session: Session, campaign_id: int) -> list[tuple[int, datetime, datetime | None, str]]:
        """(id, send time, deadline, occurrence) of a campaign's unpaused pending messages, by send time."""
        rows = session.execute(
            select(Message.id, Message.next_attempt_at, Message.deadline_at, Message.meta)
            .where(Message.campaign_id == campaign_id, Message.state == "pending",
                   Message.next_attempt_at < _PAUSED_AFTER)
            .order_by(Message.next_attempt_at, Message.id))
        return [(mid, at, deadline, str((meta or {}).get("occurrence", ""))) for mid, at, deadline, meta in rows]

    @staticmethod
    def move_messages(session: Session, moves: Sequence[tuple[int, datetime, datetime | None]]) -> None:
        """New send times and deadlines of pending messages (id, send time, deadline), in batches."""
        stmt = (update(_messages).where(_messages.c.id == bindparam("mid"), _messages.c.state == "pending")
                .values(next_attempt_at=bindparam("at", type_=UTCDateTime()),
                        deadline_at=bindparam("deadline", type_=UTCDateTime()), ready=False))
        for chunk in chunks(list(moves), 1000):
            params: list[dict[str, Any]] = [{"mid": mid, "at": at, "deadline": dl} for mid, at, dl in chunk]
            session.connection().execute(stmt, params)

    def recipient_pages(self, campaign_id: int, page: int = 2000) -> Iterator[list[Any]]:
        """Every recipient of a campaign as plain rows (id, key, phone, tz, data), a page at a time:
        a keyset walk of the unique (campaign_id, key) index, no ORM objects (a third of the time)."""
        r = _recipients.c
        after: str | None = None
        while True:
            q = select(r.id, r.key, r.phone, r.tz, r.data).where(r.campaign_id == campaign_id)
            if after is not None:
                q = q.where(r.key > after)
            with self.engine.connect() as conn:
                rows = list(conn.execute(q.order_by(r.key).limit(page)))
            if not rows:
                return
            yield rows
            after = rows[-1].key

    def insert_messages(self, session: Session, rows: Sequence[dict[str, Any]]) -> int:
        """Insert message rows, leaving alone those whose key exists (another scheduler wrote them).

        On PostgreSQL a binary COPY (keys never seen, the usual case), else one INSERT ... SELECT FROM
        unnest(...) ON CONFLICT DO NOTHING (models.repository.pg_bulk); psycopg's executemany would
        send one statement per row.
        """
        if not rows:
            return 0
        if session.get_bind().dialect.name != "postgresql":
            stmt = dialect_insert(session, _messages).on_conflict_do_nothing()
            return rowcount(session.execute(stmt, list(rows)))
        from oaksend.models.repository import pg_bulk

        conn: Any = session.connection().connection.driver_connection  # psycopg's, in this transaction
        schema = getattr(self, "schema", None)
        ids = pg_bulk.take_ids(conn, schema, _messages, len(rows))
        return sum(1 for i in pg_bulk.insert_many(conn, schema, _messages, ids, rows) if i is not None)

    @staticmethod
    def chatbot_rate(session: Session, serial_number: str) -> float | None:
        """A chatbot's own rate limit (None: the default), read in `session`'s transaction."""
        return session.scalar(select(Chatbot.rate_per_s).where(Chatbot.serial_number == serial_number))

    def pending_send_times(self, campaign_id: int) -> list[datetime]:
        """Send times of a campaign's unpaused pending messages, in order (for its ETA)."""
        with self.session() as s:
            return list(s.scalars(select(Message.next_attempt_at)
                                  .where(Message.campaign_id == campaign_id, Message.state == "pending",
                                         Message.next_attempt_at < _PAUSED_AFTER)
                                  .order_by(Message.next_attempt_at)))


__all__ = ["MAX_ERROR_CHARS", "CampaignTickRepository"]
