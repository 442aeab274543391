"""PostgreSQL unreachable for 75 s, longer than the dispatch lease: the audit equals the API.

Workers with calls out keep retrying their outcome writes (OAKSEND_RECORD_RETRY_S,
inside the call lease derived from it), the rescue leaves rows of live workers
alone, and rows claimed but not called come back without an attempt. Afterwards
every message's attempt rows are exactly the requests the sandbox saw: no resend
of a sent message, no invented attempt, no two attempts with one number. Run with
`make chaos`.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

# The PostgreSQL-only outbox fixture and the outage run are the 20 s test's.
from tests.faults.test_db_outage import database_url, send_through_outage  # noqa: F401

pytestmark = pytest.mark.chaos

OUTAGE_S = 75.0


def test_long_database_outage_keeps_the_audit_equal_to_the_api(make_stack: Any, producer: Any, outbox: Any,
                                                               sandbox: Any) -> None:
    # Latency spread out, so that calls are out when the database goes.
    rows, records, summary = send_through_outage(make_stack, producer, outbox, sandbox, seconds=OUTAGE_S,
                                                 latency="uniform:20,400", block=800, name="75 s database outage",
                                                 drain_s=240)
    assert summary.lost == 0
    assert Counter(r.state for r in rows) == {"sent": len(rows)}  # one row per message enqueued
    per_phone = Counter(r["to_phone_number"] for r in records)
    for row in rows:
        history = outbox.history(row.id)[0]
        assert len(history) == per_phone[row.to_phone], (row.id, per_phone[row.to_phone],
                                                         [a.reason for a in history])
        assert [a.number for a in history] == list(range(1, len(history) + 1))
        assert all(a.reason != "worker_lost" for a in history)
    assert summary.duplicates_at_api == 0  # no sent message was sent again
