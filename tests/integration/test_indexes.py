"""Every hot query of the dispatcher uses an index, over a million messages on PostgreSQL.

The outbox is filled the way a reminder business fills it: 50,000 chatbots holding
850,000 messages due tomorrow, one chatbot with a 100,000-message backlog that is due
now, sent history, and a thousand messages in flight. Each repository call the
dispatcher makes per pass runs for real; its statements are captured and run again
under EXPLAIN (ANALYZE, BUFFERS) in a transaction that is rolled back. The test
asserts that no plan reads the messages table sequentially, that an index of
oaksend is used, and that each statement touches a few hundred pages at most:
nothing per waiting chatbot, nothing per message of the backlog.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, text

from oaksend.models.db import make_engine
from oaksend.models.repository import Outbox
from oaksend.worker.clock import utcnow
from tests.support import reset_pg

WAITING_CHATBOTS = 50_000
WAITING_MESSAGES = 850_000
BACKLOG = 100_000
SENT = 48_000
IN_FLIGHT = 1_000  # dispatched, and as many sending
DUE_NOT_STAGED = 1_000
BACKLOG_BOT = "backlog-bot"
FRESH_BOT = "fresh-bot"
#: A sequential scan of the table reads tens of thousands of pages; an indexed probe a handful.
MAX_PAGES = 600
#: A message named by id (a list the repository read first) costs its primary-key probe and heap
#: page; one written also an entry in each index it belongs to.
PAGES_PER_ROW = 10

FILL = [
    # 850,000 reminders due tomorrow, spread over 50,000 chatbots.
    f"""
    INSERT INTO oaksend_messages (serial_number, to_phone, body, segments, state, priority, ready, attempts,
        failures, ambiguous, next_attempt_at, deadline_at, created_at, updated_at)
    SELECT 'bot-' || lpad((g % {WAITING_CHATBOTS})::text, 6, '0'), '+1415' || lpad(g::text, 7, '0'),
           'Reminder: tomorrow at 10:00', 1, 'pending', 2, false, 0, 0, 0,
           :now + interval '1 day' + (g % 3600) * interval '1 second',
           :now + interval '1 day 3 hours', :now, :now
    FROM generate_series(1, {WAITING_MESSAGES}) g
    """,
    # One chatbot's backlog, due now and ready, held back by its rate limit.
    f"""
    INSERT INTO oaksend_messages (serial_number, to_phone, body, segments, state, priority, ready, attempts,
        failures, ambiguous, next_attempt_at, deadline_at, created_at, updated_at)
    SELECT '{BACKLOG_BOT}', '+1416' || lpad(g::text, 7, '0'), 'Campaign', 1, 'pending', 2, true, 0, 0, 0,
           :now - interval '1 hour' + g * interval '1 millisecond', :now + interval '2 hours', :now, :now
    FROM generate_series(1, {BACKLOG}) g
    """,
    # History.
    f"""
    INSERT INTO oaksend_messages (serial_number, to_phone, body, segments, state, priority, ready, attempts,
        failures, ambiguous, next_attempt_at, deadline_at, created_at, updated_at, sent_at, session_id)
    SELECT 'bot-' || lpad((g % {WAITING_CHATBOTS})::text, 6, '0'), '+1417' || lpad(g::text, 7, '0'), 'Sent', 1,
           'sent', 1, false, 1, 0, 0, :now - interval '1 day', :now - interval '21 hours',
           :now - interval '1 day', :now - interval '1 day', :now - interval '1 day', g
    FROM generate_series(1, {SENT}) g
    """,
    # In flight: dispatched (not yet claimed) and sending, on 100 chatbots.
    f"""
    INSERT INTO oaksend_messages (serial_number, to_phone, body, segments, state, priority, ready, attempts,
        failures, ambiguous, next_attempt_at, deadline_at, created_at, updated_at, lease_token, lease_until)
    SELECT 'bot-' || lpad((g % 100)::text, 6, '0'), '+1418' || lpad(g::text, 7, '0'), 'In flight', 1,
           CASE WHEN g % 2 = 0 THEN 'dispatched' ELSE 'sending' END, 1, false, 0, 0, 0, :now,
           :now + interval '3 hours', :now, :now, 'token-' || (g % 50), :now + interval '30 seconds'
    FROM generate_series(1, {2 * IN_FLIGHT}) g
    """,
    # Due a moment ago and not staged yet (written by code that does not set `ready`).
    f"""
    INSERT INTO oaksend_messages (serial_number, to_phone, body, segments, state, priority, ready, attempts,
        failures, ambiguous, next_attempt_at, deadline_at, created_at, updated_at)
    SELECT 'bot-' || lpad((g * 7 % {WAITING_CHATBOTS})::text, 6, '0'), '+1419' || lpad(g::text, 7, '0'), 'Due', 1,
           'pending', 1, false, 0, 0, 0, :now - interval '1 second', :now + interval '3 hours', :now, :now
    FROM generate_series(1, {DUE_NOT_STAGED}) g
    """,
    # A new message to another chatbot, due now.
    f"""
    INSERT INTO oaksend_messages (serial_number, to_phone, body, segments, state, priority, ready, attempts,
        failures, ambiguous, next_attempt_at, deadline_at, created_at, updated_at)
    VALUES ('{FRESH_BOT}', '+14155550100', 'Your code is 1234', 1, 'pending', 1, true, 0, 0, 0, :now,
            :now + interval '3 hours', :now, :now)
    """,
]


@pytest.fixture(scope="module")
def million(pg_database: str) -> Iterator[tuple[Outbox, datetime]]:
    """A migrated PostgreSQL outbox holding a little over a million messages, analyzed."""
    from oaksend.migrations.runner import upgrade

    reset_pg(pg_database)
    upgrade(pg_database)
    engine = make_engine(pg_database)
    now = utcnow()
    with engine.begin() as conn:
        for statement in FILL:
            conn.execute(text(statement), {"now": now})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE oaksend_messages"))
    outbox = Outbox(engine)
    yield outbox, now
    engine.dispose()
    reset_pg(pg_database)


def captured(outbox: Outbox, call: Callable[[], Any]) -> list[tuple[str, Any]]:
    """Run `call` for real and return the statements it sent to the database, with their parameters."""
    seen: list[tuple[str, Any]] = []

    def listen(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        if statement.lstrip().upper().startswith(("SELECT", "UPDATE", "WITH", "INSERT", "DELETE")):
            seen.append((statement, parameters))

    event.listen(outbox.engine, "before_cursor_execute", listen)
    try:
        call()
    finally:
        event.remove(outbox.engine, "before_cursor_execute", listen)
    return seen


def explain(outbox: Outbox, statement: str, parameters: Any) -> dict[str, Any]:
    """EXPLAIN (ANALYZE, BUFFERS) one statement in a transaction that is rolled back."""
    raw = outbox.engine.raw_connection()
    try:
        with raw.cursor() as cur:
            cur.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + statement, parameters)
            row = cur.fetchone()
        raw.rollback()
    finally:
        raw.close()
    plan = row[0]
    return (json.loads(plan) if isinstance(plan, str) else plan)[0]


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


def check(outbox: Outbox, call: Callable[[], Any], index: str, found: Callable[[], int] = lambda: 0) -> list[dict[str, Any]]:
    """Every statement of `call` avoids a sequential scan of the messages and stays within MAX_PAGES
    (plus a few per message it names by id, and per item `found`); `index` is among the indexes used."""
    statements = captured(outbox, call)
    allowance = MAX_PAGES + PAGES_PER_ROW * found()
    assert statements, "the call ran no statement"
    plans = []
    used: set[str] = set()
    for statement, parameters in statements:
        root = explain(outbox, statement, parameters)
        plan = root["Plan"]
        summary = [(n["Node Type"], n.get("Index Name"), n.get("Relation Name")) for n in nodes(plan)]
        assert not any(t == "Seq Scan" and r == "oaksend_messages" for t, _i, r in summary), (statement, summary)
        pages = plan.get("Shared Hit Blocks", 0) + plan.get("Shared Read Blocks", 0)
        by_id = sum(1 for name in (parameters or {}) if name.startswith("id_"))
        assert pages <= allowance + PAGES_PER_ROW * by_id, (statement, pages, by_id, summary)
        used |= {i for _t, i, _r in summary if i}
        plans.append(root)
    assert index in used, (index, used)
    return plans


def test_staging_reads_only_the_messages_whose_time_has_come(million: tuple[Outbox, datetime]) -> None:
    outbox, now = million
    staged: list[int] = []
    check(outbox, lambda: staged.append(outbox.stage_due(now, 5000)), "ix_oaksend_messages_waiting")
    assert staged == [DUE_NOT_STAGED]  # and none of the 850,000 due tomorrow


def test_due_chatbots_costs_one_probe_per_chatbot_with_due_work(million: tuple[Outbox, datetime]) -> None:
    outbox, _now = million
    found: list[list[str]] = []
    # A few pages per chatbot found, whatever the number of messages each holds.
    check(outbox, lambda: found.append(outbox.due_chatbots(limit=5000)), "ix_oaksend_messages_ready",
          lambda: len(found[0]))
    # The backlog chatbot once (not its 100,000 messages), the fresh one, and those just staged.
    assert BACKLOG_BOT in found[0] and FRESH_BOT in found[0]
    assert len(found[0]) <= 2 + DUE_NOT_STAGED


def test_lease_takes_the_most_urgent_without_scanning_the_backlog(million: tuple[Outbox, datetime]) -> None:
    outbox, now = million
    got: list[tuple[str, list[int]]] = []
    check(outbox, lambda: got.append(outbox.lease_due(BACKLOG_BOT, now, 10, now + timedelta(seconds=30))),
          "ix_oaksend_messages_ready")
    assert len(got[0][1]) == 10


def test_a_pass_survey_runs_the_same_indexed_queries(million: tuple[Outbox, datetime]) -> None:
    outbox, now = million
    got: list[Any] = []
    check(outbox, lambda: got.append(outbox.survey(now, stage_limit=5000, after="bot-", limit=500)),
          "ix_oaksend_messages_ready", lambda: len(got[0].due))
    assert got[0].full and len(got[0].due) == 500 and sum(got[0].inflight.values()) >= IN_FLIGHT


def test_next_due_is_one_probe(million: tuple[Outbox, datetime]) -> None:
    outbox, now = million
    got: list[Any] = []
    check(outbox, lambda: got.append(outbox.next_due_at(after=now)), "ix_oaksend_messages_waiting")
    assert got[0] is not None and got[0] > now + timedelta(hours=23)


def test_inflight_counts_read_only_leased_rows(million: tuple[Outbox, datetime]) -> None:
    outbox, _now = million
    got: list[dict[str, int]] = []
    check(outbox, lambda: got.append(outbox.inflight_counts()), "ix_oaksend_messages_leased")
    assert sum(got[0].values()) >= IN_FLIGHT


def test_rescue_reads_only_leased_rows(million: tuple[Outbox, datetime]) -> None:
    outbox, now = million
    check(outbox, lambda: outbox.rescue(now, "retry", worker="test"), "ix_oaksend_messages_leased")


def test_expiry_reads_only_pending_rows_past_their_deadline(million: tuple[Outbox, datetime]) -> None:
    outbox, now = million
    check(outbox, lambda: outbox.expire_overdue(now), "ix_oaksend_messages_deadline")


def test_purge_reads_only_finished_messages(million: tuple[Outbox, datetime]) -> None:
    outbox, now = million
    check(outbox, lambda: outbox.purge_batch(now - timedelta(days=365), False, 500, now), "ix_oaksend_messages_finished")


def test_on_sqlite_too_no_hot_query_scans_the_messages(tmp_path: Any) -> None:
    """SQLite matches a partial index by the text of its WHERE: the queries repeat it word for word."""
    from oaksend.migrations.runner import upgrade

    url = f"sqlite:///{tmp_path}/plans.db"
    upgrade(url)
    outbox = Outbox(make_engine(url))
    now = utcnow()
    try:
        calls: list[Callable[[], Any]] = [
            lambda: outbox.stage_due(now, 10), lambda: outbox.due_chatbots(), lambda: outbox.inflight_counts(),
            lambda: outbox.next_due_at(after=now), lambda: outbox.lease_due(BACKLOG_BOT, now, 5, now),
            lambda: outbox.rescue(now, "retry", worker="test"), lambda: outbox.expire_overdue(now),
        ]
        raw = outbox.engine.raw_connection()
        try:
            for call in calls:
                for statement, parameters in captured(outbox, call):
                    plan = [row[-1] for row in raw.cursor().execute("EXPLAIN QUERY PLAN " + statement, parameters)]
                    touching = [step for step in plan if "oaksend_messages" in step]
                    assert touching and all(" USING " in step and "ix_oaksend_messages_" in step
                                            for step in touching), (statement, plan)
        finally:
            raw.close()
    finally:
        outbox.engine.dispose()
