"""PostgreSQL (psycopg 3) bulk insert of outbox messages: COPY when it is safe, else ON CONFLICT.

Used by the enqueue repository on the connection of the current transaction.
Every statement here is parameterized (binary arrays, COPY rows); identifiers
are composed with `psycopg.sql`, never by string formatting. Rows are dicts
keyed by column name; the column types come from the table's model, so a new
column needs no change here.

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
from typing import Any

from psycopg import Connection, errors, sql
from psycopg.types.json import Json
from sqlalchemy import JSON, Table
from sqlalchemy.dialects import postgresql

#: Batches at least this large are COPYed; smaller ones are one INSERT statement.
COPY_MIN_ROWS = 200

_CONFLICT = sql.SQL("ON CONFLICT (serial_number, idempotency_key) DO NOTHING")
Row = dict[str, Any]


def _pg_type(table: Table, column: str) -> str:
    """The column's PostgreSQL type name as psycopg knows it: bigint, varchar, timestamp with time zone, ..."""
    return str(table.c[column].type.compile(dialect=postgresql.dialect())).lower().split("(")[0]


def _is_json(table: Table, column: str) -> bool:
    return isinstance(table.c[column].type, JSON)


def qualified(schema: str | None, table: Table) -> sql.Composable:
    return sql.Identifier(schema, table.name) if schema else sql.Identifier(table.name)


def _columns(names: Sequence[str]) -> sql.Composable:
    return sql.SQL(", ").join(map(sql.Identifier, names))


def _json_text(value: Any) -> str:
    # JSON null for no value, as SQLAlchemy's JSON type stores None.
    return json.dumps(value)


def insert_one(conn: Connection[Any], schema: str | None, table: Table, row: Row) -> int | None:
    names = list(row)
    marks = sql.SQL(", ").join(sql.SQL("%s::json") if _is_json(table, n) else sql.SQL("%s") for n in names)
    query = sql.SQL("INSERT INTO {table} ({columns}) VALUES ({marks}) {conflict} RETURNING id").format(
        table=qualified(schema, table), columns=_columns(names), marks=marks, conflict=_CONFLICT)
    params = [_json_text(row[n]) if _is_json(table, n) else row[n] for n in names]
    found = conn.execute(query, params).fetchone()
    return None if found is None else int(found[0])


def take_ids(conn: Connection[Any], schema: str | None, table: Table, n: int) -> list[int]:
    """n new ids from the table's sequence (gaps are harmless; order is the batch's order)."""
    name = f"{schema}.{table.name}" if schema else table.name
    found = conn.execute(
        "SELECT nextval(pg_get_serial_sequence(%s, 'id')) FROM generate_series(1, %s)", (name, n)
    ).fetchall()
    return [int(r[0]) for r in found]


def insert_many(conn: Connection[Any], schema: str | None, table: Table, ids: Sequence[int],
                rows: Sequence[Row]) -> list[int | None]:
    """Insert `rows` with these `ids`; an id comes back None when its key was already taken."""
    if not rows:
        return []
    if len(rows) >= COPY_MIN_ROWS and try_copy(conn, schema, table, ids, rows):
        return list(ids)
    inserted = set(_insert_unnest(conn, schema, table, ids, rows))
    return [i if i in inserted else None for i in ids]


def try_copy(conn: Connection[Any], schema: str | None, table: Table, ids: Sequence[int],
             rows: Sequence[Row]) -> bool:
    """COPY the rows in a savepoint: False (and nothing written) when one of their keys is taken."""
    try:
        with conn.transaction():  # a savepoint inside the current transaction
            _copy(conn, schema, table, ids, rows)
        return True
    except errors.UniqueViolation:
        return False


def _copy(conn: Connection[Any], schema: str | None, table: Table, ids: Sequence[int], rows: Sequence[Row]) -> None:
    names = ["id", *rows[0]]
    query = sql.SQL("COPY {table} ({columns}) FROM STDIN (FORMAT BINARY)").format(
        table=qualified(schema, table), columns=_columns(names))
    json_at = {i for i, n in enumerate(names) if _is_json(table, n)}
    with conn.cursor() as cur, cur.copy(query) as copy:
        copy.set_types([_pg_type(table, n) for n in names])
        for mid, row in zip(ids, rows, strict=True):
            values = [mid, *row.values()]
            for i in json_at:
                values[i] = Json(values[i])
            copy.write_row(values)


def _insert_unnest(conn: Connection[Any], schema: str | None, table: Table, ids: Sequence[int],
                   rows: Sequence[Row]) -> list[int]:
    names = ["id", *rows[0]]
    arrays, picks, params = [], [], []
    for name in names:
        json_column = _is_json(table, name)
        arrays.append(sql.SQL("%b::{}[]").format(sql.SQL("text" if json_column else _pg_type(table, name))))
        picks.append(sql.SQL("{}::json").format(sql.Identifier("t", name)) if json_column
                     else sql.Identifier("t", name))
        column = list(ids) if name == "id" else [row[name] for row in rows]
        params.append([_json_text(v) for v in column] if json_column else column)
    query = sql.SQL(
        "INSERT INTO {table} ({columns}) SELECT {picks} FROM unnest({arrays}) AS t({columns}) "
        "ORDER BY t.serial_number, t.idempotency_key "  # one lock order for keys shared by concurrent batches
        "{conflict} RETURNING id"
    ).format(table=qualified(schema, table), columns=_columns(names), picks=sql.SQL(", ").join(picks),
             arrays=sql.SQL(", ").join(arrays), conflict=_CONFLICT)
    return [int(r[0]) for r in conn.execute(query, params).fetchall()]


def existing(conn: Connection[Any], schema: str | None, table: Table,
             pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], tuple[int, str, str, str]]:
    """Stored rows holding these (serial_number, idempotency_key) pairs, by pair."""
    if not pairs:
        return {}
    query = sql.SQL(
        "SELECT m.id, m.serial_number, m.to_phone, m.body, m.idempotency_key FROM {table} m "
        "JOIN unnest(%b::text[], %b::text[]) AS k(sn, key) ON m.serial_number = k.sn AND m.idempotency_key = k.key"
    ).format(table=qualified(schema, table))
    found = conn.execute(query, ([p[0] for p in pairs], [p[1] for p in pairs])).fetchall()
    return {(sn, key): (int(mid), sn, to, body) for mid, sn, to, body, key in found}


def suppressed(conn: Connection[Any], schema: str | None, table: Table, phones: Sequence[str]) -> dict[str, str]:
    """{phone: reason} for the numbers among `phones` that must not be texted."""
    query = sql.SQL("SELECT to_phone, reason FROM {table} WHERE to_phone = ANY(%b::text[])").format(
        table=qualified(schema, table))
    return {phone: reason for phone, reason in conn.execute(query, (list(phones),)).fetchall()}
