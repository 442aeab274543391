"""Revision 0012: every stored number becomes its canonical E.164; duplicates merge safely.

Rows are written at 0011 with the spellings people type (a trunk zero after the
country code), then the database is upgraded and read back, on SQLite, PostgreSQL
and PostgreSQL with OAKSEND_DB_SCHEMA.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from oaksend.migrations.runner import downgrade, upgrade
from oaksend.models.db import make_engine
from tests.support import reset_pg

T1 = datetime(2026, 11, 20, 9, 0, tzinfo=timezone.utc)
T2 = datetime(2026, 11, 25, 9, 0, tzinfo=timezone.utc)
SCHEMA = "oaksend_canon"


@pytest.fixture(params=["sqlite", "postgresql", "postgresql+schema"])
def at_0011(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str | None]]:
    if request.param == "sqlite":
        url, schema = f"sqlite:///{tmp_path}/canon.db", None
    else:
        url = request.getfixturevalue("pg_database")
        reset_pg(url)
        schema = SCHEMA if request.param.endswith("schema") else None
        engine = create_engine(url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
        engine.dispose()
    upgrade(url, "0011", schema=schema)
    yield url, schema


def _stamp(url: str, t: datetime) -> datetime:
    return t.replace(tzinfo=None) if url.startswith("sqlite") else t


def _seed(url: str, schema: str | None) -> None:
    p = f"{schema}." if schema else ""
    engine = make_engine(url)
    t1, t2 = _stamp(url, T1), _stamp(url, T2)
    messages = [
        # (to_phone, state, key)
        ("+4407911123456", "pending", "appt-1"),  # open, typed with the trunk zero: rewritten, row kept
        ("+447911123456", "sent", "appt-2"),
        ("+610412345678", "dispatched", None),
        ("+14155550123", "pending", None),  # already canonical
        ("+390612345678", "pending", None),  # Italy keeps its leading zero
        ("", "sent", None),  # a purged (anonymized) row: left alone
        ("+999123456", "failed", None),  # not a number: left alone
    ]
    try:
        with engine.begin() as conn:
            for phone, state, key in messages:
                conn.execute(text(
                    f"INSERT INTO {p}oaksend_messages (serial_number, to_phone, body, segments, state, attempts, "
                    "failures, ambiguous, next_attempt_at, idempotency_key, created_at, updated_at, ready, lost) "
                    "VALUES ('bot-1', :phone, 'hi', 1, :state, 0, 0, 0, :t, :key, :t, :t, false, 0)"),
                    {"phone": phone, "state": state, "key": key, "t": t1})
            for phone, reason, at in [("+4407911123456", "twilio_21610", t1), ("+447911123456", "twilio_30006", t2),
                                      ("+4407400123456", "twilio_21610", t2), ("+447400123456", "manual", t1),
                                      ("+610412345678", "twilio_21610", t1), ("+999123456", "manual", t1)]:
                conn.execute(text(f"INSERT INTO {p}oaksend_suppressed_numbers (to_phone, reason, at) "
                                  "VALUES (:phone, :reason, :at)"), {"phone": phone, "reason": reason, "at": at})
            conn.execute(text(
                f"INSERT INTO {p}oaksend_campaigns (id, name, serial_number, template, schedule_kind, schedule, tz, "
                "phone_column, key_column, missed, state, recipients, created_at, updated_at) VALUES "
                "(7, 'c', 'bot-1', 'Hi {name}', 'once', '{}', 'UTC', 'mobile', 'key', 'send', 'running', 3, :t, :t)"),
                {"t": t1})
            for rid, key, phone in [(1, "ann", "+4407911123456"), (2, "ann-2", "+447911123456"),
                                    (3, "bob", "+14155550123")]:
                conn.execute(text(f"INSERT INTO {p}oaksend_campaign_recipients (id, campaign_id, key, phone, tz, data) "
                                  "VALUES (:id, 7, :key, :phone, 'Europe/London', :data)"),
                             {"id": rid, "key": key, "phone": phone,
                              "data": json.dumps({"key": key, "mobile": phone, "name": key.title()})})
    finally:
        engine.dispose()


def _read(url: str, schema: str | None, sql: str) -> list[tuple[object, ...]]:
    p = f"{schema}." if schema else ""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql.format(p=p)))]
    finally:
        engine.dispose()


def _at(value: object) -> datetime:
    assert isinstance(value, datetime | str)
    t = datetime.fromisoformat(value) if isinstance(value, str) else value
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def test_upgrade_canonicalizes_every_stored_number(at_0011: tuple[str, str | None]) -> None:
    url, schema = at_0011
    _seed(url, schema)
    before = _read(url, schema, "SELECT id, state, idempotency_key FROM {p}oaksend_messages ORDER BY id")
    upgrade(url, "0012", schema=schema)

    # Messages: every row kept (ids, states, keys), numbers rewritten to their one spelling.
    assert _read(url, schema, "SELECT id, state, idempotency_key FROM {p}oaksend_messages ORDER BY id") == before
    assert [r[0] for r in _read(url, schema, "SELECT to_phone FROM {p}oaksend_messages ORDER BY id")] == [
        "+447911123456", "+447911123456", "+61412345678", "+14155550123", "+390612345678", "", "+999123456"]

    # Suppressions: one row per number, the earliest suppression's time and reason kept.
    got = {phone: (reason, _at(at)) for phone, reason, at in
           _read(url, schema, "SELECT to_phone, reason, at FROM {p}oaksend_suppressed_numbers")}
    assert got == {"+447911123456": ("twilio_21610", T1), "+447400123456": ("manual", T1),
                   "+61412345678": ("twilio_21610", T1), "+999123456": ("manual", T1)}

    # Recipients: each keeps its row and key; the phone and its copy in the row's data are rewritten.
    rows = _read(url, schema, "SELECT id, key, phone, data FROM {p}oaksend_campaign_recipients ORDER BY id")
    assert [(r[0], r[1], r[2]) for r in rows] == [(1, "ann", "+447911123456"), (2, "ann-2", "+447911123456"),
                                                 (3, "bob", "+14155550123")]
    data = [r[3] if isinstance(r[3], dict) else json.loads(str(r[3])) for r in rows]
    assert [d["mobile"] for d in data] == ["+447911123456", "+447911123456", "+14155550123"]
    assert [d["name"] for d in data] == ["Ann", "Ann-2", "Bob"]


def test_upgrade_is_safe_to_run_on_canonical_data_and_downgrade_keeps_it(at_0011: tuple[str, str | None]) -> None:
    url, schema = at_0011
    _seed(url, schema)
    upgrade(url, "0012", schema=schema)
    after = _read(url, schema, "SELECT to_phone FROM {p}oaksend_suppressed_numbers ORDER BY 1")
    downgrade(url, "0011", schema=schema)
    assert _read(url, schema, "SELECT to_phone FROM {p}oaksend_suppressed_numbers ORDER BY 1") == after
    upgrade(url, "0012", schema=schema)  # again, on numbers already canonical: nothing changes
    assert _read(url, schema, "SELECT to_phone FROM {p}oaksend_suppressed_numbers ORDER BY 1") == after


def test_batches_cover_a_table_larger_than_one_batch(tmp_path: Path) -> None:
    """Keyset batches: every distinct number and every recipient is visited, across batch edges."""
    url = f"sqlite:///{tmp_path}/many.db"
    upgrade(url, "0011")
    engine = make_engine(url)
    t = _stamp(url, T1)
    n = 5003  # the migration's BATCH is 5000
    typed = [f"+4407911{i:06d}" for i in range(n)]
    try:
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO oaksend_campaigns (id, name, serial_number, template, schedule_kind, schedule, tz, "
                "phone_column, missed, state, recipients, created_at, updated_at) VALUES "
                "(1, 'c', 'bot-1', 'Hi', 'once', '{}', 'UTC', 'phone', 'send', 'running', 0, :t, :t)"), {"t": t})
            conn.execute(text(
                "INSERT INTO oaksend_messages (serial_number, to_phone, body, segments, state, attempts, failures, "
                "ambiguous, next_attempt_at, created_at, updated_at, ready, lost) "
                "VALUES ('bot-1', :phone, 'hi', 1, 'pending', 0, 0, 0, :t, :t, :t, false, 0)"),
                [{"phone": phone, "t": t} for phone in typed])
            conn.execute(text("INSERT INTO oaksend_suppressed_numbers (to_phone, reason, at) VALUES (:phone, 'x', :t)"),
                         [{"phone": phone, "t": t} for phone in typed])
            conn.execute(text("INSERT INTO oaksend_campaign_recipients (campaign_id, key, phone, tz, data) "
                              "VALUES (1, :key, :phone, 'UTC', '{}')"),
                         [{"key": str(i), "phone": phone} for i, phone in enumerate(typed)])
    finally:
        engine.dispose()
    upgrade(url, "0012")
    wanted = sorted(f"+447911{i:06d}" for i in range(n))
    for table, column in [("oaksend_messages", "to_phone"), ("oaksend_suppressed_numbers", "to_phone"),
                          ("oaksend_campaign_recipients", "phone")]:
        assert sorted(str(r[0]) for r in _read(url, None, f"SELECT {column} FROM {{p}}{table}")) == wanted, table
