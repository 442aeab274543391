"""The producers' part of the repository: inserting messages, idempotently and fast.

Idempotency keys are unique per chatbot: (serial_number, idempotency_key). Two
producers racing on one key get one row: the insert is `ON CONFLICT DO NOTHING`
and the rows it skipped are read back and compared, so neither sees a unique
violation, and a caller's transaction is never aborted by one (everything runs
inside a savepoint when the caller hands in its Session).

PostgreSQL with psycopg 3 (the default driver) goes through `pg_bulk`: COPY for
batches, one statement for a single message, no per-row ORM objects. Other
backends (SQLite) look the keys up, then insert in multi-row chunks.

Keys are stored as their keyed hash (oaksend.models.keyhash), never as given: a
key may be a phone number. Hashing is one-to-one in practice, so de-duplication
and conflicts are decided exactly as on the keys themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from datetime import datetime
from functools import partial
from typing import Any, TypeVar, cast

from sqlalchemy import and_, insert, or_, select
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from oaksend.errors import IdempotencyConflict
from oaksend.models.keyhash import stored_key
from oaksend.models.records import NewMessage
from oaksend.models.repository.base import Repository, chunks
from oaksend.models.tables import Message, SuppressedNumber

#: Rows per INSERT statement on the portable path (SQLite).
INSERT_CHUNK = 10_000
#: (serial_number, key) pairs per look-up query, and numbers per suppression query.
LOOKUP_CHUNK = 1_000
#: Pairs per look-up on PostgreSQL (two binary arrays joined against the unique index).
PG_LOOKUP_CHUNK = 20_000

#: Called with {phone: reason} for suppressed numbers found in the same transaction; it raises.
Refuse = Callable[[dict[str, str]], None]

Stored = tuple[int, str, str, str]
_TABLE = Message.__table__
T = TypeVar("T")


class EnqueueRepository(Repository):
    # -- producing ------------------------------------------------------------------------
    def add(self, messages: Sequence[NewMessage], now: datetime, session: Session | None = None,
            refuse: Refuse | None = None, key_secret: str | None = None) -> list[int]:
        """Insert messages (idempotently) and return their ids, in order.

        With `session`, the rows join the caller's transaction inside a savepoint and
        are only flushed; the caller commits. An error (a conflicting key, a refused
        number) rolls back the savepoint only: the caller's transaction stays usable
        and holds none of these rows. Without `session`, one transaction of our own.
        `refuse` sees the suppressed numbers among `messages` (same transaction) and raises.
        Idempotency keys are stored hashed under `key_secret` (settings.key_secret; None: the default).
        """
        messages = _dedupe_checked(messages, key_secret)
        if session is not None:
            return self._retrying(lambda: self._in_savepoint(session, messages, now, refuse))

        def own() -> list[int]:
            with self.session() as s:
                return self._add(s, messages, now, refuse)

        return self._retrying(own)

    @staticmethod
    def _retrying(attempt: Callable[[], list[int]]) -> list[int]:
        # ON CONFLICT leaves nothing to retry on PostgreSQL; on SQLite a caller's deferred
        # transaction may still lose a race on a key: the next round finds that row.
        for _ in range(2):
            try:
                return attempt()
            except IntegrityError:
                continue
        return attempt()

    def _in_savepoint(self, session: Session, messages: Sequence[NewMessage], now: datetime,
                      refuse: Refuse | None) -> list[int]:
        with session.begin_nested():
            return self._add(session, messages, now, refuse)

    def _add(self, session: Session, messages: Sequence[NewMessage], now: datetime,
             refuse: Refuse | None) -> list[int]:
        unique, slot = _dedupe(messages)
        if refuse is not None:
            suppressed = self._suppressed(session, list({m.to_phone for m in unique}))
            if suppressed:
                refuse(suppressed)
        if not unique:
            return []
        # A caller's Session runs on the caller's engine: our schema map goes with each statement.
        options = self._foreign_options
        driver = _psycopg(session)
        if driver is not None:
            ids = _as_sqlalchemy_errors(session, lambda: self._insert_pg(driver, unique, now))
        else:
            ids = self._insert_portable(session, unique, now, options)
        return [ids[i] for i in slot]

    # -- PostgreSQL (psycopg 3): see pg_bulk ----------------------------------------------
    def _insert_pg(self, conn: Any, rows: Sequence[NewMessage], now: datetime) -> list[int]:
        from oaksend.models.repository import pg_bulk  # psycopg only when used

        schema = self.schema
        if len(rows) == 1:
            got: list[int | None] = [pg_bulk.insert_one(conn, schema, _TABLE, _values(rows[0], now))]
        else:
            got = self._insert_pg_batch(conn, rows, now)
        skipped = [i for i, mid in enumerate(got) if mid is None]
        if skipped:
            # Skipped by ON CONFLICT: another producer holds the key. Use its row if it matches.
            keyed = [rows[i] for i in skipped]
            pairs = sorted({(m.serial_number, m.idempotency_key) for m in keyed if m.idempotency_key is not None})
            found = pg_bulk.existing(conn, schema, _TABLE, pairs)
            for i in skipped:
                key = rows[i].idempotency_key
                stored = found.get((rows[i].serial_number, key)) if key is not None else None
                if stored is None:
                    raise RuntimeError("a message without a conflicting idempotency key was not inserted")
                got[i] = _same_or_conflict(rows[i], stored)
        return cast("list[int]", got)  # every slot is filled: inserted, or the stored row (else raised above)

    def _insert_pg_batch(self, conn: Any, rows: Sequence[NewMessage], now: datetime) -> list[int | None]:
        from oaksend.models.repository import pg_bulk

        schema = self.schema
        large = len(rows) >= pg_bulk.COPY_MIN_ROWS
        pairs = sorted({(m.serial_number, m.idempotency_key) for m in rows if m.idempotency_key})
        # A batch sent again (a campaign tick, a retried job) holds stored keys: a probe of
        # about 100 of them says so in one query, and saves a COPY that would fail.
        probe = pairs[:: max(1, len(pairs) // 100)]
        if large and not (probe and pg_bulk.existing(conn, schema, _TABLE, probe)):
            ids = pg_bulk.take_ids(conn, schema, _TABLE, len(rows))
            if pg_bulk.try_copy(conn, schema, _TABLE, ids, [_values(m, now) for m in rows]):
                return list(ids)
        # Some keys are stored already (or the batch is small): answer those from a
        # look-up, insert the rest (COPY, or ON CONFLICT DO NOTHING if raced again).
        found: dict[tuple[str, str], Stored] = {}
        if large:
            for chunk in chunks(pairs, PG_LOOKUP_CHUNK):
                found.update(pg_bulk.existing(conn, schema, _TABLE, chunk))
        fresh = [i for i, m in enumerate(rows) if (m.serial_number, m.idempotency_key) not in found]
        ids = pg_bulk.take_ids(conn, schema, _TABLE, len(fresh)) if fresh else []
        inserted = pg_bulk.insert_many(conn, schema, _TABLE, ids, [_values(rows[i], now) for i in fresh])
        got: list[int | None] = [None] * len(rows)
        for i, mid in zip(fresh, inserted, strict=True):
            got[i] = mid
        for i, m in enumerate(rows):
            key = m.idempotency_key
            if got[i] is None and key is not None and (m.serial_number, key) in found:
                got[i] = _same_or_conflict(m, found[(m.serial_number, key)])
        return got

    # -- SQLite (and any other backend): look up, then one multi-row INSERT per chunk --------
    def _insert_portable(self, session: Session, rows: Sequence[NewMessage], now: datetime,
                         options: dict[str, Any]) -> list[int]:
        # SQLite writers hold the database lock from BEGIN IMMEDIATE: nobody inserts
        # between this look-up and the insert (a caller's deferred transaction may,
        # which the IntegrityError retry in `add` covers).
        found = self._existing(session, [m for m in rows if m.idempotency_key], options)
        ids: list[int | None] = []
        fresh: list[int] = []
        for i, row in enumerate(rows):
            other = found.get((row.serial_number, row.idempotency_key)) if row.idempotency_key else None
            if other is None:
                ids.append(None)
                fresh.append(i)
            else:
                ids.append(_same_or_conflict(row, other))
        for chunk in chunks(fresh, INSERT_CHUNK):
            values = [_values(rows[i], now) for i in chunk]
            result = session.execute(insert(_TABLE).returning(_TABLE.c.id, sort_by_parameter_order=True), values,
                                     execution_options=options)
            for i, mid in zip(chunk, result.scalars(), strict=True):
                ids[i] = mid
        return cast("list[int]", ids)  # every slot is filled: the stored row's id, or the one RETURNING gave

    # -- shared ---------------------------------------------------------------------------
    def _existing(self, session: Session, rows: Sequence[NewMessage],
                  options: dict[str, Any]) -> dict[tuple[str, str], Stored]:
        """Stored rows holding these (chatbot, key) pairs: (id, serial_number, to_phone, body) by pair."""
        pairs = sorted({(m.serial_number, m.idempotency_key) for m in rows if m.idempotency_key})
        found: dict[tuple[str, str], Stored] = {}
        for chunk in chunks(pairs, LOOKUP_CHUNK):
            by_chatbot: dict[str, list[str]] = {}
            for sn, key in chunk:
                by_chatbot.setdefault(sn, []).append(key)
            match = or_(*(and_(Message.serial_number == sn, Message.idempotency_key.in_(keys))
                          for sn, keys in by_chatbot.items()))
            q = select(Message.id, Message.serial_number, Message.to_phone, Message.body,
                       Message.idempotency_key).where(match)
            for mid, sn, to, body, key in session.execute(q, execution_options=options):
                if key is not None:  # always: the query matches keys
                    found[(sn, key)] = (mid, sn, to, body)
        return found

    def is_suppressed(self, to_phones: Iterable[str], session: Session | None = None) -> dict[str, str]:
        """Which of these numbers must not be texted, with the reason (in `session` when given)."""
        phones = list(set(to_phones))
        if session is not None:
            return self._suppressed(session, phones)
        with self.session() as s:
            return self._suppressed(s, phones)

    def _suppressed(self, s: Session, phones: list[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        driver = _psycopg(s)
        if driver is not None:
            from oaksend.models.repository import pg_bulk

            table = SuppressedNumber.__table__
            for chunk in chunks(phones, PG_LOOKUP_CHUNK):
                out.update(_as_sqlalchemy_errors(s, partial(pg_bulk.suppressed, driver, self.schema, table, chunk)))
            return out
        options = self._foreign_options
        for chunk in chunks(phones, LOOKUP_CHUNK):
            q = select(SuppressedNumber.to_phone, SuppressedNumber.reason).where(SuppressedNumber.to_phone.in_(chunk))
            for phone, reason in s.execute(q, execution_options=options):
                out[phone] = reason
        return out


def _dedupe_checked(messages: Sequence[NewMessage], key_secret: str | None) -> list[NewMessage]:
    """The messages with their keys as stored (hashed), after a check for a key given twice in the batch
    with different content (named as given: the hashed key would mean nothing to the caller)."""
    _dedupe(messages)
    return [m if m.idempotency_key is None else replace(m, idempotency_key=stored_key(m.idempotency_key, key_secret))
            for m in messages]


def _dedupe(messages: Sequence[NewMessage]) -> tuple[list[NewMessage], list[int]]:
    """The distinct messages to insert, and for each request the index of its row among them.

    One key twice in a batch with the same content is one message; with different
    content, a conflict (raised before anything is written).
    """
    unique: list[NewMessage] = []
    slot: list[int] = []
    by_key: dict[tuple[str, str], int] = {}
    for m in messages:
        if m.idempotency_key is None:
            slot.append(len(unique))
            unique.append(m)
            continue
        pair = (m.serial_number, m.idempotency_key)
        first = by_key.get(pair)
        if first is None:
            by_key[pair] = len(unique)
            slot.append(len(unique))
            unique.append(m)
        elif unique[first] != m:
            raise IdempotencyConflict("idempotency_key", f"{m.idempotency_key!r} appears twice with different content")
        else:
            slot.append(first)
    return unique, slot


def _psycopg(session: Session) -> Any:
    """The psycopg 3 connection under `session`'s transaction, or None on another driver."""
    conn = session.connection()
    if conn.dialect.name != "postgresql" or conn.dialect.driver != "psycopg" or conn.dialect.is_async:
        return None  # (psycopg's async connection is driven through SQLAlchemy's statements)
    return conn.connection.driver_connection


