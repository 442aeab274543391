"""Exact under real clocks, stalls and blips: the rules of issue 17, each against real SQLite, PostgreSQL
and Redis (the fault runs with worker processes are in tests/faults/test_liveness.py).

- Every answer is recorded whole, once: writing a batch again (after a blip whose commit had landed)
  adds no attempt row; 429s, STOPs and pauses go in the batch's one transaction; two batches meeting
  a chatbot's first 429 at once both land (the pause is an upsert).
- A success always wins: a late "sent" lands on a row the rescue already failed, expired or retried.
- A row marked calling is taken from a silent worker only once its call can no longer be in flight;
  an unmarked one at once.
- One clock: the database's, measured from a host whose own clock is a minute off; the liveness view
  judges no one after Redis stalled.
- PostgreSQL is bounded: a statement past the send path's statement timeout fails as an outage.
"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError

from oaksend.models.db import is_outage, make_engine
from oaksend.models.records import AttemptRecord, Transition
from oaksend.worker.clock import DatabaseClock, utcnow
from oaksend.worker.delivery.heartbeat import LivenessView, beat
from oaksend.worker.keys import Keys
from oaksend.worker.message.validation import SendRequest
from tests.support import CHATBOT, private_redis_server

WORKER = "host-b:4321"


def phones(n: int, block: int) -> list[str]:
    return [f"+1415{800 + block:03d}{i:04d}" for i in range(n)]


def claimed(outbox: Any, producer: Any, n: int, block: int, *, mark: bool = True) -> tuple[str, list[Any]]:
    producer.send_many([SendRequest(CHATBOT, p, "exact") for p in phones(n, block)])
    now = utcnow()
    token, ids = outbox.lease_due(CHATBOT, now, n, now + timedelta(seconds=30))
    works, _ = outbox.claim_group(ids, token, now, now + timedelta(seconds=300), WORKER)
    if mark:
        outbox.mark_calling(ids, token, utcnow())
    return token, works


def answer(number: int, *, state: str = "sent", pause_s: float | None = None,
           suppress: bool = False) -> tuple[AttemptRecord, Transition]:
    now = utcnow()
    record = AttemptRecord(number=number, started_at=now, latency_ms=3.0, classification=state, reason=state,
                           http_status=200, worker=WORKER, request_id=uuid.uuid4().hex)
    change = Transition(state=state, reason=state, outcome=state, sent=state == "sent",
                        pause_until=now + timedelta(seconds=pause_s) if pause_s else None,
                        pause_reason="429" if pause_s else None, suppress_number=suppress)
    return record, change


def attempts_of(outbox: Any, message_id: int) -> list[Any]:
    return list(outbox.history(message_id)[0])


def test_a_batch_recorded_twice_has_one_attempt_row_per_call(outbox: Any, producer: Any) -> None:
    token, works = claimed(outbox, producer, 4, 1)
    batch = [(w, *answer(1, state="sent" if i else "failed", pause_s=30 if i == 1 else None, suppress=i == 2))
             for i, w in enumerate(works)]
    assert outbox.record_group(token, batch, utcnow()) == [True] * 4
    # The commit landed but the worker did not hear it (a blip): the same batch again.
    assert outbox.record_group(token, batch, utcnow()) == [True] * 4
    for w in works:
        assert len(attempts_of(outbox, w.id)) == 1, w.id
    assert [outbox.get(w.id).state for w in works] == ["failed", "sent", "sent", "sent"]
    assert outbox.chatbots([CHATBOT])[CHATBOT].paused_until is not None
    assert works[2].to_phone in outbox.is_suppressed([works[2].to_phone])


def test_a_batch_with_a_429_and_a_stop_is_one_transaction(outbox: Any, producer: Any) -> None:
    token, works = claimed(outbox, producer, 3, 2)
    batch = [(works[0], *answer(1, pause_s=60)), (works[1], *answer(1, suppress=True, state="failed")),
             (works[2], *answer(1, state="sent"))]
    # A request id already taken (by another attempt) makes the batch's insert fail: nothing of it lands.
    clash = (works[2], batch[2][1].__class__(**{**batch[2][1].__dict__, "request_id": batch[0][1].request_id}),
             batch[2][2])
    with pytest.raises(IntegrityError):
        outbox.record_group(token, [batch[0], batch[1], clash], utcnow())
    assert [outbox.get(w.id).state for w in works] == ["sending"] * 3
    assert all(attempts_of(outbox, w.id) == [] for w in works)
    assert CHATBOT not in outbox.chatbots([CHATBOT]), "the batch's pause rolled back with it"
    assert outbox.record_group(token, batch, utcnow()) == [True] * 3
    assert [outbox.get(w.id).state for w in works] == ["sent", "failed", "sent"]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_two_batches_meeting_a_first_429_at_once_both_land(outbox: Any, producer: Any) -> None:
    bot = "c0ffee" + uuid.uuid4().hex[:26]
    producer.send_many([SendRequest(bot, p, "race") for p in phones(8, 3)])
    now = utcnow()
    groups = []
    for _ in range(2):
        token, ids = outbox.lease_due(bot, now, 4, now + timedelta(seconds=30))
        works, _ = outbox.claim_group(ids, token, now, now + timedelta(seconds=300), WORKER)
        outbox.mark_calling(ids, token, utcnow())
        groups.append((token, [(w, *answer(1, pause_s=30 + i)) for i, w in enumerate(works)]))
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def record(token: str, batch: list[Any]) -> None:
        start.wait()
        try:
            outbox.record_group(token, batch, utcnow())
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=record, args=group) for group in groups]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for _, batch in groups:
        for w, _, _ in batch:
            assert outbox.get(w.id).state == "sent" and len(attempts_of(outbox, w.id)) == 1
    assert outbox.chatbots([bot])[bot].paused_until is not None


@pytest.mark.parametrize("became", ["failed", "expired", "pending", "unknown", "cancelled"])
def test_a_late_success_wins_whatever_the_row_became(outbox: Any, producer: Any, became: str) -> None:
    token, works = claimed(outbox, producer, 1, 4)
    work = works[0]
    with outbox.engine.begin() as conn:
        conn.execute(text("UPDATE oaksend_messages SET state = :s, lease_token = NULL WHERE id = :i"),
                     {"s": became, "i": work.id})
    assert outbox.record_group(token, [(work, *answer(1))], utcnow()) == [True]
    assert (outbox.get(work.id).state, len(attempts_of(outbox, work.id))) == ("sent", 1)


def test_a_silent_workers_marked_rows_wait_for_the_call_window(outbox: Any, producer: Any) -> None:
    token, works = claimed(outbox, producer, 2, 5, mark=False)
    outbox.mark_calling([works[0].id], token, utcnow())
    now = utcnow()
    # The worker is silent, but the marked call may still be in flight: only the unmarked row comes back.
    counts = outbox.rescue(now, "retry", "dispatcher", dead_workers=[WORKER],
                           called_before=now - timedelta(seconds=22))
    assert (counts["uncalled"], counts["sending"]) == (1, 0)
    assert outbox.get(works[0].id).state == "sending" and outbox.get(works[1].id).state == "pending"
    assert attempts_of(outbox, works[0].id) == []
    # Past the window: judged, an ambiguous stand-in and (policy retry) due again.
    later = now + timedelta(seconds=23)
    counts = outbox.rescue(later, "retry", "dispatcher", dead_workers=[WORKER],
                           called_before=later - timedelta(seconds=22))
    assert counts["sending"] == 1
    assert [a.reason for a in attempts_of(outbox, works[0].id)] == ["worker_lost"]


def test_the_database_clock_is_measured_from_a_host_a_minute_off(outbox: Any) -> None:
    for skew in (timedelta(seconds=60), timedelta(seconds=-60)):
        clock = DatabaseClock(outbox.database_now, wall=lambda skew=skew: utcnow() + skew)  # type: ignore[misc]
        reading = clock()
        if outbox.engine.dialect.name == "postgresql":
            assert abs((reading - utcnow()).total_seconds()) < 1.0, skew
            assert abs((clock.offset + skew).total_seconds()) < 1.0
        else:  # SQLite: a file on this host, whose clock is the database's
            assert clock.offset == timedelta(0)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_statement_past_the_timeout_fails_as_an_outage(database_url: str) -> None:
    engine = make_engine(database_url, connect_timeout_s=2, statement_timeout_s=0.2)
    try:
        with pytest.raises(OperationalError) as caught, engine.connect() as conn:
            conn.execute(text("SELECT pg_sleep(2)"))
        assert is_outage(caught.value)
    finally:
        engine.dispose()


def test_no_worker_is_judged_after_redis_stalled(tmp_path: Path) -> None:
    keys = Keys(f"t{uuid.uuid4().hex[:6]}")
    with private_redis_server(tmp_path) as url:
        client = redis.Redis.from_url(url)
        staller = redis.Redis.from_url(url)
        view = LivenessView(3.0, keys)
        try:
            for _ in range(4):  # a worker beats every second; the view watches a whole TTL
                beat(client, keys, "w1")
                view.observe(client)
                time.sleep(1.0)
            assert view.dead(["w1"]) == []
            staller.execute_command("DEBUG", "SLEEP", "4.5")  # every beat and read held up for longer than the TTL
            view.observe(client)
            assert view.dead(["w1"]) == [], "a stall of Redis is no death"
            # Silent for a TTL of watched time after the stall: now it is judged.
            for _ in range(4):
                time.sleep(1.0)
                view.observe(client)
            assert view.dead(["w1"]) == ["w1"]
        finally:
            client.close()
            staller.close()
