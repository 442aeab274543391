"""`oaksend` as a subprocess: exit codes, one-line errors, --json output, on a SQLite file and the real Redis."""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import sys
import time
import uuid
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import redis

from oaksend.models.db import make_engine
from oaksend.models.repository import Outbox
from tests.support import CHATBOT, REDIS_URL
from oaksend.worker.delivery.classify import classify
from oaksend.worker.newoaks.envelope import Envelope
from oaksend.worker.delivery.transition import RetryPolicy, attempt_record, plan

PHONE = "+14155550123"


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without any oaksend or NewOaks setting, plus `extra`."""
    bare = {"DATABASE_URL", "REDIS_URL", "CODE_OVERRIDES", "MAX_ATTEMPTS", "QUEUE_NAME"}
    env = {k: v for k, v in os.environ.items()
           if not k.upper().startswith(("OAKSEND_", "NEWOAKS_")) and k.upper() not in bare}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@dataclass
class Cli:
    database_url: str
    db_path: Path
    cwd: Path

    def __call__(self, *args: str, timeout_s: float = 60, **env: str) -> Result:
        full_env = clean_env(DATABASE_URL=self.database_url, REDIS_URL=REDIS_URL)
        full_env.update(env)
        proc = subprocess.run([sys.executable, "-m", "oaksend.worker.cli", *args], env=full_env, cwd=self.cwd,
                              capture_output=True, text=True, timeout=timeout_s)
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def rows(self) -> int:
        with closing(sqlite3.connect(self.db_path)) as conn:
            return int(conn.execute("SELECT count(*) FROM oaksend_messages").fetchone()[0])


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Cli:
    """A migrated SQLite outbox made by `oaksend migrate`, shared by this module's tests."""
    tmp = tmp_path_factory.mktemp("cli")  # also the working directory: no stray .env is read
    db = tmp / "oaksend.db"
    c = Cli(f"sqlite:///{db}", db, tmp)
    result = c("migrate")
    assert result.code == 0, result.err
    assert "head" in result.out
    return c


@pytest.fixture(scope="module", autouse=True)
def _redis_up(redis_url: str) -> None:
    """The CLI wakes the dispatcher and keeps pause keys in Redis: it must be there."""


def chatbot() -> str:
    return f"cli-{uuid.uuid4().hex[:12]}"


def send(cli: Cli, *extra: str, chatbot_sn: str = CHATBOT, to: str = PHONE, text: str = "Reminder") -> int:
    result = cli("send", "--chatbot", chatbot_sn, "--to", to, "--text", text, "--json", *extra)
    assert result.code == 0, result.err
    return int(result.json()["id"])


def one_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("oaksend: ")
    return lines[0]


# -- migrate / send ------------------------------------------------------------------------------------
def test_migrate_is_repeatable(cli: Cli) -> None:
    result = cli("migrate")
    assert result.code == 0 and result.err == ""


def test_send_json_prints_the_id(cli: Cli) -> None:
    before = cli.rows()
    result = cli("send", "--chatbot", CHATBOT, "--to", PHONE, "--text", "Hello from the CLI", "--json",
                 "--key", f"cli-{uuid.uuid4().hex}", "--metadata", '{"campaign": 7}', "--send-at", "+10m",
                 "--deadline", "+2h")
    assert result.code == 0, result.err
    data = result.json()
    assert set(data) == {"id"} and isinstance(data["id"], int)
    assert cli.rows() == before + 1