def _as_sqlalchemy_errors(session: Session, call: Callable[[], T]) -> T:
    """Driver errors of the psycopg fast path, raised as SQLAlchemy's (as every other statement's are)."""
    import psycopg

    try:
        return call()
    except psycopg.Error as exc:
        if exc.sqlstate is None or _psycopg(session).closed:
            session.connection().invalidate(exc)  # a lost connection: do not hand it out again
        raise DBAPIError.instance(None, None, exc, psycopg.Error, hide_parameters=True) from None


def _same_or_conflict(row: NewMessage, stored: Stored) -> int:
    mid, sn, to, body = stored
    if (sn, to, body) != (row.serial_number, row.to_phone, row.body):
        raise IdempotencyConflict("idempotency_key", f"was already used for a different message (chatbot {sn})")
    return mid


def _values(m: NewMessage, now: datetime) -> dict[str, Any]:
    """The new row, by column name: the one list of what an insert writes, on every path."""
    return {
        "serial_number": m.serial_number,
        "to_phone": m.to_phone,
        "body": m.body,
        "segments": m.segments,
        "state": "pending",
        "priority": m.priority,
        # Already due: straight into the dispatcher's ready index, no staging write.
        "ready": m.next_attempt_at <= now,
        "attempts": 0,
        "failures": 0,
        "ambiguous": 0,
        "next_attempt_at": m.next_attempt_at,
        "deadline_at": m.deadline_at,
        "idempotency_key": m.idempotency_key,
        "metadata": m.meta,
        "created_at": now,
        "updated_at": now,
    }
