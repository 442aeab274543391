"""The set-based half of `campaign update`: an audience of any size diffed against the outbox in a few statements.

The caller (oaksend.worker.campaigns.sync) loads what the audience asks for into two
temporary tables of its transaction (COPY on PostgreSQL, executemany on SQLite):
`wanted`, one row per reminder in the outbox's own columns, and `audience`, one row
per recipient. Then every step is one statement over all of them, never a query per row:

1. `classify`: each wanted reminder gets its action from the row stored under its key
   (the rule of oaksend.models.follow: add, revive, change; keep is left NULL, so only
   the rows that change are written);
2. `skip_suppressed` (and the frequency cap, which the caller applies to `candidates`
   and writes back with `mark`) turns an add or a revive into a skip;
3. `sync_counts` and `recipient_counts` (all a dry run prints), then, unless it is one,
   `cancel_stale`, `apply`, `sync_recipients`.

Temporary tables live in the session's own temporary schema (pg_temp, SQLite's temp),
which the schema translate map leaves alone, so OAKSEND_DB_SCHEMA holds for the
outbox's tables and the temporary ones stay the connection's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    Index,
    MetaData,
    String,
    Table,
    Text,
    and_,
    case,
    cast,
    exists,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session
from sqlalchemy.schema import DDL

from oaksend.models.follow import ADD, CANCELLABLE, CHANGE, REMOVED, RESCHEDULED, REVIVABLE, REVIVE, REVIVED, SUPPRESSED
from oaksend.models.repository.base import Repository, chunks, dialect_insert, rowcount
from oaksend.models.repository.bulk import BulkWriter
from oaksend.models.tables import CampaignRecipient, Message, SuppressedNumber

_messages = Message.__table__
_recipients = CampaignRecipient.__table__
_WANTED = "oaksend_sync_wanted"
_AUDIENCE = "oaksend_sync_audience"


@dataclass(frozen=True)
class SyncTables:
    """The two temporary tables of one update, in its transaction."""

    wanted: Table
    audience: Table
    columns: tuple[str, ...]
    postgres: bool


class CampaignSyncRepository(Repository):
    """The temporary tables and set-based statements of a bulk audience update."""

    def sync_tables(self, session: Session, message_columns: Sequence[str],
                    recipient_columns: Sequence[str]) -> SyncTables:
        """Create (empty) the temporary tables of an update: `wanted` has the outbox's `message_columns`
        plus its action and the stored row's id; `audience` has the recipients' columns."""
        postgres = session.get_bind().dialect.name == "postgresql"
        schema = "pg_temp" if postgres else "temp"
        md = MetaData()
        wanted = Table(_WANTED, md, *(Column(c, _messages.c[c].type) for c in message_columns),
                       Column("action", String(16)), Column("existing_id", BigInteger), schema=schema)
        audience = Table(_AUDIENCE, md, *(Column(c, _recipients.c[c].type) for c in recipient_columns),
                         schema=schema)
        conn = session.connection()
        if postgres:
            # The joins over 100,000s of rows look costly enough to be JIT-compiled, which took
            # longer (0.8 s) than running them; SET LOCAL: for this transaction only.
            conn.execute(text("SET LOCAL jit = off"))
        for table in (wanted, audience):  # fixed names: a left-over of this connection's earlier run, if any
            table.drop(conn, checkfirst=True)
        md.create_all(conn)
        return SyncTables(wanted, audience, tuple(message_columns), postgres)

    @staticmethod
    def sync_writer(session: Session, tables: SyncTables) -> BulkWriter:
        """A BulkWriter for the temporary tables (COPY on PostgreSQL, in this transaction)."""
        return BulkWriter(session, tables.wanted.schema)

    @staticmethod
    def load(writer: BulkWriter, table: Table, rows: Sequence[Any], columns: Sequence[str]) -> None:
        """Rows for a temporary table: dicts, or COPY text lines in `columns` order."""
        if rows and isinstance(rows[0], str):
            writer.copy_lines(table, columns, rows)
        else:
            writer.copy(table, rows, json_columns=("metadata", "data"))

    def sync_ready(self, session: Session, tables: SyncTables) -> None:
        """Index the loaded tables by key (and let PostgreSQL's planner see their size)."""
        conn = session.connection()
        Index("ix_oaksend_sync_wanted_key", tables.wanted.c.idempotency_key).create(conn)
        Index("ix_oaksend_sync_audience_key", tables.audience.c.key).create(conn)
        _analyze(session, tables, tables.wanted, tables.audience)

    def sync_done(self, session: Session, tables: SyncTables) -> None:
        conn = session.connection()
        tables.wanted.drop(conn)
        tables.audience.drop(conn)

    # -- deciding -------------------------------------------------------------------------
    def classify(self, session: Session, tables: SyncTables, campaign_id: int) -> None:
        """Mark each wanted reminder ADD, REVIVE or CHANGE (models.follow.action); KEEP stays NULL."""
        m, w = _messages, tables.wanted
        differs = or_(m.c.body != w.c.body, m.c.to_phone != w.c.to_phone, m.c.quiet.is_distinct_from(w.c.quiet))
        revive = and_(m.c.state == "cancelled", m.c.last_reason.in_(REVIVABLE))
        change = and_(m.c.state == "pending", differs)
        opts = self._foreign_options
        session.execute(update(w).where(m.c.serial_number == w.c.serial_number,
                                        m.c.idempotency_key == w.c.idempotency_key,
                                        m.c.campaign_id == campaign_id, or_(revive, change))
                        .values(action=case((revive, REVIVE), else_=CHANGE), existing_id=m.c.id),
                        execution_options=opts)
        session.execute(update(w).where(~_stored(w)).values(action=ADD), execution_options=opts)
        # Whichever way round the planner joins the stored rows (their statistics do not know this
        # transaction's cancellations), it finds a wanted row by the stored row's id in one probe.
        Index("ix_oaksend_sync_wanted_existing", w.c.existing_id).create(session.connection())

    def skip_suppressed(self, session: Session, tables: SyncTables) -> None:
        w = tables.wanted
        session.execute(update(w).where(w.c.action.in_((ADD, REVIVE)),
                                        w.c.to_phone.in_(select(SuppressedNumber.to_phone)))
                        .values(action=SUPPRESSED), execution_options=self._foreign_options)

    @staticmethod
    def candidates(session: Session, tables: SyncTables) -> list[dict[str, Any]]:
        """The reminders about to be written (added or revived): key, chatbot, number, time (the caps' input)."""
        w = tables.wanted
        rows = session.execute(select(w.c.idempotency_key, w.c.serial_number, w.c.to_phone, w.c.next_attempt_at)
                               .where(w.c.action.in_((ADD, REVIVE))))
        return [{"idempotency_key": k, "serial_number": sn, "to_phone": p, "next_attempt_at": at}
                for k, sn, p, at in rows]

    @staticmethod
    def mark(session: Session, tables: SyncTables, keys: Sequence[str], action: str) -> None:
        w = tables.wanted
        for chunk in chunks(list(keys), 500):
            session.execute(update(w).where(w.c.idempotency_key.in_(list(chunk))).values(action=action))

    @staticmethod
    def sync_counts(session: Session, tables: SyncTables) -> dict[str, int]:
        """Wanted reminders by action (KEEP left out)."""
        w = tables.wanted
        rows = session.execute(select(w.c.action, func.count()).where(w.c.action.is_not(None)).group_by(w.c.action))
        return {action: n for action, n in rows}

    def recipient_counts(self, session: Session, tables: SyncTables, campaign_id: int,
                         *, partial: bool) -> dict[str, int]:
        """Recipients the update adds, changes (number, zone or columns) and removes (none when partial)."""
        r, a = _recipients, tables.audience
        same_key = and_(r.c.campaign_id == campaign_id, r.c.key == a.c.key)
        opts = self._foreign_options
        added = session.scalar(select(func.count()).select_from(a).where(~exists().where(same_key)),
                               execution_options=opts)
        changed = session.scalar(select(func.count()).select_from(a.join(r, same_key)).where(_recipient_differs(a)),
                                 execution_options=opts)
        removed = 0 if partial else session.scalar(
            select(func.count()).select_from(r).where(r.c.campaign_id == campaign_id,
                                                      ~exists().where(a.c.key == r.c.key)),
            execution_options=opts)
        return {"added": added or 0, "changed": changed or 0, "removed": removed or 0}

    def count_stale(self, session: Session, tables: SyncTables, campaign_id: int, *, partial: bool,
                    scope_after: str | None) -> int:
        where = _stale(tables, campaign_id, partial=partial, scope_after=scope_after)
        return session.scalar(select(func.count()).select_from(_messages).where(where),
                              execution_options=self._foreign_options) or 0

    # -- applying -------------------------------------------------------------------------
    def cancel_stale(self, session: Session, tables: SyncTables, campaign_id: int, now: datetime, *, partial: bool,
                     scope_after: str | None) -> int:
        """Cancel open reminders the audience no longer asks for (models.follow.is_stale): rescheduled
        when their recipient is still listed, removed when not."""
        listed = exists().where(tables.audience.c.key == _recipient_of(_messages))
        where = _stale(tables, campaign_id, partial=partial, scope_after=scope_after)
        return rowcount(session.execute(
            update(_messages).where(where).values(
                state="cancelled", lease_token=None, lease_until=None, last_outcome="cancelled",
                last_reason=case((listed, RESCHEDULED), else_=REMOVED), updated_at=now),
            execution_options=self._foreign_options))

    def apply(self, session: Session, tables: SyncTables, now: datetime) -> dict[str, int]:
        """Rewrite changed reminders, revive cancelled ones, insert new ones: how many of each."""
        m, w = _messages, tables.wanted
        opts = self._foreign_options
        changed = rowcount(session.execute(
            update(m).where(m.c.id == w.c.existing_id, w.c.action == CHANGE, m.c.state == "pending")
            .values(body=w.c.body, segments=w.c.segments, to_phone=w.c.to_phone, quiet=w.c.quiet, updated_at=now),
            execution_options=opts))
        revived = rowcount(session.execute(
            update(m).where(m.c.id == w.c.existing_id, w.c.action == REVIVE, m.c.state == "cancelled")
            .values(state="pending", ready=False, failures=0, next_attempt_at=w.c.next_attempt_at,
                    deadline_at=w.c.deadline_at, body=w.c.body, segments=w.c.segments, to_phone=w.c.to_phone,
                    quiet=w.c.quiet, lease_token=None, lease_until=None, claimed_by=None, calling_at=None,
                    last_reason=REVIVED, updated_at=now),
            execution_options=opts))
        columns = list(tables.columns)
        added = rowcount(session.execute(
            dialect_insert(session, m).from_select(columns, select(*(w.c[c] for c in columns))
                                                   .where(w.c.action == ADD)).on_conflict_do_nothing(),
            execution_options={**opts, "preserve_rowcount": True}))  # else an INSERT's count is -1
        return {CHANGE: changed, REVIVE: revived, ADD: added}

    def sync_recipients(self, session: Session, tables: SyncTables, campaign_id: int, *, partial: bool) -> None:
        """Store the audience's recipients (new and changed ones written), and unless partial drop the others."""
        r, a = _recipients, tables.audience
        opts = self._foreign_options
        if not partial:
            session.execute(r.delete().where(r.c.campaign_id == campaign_id, ~exists().where(a.c.key == r.c.key)),
                            execution_options=opts)
        columns = ["campaign_id", "key", "phone", "tz", "data"]
        # Only new and changed ones: an unchanged row met by ON CONFLICT would still be locked.
        unchanged = exists().where(r.c.campaign_id == campaign_id, r.c.key == a.c.key, ~_recipient_differs(a))
        stmt = dialect_insert(session, r).from_select(columns, select(*(a.c[c] for c in columns)).where(~unchanged))
        stmt = stmt.on_conflict_do_update(
            index_elements=["campaign_id", "key"],
            set_={"phone": stmt.excluded.phone, "tz": stmt.excluded.tz, "data": stmt.excluded.data},
            where=or_(r.c.phone != stmt.excluded.phone, r.c.tz != stmt.excluded.tz,
                      cast(r.c.data, Text) != cast(stmt.excluded.data, Text)))
        session.execute(stmt, execution_options=opts)


def _analyze(session: Session, tables: SyncTables, *temporary: Table) -> None:
    """PostgreSQL: statistics of temporary tables (autovacuum never sees them), for the joins that follow."""
    if tables.postgres:
        for table in temporary:
            session.execute(DDL("ANALYZE %(fullname)s").against(table))


def _stored(w: Table) -> Any:
    """An outbox row holds this wanted reminder's key."""
    m = _messages
    return exists().where(m.c.serial_number == w.c.serial_number, m.c.idempotency_key == w.c.idempotency_key)


def _recipient_of(m: Table) -> ColumnElement[str]:
    return m.c["metadata"]["recipient"].as_string()


def _recipient_differs(a: Table) -> ColumnElement[bool]:
    r = _recipients
    return or_(r.c.phone != a.c.phone, r.c.tz != a.c.tz, cast(r.c.data, Text) != cast(a.c.data, Text))


def _stale(tables: SyncTables, campaign_id: int, *, partial: bool, scope_after: str | None) -> ColumnElement[bool]:
    """The open reminders of the campaign the audience no longer asks for (models.follow.is_stale):
    with `partial`, only listed recipients'; with `scope_after` (cron), a listed recipient's only
    after that occurrence."""
    m, w = _messages, tables.wanted
    listed = exists().where(tables.audience.c.key == _recipient_of(m))
    conditions: list[ColumnElement[bool]] = [
        m.c.campaign_id == campaign_id, m.c.state.in_(CANCELLABLE),
        ~exists().where(w.c.serial_number == m.c.serial_number, w.c.idempotency_key == m.c.idempotency_key)]
    in_scope = m.c["metadata"]["occurrence"].as_string() > scope_after if scope_after is not None else None
    if partial:
        conditions.append(listed)
        if in_scope is not None:
            conditions.append(in_scope)
    elif in_scope is not None:
        conditions.append(or_(~listed, in_scope))
    return and_(*conditions)


__all__ = ["CampaignSyncRepository", "SyncTables"]