def test_send_with_the_same_key_returns_the_same_id(cli: Cli) -> None:
    key = f"k-{uuid.uuid4().hex}"
    plain = cli("send", "--chatbot", CHATBOT, "--to", PHONE, "--text", "same", "--key", key)
    assert plain.code == 0, plain.err
    first = int(plain.out.strip())  # without --json: the bare id
    rows = cli.rows()
    assert send(cli, "--key", key, text="same") == first
    assert cli.rows() == rows
    conflict = cli("send", "--chatbot", CHATBOT, "--to", PHONE, "--text", "different", "--key", key)
    assert conflict.code == 2
    assert "idempotency_key" in one_line(conflict.err)
    assert cli.rows() == rows


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--chatbot", CHATBOT, "--to", "4155550123", "--text", "hi"], "to:"),
        (["--chatbot", "x!", "--to", PHONE, "--text", "hi"], "serial_number:"),
        (["--chatbot", CHATBOT, "--to", PHONE, "--text", ""], "text:"),
        (["--chatbot", CHATBOT, "--to", PHONE, "--text", "hi", "--metadata", "{not json"], "metadata:"),
        (["--chatbot", CHATBOT, "--to", PHONE, "--text", "hi", "--send-at", "tomorrow"], "send_at:"),
        (["--chatbot", CHATBOT, "--to", PHONE, "--text", "hi", "--send-at", "+2h", "--deadline", "+1h"], "deadline:"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(cli: Cli, args: list[str], field: str) -> None:
    before = cli.rows()
    result = cli("send", "--json", *args)
    assert result.code == 2
    assert field in one_line(result.err)
    assert result.out == ""
    assert cli.rows() == before


# -- show / list ---------------------------------------------------------------------------------------
def _record_a_503(cli: Cli, message_id: int, serial_number: str) -> None:
    """One real attempt through the repository, as a worker would record it (no worker process needed)."""
    outbox = Outbox(make_engine(cli.database_url))
    try:
        now = datetime.now(timezone.utc)
        token, ids = outbox.lease_due(serial_number, now, 10, now + timedelta(seconds=30))
        assert ids == [message_id]
        assert outbox.claim(message_id, token, now, now + timedelta(seconds=30))
        envelope = Envelope(http_status=503, success=None, code=None, message=None, data_status=None,
                            data_message=None, session_id=None, version=None, retry_after_s=None,
                            malformed="html page", body_excerpt="<html>busy</html>")
        decision = classify(envelope)
        policy = RetryPolicy(max_attempts=5, backoff_base_s=2.0, backoff_cap_s=300.0, ambiguous_policy="retry")
        change = plan(decision, failures=0, deadline_at=None, now=now, policy=policy, rng=random.Random(1))
        record = attempt_record(envelope, decision, number=1, started_at=now, latency_ms=42.0, worker="test")
        assert outbox.record(message_id, serial_number, PHONE, token, record, change, now)
    finally:
        outbox.engine.dispose()


def test_show_json_has_the_attempt_history(cli: Cli) -> None:
    sn = chatbot()
    mid = send(cli, chatbot_sn=sn, text="shown")
    empty = cli("show", str(mid), "--json")
    assert empty.code == 0, empty.err
    data = empty.json()
    assert (data["id"], data["chatbot"], data["to"], data["text"], data["state"]) == (mid, sn, PHONE, "shown",
                                                                                        "pending")
    assert data["attempt_history"] == [] and data["operator_actions"] == []

    _record_a_503(cli, mid, sn)
    data = cli("show", str(mid), "--json").json()
    assert data["state"] == "pending" and data["attempts"] == 1 and data["failures"] == 1
    assert isinstance(data["attempt_history"], list) and len(data["attempt_history"]) == 1
    attempt = data["attempt_history"][0]
    assert attempt["number"] == 1
    assert attempt["http_status"] == 503
    assert attempt["classification"] == "retry" and attempt["reason"] == "http_503"
    assert "html page" in attempt["error"]
    assert attempt["latency_ms"] == 42.0


def test_show_unknown_id_exits_3(cli: Cli) -> None:
    result = cli("show", "999999")
    assert result.code == 3
    assert "999999" in one_line(result.err) and "not found" in result.err
    assert result.out == ""


def test_list_pending_json(cli: Cli) -> None:
    sn = chatbot()
    ids = [send(cli, chatbot_sn=sn, text="list 0"), send(cli, "--send-at", "+1h", chatbot_sn=sn, text="list 1")]
    result = cli("list", "--state", "pending", "--chatbot", sn, "--json")
    assert result.code == 0, result.err
    listed = result.json()
    assert [m["id"] for m in listed] == sorted(ids, reverse=True)  # newest first
    assert all(m["state"] == "pending" and m["chatbot"] == sn and m["to"] == PHONE for m in listed)
    table = cli("list", "--chatbot", sn)  # for people: numbers masked
    assert table.code == 0
    assert PHONE not in table.out and "+1415****123" in table.out


# -- retry / cancel ------------------------------------------------------------------------------------
def test_retry_of_a_pending_message_exits_1_with_a_reason(cli: Cli) -> None:
    mid = send(cli, chatbot_sn=chatbot())
    result = cli("retry", str(mid))
    assert result.code == 1
    assert f"{mid}:" in result.out and "pending" in result.out and "can be retried" in result.out


def test_cancel_then_retry_moves_back_to_pending_and_is_audited(cli: Cli) -> None:
    mid = send(cli, chatbot_sn=chatbot())
    cancelled = cli("cancel", str(mid), "--json", "--actor", "alice")
    assert cancelled.code == 0, cancelled.err
    assert cancelled.json() == [{"id": mid, "result": "cancelled"}]

    again = cli("cancel", str(mid))
    assert again.code == 1 and "cancelled" in again.out

    retried = cli("retry", str(mid), "--json", "--actor", "bob")
    assert retried.code == 0, retried.err
    assert retried.json() == [{"id": mid, "result": "retried"}]

    data = cli("show", str(mid), "--json").json()
    assert data["state"] == "pending"
    actions = [(a["action"], a["from_state"], a["actor"]) for a in data["operator_actions"]]
    assert actions == [("cancel", "pending", "alice"), ("retry", "cancelled", "bob")]


def test_retry_of_an_unknown_id_exits_3(cli: Cli) -> None:
    assert cli("retry", "999998").code == 3


# -- chatbots ------------------------------------------------------------------------------------------
def test_chatbot_set_limit_then_show(cli: Cli) -> None:
    sn = chatbot()
    unset = cli("chatbot", "show", sn, "--json").json()
    assert unset["configured"] is False and unset["rate_per_s"] == 1.0 and unset["burst"] == 1
    result = cli("chatbot", "set-limit", sn, "--rate", "5", "--burst", "2")
    assert result.code == 0, result.err
    shown = cli("chatbot", "show", sn, "--json")
    assert shown.code == 0
    assert shown.json() == {
        "chatbot": sn, "rate_per_s": 5.0, "burst": 2, "segments_per_s": None, "configured": True,
        "paused": False, "paused_until": None, "pause_reason": None,
    }


@pytest.mark.parametrize(
    ("args", "names"),
    [(["--rate", "-1"], "rate"), (["--burst", "0"], "burst")],
)
def test_chatbot_set_limit_refuses_bad_values(cli: Cli, args: list[str], names: str) -> None:
    result = cli("chatbot", "set-limit", chatbot(), *args)
    assert result.code == 2
    assert names in one_line(result.err)


def test_chatbot_pause_and_resume(cli: Cli) -> None:
    sn = chatbot()
    paused = cli("chatbot", "pause", sn, "--reason", "carrier maintenance", "--json")
    assert paused.code == 0, paused.err
    data = paused.json()
    assert data["paused"] is True and "carrier maintenance" in data["pause_reason"]
    assert datetime.fromisoformat(data["paused_until"]) > datetime.now(timezone.utc) + timedelta(days=365)
    client = redis.Redis.from_url(REDIS_URL)
    try:
        key = f"oaksend:pause:{{{sn}}}"
        assert client.pttl(key) > 0  # every worker sees the pause at once
        resumed = cli("chatbot", "resume", sn, "--json")
        assert resumed.code == 0, resumed.err
        assert resumed.json()["paused"] is False
        assert client.exists(key) == 0
    finally:
        client.close()


# -- stats ---------------------------------------------------------------------------------------------
def test_stats_json_counts_states(cli: Cli) -> None:
    mid = send(cli, chatbot_sn=chatbot())
    assert cli("cancel", str(mid)).code == 0
    result = cli("stats", "--json")
    assert result.code == 0, result.err
    with closing(sqlite3.connect(cli.db_path)) as conn:
        expected = dict(conn.execute("SELECT state, count(*) FROM oaksend_messages GROUP BY state").fetchall())
    assert result.json()["by_state"] == expected
    assert expected["cancelled"] >= 1 and expected["pending"] >= 1


# -- failures of the environment -----------------------------------------------------------------------
def test_worker_without_an_api_key_exits_quickly_naming_it(cli: Cli) -> None:
    started = time.monotonic()
    result = cli("worker", timeout_s=30)
    assert result.code != 0
    assert time.monotonic() - started < 15
    assert "NEWOAKS_API_KEY" in one_line(result.err)


def test_worker_with_a_padded_key_does_not_print_it(cli: Cli) -> None:
    result = cli("worker", timeout_s=30, NEWOAKS_API_KEY=" sk-live-secret-4242 ")
    assert result.code != 0
    line = one_line(result.err)
    assert "NEWOAKS_API_KEY" in line and "sk-live-secret-4242" not in result.err + result.out


def test_bad_setting_is_one_line_naming_the_variable(cli: Cli) -> None:
    result = cli("stats", OAKSEND_MAX_ATTEMPTS="lots")
    assert result.code == 2
    assert "MAX_ATTEMPTS" in one_line(result.err)


def test_bad_code_overrides_is_one_line_naming_the_variable(cli: Cli) -> None:
    result = cli("stats", OAKSEND_CODE_OVERRIDES="{not json")
    assert result.code == 2
    assert "CODE_OVERRIDES" in one_line(result.err)


def test_unreachable_database_exits_4_with_one_line(cli: Cli) -> None:
    started = time.monotonic()
    result = cli("stats", DATABASE_URL="postgresql://oaksend@127.0.0.1:1/oaksend")
    assert result.code == 4
    assert "database unavailable" in one_line(result.err)
    assert time.monotonic() - started < 20


def test_send_survives_an_unreachable_redis(cli: Cli) -> None:
    # The wake-up is best effort: the row is the truth, the dispatcher polls.
    before = cli.rows()
    result = cli("send", "--chatbot", CHATBOT, "--to", PHONE, "--text", "no redis", "--json",
                 REDIS_URL="redis://127.0.0.1:1/0")
    assert result.code == 0, result.err
    assert isinstance(result.json()["id"], int)
    assert cli.rows() == before + 1


def test_missing_command_is_a_usage_error(cli: Cli) -> None:
    result = cli()
    assert result.code == 2 and result.out == ""


def test_bulk_retry_by_state_shows_progress_and_keeps_history(tmp_path: Path) -> None:
    """`retry --state failed` sends every failed message again, in chunks, with progress on stderr."""
    from oaksend.models.records import NewMessage
    from oaksend.worker.clock import utcnow

    own = Cli(f"sqlite:///{tmp_path / 'bulk.db'}", tmp_path / "bulk.db", tmp_path)
    assert own("migrate").code == 0
    outbox = Outbox(make_engine(own.database_url))
    try:
        now = utcnow()
        rows = [NewMessage(CHATBOT, f"+1415555{i:04d}", "bulk", 1, now, None, None, None) for i in range(1203)]
        ids = outbox.add(rows, now)
        with outbox.engine.begin() as conn:
            conn.exec_driver_sql("UPDATE oaksend_messages SET state = 'failed' WHERE id <= ?", (ids[1199],))
        out = own("retry", "--state", "failed", "--since=-1h", "--progress", "--yes")
        assert out.code == 0, out.err
        assert "retry: 500/1200 messages" in out.err and "retry: 1200/1200 messages" in out.err
        assert "retried" in out.out and "1200" in out.out
        assert outbox.counts() == {"pending": 1203}
        assert outbox.history(ids[0])[1][0].action == "retry"
        none = own("retry", "--state", "failed")
        assert none.code == 3 and none.err.strip() == "no message matches"
        both = own("retry", str(ids[0]), "--state", "failed")
        assert both.code == 2
        one_line(both.err)
    finally:
        outbox.engine.dispose()
