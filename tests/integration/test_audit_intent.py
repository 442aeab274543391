"""Every operator action is audited before it acts, by a named actor; brakes match the harm; a dry run
reports what the action's own statements would change. On SQLite and PostgreSQL, through the CLI.

The faults are real: a table dropped, a trigger that raises inside the action's transaction, a
process killed midway. A row 'failed' (or 'started') proves the intent was committed before the fault.
"""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from oaksend.worker.clock import utcnow
from oaksend.worker.message.validation import SendRequest
from tests.integration.test_cli import Cli, Result, clean_env
from tests.support import CHATBOT, REDIS_URL, wait_until


# -- helpers ------------------------------------------------------------------------------------------
@pytest.fixture
def cli(database_url: str, tmp_path: Path) -> Cli:
    return Cli(database_url, tmp_path / "unused.db", tmp_path)


def sql(outbox: Any, *statements: str) -> None:
    with outbox.engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement))


def scalar(outbox: Any, statement: str) -> Any:
    with outbox.engine.connect() as conn:
        return conn.scalar(text(statement))


def audit_rows(outbox: Any) -> list[Any]:
    """The audit, oldest first."""
    return list(reversed(outbox.audit_log(limit=1000)))


def fault(outbox: Any, table: str, event: str, when: str = "1 = 1") -> None:
    """A trigger that makes `event` (INSERT, UPDATE, DELETE) on `table` fail: a real database error."""
    if outbox.engine.dialect.name == "sqlite":
        sql(outbox, f"CREATE TRIGGER fault_{event.lower()}_{table} BEFORE {event} ON {table} "
                    f"WHEN {when.replace('row.', 'old.' if event == 'DELETE' else 'new.')} "
                    "BEGIN SELECT RAISE(ABORT, 'injected fault'); END")
        return
    sql(outbox, "CREATE OR REPLACE FUNCTION injected_fault() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'injected fault'; END $$",
        f"CREATE TRIGGER fault_{event.lower()}_{table} BEFORE {event} ON {table} FOR EACH ROW "
        f"WHEN ({when.replace('row.', 'OLD.' if event == 'DELETE' else 'NEW.')}) EXECUTE FUNCTION injected_fault()")


def drop(outbox: Any, table: str) -> None:
    cascade = " CASCADE" if outbox.engine.dialect.name == "postgresql" else ""
    sql(outbox, f"DROP TABLE {table}{cascade}")


def one_line_error(result: Result, code: int, *words: str) -> None:
    assert result.code == code, (result.out, result.err)
    assert result.err.count("\n") == 1 and result.err.startswith("oaksend: "), result.err
    assert all(w in result.err for w in words), result.err


def campaign(cli: Cli, tmp: Path, people: int = 3) -> int:
    day = (utcnow() + timedelta(days=3)).strftime("%Y-%m-%dT%H:%M")
    path = tmp / f"audience-{people}.csv"
    path.write_text("phone,name,at\n" + "".join(f"+1212555{i:04d},P{i},{day}\n" for i in range(people)))
    created = cli("campaign", "create", "--name", "c", "--chatbot", CHATBOT, "--audience", str(path),
                  "--template", "Hi {name}", "--before", "at:24h", "--tz", "UTC", "--quiet-hours", "off",
                  "--json")
    assert created.code == 0, created.err
    return int(created.json()["id"])


@pytest.fixture
def failed(producer: Any, outbox: Any) -> list[int]:
    """Four failed messages."""
    ids = producer.send_many([SendRequest(CHATBOT, f"+1415555{i:04d}", f"t{i}") for i in range(4)])
    sql(outbox, f"UPDATE oaksend_messages SET state = 'failed' WHERE id IN ({','.join(map(str, ids))})")
    return list(ids)


