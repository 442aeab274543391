"""A database created by oaksend 0.1 upgrades in place with `oaksend migrate`, nothing lost.

0.1 kept unprefixed tables (`messages`, `attempts`, ...) and its revision in the shared
`alembic_version`. The database is made here with 0.1's own migration scripts
(tests/migration/legacy_0_1, copied from git history), filled with messages in every
state, attempts, operator actions, chatbot limits and suppressed numbers, then migrated
by the CLI; every row must come back in the prefixed tables, and the ids go on.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, inspect, text

from oaksend.models.db import make_engine
from oaksend.models.keyhash import stored_key
from oaksend.models.repository import Outbox
from oaksend.models.records import NewMessage
from oaksend.migrations.runner import current
from tests.support import ROOT, reset_pg

LEGACY = Path(__file__).resolve().parent / "legacy_0_1"
TABLES = ("chatbots", "messages", "suppressed_numbers", "attempts", "operator_actions")
ORDER = {"chatbots": "serial_number", "suppressed_numbers": "to_phone"}


@pytest.fixture(params=["sqlite", "postgresql"])
def legacy_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database at oaksend 0.1's head revision (0002), filled with rows."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/legacy.db"
    else:
        url = request.getfixturevalue("pg_database")
        reset_pg(url)
    cfg = Config()
    cfg.set_main_option("script_location", str(LEGACY))
    cfg.attributes["url"] = url
    command.upgrade(cfg, "head")
    engine = plain(url)
    try:
        fill(engine)
    finally:
        engine.dispose()
    return url


def plain(url: str) -> Engine:
    return create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))


def fill(engine: Engine) -> None:
    t0 = datetime(2026, 11, 20, 9, 0, tzinfo=timezone.utc)
    sqlite = engine.dialect.name == "sqlite"

    def at(minutes: float) -> Any:
        value = t0 + timedelta(minutes=minutes)
        return value.replace(tzinfo=None) if sqlite else value

    with engine.begin() as conn:
        conn.execute(text("INSERT INTO chatbots (serial_number, rate_per_s, burst, segments_per_s, paused_until, "
                          "pause_reason, updated_at) VALUES ('bot-a', 5.5, 10, 12.0, :p, 'http_401', :u), "
                          "('bot-b', NULL, NULL, NULL, NULL, NULL, :u)"), {"p": at(600), "u": at(1)})
        conn.execute(text("INSERT INTO suppressed_numbers (to_phone, reason, at) VALUES "
                          "('+14155550999', 'twilio_21610', :a)"), {"a": at(2)})
        states = ["pending", "dispatched", "sending", "sent", "failed", "unknown", "expired", "cancelled"]
        for i, state in enumerate(states * 3):
            conn.execute(text(
                "INSERT INTO messages (serial_number, to_phone, body, segments, state, attempts, failures, ambiguous, "
                "next_attempt_at, deadline_at, lease_token, lease_until, idempotency_key, last_outcome, last_reason, "
                "session_id, metadata, created_at, updated_at, sent_at) VALUES (:sn, :to, :body, :seg, :state, :att, "
                ":fail, :amb, :next, :deadline, :token, :lease, :key, :outcome, :reason, :sid, :meta, :created, "
                ":updated, :sent)"),
                {"sn": "bot-a" if i % 2 else "bot-b", "to": f"+1415555{i:04d}", "body": f"Olá 😀 message {i}\nline 2",
                 "seg": 1 + i % 3, "state": state, "att": i % 4, "fail": i % 3, "amb": i % 2, "next": at(i),
                 "deadline": at(180 + i) if i % 5 else None,
                 "token": f"token-{i}" if state in ("dispatched", "sending") else None,
                 "lease": at(30 + i) if state in ("dispatched", "sending") else None,
                 "key": f"appt-{i}" if i % 3 else None, "outcome": state if state != "pending" else None,
                 "reason": f"reason {i}", "sid": 123123123123 + i if state == "sent" else None,
                 "meta": '{"appointment": %d, "tags": ["a", "b"]}' % i if i % 2 else None,
                 "created": at(i), "updated": at(i + 0.5), "sent": at(i + 1) if state == "sent" else None})
        ids = [r[0] for r in conn.execute(text("SELECT id FROM messages ORDER BY id"))]
        for n, mid in enumerate(ids[:12]):
            for number in (1, 2):
                conn.execute(text(
                    "INSERT INTO attempts (message_id, number, started_at, latency_ms, http_status, success, code, "
                    "message, data_status, data_message, session_id, classification, reason, error, worker) VALUES "
                    "(:m, :n, :s, :lat, :http, :ok, :code, :msg, :ds, :dm, :sid, :cls, :reason, :err, :w)"),
                    {"m": mid, "n": number, "s": at(n + number), "lat": 12.5 * number, "http": 200 if number == 2 else 503,
                     "ok": number == 2, "code": 200 if number == 2 else None, "msg": "", "ds": "True",
                     "dm": "queued", "sid": 9_000_000_000_000_000_000 + n if number == 2 else None,
                     "cls": "sent" if number == 2 else "retry", "reason": "http_503", "err": None if number == 2
                     else "html body", "w": f"host:{100 + n}"})
        for mid in ids[4:8]:
            conn.execute(text("INSERT INTO operator_actions (message_id, action, from_state, actor, at, note) "
                              "VALUES (:m, 'retry', 'failed', 'alice', :at, 'customer asked')"), {"m": mid, "at": at(50)})


def snapshot(engine: Engine, prefix: str, like: dict[str, list[dict[str, Any]]] | None = None
             ) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table, by column name (with `like`: only the columns `like` has)."""
    out = {}
    with engine.connect() as conn:
        for table in TABLES:
            order = ORDER.get(table, "id")
            rows = [dict(r) for r in conn.execute(text(f"SELECT * FROM {prefix}{table} ORDER BY {order}")).mappings()]
            if like is not None and like[table]:
                # Later migrations add columns (null or defaulted for old rows): compare 0.1's.
                columns = set(like[table][0])
                rows = [{k: v for k, v in r.items() if k in columns} for r in rows]
            out[table] = rows
    return out


