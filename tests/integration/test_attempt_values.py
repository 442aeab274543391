"""Values that do not fit are data, not outages: odd responses are stored on PostgreSQL and SQLite alike.

Each case goes the whole pure path (body bytes -> parse_envelope -> classify -> plan ->
attempt_record) and is written by the repository, as the worker does; a last case hands the
repository junk directly, to show the boundary fits values whoever built the record.
"""

from __future__ import annotations

import json
import random
from datetime import timedelta
from typing import Any

import pytest

from oaksend.models.fit import TEXT_MAX_CHARS
from oaksend.models.records import AttemptRecord, Transition
from oaksend.worker.delivery.classify import classify
from oaksend.worker.newoaks.envelope import parse_envelope
from oaksend.worker.clock import utcnow
from oaksend.worker.delivery.transition import RetryPolicy, attempt_record, plan
from oaksend.worker.message.validation import SendRequest, validate
from tests.support import CHATBOT

POLICY = RetryPolicy(max_attempts=5, backoff_base_s=1.0, backoff_cap_s=10.0, ambiguous_policy="retry")
DOC = {"Data": {"Status": "True", "Message": "", "SessionID": 123123123123}, "Version": "1.0.0",
       "Success": True, "Code": 200, "Message": ""}


def body(data: dict[str, Any] | None = None, **top: Any) -> bytes:
    return json.dumps({**DOC, "Data": {**DOC["Data"], **(data or {})}, **top}).encode()


def claimed(outbox: Any, phone: str) -> tuple[int, str]:
    """A message in `sending` under our token, as a worker holds it before the call."""
    now = utcnow()
    [mid] = outbox.add([validate(SendRequest(CHATBOT, phone, "hello"), now=now, default_deadline_s=3600)], now)
    token, ids = outbox.lease_due(CHATBOT, now + timedelta(seconds=1), 100, now + timedelta(seconds=60))
    assert mid in ids
    assert outbox.claim(mid, token, now, now + timedelta(seconds=60))
    return mid, token


def send_through(outbox: Any, phone: str, raw: bytes, status: int = 200) -> tuple[Any, Any]:
    """Record one call that answered `raw`; return the message row and its attempt row."""
    mid, token = claimed(outbox, phone)
    outcome = parse_envelope(status, raw)
    decision = classify(outcome)
    now = utcnow()
    change = plan(decision, failures=0, deadline_at=None, now=now, policy=POLICY, rng=random.Random(1),
                  session_id=outcome.session_id)
    record = attempt_record(outcome, decision, number=1, started_at=now, latency_ms=1.0, worker="w")
    outbox.record(mid, CHATBOT, phone, token, record, change, now)
    [attempt] = outbox.history(mid)[0]
    return outbox.get(mid), attempt


# (phone, body, check(message, attempt))
CASES: list[tuple[str, bytes, Any]] = [
    ("+14155550160", body(Code=2**40, Success=False),
     lambda m, a: a.code is None and f"Code {2**40} does not fit 32 bits" in a.anomalies and m.state == "failed"),
    ("+14155550161", body(Code=10**30, Success=False),
     lambda m, a: a.code is None and str(10**30) in a.anomalies and a.classification == "final"),
    ("+14155550162", body(Code=-(2**31) - 1, Success=False),
     lambda m, a: a.code is None and "does not fit 32 bits" in a.anomalies),
    ("+14155550163", body(Message="x" * 5000, Success=False),
     lambda m, a: len(a.message) <= TEXT_MAX_CHARS and a.message.startswith("xxx") and "Message clamped" in a.anomalies),
    ("+14155550164", body(data={"Status": "True" + " " * 300}),
     lambda m, a: len(a.data_status) <= 64 and m.state == "sent" and "Data.Status clamped" in a.anomalies),
    ("+14155550165", body(data={"Status": "F" * 300}),
     lambda m, a: len(a.data_status) <= 64 and m.state == "failed"),
    ("+14155550166", body(data={"Message": "nul \u0000 and \ud800 lone"}, Message="\u0000"),
     lambda m, a: a.data_message == "nul \\x00 and \\ud800 lone" and a.message == "\\x00" and m.state == "sent"),
    ("+14155550167", body(data={"SessionID": 2**64 + 7}),
     lambda m, a: (m.state, m.session_id, m.session_id_text, a.session_id, a.session_id_text)
     == ("sent", None, str(2**64 + 7), None, str(2**64 + 7))),
    ("+14155550168", body(data={"SessionID": "sess-" + "9" * 3000}),
     lambda m, a: m.state == "sent" and a.session_id_text.startswith("sess-999") and len(a.session_id_text) <= 2000
     and m.session_id_text == a.session_id_text),
    ("+14155550169", body(data={"Status": {"value": [1, 2]}, "Message": 3.5}, Version={"v": 1}),
     lambda m, a: a.data_status == '{"value":[1,2]}' and a.data_message == "3.5" and m.state == "failed"),
    ("+14155550170", b"\x00\x00 not json \x00",
     lambda m, a: a.classification == "ambiguous" and "\x00" not in a.error and "not json" in a.error),
    ("+14155550171", body(data={"SessionID": -5}),
     lambda m, a: (m.state, m.session_id, a.session_id) == ("sent", -5, -5)),
]


@pytest.mark.parametrize(("phone", "raw", "check"), CASES, ids=[c[0][-3:] for c in CASES])
def test_odd_values_are_stored(outbox: Any, phone: str, raw: bytes, check: Any) -> None:
    message, attempt = send_through(outbox, phone, raw)
    assert check(message, attempt), (message.__dict__, attempt.__dict__)


def test_the_repository_fits_a_record_built_by_anyone(outbox: Any) -> None:
    mid, token = claimed(outbox, "+14155550172")
    now = utcnow()
    junk = AttemptRecord(
        number=1, started_at=now, latency_ms=float("nan"), classification="sent", reason="ok\x00",
        http_status=10**12, success=True, code=2**70, message="m\x00" * 3000, data_status="S" * 1000,
        data_message="\udcff", session_id=2**70, error=None, worker="w" * 500, anomalies="odd\x00",
    )
    change = Transition(state="sent", reason="ok", outcome="sent", session_id=2**70, sent=True)
    assert outbox.record(mid, CHATBOT, "+14155550172", token, junk, change, now)
    [a] = outbox.history(mid)[0]
    m = outbox.get(mid)
    assert (a.http_status, a.code, a.session_id, a.session_id_text) == (None, None, None, str(2**70))
    assert len(a.data_status) <= 64 and len(a.worker) <= 200 and len(a.message) <= TEXT_MAX_CHARS
    assert a.latency_ms is None and a.reason == "ok\\x00" and a.data_message == "\\udcff"
    assert a.anomalies.startswith("odd\\x00; ") and "does not fit 32 bits" in a.anomalies
    assert (m.state, m.session_id, m.session_id_text) == ("sent", None, str(2**70))