# -- the intent comes first ---------------------------------------------------------------------------
def test_message_actions_write_their_intent_before_acting(cli: Cli, outbox: Any, failed: list[int]) -> None:
    sql(outbox, f"UPDATE oaksend_messages SET state = 'pending' WHERE id = {failed[2]}",
        f"UPDATE oaksend_messages SET state = 'unknown' WHERE id = {failed[3]}")
    drop(outbox, "oaksend_operator_actions")  # each of them writes one per message, inside its transaction
    for args in (["retry", str(failed[0]), str(failed[1])], ["cancel", str(failed[2])],
                 ["resolve", str(failed[3]), "--sent", "--note", "carrier log"]):
        result = cli(*args, "--actor", "ann")
        assert result.code == 4, result.err  # the database refused midway
    rows = audit_rows(outbox)
    assert [(r.command, r.actor, r.state, r.count) for r in rows] == [
        ("retry", "ann", "failed", 0), ("cancel", "ann", "failed", 0), ("resolve --sent", "ann", "failed", 0)]
    assert all(r.result["error"] for r in rows) and all(r.finished_at for r in rows)
    assert rows[0].selection == {"ids": failed[:2]} and rows[2].note == "carrier log"
    with outbox.engine.connect() as conn:  # nothing changed
        now = dict(conn.execute(text("SELECT id, state FROM oaksend_messages")).all())
    assert [now[i] for i in failed] == ["failed", "failed", "pending", "unknown"]


def test_campaign_and_chatbot_actions_write_their_intent_before_acting(cli: Cli, outbox: Any,
                                                                       tmp_path: Path) -> None:
    cid = campaign(cli, tmp_path)
    fault(outbox, "oaksend_campaigns", "UPDATE")
    assert cli("campaign", "pause", str(cid), "--actor", "bea").code == 4
    assert cli("campaign", "cancel", str(cid), "--yes", "--actor", "bea").code == 4
    fault(outbox, "oaksend_campaigns", "INSERT")
    assert campaign_fails(cli, tmp_path)
    drop(outbox, "oaksend_chatbots")
    for args in (["pause", "sn-1"], ["resume", "sn-1"], ["set-limit", "sn-1", "--rate", "2"]):
        assert cli("chatbot", *args, "--actor", "bea").code == 4
    rows = audit_rows(outbox)
    assert [(r.command, r.state) for r in rows] == [
        ("campaign create", "done"), ("campaign pause", "failed"), ("campaign cancel", "failed"),
        ("campaign create", "failed"), ("chatbot pause", "failed"), ("chatbot resume", "failed"),
        ("chatbot set-limit", "failed")]
    assert rows[0].count == 3 and rows[0].result["campaign"] == cid and rows[0].finished_at >= rows[0].at
    assert rows[1].selection == {"campaign": cid} and rows[1].actor == "bea"
    assert rows[-1].selection == {"chatbot": "sn-1", "rate_per_s": 2.0, "burst": None, "segments_per_s": None}
    assert scalar(outbox, "SELECT state FROM oaksend_campaigns") == "scheduled"  # neither pause nor cancel acted


def campaign_fails(cli: Cli, tmp: Path) -> bool:
    path = tmp / "b.csv"
    path.write_text("phone,name,at\n+12125550999,Z,2031-01-01T10:00\n")
    return cli("campaign", "create", "--name", "d", "--chatbot", CHATBOT, "--audience", str(path), "--template",
               "x", "--at", "2031-01-01T09:00", "--tz", "UTC", "--quiet-hours", "off", "--actor", "bea").code == 4


def test_a_purge_that_fails_midway_keeps_its_intent_and_its_count(cli: Cli, outbox: Any, producer: Any) -> None:
    ids = producer.send_many([SendRequest(CHATBOT, f"+1415666{i:04d}", "t") for i in range(7)])
    sql(outbox, "UPDATE oaksend_messages SET state = 'sent'")
    fault(outbox, "oaksend_messages", "DELETE", f"row.id = {ids[5]}")  # in the third batch of two
    time.sleep(1.1)
    result = cli("purge", "--older-than", "1s", "--batch", "2", "--actor", "cy")
    assert result.code == 4, result.err
    [row] = audit_rows(outbox)
    assert (row.command, row.actor, row.state, row.count) == ("purge --older-than 1s", "cy", "failed", 4)
    assert scalar(outbox, "SELECT count(*) FROM oaksend_messages") == 3  # 4 deleted, as the audit says