def migrate(url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OAKSEND_", "NEWOAKS_"))}
    env["DATABASE_URL"] = url
    return subprocess.run([sys.executable, "-m", "oaksend.worker.cli", "migrate"], env=env, capture_output=True,
                          text=True, timeout=120, cwd=ROOT)


def test_an_oaksend_0_1_database_upgrades_in_place_with_nothing_lost(legacy_url: str) -> None:
    engine = plain(legacy_url)
    try:
        before = snapshot(engine, "")
        assert len(before["messages"]) == 24 and len(before["attempts"]) == 24
        assert len(before["operator_actions"]) == 4 and len(before["chatbots"]) == 2
        with engine.connect() as conn:
            assert conn.scalar(text("SELECT version_num FROM alembic_version")) == "0002"

        done = migrate(legacy_url)
        assert done.returncode == 0, done.stderr

        # 0013 stores keys as their keyed hash (no secret here: the default key); everything else is as it was.
        hashed = {**before, "messages": [{**r, "idempotency_key": stored_key(r["idempotency_key"], None)}
                                         for r in before["messages"]]}
        assert snapshot(engine, "oaksend_", like=before) == hashed
        tables = set(inspect(engine).get_table_names())
        assert not tables & {*TABLES, "alembic_version"}  # the old tables and 0.1's version row are gone
        head = current(legacy_url)
        assert head is not None and head not in {"0001", "0002"}
        again = migrate(legacy_url)  # a second run has nothing to adopt
        assert again.returncode == 0, again.stderr
        assert snapshot(engine, "oaksend_", like=before) == hashed
    finally:
        engine.dispose()

    outbox = Outbox(make_engine(legacy_url))
    try:
        now = datetime.now(timezone.utc)
        stored = max(r["id"] for r in before["messages"])
        # A stored key on its chatbot answers with the stored row; new rows continue after the old ids.
        [old] = [r for r in before["messages"] if r["idempotency_key"] == "appt-1"]
        again_ids = outbox.add([NewMessage(old["serial_number"], old["to_phone"], old["body"], 1, now, None,
                                           "appt-1", None)], now)
        assert again_ids == [old["id"]]
        new_ids = outbox.add([NewMessage("bot-a", "+14155550100", "after the upgrade", 1, now, None, "new-1", None),
                              NewMessage("bot-b", "+14155550101", "after the upgrade", 1, now, None, None, None)], now)
        assert min(new_ids) > stored
        with outbox.session() as s:
            count = s.scalar(text("SELECT count(*) FROM oaksend_attempts"))
        assert count == 24
    finally:
        outbox.engine.dispose()
