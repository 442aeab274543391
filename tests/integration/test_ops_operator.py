"""Operator safety: dry runs change nothing, large selections need confirming, every command is audited,
and `resolve` settles only `unknown` messages."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from oaksend.worker.clock import utcnow
from oaksend.worker.message.validation import SendRequest
from tests.support import CHATBOT, REDIS_URL, ROOT

OTHER = "5b1c0e2d9f8a4b7c8d6e5f4a3b2c1d0e"


def run(capsys: pytest.CaptureFixture[str], db: str, *args: str) -> tuple[int, str, str]:
    """`oaksend ARGS` as a subprocess without a terminal: (exit code, stdout, stderr)."""
    result = subprocess_cli(db, *args)
    return result.returncode, result.stdout, result.stderr


def states(db: str) -> dict[str, int]:
    engine = create_engine(db.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            return dict(conn.execute(text("SELECT state, count(*) FROM oaksend_messages GROUP BY state")).all())
    finally:
        engine.dispose()


def sql(db: str, statement: str, **params: Any) -> None:
    engine = create_engine(db.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.begin() as conn:
            conn.execute(text(statement), params)
    finally:
        engine.dispose()


def audit(capsys: pytest.CaptureFixture[str], db: str) -> list[dict[str, Any]]:
    code, out, _ = run(capsys, db, "audit", "--json")
    assert code == 0
    return json.loads(out)


def subprocess_cli(db: str, *args: str, stdin: Any = subprocess.DEVNULL) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OAKSEND_", "NEWOAKS_"))}
    env.update(DATABASE_URL=db, REDIS_URL=REDIS_URL)
    return subprocess.run([sys.executable, "-m", "oaksend.worker.cli", *args], env=env, stdin=stdin,
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


@pytest.fixture
def pending_150(producer: Any) -> list[int]:
    """150 pending messages of one chatbot (due tomorrow, so nothing sends them) and 5 of another."""
    later = utcnow() + timedelta(days=1)
    ids = producer.send_many([SendRequest(CHATBOT, f"+1415555{i:04d}", f"text {i}", send_at=later)
                              for i in range(150)])
    producer.send_many([SendRequest(OTHER, f"+1415666{i:04d}", "other") for i in range(5)])
    return ids


def test_dry_run_changes_nothing_and_a_large_selection_needs_yes(database_url: str, pending_150: list[int],
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    before = states(database_url)
    assert before == {"pending": 155}

    code, out, _ = run(capsys, database_url, "cancel", "--state", "pending", "--chatbot", CHATBOT, "--dry-run",
                       "--json")
    assert code == 0
    preview = json.loads(out)
    assert preview["dry_run"] is True and preview["count"] == 150 and len(preview["sample"]) == 10
    assert {r["state"] for r in preview["sample"]} == {"pending"}
    assert all("****" in r["to"] for r in preview["sample"])  # numbers masked
    assert states(database_url) == before
    assert audit(capsys, database_url) == []  # a dry run is not an action

    # No terminal and no --yes: refused with one line that says what to do; nothing changed.
    result = subprocess_cli(database_url, "cancel", "--state", "pending", "--chatbot", CHATBOT)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "--yes" in result.stderr and "150 messages" in result.stderr
    assert states(database_url) == before

    # At or below the threshold no confirmation is asked.
    code, out, _ = run(capsys, database_url, "cancel", "--state", "pending", "--chatbot", OTHER, "--actor", "alice")
    assert code == 0 and states(database_url) == {"pending": 150, "cancelled": 5}

    code, out, _ = run(capsys, database_url, "cancel", "--state", "pending", "--chatbot", CHATBOT, "--yes",
                       "--actor", "bob", "--note", "campaign stopped")
    assert code == 0 and states(database_url) == {"cancelled": 155}

    code, out, _ = run(capsys, database_url, "retry", str(pending_150[0]), str(pending_150[1]), "--actor", "carol")
    assert code == 0

    rows = audit(capsys, database_url)
    assert [(r["command"], r["actor"], r["count"]) for r in rows] == [
        ("retry", "carol", 2), ("cancel", "bob", 150), ("cancel", "alice", 5)]
    assert rows[0]["selection"] == {"ids": pending_150[:2]}
    assert rows[1]["selection"] == {"state": ["pending"], "chatbot": CHATBOT} and rows[1]["note"] == "campaign stopped"
    assert all(r["at"] for r in rows)

    code, out, _ = run(capsys, database_url, "audit")
    assert code == 0 and "bob" in out and "cancel" in out


def test_a_terminal_prompt_confirms_or_aborts(database_url: str, pending_150: list[int]) -> None:
    def at_terminal(answer: str) -> subprocess.CompletedProcess[str]:
        primary, secondary = pty.openpty()
        try:
            os.write(primary, answer.encode() + b"\n")
            return subprocess_cli(database_url, "cancel", "--state", "pending", "--chatbot", CHATBOT,
                                  stdin=secondary)
        finally:
            os.close(primary)
            os.close(secondary)

    result = at_terminal("n")
    assert result.returncode == 1 and "cancel 150 messages? [y/N]" in result.stderr
    assert "nothing was changed" in result.stderr
    assert states(database_url)["pending"] == 155
    result = at_terminal("y")
    assert result.returncode == 0, result.stderr
    assert states(database_url) == {"pending": 5, "cancelled": 150}


def test_resolve_settles_only_unknown_messages(database_url: str, producer: Any,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    ids = producer.send_many([SendRequest(CHATBOT, f"+1415777{i:04d}", "t") for i in range(4)])
    sql(database_url, "UPDATE oaksend_messages SET state = 'unknown' WHERE id IN (:a, :b, :c)",
        a=ids[0], b=ids[1], c=ids[2])

    code, out, err = run(capsys, database_url, "resolve", str(ids[0]), "--sent", "--note", "carrier log: delivered",
                         "--actor", "dana")
    assert code == 0 and out.strip() == f"{ids[0]}: resolved as sent"
    code, out, _ = run(capsys, database_url, "resolve", str(ids[1]), str(ids[3]), "--failed", "--note", "no record",
                       "--json")
    assert code == 1  # one of them was not unknown
    assert json.loads(out) == [{"id": ids[1], "result": "resolved"},
                               {"id": ids[3], "result": "is pending; only unknown messages can be resolved"}]
    assert run(capsys, database_url, "resolve", "999999", "--sent", "--note", "x")[0] == 3

    code, _, err = run(capsys, database_url, "resolve", str(ids[2]), "--sent", "--note", "   ")
    assert code == 2 and err.startswith("oaksend: note:") and err.count("\n") == 1

    code, out, _ = run(capsys, database_url, "show", str(ids[0]), "--json")
    shown = json.loads(out)
    assert shown["state"] == "sent" and shown["sent_at"] is not None
    assert shown["last_reason"] == "resolved by operator: carrier log: delivered"
    assert [(a["action"], a["from_state"], a["actor"]) for a in shown["operator_actions"]] == [
        ("resolve sent", "unknown", "dana")]
    code, out, _ = run(capsys, database_url, "show", str(ids[1]), "--json")
    assert json.loads(out)["state"] == "failed"
    assert states(database_url) == {"sent": 1, "failed": 1, "unknown": 1, "pending": 1}

    rows = audit(capsys, database_url)
    assert [(r["command"], r["count"], r["note"]) for r in rows[:2]] == [
        ("resolve --sent", 0, "x"), ("resolve --failed", 1, "no record")]
    assert rows[-1]["actor"] == "dana" and rows[-1]["selection"] == {"ids": [ids[0]]}
