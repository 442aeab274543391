"""The send path's group statements and the rescue, on real SQLite and PostgreSQL.

Claim, "calling" marker, record per group; the rescue tells "may have called"
(an ambiguous worker_lost attempt) from "certainly did not" (back to pending, no
attempt), and respects max_attempts either way.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from oaksend.models.records import AttemptRecord, Transition
from oaksend.models.tables import SuppressedNumber
from oaksend.worker.clock import utcnow
from oaksend.worker.message.validation import SendRequest
from tests.support import CHATBOT

WORKER = "host-a:1234"


def phones(n: int, block: int = 0) -> list[str]:
    return [f"+1415{700 + block:03d}{i:04d}" for i in range(n)]


def leased(outbox: Any, producer: Any, n: int, block: int = 0) -> tuple[str, list[int]]:
    producer.send_many([SendRequest(CHATBOT, p, "group") for p in phones(n, block)])
    now = utcnow()
    return outbox.lease_due(CHATBOT, now, n, now + timedelta(seconds=30))


def sent(number: int) -> tuple[AttemptRecord, Transition]:
    now = utcnow()
    return (AttemptRecord(number=number, started_at=now, latency_ms=1.0, classification="sent", reason="ok",
                          http_status=200, success=True, code=200, session_id=42, worker=WORKER),
            Transition(state="sent", reason="ok", outcome="sent", session_id=42, sent=True))


def test_claim_mark_record_a_group(outbox: Any, producer: Any) -> None:
    token, ids = leased(outbox, producer, 5)
    now = utcnow()
    works, stopped = outbox.claim_group(ids, token, now, now + timedelta(seconds=60), WORKER)
    assert [w.id for w in works] == ids and stopped == 0
    assert all(outbox.get(i).state == "sending" and outbox.get(i).claimed_by == WORKER for i in ids)
    # A second delivery of the same task claims nothing.
    assert outbox.claim_group(ids, token, now, now + timedelta(seconds=60), WORKER) == ([], 0)
    marked, stopped_ids = outbox.mark_calling(ids[:3], token, utcnow())
    assert marked == ids[:3] and stopped_ids == []
    # Marked once only: a second mark of the same rows finds nothing.
    assert outbox.mark_calling(ids[:3], token, utcnow()) == ([], [])
    mine = outbox.record_group(token, [(w, *sent(1)) for w in works[:3]], utcnow())
    assert mine == [True, True, True]
    for i in ids[:3]:
        row = outbox.get(i)
        assert (row.state, row.attempts, row.claimed_by, row.calling_at) == ("sent", 1, None, None)
        assert [a.reason for a in outbox.history(i)[0]] == ["ok"]
    # The unmarked two go back without an attempt.
    assert outbox.give_back_group(ids[3:], token, utcnow(), None, "throttled") == 2
    for i in ids[3:]:
        row = outbox.get(i)
        assert (row.state, row.attempts) == ("pending", 0) and outbox.history(i)[0] == []


def test_rescue_of_a_dead_worker_tells_called_from_not_called(outbox: Any, producer: Any) -> None:
    token, ids = leased(outbox, producer, 4, block=1)
    now = utcnow()
    outbox.claim_group(ids, token, now, now + timedelta(seconds=300), WORKER)
    outbox.mark_calling(ids[:2], token, utcnow())
    # Alive (not named dead) and within its lease: untouched.
    assert outbox.rescue(utcnow(), "retry", "dispatcher", max_attempts=5) == {
        "dispatched": 0, "sending": 0, "uncalled": 0}
    counts = outbox.rescue(utcnow(), "retry", "dispatcher", max_attempts=5, dead_workers=[WORKER])
    assert counts == {"dispatched": 0, "sending": 2, "uncalled": 2}
    for i in ids[:2]:
        row = outbox.get(i)
        assert (row.state, row.attempts, row.ambiguous, row.failures) == ("pending", 1, 1, 1)
        assert [(a.number, a.reason, a.classification) for a in outbox.history(i)[0]] == [
            (1, "worker_lost", "ambiguous")]
    for i in ids[2:]:
        row = outbox.get(i)
        assert (row.state, row.attempts, row.lost) == ("pending", 0, 1)
        assert outbox.history(i)[0] == []  # the API was certainly not called: nothing invented


@pytest.mark.parametrize("policy", ["retry", "hold"])
def test_rescue_respects_max_attempts(policy: str, outbox: Any, producer: Any) -> None:
    """A message that keeps killing its workers ends instead of looping."""
    token, ids = leased(outbox, producer, 2, block=2 if policy == "retry" else 3)
    called, uncalled = ids
    for round_ in range(3):
        now = utcnow()
        if round_:
            token, again = outbox.lease_due(CHATBOT, now, 2, now + timedelta(seconds=30))
            assert sorted(again) == sorted(ids)
        outbox.claim_group(ids, token, now, now + timedelta(seconds=300), WORKER)
        outbox.mark_calling([called], token, utcnow())
        outbox.rescue(utcnow(), policy, "dispatcher", max_attempts=3, max_lost=3, dead_workers=[WORKER])
        if policy == "hold":
            break
    row = outbox.get(called)
    if policy == "hold":
        assert (row.state, row.attempts) == ("unknown", 1)
        return
    assert (row.state, row.attempts, row.failures) == ("unknown", 3, 3)  # it may have been sent
    assert "attempts exhausted (3/3)" in row.last_reason
    row = outbox.get(uncalled)
    assert (row.state, row.attempts, row.lost) == ("failed", 0, 3)
    assert outbox.history(uncalled)[0] == []


def test_a_suppressed_number_is_stopped_at_claim_and_at_the_call(outbox: Any, producer: Any) -> None:
    token, ids = leased(outbox, producer, 3, block=4)
    numbers = phones(3, 4)
    now = utcnow()
    with outbox.session() as s:
        s.add(SuppressedNumber(to_phone=numbers[0], reason="twilio_21610", at=now))
    works, stopped = outbox.claim_group(ids, token, now, now + timedelta(seconds=60), WORKER)
    assert stopped == 1 and [w.id for w in works] == ids[1:]
    # Suppressed after the claim (a STOP answered elsewhere): stopped at the call marker.
    with outbox.session() as s:
        s.add(SuppressedNumber(to_phone=numbers[1], reason="twilio_21610", at=now))
    marked, stopped_ids = outbox.mark_calling(ids[1:], token, utcnow())
    assert marked == [ids[2]] and stopped_ids == [ids[1]]
    for i in ids[:2]:
        row = outbox.get(i)
        assert row.state == "failed" and "suppressed" in row.last_reason and outbox.history(i)[0] == []


def test_a_late_outcome_replaces_the_rescue_stand_in(outbox: Any, producer: Any) -> None:
    """Rescued while its call was still out (a worker judged dead wrongly): the real outcome,
    written later, takes the stand-in's place: one call, one attempt row."""
    token, ids = leased(outbox, producer, 1, block=5)
    now = utcnow()
    works, _ = outbox.claim_group(ids, token, now, now + timedelta(seconds=300), WORKER)
    outbox.mark_calling(ids, token, utcnow())
    outbox.rescue(utcnow(), "retry", "dispatcher", max_attempts=5, dead_workers=[WORKER])
    assert outbox.record_group(token, [(works[0], *sent(1))], utcnow()) == [True]
    row = outbox.get(ids[0])
    assert (row.state, row.attempts) == ("sent", 1)
    assert [(a.number, a.reason) for a in outbox.history(ids[0])[0]] == [(1, "ok")]