def test_a_killed_purge_leaves_its_intent_started(cli: Cli, outbox: Any, producer: Any) -> None:
    producer.send_many([SendRequest(CHATBOT, f"+1415777{i:04d}", "t") for i in range(300)])
    sql(outbox, "UPDATE oaksend_messages SET state = 'expired'")
    time.sleep(1.1)  # older than --older-than 1s
    env = clean_env(DATABASE_URL=cli.database_url, REDIS_URL=REDIS_URL)
    proc = subprocess.Popen([sys.executable, "-m", "oaksend.worker.cli", "purge", "--older-than", "1s", "--batch",
                             "2", "--yes", "--actor", "dee"], env=env, cwd=cli.cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: (scalar(outbox, "SELECT max(count) FROM oaksend_operator_audit") or 0) >= 6, 60,
                   what="the purge to be under way")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    [row] = audit_rows(outbox)
    left = scalar(outbox, "SELECT count(*) FROM oaksend_messages")
    assert (row.state, row.actor, row.finished_at) == ("started", "dee", None)
    assert 0 < row.count <= 300 - left <= row.count + 2 and left > 0  # the count reached, one batch at most behind
    shown = cli("audit", "--json").json()
    assert shown[0]["state"] == "started" and shown[0]["finished_at"] is None and shown[0]["count"] == row.count


def test_migrate_writes_its_intent_before_the_first_revision(cli: Cli, outbox: Any) -> None:
    from oaksend.migrations.runner import downgrade

    downgrade(cli.database_url, "0014")
    assert cli("migrate", "--actor", "eve").code == 0
    downgrade(cli.database_url, "0010")
    drop(outbox, "oaksend_attempts")  # revision 0011 changes it: the migration fails there
    assert cli("migrate", "--actor", "eve").code == 4
    with outbox.engine.connect() as conn:  # the table is at 0010: only its columns of then
        rows = conn.execute(text("SELECT command, actor, note FROM oaksend_operator_audit ORDER BY id")).all()
    assert [(c, a) for c, a, _ in rows] == [("migrate head", "eve"), ("migrate head", "eve")]
    assert rows[1][2].startswith("failed: ") and "'from': '0010'" in rows[1][2]


def test_migrate_is_audited_done_from_an_empty_database(tmp_path: Path, redis_url: str) -> None:
    url = f"sqlite:///{tmp_path}/fresh.db"
    fresh = Cli(url, tmp_path / "fresh.db", tmp_path)
    assert fresh("migrate", OAKSEND_ACTOR="frank").code == 0
    [row] = fresh("audit", "--json").json()
    assert (row["command"], row["actor"], row["state"]) == ("migrate head", "frank", "done")
    assert row["result"]["from"] is None and "written after" in row["result"]["intent"]


# -- who ---------------------------------------------------------------------------------------------
def test_the_actor_is_the_option_else_the_setting_else_the_login_name(cli: Cli, outbox: Any) -> None:
    # No name in the environment, as under docker exec, systemd or cron: the password database names the uid.
    assert cli("chatbot", "set-limit", "sn", "--rate", "1", LOGNAME="", USER="", LNAME="", USERNAME="").code == 0
    assert cli("chatbot", "set-limit", "sn", "--rate", "1", OAKSEND_ACTOR="ops-bot").code == 0
    assert cli("chatbot", "set-limit", "sn", "--rate", "1", "--actor", "gil", OAKSEND_ACTOR="ops-bot").code == 0
    one_line_error(cli("chatbot", "set-limit", "sn", "--rate", "1", "--actor", "  "), 2, "actor:")
    login = pwd.getpwuid(os.getuid()).pw_name
    assert [r.actor for r in audit_rows(outbox)] == [login, "ops-bot", "gil"]


