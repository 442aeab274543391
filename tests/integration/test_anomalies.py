"""`oaksend anomalies` through the real entry point, on SQLite and PostgreSQL.

Attempts are recorded the way a worker records them (body bytes -> parse_envelope ->
classify -> plan -> attempt_record -> the repository); the command must list exactly the
ones whose `anomalies` is not empty, newest first, in a table for people and as JSON.
"""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from oaksend.worker.cli import main
from oaksend.worker.clock import utcnow
from oaksend.worker.delivery.classify import classify
from oaksend.worker.delivery.transition import RetryPolicy, attempt_record, plan
from oaksend.worker.message.validation import SendRequest, validate
from oaksend.worker.newoaks.envelope import parse_envelope
from tests.support import CHATBOT

POLICY = RetryPolicy(max_attempts=5, backoff_base_s=1.0, backoff_cap_s=10.0, ambiguous_policy="retry")
DOC: dict[str, Any] = {"Data": {"Status": "True", "Message": "", "SessionID": 123123123123}, "Version": "1.0.0",
                       "Success": True, "Code": 200, "Message": ""}
T0 = datetime(2026, 3, 1, 12, 0, 0).astimezone()


def _body(**top: Any) -> bytes:
    return json.dumps({**DOC, **top}).encode()


def _record(outbox: Any, phone: str, raw: bytes, started_at: datetime) -> int:
    """One call that answered `raw`, recorded as the worker does; returns the message id."""
    now = utcnow()
    [mid] = outbox.add([validate(SendRequest(CHATBOT, phone, "hello"), now=now, default_deadline_s=3600)], now)
    token, ids = outbox.lease_due(CHATBOT, now + timedelta(seconds=1), 100, now + timedelta(seconds=60))
    assert mid in ids
    assert outbox.claim(mid, token, now, now + timedelta(seconds=60))
    outcome = parse_envelope(200, raw)
    decision = classify(outcome)
    change = plan(decision, failures=0, deadline_at=None, now=now, policy=POLICY, rng=random.Random(1),
                  session_id=outcome.session_id)
    record = attempt_record(outcome, decision, number=1, started_at=started_at, latency_ms=1.0, worker="w")
    assert outbox.record(mid, CHATBOT, phone, token, record, change, now)
    return int(mid)


def _run(capsys: pytest.CaptureFixture[str], database_url: str, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["--database-url", database_url, "anomalies", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def recorded(outbox: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Four calls an hour apart: a plain success (nothing odd) and three with anomalies."""
    monkeypatch.chdir(tmp_path)  # no stray .env is read
    return {
        "plain": _record(outbox, "+14155550301", _body(), T0),
        "no data": _record(outbox, "+14155550302", _body(Data=None), T0 + timedelta(hours=1)),
        "contradiction": _record(outbox, "+14155550303", _body(Code=500), T0 + timedelta(hours=2)),
        "code text": _record(outbox, "+14155550304", _body(Code="200"), T0 + timedelta(hours=3)),
    }


def test_the_json_lists_odd_attempts_newest_first(capsys: pytest.CaptureFixture[str], database_url: str,
                                                  recorded: dict[str, int]) -> None:
    code, out, err = _run(capsys, database_url, "--json")
    assert (code, err) == (0, "")
    rows = json.loads(out)
    assert [r["message_id"] for r in rows] == [recorded["code text"], recorded["contradiction"], recorded["no data"]]
    assert set(rows[0]) == {"message_id", "attempt", "started_at", "http_status", "code", "data_status",
                            "classification", "anomalies"}
    code_text, contradiction, no_data = rows
    assert (no_data["attempt"], no_data["http_status"], no_data["code"], no_data["data_status"],
            no_data["classification"]) == (1, 200, 200, None, "sent")
    assert no_data["anomalies"] == "Data null: success stated by Success and Code"
    assert datetime.fromisoformat(no_data["started_at"]) == T0 + timedelta(hours=1)
    assert (contradiction["classification"], contradiction["code"]) == ("ambiguous", 500)
    assert contradiction["anomalies"] == 'contradiction: Success true, Data.Status "True" vs Code 500'
    assert (code_text["classification"], code_text["anomalies"]) == ("sent", "Code is a string")


def test_since_and_limit_narrow_the_list(capsys: pytest.CaptureFixture[str], database_url: str,
                                         recorded: dict[str, int]) -> None:
    since = (T0 + timedelta(minutes=90)).isoformat()
    code, out, _ = _run(capsys, database_url, "--since", since, "--json")
    assert code == 0
    assert [r["message_id"] for r in json.loads(out)] == [recorded["code text"], recorded["contradiction"]]
    code, out, _ = _run(capsys, database_url, "--limit", "1", "--json")
    assert code == 0
    assert [r["message_id"] for r in json.loads(out)] == [recorded["code text"]]
    # Relative times work too: every attempt here started long before an hour ago.
    code, out, _ = _run(capsys, database_url, "--since=-1h", "--json")
    assert (code, json.loads(out)) == (0, [])


def test_the_table_is_for_people(capsys: pytest.CaptureFixture[str], database_url: str,
                                 recorded: dict[str, int]) -> None:
    code, out, err = _run(capsys, database_url)
    assert (code, err) == (0, "")
    header, *lines = out.splitlines()
    assert header.split() == ["MESSAGE_ID", "ATTEMPT", "STARTED_AT", "HTTP_STATUS", "CODE", "DATA_STATUS",
                              "CLASSIFICATION", "ANOMALIES"]
    assert len(lines) == 3
    assert lines[0].split()[0] == str(recorded["code text"]) and lines[0].endswith("Code is a string")
    assert "Data null: success stated by Success and Code" in lines[2]
    assert str(recorded["plain"]) not in [line.split()[0] for line in lines]


def test_nothing_odd_prints_none(capsys: pytest.CaptureFixture[str], database_url: str, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, _ = _run(capsys, database_url)
    assert (code, out.strip()) == (0, "(none)")
    code, out, _ = _run(capsys, database_url, "--json")
    assert (code, json.loads(out)) == (0, [])


@pytest.mark.parametrize(("args", "field"), [(("--limit", "0"), "limit"), (("--since", "yesterday"), "since")])
def test_bad_input_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], database_url: str, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...], field: str) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = _run(capsys, database_url, *args)
    assert (code, out) == (2, "")
    assert len(err.splitlines()) == 1 and err.startswith("oaksend: ") and field in err
