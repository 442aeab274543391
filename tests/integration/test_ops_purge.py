"""Retention: purge removes exactly the old terminal messages (with their attempts) and nothing open;
anonymize blanks them and keeps the audit; a dry run changes nothing; every purge is audited."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from datetime import timedelta
from typing import Any

import pytest
import redis
from sqlalchemy import create_engine, text

from oaksend.models.tables import STATES, TERMINAL_STATES
from oaksend.worker.clock import utcnow
from tests.support import CHATBOT, REDIS_URL, ROOT


def cli(db: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OAKSEND_", "NEWOAKS_"))}
    env.update(DATABASE_URL=db, REDIS_URL=REDIS_URL)
    return subprocess.run([sys.executable, "-m", "oaksend.worker.cli", *args], env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


class Db:
    def __init__(self, url: str) -> None:
        self.engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))

    def run(self, statement: str, **params: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(text(statement), params)

    def rows(self, statement: str, **params: Any) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(text(statement), params).all())

    def close(self) -> None:
        self.engine.dispose()


@pytest.fixture
def db(database_url: str) -> Any:
    d = Db(database_url)
    yield d
    d.close()


@pytest.fixture
def aged(db: Db, producer: Any) -> dict[str, dict[str, int]]:
    """Two messages per state: one created 100 days ago, one created now; every one with an attempt."""
    ids: dict[str, dict[str, int]] = {"old": {}, "new": {}}
    for age in ("old", "new"):
        for i, state in enumerate(STATES):
            mid = producer.send(CHATBOT, f"+1415{'5' if age == 'old' else '6'}55{i:04d}", f"{age} {state} text",
                                metadata={"patient": 42})
            ids[age][state] = mid
    old = utcnow() - timedelta(days=100)
    for age, by_state in ids.items():
        for state, mid in by_state.items():
            db.run("UPDATE oaksend_messages SET state = :s WHERE id = :id", s=state, id=mid)
            db.run("INSERT INTO oaksend_attempts (message_id, number, started_at, classification, reason) "
                   "VALUES (:id, 1, :at, 'retry', 'test')", id=mid, at=utcnow())
            db.run("INSERT INTO oaksend_operator_actions (message_id, action, from_state, at) "
                   "VALUES (:id, 'retry', 'failed', :at)", id=mid, at=utcnow())
            if age == "old":
                db.run("UPDATE oaksend_messages SET created_at = :at WHERE id = :id", at=old, id=mid)
    return ids


def snapshot(db: Db) -> list[Any]:
    return (db.rows("SELECT id, state, to_phone, body FROM oaksend_messages ORDER BY id")
            + db.rows("SELECT id, message_id FROM oaksend_attempts ORDER BY id"))


def test_purge_deletes_exactly_the_old_terminal_messages(database_url: str, db: Db,
                                                         aged: dict[str, dict[str, int]]) -> None:
    before = snapshot(db)
    dry = cli(database_url, "purge", "--older-than", "90d", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    preview = json.loads(dry.stdout)
    assert preview["count"] == len(TERMINAL_STATES)
    assert preview["campaign_recipients"] == 0  # no campaign ended here
    assert {r["id"] for r in preview["sample"]} == {aged["old"][s] for s in TERMINAL_STATES}
    assert snapshot(db) == before  # a dry run changes nothing

    result = cli(database_url, "purge", "--older-than", "90d", "--batch", "2", "--actor", "retention-test", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["messages"] == len(TERMINAL_STATES)

    doomed = {aged["old"][s] for s in TERMINAL_STATES}
    left = {mid for (mid,) in db.rows("SELECT id FROM oaksend_messages")}
    everything = {mid for by_state in aged.values() for mid in by_state.values()}
    assert left == everything - doomed  # open old ones and all new ones stay
    for table_ in ("oaksend_attempts", "oaksend_operator_actions"):
        kept = {mid for (mid,) in db.rows(f"SELECT message_id FROM {table_}")}
        assert kept == left
    audit = json.loads(cli(database_url, "audit", "--json").stdout)
    assert [(a["command"], a["actor"], a["count"]) for a in audit] == [
        ("purge --older-than 90d", "retention-test", len(TERMINAL_STATES))]
    assert audit[0]["selection"]["action"] == "delete"

    again = cli(database_url, "purge", "--older-than", "90d", "--json")
    assert json.loads(again.stdout)["messages"] == 0


def test_anonymize_blanks_phone_and_text_and_keeps_the_rows(database_url: str, db: Db,
                                                             aged: dict[str, dict[str, int]]) -> None:
    result = cli(database_url, "purge", "--older-than", "90d", "--anonymize")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"anonymized {len(TERMINAL_STATES)} messages created before ")
    rows = {mid: (phone, body, meta) for mid, phone, body, meta in
            db.rows("SELECT id, to_phone, body, metadata FROM oaksend_messages")}
    assert len(rows) == 2 * len(STATES)
    for age, by_state in aged.items():
        for state, mid in by_state.items():
            blanked = age == "old" and state in TERMINAL_STATES
            phone, body, meta = rows[mid]
            assert (phone == "" and body == "" and meta is None) == blanked, (age, state)
    assert len(db.rows("SELECT id FROM oaksend_attempts")) == 2 * len(STATES)  # the audit trail is kept
    # Anonymized rows are done: a second run finds nothing.
    assert "anonymized 0 messages" in cli(database_url, "purge", "--older-than", "90d", "--anonymize").stdout


def test_purge_input_errors_are_one_line(database_url: str) -> None:
    for args, field in ((["--older-than", "ninety days"], "older-than"), (["--older-than", "0d"], "older-than"),
                        (["--older-than", "90d", "--batch", "0"], "batch")):
        result = cli(database_url, "purge", *args)
        assert result.returncode == 2 and result.stderr.startswith(f"oaksend: {field}:")
        assert result.stderr.count("\n") == 1


def test_the_retention_setting_purges_once_per_interval(settings: Any, outbox: Any, db: Db,
                                                        aged: dict[str, dict[str, int]]) -> None:
    from oaksend.worker.keys import Keys
    from oaksend.worker.ops.purge import PeriodicPurge

    lock_key = Keys().purge_lock

    client = redis.Redis.from_url(settings.redis_url)
    client.delete(lock_key)
    try:
        tuned = settings.model_copy(update={"retention_days": 90.0, "purge_interval_s": 60.0})
        first = PeriodicPurge(tuned, outbox, client, threading.Event(), utcnow)
        second = PeriodicPurge(tuned, outbox, client, threading.Event(), utcnow)  # another dispatcher
        assert first.run_once() == len(TERMINAL_STATES)
        assert second.run_once() is None  # its turn comes after the interval
        audit = outbox.audit_log()
        assert [(a.command, a.actor, a.count) for a in audit] == [
            ("purge --older-than 90d (OAKSEND_RETENTION_DAYS)", "retention", len(TERMINAL_STATES))]
    finally:
        client.delete(lock_key)
        client.close()