# -- brakes --------------------------------------------------------------------------------------------
def test_brakes_match_the_harm(cli: Cli, outbox: Any, producer: Any, failed: list[int], tmp_path: Path) -> None:
    sql(outbox, f"UPDATE oaksend_messages SET state = 'unknown' WHERE id = {failed[0]}")
    refused = cli("retry", str(failed[0]))  # one unknown message: it may have been sent already
    one_line_error(refused, 2, "yes:", "unknown", "--yes")
    assert cli("retry", str(failed[1])).code == 0  # one failed message: no brake
    assert cli("retry", str(failed[0]), "--yes").code == 0

    later = utcnow() + timedelta(days=1)
    many = producer.send_many([SendRequest(CHATBOT, f"+1415888{i:04d}", "t", send_at=later) for i in range(21)])
    one_line_error(cli("cancel", *map(str, many)), 2, "21 messages", "more than 20", "--yes")
    assert cli("cancel", *map(str, many[:20])).code == 0  # 20: no brake
    assert cli("cancel", *map(str, many), "--dry-run", "--json").json()["count"] == 1

    cid = campaign(cli, tmp_path, people=1)
    one_line_error(cli("campaign", "cancel", str(cid)), 2, "cannot be resumed", "--yes")
    assert scalar(outbox, f"SELECT state FROM oaksend_campaigns WHERE id = {cid}") == "scheduled"
    assert [(r.command, r.count) for r in audit_rows(outbox)] == [
        ("retry", 1), ("retry", 1), ("cancel", 20), ("campaign create", 1)]  # a refusal is not an action


# -- dry runs ------------------------------------------------------------------------------------------
def test_dry_runs_count_what_the_real_statements_change(cli: Cli, outbox: Any, producer: Any,
                                                       tmp_path: Path) -> None:
    ids = producer.send_many([SendRequest(CHATBOT, f"+1415999{i:04d}", "t") for i in range(30)])
    states = ["failed"] * 10 + ["unknown"] * 8 + ["sent"] * 6 + ["cancelled"] * 6
    for mid, state in zip(ids, states, strict=True):
        sql(outbox, f"UPDATE oaksend_messages SET state = '{state}' WHERE id = {mid}")
    sql(outbox, "INSERT INTO oaksend_suppressed_numbers (to_phone, reason, at) "
                "VALUES ('+14159990001', 'stop', CURRENT_TIMESTAMP)")  # one failed message may not be retried
    selection = [*map(str, ids), "999999"]

    sent_only = cli("retry", *map(str, ids[18:20]), "--dry-run", "--json").json()
    assert (sent_only["count"], sent_only["selected"]) == (0, 2)  # not "2 would be affected"
    for verb, extra, done in (("resolve", ["--failed", "--note", "checked"], "resolved"),
                              ("retry", [], "retried"), ("cancel", [], "cancelled")):
        dry = cli(verb, *selection, *extra, "--dry-run", "--json").json()
        real = cli(verb, *selection, *extra, "--yes", "--json").json()
        assert dry["count"] == sum(1 for r in real if r["result"] == done), verb
        assert dry["selected"] == 31 and sum(dry["refused"].values()) == 31 - dry["count"]
    assert [(r.command, r.count) for r in audit_rows(outbox)] == [("resolve --failed", 8), ("retry", 23),
                                                                  ("cancel", 23)]

    cid = campaign(cli, tmp_path, people=4)
    for verb in ("pause", "resume", "cancel"):
        dry = cli("campaign", verb, str(cid), "--dry-run", "--json").json()
        real = cli("campaign", verb, str(cid), *([] if verb == "pause" else ["--yes"]), "--json").json()
        assert dry["dry_run"] and dry["count"] == 4 == real[{"pause": "held", "resume": "released",
                                                              "cancel": "cancelled"}[verb]]
