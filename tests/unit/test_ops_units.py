"""Pure parts of the operations tools: ages, the supervisor's commands, JSON log lines, the sparkline."""

from __future__ import annotations

import json
import logging
from datetime import timedelta

import pytest

from oaksend.worker.logs import JsonFormatter, RedactingFilter, send_fields
from oaksend.worker.ops.purge import parse_age
from oaksend.worker.ops.stats import sparkline
from oaksend.worker.ops.supervisor import child_commands


@pytest.mark.parametrize(("text", "expected"), [
    ("90d", timedelta(days=90)), ("12h", timedelta(hours=12)), ("2w", timedelta(weeks=2)),
    ("30m", timedelta(minutes=30)), ("45s", timedelta(seconds=45)), (" 1.5d ", timedelta(hours=36)),
])
def test_parse_age(text: str, expected: timedelta) -> None:
    assert parse_age(text) == expected


@pytest.mark.parametrize("text", ["", "90", "d", "0d", "-1d", "90 days", "1y", "1e3d"])
def test_parse_age_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="is not an age"):
        parse_age(text)


def test_sparkline() -> None:
    assert sparkline([]) == ""
    assert sparkline([0, 0]) == "··"
    assert sparkline([0, 1, 8]) == "·▁█"


def test_child_commands() -> None:
    # No store URL on a command line (settings go by environment: tests/integration/test_run_secrets.py).
    cmds = child_commands(workers=2, concurrency=4, metrics_port=9100, log_format="json", log_level="INFO",
                          scheduler=True)
    assert [name for name, _ in cmds] == ["dispatcher", "worker0", "worker1", "scheduler"]
    assert cmds[0][1] == ["dispatcher", "--log-level", "INFO", "--log-format", "json", "--metrics-port", "9100"]
    assert cmds[1][1] == ["worker", "--concurrency", "4", "--log-level", "INFO", "--log-format", "json",
                          "--metrics-port", "9101", "-n", "worker0@%h"]
    assert cmds[2][1][-4:] == ["--metrics-port", "9102", "-n", "worker1@%h"]
    assert cmds[3][1] == ["scheduler", "--log-level", "INFO", "--log-format", "json"]
    bare = child_commands(workers=1, concurrency=8, metrics_port=None, log_format=None, log_level="INFO",
                          scheduler=False)
    assert bare == [("dispatcher", ["dispatcher", "--log-level", "INFO"]),
                    ("worker0", ["worker", "--concurrency", "8", "--log-level", "INFO", "-n", "worker0@%h"])]


def _format(record: logging.LogRecord, secrets: tuple[str, ...] = ()) -> dict[str, object]:
    RedactingFilter(secrets).filter(record)
    return json.loads(JsonFormatter().format(record))


def test_json_log_line_carries_send_fields_masked() -> None:
    record = logging.LogRecord("oaksend.worker.delivery.task", logging.INFO, __file__, 1,
                               "message %s to %s: %s", (7, "+14155550123", "sent"), None)
    for k, v in send_fields(7, "sn-1", "+14155550123", "sent", 2).items():
        setattr(record, k, v)
    line = _format(record)
    assert line["msg"] == "message 7 to +1415****123: sent"
    assert {k: line[k] for k in ("message_id", "chatbot", "to", "verdict", "attempt")} == {
        "message_id": 7, "chatbot": "sn-1", "to": "+1415****123", "verdict": "sent", "attempt": 2}
    assert line["level"] == "INFO" and line["logger"] == "oaksend.worker.delivery.task"


def test_json_log_line_never_carries_the_key_or_unknown_extras() -> None:
    record = logging.LogRecord("httpx", logging.WARNING, __file__, 1, "header X-Api-Key: %s", ("k-secret-1",), None)
    record.text = "the SMS body"  # an extra that is not one of the send fields is not shipped
    line = _format(record, secrets=("k-secret-1",))
    assert "k-secret-1" not in json.dumps(line) and "the SMS body" not in json.dumps(line)
    assert line["msg"] == "header X-Api-Key: [redacted]"
