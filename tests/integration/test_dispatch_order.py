"""The dispatcher's repository on SQLite and PostgreSQL: staging, due chatbots, priority order, the cursor."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import update

from oaksend.models.tables import Message
from oaksend.worker.clock import utcnow
from oaksend.worker.message.validation import SendRequest

BOT = "order0000000000000000000000000001"


def phone(i: int) -> str:
    return f"+1415300{i:04d}"


def lease_one(outbox: Any, sn: str, now: datetime) -> list[int]:
    return outbox.lease_due(sn, now, 1, now + timedelta(seconds=30))[1]


def test_a_chatbots_due_messages_are_leased_most_urgent_first_then_earliest(outbox: Any, producer: Any) -> None:
    now = utcnow()
    earlier = now - timedelta(minutes=5)
    bulk_old = producer.send(BOT, phone(1), "bulk, due first", send_at=earlier, priority="bulk")
    normal_late = producer.send(BOT, phone(2), "normal, due later", priority="normal")
    normal_old = producer.send(BOT, phone(3), "normal, due first", send_at=earlier)
    high = producer.send(BOT, phone(4), "high", priority="high")
    bulk_late = producer.send(BOT, phone(5), "bulk, due later", priority="bulk")
    later = utcnow()
    order = [lease_one(outbox, BOT, later) for _ in range(6)]
    assert order == [[high], [normal_old], [normal_late], [bulk_old], [bulk_late], []]
    assert [outbox.get(i).priority for i in (high, normal_old, bulk_old)] == [0, 1, 2]


def test_a_future_message_is_staged_once_when_its_time_comes(outbox: Any, producer: Any) -> None:
    now = utcnow()
    mid = producer.send(BOT, phone(1), "tomorrow", send_at=now + timedelta(days=1))
    assert outbox.due_chatbots() == []
    assert lease_one(outbox, BOT, now) == []
    assert outbox.next_due_at(after=now) == now + timedelta(days=1)
    assert outbox.stage_due(now, 100) == 0  # its time has not come
    tomorrow = now + timedelta(days=1, seconds=1)
    assert outbox.stage_due(tomorrow, 100) == 1
    assert outbox.stage_due(tomorrow, 100) == 0  # staged once
    assert outbox.next_due_at(after=now) is None
    assert outbox.due_chatbots() == [BOT]
    assert lease_one(outbox, BOT, tomorrow) == [mid]
    assert outbox.get(mid).ready is False  # the lease clears it


def test_a_message_made_pending_again_by_other_code_is_staged_by_the_next_pass(outbox: Any, producer: Any) -> None:
    mid = producer.send(BOT, phone(1), "again")
    assert lease_one(outbox, BOT, utcnow()) == [mid]
    # Code that knows nothing of `ready` hands the message back, due now.
    with outbox.session() as s:
        s.execute(update(Message).where(Message.id == mid).values(state="pending", lease_token=None,
                                                                    lease_until=None))
    assert outbox.due_chatbots() == []
    assert outbox.stage_due(utcnow(), 100) == 1
    assert outbox.due_chatbots() == [BOT]
    assert lease_one(outbox, BOT, utcnow()) == [mid]


def test_a_publish_failure_or_a_lost_lease_makes_the_message_ready_again(outbox: Any, producer: Any) -> None:
    first, second = producer.send_many([SendRequest(BOT, phone(1), "one"), SendRequest(BOT, phone(2), "two")])
    now = utcnow()
    token, ids = outbox.lease_due(BOT, now, 2, now - timedelta(seconds=1))  # a lease that has already run out
    assert ids == [first, second]
    assert outbox.release([first], token, now) == 1
    assert outbox.rescue(utcnow(), "retry", worker="test")["dispatched"] == 1
    assert outbox.due_chatbots() == [BOT]
    assert sorted(outbox.lease_due(BOT, utcnow(), 5, utcnow() + timedelta(seconds=30))[1]) == [first, second]


def test_due_chatbots_are_served_in_slices_after_a_cursor(outbox: Any, producer: Any) -> None:
    bots = [f"slice{i:04d}" for i in range(7)]
    producer.send_many([SendRequest(sn, phone(i), "hi") for i, sn in enumerate(bots)])
    producer.send(bots[3], phone(50), "a second message of the same chatbot")
    assert outbox.due_chatbots() == bots  # each once
    assert outbox.due_chatbots(limit=3) == bots[:3]
    assert outbox.due_chatbots(after=bots[2], limit=3) == bots[3:6]
    assert outbox.due_chatbots(after=bots[5], limit=3) == bots[6:]
    assert outbox.due_chatbots(after=bots[6]) == []
    # A pass's survey wraps round to the start when the slice after the cursor is not full.
    now = utcnow()
    assert outbox.survey(now, stage_limit=10, after="", limit=3).due == bots[:3]
    assert outbox.survey(now, stage_limit=10, after="", limit=3).full
    wrapped = outbox.survey(now, stage_limit=10, after=bots[5], limit=3)
    assert wrapped.due == [bots[6], bots[0], bots[1]] and not wrapped.full
    assert outbox.survey(now, stage_limit=10, after=bots[1], limit=50).due == bots[2:] + bots[:2]


def test_inflight_counts_only_dispatched_messages(outbox: Any, producer: Any) -> None:
    producer.send_many([SendRequest(BOT, phone(i), "hi") for i in range(4)])
    now = utcnow()
    _token, ids = outbox.lease_due(BOT, now, 3, now + timedelta(seconds=30))
    assert outbox.inflight_counts() == {BOT: 3}
    assert outbox.claim(ids[0], _token, now, now + timedelta(seconds=30))
    assert outbox.inflight_counts() == {BOT: 2}


def test_a_full_broker_makes_the_dispatcher_wait_not_spin(settings: Any, outbox: Any, producer: Any) -> None:
    import redis

    from oaksend.worker.delivery.app import make_app
    from oaksend.worker.delivery.dispatcher import Dispatcher

    tuned = settings.model_copy(update={"max_inflight": 3, "queue_name": f"oaksend-test-capped-{BOT}"})
    outbox.set_limit(BOT, utcnow(), rate_per_s=100, burst=10, segments_per_s=None)
    producer.send_many([SendRequest(BOT, phone(i), "hi") for i in range(10)])
    client = redis.Redis.from_url(settings.redis_url)
    dispatcher = Dispatcher(tuned, outbox, client, make_app(tuned))
    try:
        first = dispatcher.run_pass()
        assert first.dispatched == 3 and first.capped
        # Nothing known yet about how fast workers drain the broker: the longest wait, not 50 ms.
        assert dispatcher.sleep_for(first) == min(tuned.dispatch_interval_s, tuned.dispatch_lookahead_s / 4)
        second = dispatcher.run_pass()  # no worker took anything: still full
        assert second.dispatched == 0 and second.capped
        assert dispatcher.sleep_for(second) >= 0.01
    finally:
        client.delete(tuned.queue_name)
        client.close()


def test_a_ready_message_moved_later_by_other_code_waits_again(outbox: Any, producer: Any) -> None:
    mid = producer.send(BOT, phone(1), "moved")
    later = utcnow() + timedelta(hours=1)
    # Code that knows nothing of `ready` reschedules the message (e.g. its appointment moved).
    with outbox.session() as s:
        s.execute(update(Message).where(Message.id == mid).values(next_attempt_at=later))
    assert outbox.due_chatbots() == [BOT]  # still listed, once
    assert lease_one(outbox, BOT, utcnow()) == []  # nothing due: it goes back to waiting
    assert outbox.due_chatbots() == []
    assert outbox.next_due_at(after=utcnow()) == later
    assert outbox.stage_due(later, 10) == 1
    assert lease_one(outbox, BOT, later) == [mid]


def test_campaign_messages_are_bulk_and_wait_behind_a_confirmation(settings: Any, outbox: Any, producer: Any) -> None:
    from tests.integration.test_campaigns import messages, people, spec

    from oaksend.worker.campaigns.service import Campaigns

    service = Campaigns(settings, outbox=outbox)
    try:
        created = service.create(spec(), people(utcnow()))
    finally:
        service.redis.close()
    reminders = messages(outbox, created.id)
    assert reminders and {m.priority for m in reminders} == {2}
    # Due at once: the confirmation, sent later, is still leased first.
    sn = reminders[0].serial_number
    with outbox.session() as s:
        s.execute(update(Message).where(Message.campaign_id == created.id).values(next_attempt_at=utcnow()))
    confirmation = producer.send(sn, phone(9), "Your appointment is confirmed")
    now = utcnow()
    assert outbox.stage_due(now, 100) >= len(reminders)
    assert lease_one(outbox, sn, now) == [confirmation]
