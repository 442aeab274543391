"""PostgreSQL unreachable for 20 s: workers and dispatcher survive, reconnect, finish; nothing is lost.

The outage is real: the database refuses new connections (ALLOW_CONNECTIONS false)
and every existing connection is killed with pg_terminate_backend, again and
again, for 20 s. Run with `make chaos`.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from tests.faults.report import summarize
from oaksend.worker.clock import utcnow
from oaksend.worker.message.validation import SendRequest
from tests.support import CHATBOT, PG_ADMIN_URL, PG_DB, reset_pg, wait_until

pytestmark = pytest.mark.chaos

OUTAGE_S = 20.0


@pytest.fixture
def database_url(pg_database: str) -> str:
    """This test is about PostgreSQL only."""
    from oaksend.migrations.runner import upgrade

    reset_pg(pg_database)
    upgrade(pg_database)
    return pg_database


def outage(seconds: float) -> int:
    """Make the test database unreachable for `seconds`; return how many connections were killed."""
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    killed = 0
    try:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{PG_DB}" WITH ALLOW_CONNECTIONS false'))
            try:
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    killed += len(conn.execute(text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :db AND pid <> pg_backend_pid()"), {"db": PG_DB}).all())
                    time.sleep(0.5)
            finally:
                conn.execute(text(f'ALTER DATABASE "{PG_DB}" WITH ALLOW_CONNECTIONS true'))
    finally:
        admin.dispose()
    return killed


def send_through_outage(make_stack: Any, producer: Any, outbox: Any, sandbox: Any, *, seconds: float,
                        latency: str, block: int, name: str, drain_s: float) -> tuple[list[Any], list[Any], Any]:
    """Send 1,500 messages, cut the database for `seconds` mid-run, wait for the outbox to drain.

    Returns the message rows, the requests the sandbox saw and the run's summary; checks that
    the outage really cut live connections and that no process died of it.
    """
    sandbox.configure(latency=latency)
    outbox.set_limit(CHATBOT, utcnow(), rate_per_s=60, burst=5, segments_per_s=None)
    stack = make_stack(workers=2, concurrency=4, OAKSEND_LEASE_S=5)
    phones = [f"+1415{block + i // 10000:03d}{i % 10000:04d}" for i in range(1500)]
    started = time.monotonic()
    ids = producer.send_many([SendRequest(CHATBOT, p, name) for p in phones])
    outbox.engine.dispose()
    wait_until(lambda: len(sandbox.requests()) >= 100, 30, what="sending to start")
    killed = outage(seconds)
    assert killed > 0  # the outage really cut live connections

    def drained() -> list[Any] | None:
        try:
            counts = outbox.counts()
        except Exception:  # noqa: BLE001 - the pool may still hold a killed connection once
            return None
        if any(counts.get(s, 0) for s in ("pending", "dispatched", "sending")):
            return None
        return [outbox.get(i) for i in ids]

    rows = wait_until(drained, drain_s, 1.0, "the outbox to drain after the outage")
    records = sandbox.requests()
    summary = summarize(name, rows, outbox, records, time.monotonic() - started)
    for proc_name, proc, _ in stack.procs:
        assert proc.poll() is None, f"{proc_name} died during the outage"
    return rows, records, summary


def test_database_outage_loses_nothing(make_stack: Any, producer: Any, outbox: Any, sandbox: Any) -> None:
    rows, records, summary = send_through_outage(make_stack, producer, outbox, sandbox, seconds=OUTAGE_S,
                                                 latency="20", block=500, name="database outage", drain_s=180)
    assert summary.lost == 0
    assert Counter(r.state for r in rows)["failed"] == 0
    # No attempt row is lost for a call that was made: each request has its row, or the
    # message's ambiguous stand-in ("worker_lost") when the outcome could not be written.
    per_phone = Counter(r["to_phone_number"] for r in records)
    for row in rows:
        history = outbox.history(row.id)[0]
        made = [a for a in history if a.reason != "worker_lost"]
        assert len(made) <= per_phone[row.to_phone] <= len(history), (row.id, per_phone[row.to_phone], len(history))
        if per_phone[row.to_phone] > 1:
            assert row.ambiguous >= 1
