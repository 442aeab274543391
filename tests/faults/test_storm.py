"""A fault storm from the API over 2,000 messages: every message ends terminal, every call is audited.

30% 5xx, 10% read hangs, 5% malformed bodies, 5% connection resets, and bursts of
429. Run with `make chaos`.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest

from tests.faults.report import delivered, summarize
from tests.integration.test_secrets import database_dump, redis_dump
from tests.support import API_KEY, wait_until
from oaksend.worker.clock import utcnow
from oaksend.worker.message.validation import SendRequest

pytestmark = pytest.mark.chaos

BOTS = [f"{c * 4}000000000000000000000000000{i}" for i, c in enumerate("abcd", start=1)]
N = 2000


def phone(i: int) -> str:
    return f"+1415{400 + i // 10000:03d}{i % 10000:04d}"


def test_fault_storm(make_stack: Any, producer: Any, outbox: Any, sandbox: Any) -> None:
    sandbox.configure(p_500=0.075, p_502=0.075, p_503=0.075, p_504=0.075, p_hang=0.10, hang_s=2,
                      p_malformed=0.05, p_reset=0.05, burst_429_every=4, burst_429_for=0.3, retry_after=0)
    now = utcnow()
    for bot in BOTS:
        outbox.set_limit(bot, now, rate_per_s=500, burst=50, segments_per_s=None)
    stack = make_stack(workers=2, concurrency=8, OAKSEND_MAX_ATTEMPTS=25, OAKSEND_READ_TIMEOUT_S=0.5,
                       OAKSEND_RETRY_AFTER_CAP_S=0.3)
    started = time.monotonic()
    ids: list[int] = []
    for chunk in range(0, N, 500):
        ids += producer.send_many([SendRequest(BOTS[i % 4], phone(i), f"storm {i}") for i in range(chunk, chunk + 500)])

    def drained() -> list[Any] | None:
        counts = outbox.counts()
        if any(counts.get(s, 0) for s in ("pending", "dispatched", "sending")):
            return None
        return [outbox.get(i) for i in ids]

    rows = wait_until(drained, 240, 1.0, "the storm to drain")
    drain_s = time.monotonic() - started
    records = sandbox.requests()
    summary = summarize(f"fault storm ({outbox.engine.dialect.name})", rows, outbox, records, drain_s)

    assert summary.lost == 0
    assert summary.states["sent"] + summary.states["unknown"] + summary.states["failed"] == N
    # One to one: every request the API recorded has its attempt row, and no attempt was invented.
    per_phone = Counter(r["to_phone_number"] for r in records)
    for row in rows:
        history = outbox.history(row.id)[0]
        assert len(history) == per_phone[row.to_phone], (row.id, [a.reason for a in history])
        recs = sorted((r for r in records if r["to_phone_number"] == row.to_phone), key=lambda r: r["seq"])
        for attempt, rec in zip(history, recs):
            if isinstance(rec["status"], int) and attempt.http_status is not None:
                assert attempt.http_status == rec["status"]
            if rec["status"] in ("hang", "reset"):
                assert attempt.http_status is None and attempt.classification == "ambiguous"
    # Duplicates at the API are exactly the deliveries that followed an ambiguous, delivered attempt.
    delivered_then_retried = 0
    for row in rows:
        history = outbox.history(row.id)[0]
        recs = sorted((r for r in records if r["to_phone_number"] == row.to_phone), key=lambda r: r["seq"])
        for attempt, rec, nxt in zip(history, recs, history[1:]):
            if attempt.classification == "ambiguous" and delivered(rec):
                delivered_then_retried += 1
        if row.ambiguous == 0:
            assert sum(1 for r in recs if delivered(r)) <= 1
    assert summary.duplicates_at_api == delivered_then_retried
    assert summary.duplicates_at_api <= summary.ambiguous_retried
    # The canary key is nowhere, whatever the faults did.
    assert API_KEY.encode() not in redis_dump()
    assert API_KEY not in database_dump(outbox)
    assert API_KEY not in stack.logs() + sandbox.log_path.read_text()
