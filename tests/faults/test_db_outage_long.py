"""PostgreSQL unreachable for 75 s, longer than the dispatch lease: the audit equals the API.

Workers with calls out keep retrying their outcome writes (OAKSEND_RECORD_RETRY_S,
inside the call lease derived from it), the rescue leaves rows of live workers
alone, and rows claimed but not called come back without an attempt. Afterwards
every message's attempt rows are exactly the requests the sandbox saw: no resend
of a sent message, no invented attempt, no two attempts with one number. Run with
`make chaos`.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest

from oaksend.worker.clock import utcnow
from oaksend.worker.validation import SendRequest
from tests.faults.report import summarize
from tests.faults.test_db_outage import outage
from tests.support import CHATBOT, reset_pg, wait_until

pytestmark = pytest.mark.chaos

OUTAGE_S = 75.0


@pytest.fixture
def database_url(pg_database: str) -> str:
    """This test is about PostgreSQL only."""
    from oaksend.worker.migrate import upgrade

    reset_pg(pg_database)
    upgrade(pg_database)
    return pg_database


def test_long_database_outage_keeps_the_audit_equal_to_the_api(make_stack: Any, producer: Any, outbox: Any,
                                                               sandbox: Any) -> None:
    sandbox.configure(latency="uniform:20,400")  # calls are out when the database goes
    outbox.set_limit(CHATBOT, utcnow(), rate_per_s=60, burst=5, segments_per_s=None)
    stack = make_stack(workers=2, concurrency=4, OAKSEND_LEASE_S=5)
    phones = [f"+1415{800 + i // 10000:03d}{i % 10000:04d}" for i in range(1500)]
    started = time.monotonic()
    ids = producer.send_many([SendRequest(CHATBOT, p, "long outage") for p in phones])
    outbox.engine.dispose()
    wait_until(lambda: len(sandbox.requests()) >= 100, 30, what="sending to start")
    killed = outage(OUTAGE_S)
    assert killed > 0  # the outage really cut live connections

    def drained() -> list[Any] | None:
        try:
            counts = outbox.counts()
        except Exception:  # noqa: BLE001 - the pool may still hold a killed connection once
            return None
        if any(counts.get(s, 0) for s in ("pending", "dispatched", "sending")):
            return None
        return [outbox.get(i) for i in ids]

    rows = wait_until(drained, 240, 1.0, "the outbox to drain after the outage")
    records = sandbox.requests()
    summary = summarize("75 s database outage", rows, outbox, records, time.monotonic() - started)
    for name, proc, _ in stack.procs:
        assert proc.poll() is None, f"{name} died during the outage"
    assert summary.lost == 0
    assert Counter(r.state for r in rows) == {"sent": len(ids)}
    per_phone = Counter(r["to_phone_number"] for r in records)
    for row in rows:
        history = outbox.history(row.id)[0]
        assert len(history) == per_phone[row.to_phone], (row.id, per_phone[row.to_phone],
                                                         [a.reason for a in history])
        assert [a.number for a in history] == list(range(1, len(history) + 1))
        assert all(a.reason != "worker_lost" for a in history)
    assert summary.duplicates_at_api == 0  # no sent message was sent again
