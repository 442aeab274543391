"""PostgreSQL (psycopg 3) bulk insert of outbox messages: COPY when it is safe, else ON CONFLICT.

Used by the enqueue repository on the connection of the current transaction.
Every statement here is parameterized (binary arrays, COPY rows); identifiers
are composed with `psycopg.sql`, never by string formatting.

- One message: `INSERT ... VALUES ... ON CONFLICT (serial_number, idempotency_key)
  DO NOTHING RETURNING id`: one round trip.
- A batch: ids taken from the sequence up front; then COPY (binary) inside a
  savepoint, about 2-3x faster than INSERT. When a key is already stored the
  COPY fails and only its savepoint is rolled back; the caller looks the keys
  up and COPYs the rest, and if a concurrent producer takes a key in the
  meantime, the rest goes in as `INSERT ... SELECT FROM unnest(arrays) ON
  CONFLICT DO NOTHING`.

Rows skipped by ON CONFLICT come back as None: the caller reads them back.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from psycopg import Connection, errors, sql
from psycopg.types.json import Json

from oaksend.models.records import NewMessage

#: Batches at least this large are COPYed; smaller ones are one INSERT statement.
COPY_MIN_ROWS = 200

_TARGET = ("id", "serial_number", "to_phone", "body", "segments", "state", "attempts", "failures", "ambiguous",
           "next_attempt_at", "deadline_at", "idempotency_key", "metadata", "created_at", "updated_at")
_COPY_TYPES = ("int8", "varchar", "varchar", "text", "int4", "varchar", "int4", "int4", "int4",
               "timestamptz", "timestamptz", "varchar", "json", "timestamptz", "timestamptz")
_CONFLICT = sql.SQL("ON CONFLICT (serial_number, idempotency_key) DO NOTHING")


def table_name(schema: str | None, table: str) -> sql.Composable:
    return sql.Identifier(schema, table) if schema else sql.Identifier(table)


def _meta(m: NewMessage) -> str:
    # JSON null for no metadata, as SQLAlchemy's JSON type stores None.
    return json.dumps(m.meta)


def insert_one(conn: Connection[Any], table: sql.Composable, m: NewMessage, now: datetime) -> int | None:
    columns = sql.SQL(", ").join(map(sql.Identifier, _TARGET[1:]))
    query = sql.SQL(
        "INSERT INTO {table} ({columns}) VALUES (%s, %s, %s, %s, 'pending', 0, 0, 0, %s, %s, %s, %s::json, %s, %s) "
        "{conflict} RETURNING id"
    ).format(table=table, columns=columns, conflict=_CONFLICT)
    row = conn.execute(query, (m.serial_number, m.to_phone, m.body, m.segments, m.next_attempt_at, m.deadline_at,
                               m.idempotency_key, _meta(m), now, now)).fetchone()
    return None if row is None else int(row[0])


def take_ids(conn: Connection[Any], schema: str | None, table: str, n: int) -> list[int]:
    """n new ids from the table's sequence (gaps are harmless; order is the batch's order)."""
    qualified = f"{schema}.{table}" if schema else table
    rows = conn.execute(
        "SELECT nextval(pg_get_serial_sequence(%s, 'id')) FROM generate_series(1, %s)", (qualified, n)
    ).fetchall()
    return [int(r[0]) for r in rows]


def insert_many(conn: Connection[Any], table: sql.Composable, ids: Sequence[int], rows: Sequence[NewMessage],
                now: datetime) -> list[int | None]:
    """Insert `rows` with these `ids`; an id comes back None when its key was already taken."""
    if len(rows) >= COPY_MIN_ROWS and try_copy(conn, table, ids, rows, now):
        return list(ids)
    inserted = set(_insert_unnest(conn, table, ids, rows, now))
    return [i if i in inserted else None for i in ids]


def try_copy(conn: Connection[Any], table: sql.Composable, ids: Sequence[int], rows: Sequence[NewMessage],
             now: datetime) -> bool:
    """COPY the rows in a savepoint: False (and nothing written) when one of their keys is taken."""
    try:
        with conn.transaction():  # a savepoint inside the current transaction
            _copy(conn, table, ids, rows, now)
        return True
    except errors.UniqueViolation:
        return False


def _copy(conn: Connection[Any], table: sql.Composable, ids: Sequence[int], rows: Sequence[NewMessage],
          now: datetime) -> None:
    query = sql.SQL("COPY {table} ({columns}) FROM STDIN (FORMAT BINARY)").format(
        table=table, columns=sql.SQL(", ").join(map(sql.Identifier, _TARGET)))
    with conn.cursor() as cur, cur.copy(query) as copy:
        copy.set_types(list(_COPY_TYPES))
        for mid, m in zip(ids, rows):
            copy.write_row((mid, m.serial_number, m.to_phone, m.body, m.segments, "pending", 0, 0, 0,
                            m.next_attempt_at, m.deadline_at, m.idempotency_key, Json(m.meta), now, now))


def _insert_unnest(conn: Connection[Any], table: sql.Composable, ids: Sequence[int], rows: Sequence[NewMessage],
                   now: datetime) -> list[int]:
    query = sql.SQL(
        "INSERT INTO {table} ({columns}) "
        "SELECT t.id, t.sn, t.to_phone, t.body, t.segments, 'pending', 0, 0, 0, t.next_at, t.deadline, t.key, "
        "t.meta::json, %b, %b "
        "FROM unnest(%b::int8[], %b::text[], %b::text[], %b::text[], %b::int4[], %b::timestamptz[], "
        "%b::timestamptz[], %b::text[], %b::text[]) "
        "AS t(id, sn, to_phone, body, segments, next_at, deadline, key, meta) "
        "ORDER BY t.sn, t.key "  # one lock order for keys shared by concurrent batches
        "{conflict} RETURNING id"
    ).format(table=table, columns=sql.SQL(", ").join(map(sql.Identifier, _TARGET)), conflict=_CONFLICT)
    params = (now, now, list(ids), [m.serial_number for m in rows], [m.to_phone for m in rows],
              [m.body for m in rows], [m.segments for m in rows], [m.next_attempt_at for m in rows],
              [m.deadline_at for m in rows], [m.idempotency_key for m in rows], [_meta(m) for m in rows])
    return [int(r[0]) for r in conn.execute(query, params).fetchall()]


def existing(conn: Connection[Any], table: sql.Composable,
             pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], tuple[int, str, str, str]]:
    """Stored rows holding these (serial_number, idempotency_key) pairs, by pair."""
    if not pairs:
        return {}
    query = sql.SQL(
        "SELECT m.id, m.serial_number, m.to_phone, m.body, m.idempotency_key FROM {table} m "
        "JOIN unnest(%b::text[], %b::text[]) AS k(sn, key) ON m.serial_number = k.sn AND m.idempotency_key = k.key"
    ).format(table=table)
    rows = conn.execute(query, ([p[0] for p in pairs], [p[1] for p in pairs])).fetchall()
    return {(sn, key): (int(mid), sn, to, body) for mid, sn, to, body, key in rows}


def suppressed(conn: Connection[Any], table: sql.Composable, phones: Sequence[str]) -> dict[str, str]:
    """{phone: reason} for the numbers among `phones` that must not be texted."""
    query = sql.SQL("SELECT to_phone, reason FROM {table} WHERE to_phone = ANY(%b::text[])").format(table=table)
    return {phone: reason for phone, reason in conn.execute(query, (list(phones),)).fetchall()}