def test_a_stopped_worker_s_unstarted_tasks_are_taken_back(outbox: Any, producer: Any) -> None:
    """Dispatched rows published before a worker stopped beating come back at once, not after their lease;
    a task that arrives later for them claims nothing, and claimed rows are not touched by this."""
    token, ids = leased(outbox, producer, 4, block=5)
    now = utcnow()
    outbox.claim_group(ids[:1], token, now, now + timedelta(seconds=300), WORKER)
    later_token, later = leased(outbox, producer, 1, block=6)  # published after the moment named below
    cutoff = outbox.get(later[0]).updated_at
    counts = outbox.rescue(cutoff, "retry", "dispatcher", max_attempts=5, unstarted_before=cutoff)
    assert counts == {"dispatched": 0, "sending": 0, "uncalled": 0, "unstarted": 3}
    for i in ids[1:]:
        row = outbox.get(i)
        assert (row.state, row.ready, row.lease_token, row.attempts, row.lost) == ("pending", True, None, 0, 0)
    assert outbox.get(ids[0]).state == "sending"  # claimed: its worker is alive or the heartbeat rescue takes it
    assert outbox.get(later[0]).state == "dispatched"
    assert outbox.claim_group(ids[1:], token, utcnow(), utcnow() + timedelta(seconds=60), WORKER) == ([], 0)
    assert outbox.rescue(utcnow(), "retry", "dispatcher", max_attempts=5)["dispatched"] == 0  # nothing else


def test_rescued_messages_keep_their_place_in_line(outbox: Any, producer: Any) -> None:
    """A message taken back from a dead worker goes out before those that became due after it."""
    token, ids = leased(outbox, producer, 2, block=7)
    now = utcnow()
    outbox.claim_group(ids, token, now, now + timedelta(seconds=300), WORKER)
    outbox.mark_calling(ids[:1], token, utcnow())
    newer = producer.send_many([SendRequest(CHATBOT, p, "newer") for p in phones(3, block=8)])
    outbox.rescue(utcnow(), "retry", "dispatcher", max_attempts=5, dead_workers=[WORKER])
    _, order = outbox.lease_due(CHATBOT, utcnow(), 2, utcnow() + timedelta(seconds=30))
    assert order == ids  # the called (ambiguous, retried) and the uncalled one, before the newer three
    assert not set(order) & set(newer)
