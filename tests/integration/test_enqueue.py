"""Producer on a real outbox (SQLite and PostgreSQL) and a real Redis: rows, idempotency, the caller's transaction."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session

from oaksend.models.repository import Outbox
from tests.support import CHATBOT, private_redis_server
from oaksend.worker.enqueue import WAKE_KEY, Producer
from oaksend.worker.settings import Settings
from oaksend.errors import IdempotencyConflict, ValidationError
from oaksend.worker.validation import SendRequest

PHONE = "+14155550123"
OTHER = "+14155550124"


@pytest.fixture(scope="module")
def wake_redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis server of this module's own for the wake-up list.

    Redis db 15 is shared with the dispatchers of other test runs, whose BLPOP would
    consume `oaksend:wake` under our feet; here nobody else reads it.
    """
    with private_redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture
def producer(settings: Settings, outbox: Outbox, wake_redis_url: str) -> Iterator[Producer]:
    """conftest's producer, with its wake-ups going to this module's own Redis."""
    p = Producer(settings, outbox=outbox, redis_client=redis.Redis.from_url(wake_redis_url))
    yield p
    p.redis.close()


@pytest.fixture
def wake_client(wake_redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(wake_redis_url)
    c.delete(WAKE_KEY)
    yield c
    c.close()


@pytest.fixture
def reader(database_url: str) -> Iterator[Engine]:
    """A plain engine outside oaksend's: reads only what is committed, and never waits for a write lock."""
    url = database_url
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    engine = create_engine(url)
    yield engine
    engine.dispose()


def count(engine: Engine, where: str = "1=1", **params: Any) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(text(f"SELECT count(*) FROM oaksend_messages WHERE {where}"), params) or 0)


def wakes(client: redis.Redis) -> int:
    return int(client.llen(WAKE_KEY))


# -- one message -------------------------------------------------------------------------------------
def test_send_writes_one_pending_row_with_the_default_deadline(
    producer: Producer, outbox: Outbox, reader: Engine, wake_client: redis.Redis
) -> None:
    before = datetime.now(timezone.utc)
    mid = producer.send(CHATBOT, PHONE, "Reminder: tomorrow at 10:00", metadata={"appointment": 981})
    after = datetime.now(timezone.utc)
    assert isinstance(mid, int) and mid > 0
    assert count(reader) == 1
    row = outbox.get(mid)
    assert row is not None
    assert (row.serial_number, row.to_phone, row.body) == (CHATBOT, PHONE, "Reminder: tomorrow at 10:00")
    assert (row.state, row.attempts, row.failures, row.ambiguous, row.segments) == ("pending", 0, 0, 0, 1)
    assert row.meta == {"appointment": 981}
    assert before <= row.next_attempt_at <= after
    assert row.deadline_at == row.next_attempt_at + timedelta(seconds=producer.settings.default_deadline_s)
    assert row.session_id is None and row.sent_at is None and row.lease_token is None
    assert wakes(wake_client) == 1


def test_send_keeps_send_at_and_deadline(producer: Producer, outbox: Outbox) -> None:
    send_at = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(hours=2)
    deadline = send_at + timedelta(minutes=30)
    mid = producer.send(CHATBOT, PHONE, "later", send_at=send_at, deadline=deadline)
    row = outbox.get(mid)
    assert row is not None and row.next_attempt_at == send_at and row.deadline_at == deadline


def test_text_is_stored_exactly(producer: Producer, outbox: Outbox) -> None:
    body = "  Olá 😀 ünïcode\nline two\t€ " + "x" * 1500
    mid = producer.send(CHATBOT, PHONE, body)
    row = outbox.get(mid)
    assert row is not None and row.body == body and row.segments >= 2


def test_invalid_send_writes_nothing(producer: Producer, reader: Engine, wake_client: redis.Redis) -> None:
    with pytest.raises(ValidationError) as info:
        producer.send(CHATBOT, "4155550123", "hi")
    assert info.value.field == "to"
    assert count(reader) == 0
    assert wakes(wake_client) == 0


# -- idempotency -------------------------------------------------------------------------------------
def test_same_key_same_content_returns_the_same_id(producer: Producer, reader: Engine) -> None:
    first = producer.send(CHATBOT, PHONE, "hello", idempotency_key="appt-1")
    second = producer.send(CHATBOT, PHONE, "hello", idempotency_key="appt-1")
    assert first == second
    assert count(reader) == 1


@pytest.mark.parametrize(
    "change",
    [{"text": "hello!"}, {"to": OTHER}],
)
def test_same_key_different_content_is_a_conflict(producer: Producer, outbox: Outbox, reader: Engine,
                                                  wake_client: redis.Redis, change: dict[str, str]) -> None:
    first = producer.send(CHATBOT, PHONE, "hello", idempotency_key="appt-2")
    wake_client.delete(WAKE_KEY)
    args = {"serial_number": CHATBOT, "to": PHONE, "text": "hello"} | change
    with pytest.raises(IdempotencyConflict) as info:
        producer.send(args["serial_number"], args["to"], args["text"], idempotency_key="appt-2")
    assert info.value.field == "idempotency_key"
    assert "\n" not in str(info.value)
    assert count(reader) == 1
    row = outbox.get(first)
    assert row is not None and (row.to_phone, row.body) == (PHONE, "hello")
    assert wakes(wake_client) == 0


def test_keys_are_scoped_per_chatbot(producer: Producer, outbox: Outbox, reader: Engine) -> None:
    first = producer.send(CHATBOT, PHONE, "hello", idempotency_key="appt-3")
    second = producer.send("another-chatbot", PHONE, "hello", idempotency_key="appt-3")
    third = producer.send("another-chatbot", OTHER, "a different message", idempotency_key="appt-4")
    assert len({first, second, third}) == 3
    assert count(reader) == 3
    # Each chatbot's key still guards its own message.
    assert producer.send("another-chatbot", PHONE, "hello", idempotency_key="appt-3") == second
    with pytest.raises(IdempotencyConflict):
        producer.send("another-chatbot", PHONE, "changed", idempotency_key="appt-3")
    ids = producer.send_many([SendRequest(CHATBOT, PHONE, "hello", idempotency_key="appt-3"),
                              SendRequest("third-chatbot", PHONE, "hello", idempotency_key="appt-3")])
    assert ids[0] == first and ids[1] not in {first, second, third}
    assert count(reader) == 4


def test_idempotency_inside_one_batch(producer: Producer, reader: Engine) -> None:
    ids = producer.send_many([
        SendRequest(CHATBOT, PHONE, "same", idempotency_key="k1"),
        SendRequest(CHATBOT, OTHER, "other"),
        SendRequest(CHATBOT, PHONE, "same", idempotency_key="k1"),
    ])
    assert ids[0] == ids[2] and ids[0] != ids[1]
    assert count(reader) == 2
    again = producer.send_many([SendRequest(CHATBOT, PHONE, "same", idempotency_key="k1")])
    assert again == [ids[0]]


def test_conflict_inside_one_batch_writes_nothing(producer: Producer, reader: Engine,
                                                  wake_client: redis.Redis) -> None:
    with pytest.raises(IdempotencyConflict):
        producer.send_many([
            SendRequest(CHATBOT, OTHER, "first row"),
            SendRequest(CHATBOT, PHONE, "one", idempotency_key="k2"),
            SendRequest(CHATBOT, PHONE, "two", idempotency_key="k2"),
        ])
    assert count(reader) == 0
    assert wakes(wake_client) == 0


# -- send_many ---------------------------------------------------------------------------------------
def test_send_many_writes_all_in_order(producer: Producer, outbox: Outbox, reader: Engine,
                                       wake_client: redis.Redis) -> None:
    phones = [f"+1415555{n:04d}" for n in range(120, 130)]
    ids = producer.send_many([SendRequest(CHATBOT, p, f"text {i}") for i, p in enumerate(phones)])
    assert len(ids) == len(set(ids)) == 10
    assert count(reader) == 10
    for i, (mid, phone) in enumerate(zip(ids, phones)):
        row = outbox.get(mid)
        assert row is not None and row.to_phone == phone and row.body == f"text {i}"
    assert wakes(wake_client) == 1  # one wake-up for the batch


def test_send_many_of_nothing_writes_nothing(producer: Producer, reader: Engine, wake_client: redis.Redis) -> None:
    assert producer.send_many([]) == []
    assert count(reader) == 0 and wakes(wake_client) == 0


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (SendRequest(CHATBOT, "+1 415 555 0125", "hi"), "requests[2].to"),
        (SendRequest(CHATBOT, PHONE, ""), "requests[2].text"),
        (SendRequest("x", PHONE, "hi"), "requests[2].serial_number"),
        (SendRequest(CHATBOT, PHONE, "hi", metadata={"n": float("nan")}), "requests[2].metadata"),
        (SendRequest(CHATBOT, PHONE, "hi", deadline=datetime(2030, 1, 1)), "requests[2].deadline"),
        ({"serial_number": CHATBOT, "to": PHONE, "text": "hi"}, "requests[2]"),
    ],
)
def test_one_invalid_item_refuses_the_whole_batch(producer: Producer, reader: Engine, wake_client: redis.Redis,
                                                  bad: Any, field: str) -> None:
    producer.send(CHATBOT, "+14155550199", "already there")
    rows_before = count(reader)
    wake_client.delete(WAKE_KEY)
    requests = [SendRequest(CHATBOT, PHONE, "ok 0"), SendRequest(CHATBOT, OTHER, "ok 1"), bad,
                SendRequest(CHATBOT, PHONE, "ok 3")]
    with pytest.raises(ValidationError) as info:
        producer.send_many(requests)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}")
    assert "\n" not in str(info.value)
    assert count(reader) == rows_before
    assert wakes(wake_client) == 0
    assert wake_client.exists(WAKE_KEY) == 0


def test_suppressed_number_is_refused_and_masked(producer: Producer, reader: Engine) -> None:
    with producer.outbox.engine.begin() as conn:
        conn.execute(text("INSERT INTO oaksend_suppressed_numbers (to_phone, reason, at) VALUES (:p, 'twilio_21610', :at)"),
                     {"p": PHONE, "at": datetime.now(timezone.utc).replace(tzinfo=None)})
    with pytest.raises(ValidationError) as info:
        producer.send(CHATBOT, PHONE, "hi")
    assert info.value.field == "to"
    assert PHONE not in str(info.value) and "suppressed" in str(info.value)
    assert count(reader) == 0


# -- the caller's transaction --------------------------------------------------------------------------
def test_rows_are_visible_only_after_the_caller_commits(producer: Producer, outbox: Outbox, reader: Engine,
                                                        wake_client: redis.Redis) -> None:
    with Session(outbox.engine) as session:
        mid = producer.send(CHATBOT, PHONE, "in your transaction", session=session)
        assert isinstance(mid, int)
        assert count(reader) == 0  # not committed yet
        assert wakes(wake_client) == 0  # and the dispatcher is not woken for it yet
        session.commit()
    assert count(reader) == 1
    row = outbox.get(mid)
    assert row is not None and row.body == "in your transaction"
    assert wakes(wake_client) == 1


def test_a_rollback_leaves_no_row_and_no_wake(producer: Producer, outbox: Outbox, reader: Engine,
                                              wake_client: redis.Redis) -> None:
    with Session(outbox.engine) as session:
        mid = producer.send(CHATBOT, PHONE, "never", session=session)
        session.rollback()
    assert count(reader) == 0
    assert outbox.get(mid) is None
    assert wakes(wake_client) == 0


def test_send_many_in_the_callers_transaction(producer: Producer, outbox: Outbox, reader: Engine) -> None:
    with Session(outbox.engine) as session:
        ids = producer.send_many([SendRequest(CHATBOT, PHONE, "a"), SendRequest(CHATBOT, OTHER, "b")],
                                 session=session)
        assert count(reader) == 0
        session.commit()
    assert count(reader) == 2 and len(set(ids)) == 2


def test_two_sends_in_one_caller_transaction(producer: Producer, outbox: Outbox, reader: Engine) -> None:
    """The outbox pattern: the caller has already written in its transaction when it sends again.

    Run in a thread with a time limit: on SQLite a second connection that waits for the
    caller's write lock would otherwise hang for the 60 s busy timeout.
    """
    session = Session(outbox.engine)
    result: dict[str, Any] = {}
    try:
        first = producer.send(CHATBOT, PHONE, "first", session=session)

        def second() -> None:
            try:
                result["id"] = producer.send(CHATBOT, OTHER, "second", session=session)
            except Exception as exc:  # noqa: BLE001 - reported below
                result["error"] = exc

        worker = threading.Thread(target=second, daemon=True)
        worker.start()
        worker.join(5)
        stuck = worker.is_alive()
        if stuck:
            # Let the blocked connection through (release the caller's lock), then clean up.
            session.rollback()
            worker.join(30)
        assert not stuck, "a second send in the caller's transaction waited for the caller's own write lock"
        assert "error" not in result, result
        session.commit()
    finally:
        session.close()
    assert result["id"] != first
    assert count(reader) == 2


# -- 64-bit SessionID ----------------------------------------------------------------------------------
@pytest.mark.parametrize("session_id", [123123123123, 2**63 - 1])
def test_session_id_round_trips_64_bits(producer: Producer, outbox: Outbox, reader: Engine, session_id: int) -> None:
    mid = producer.send(CHATBOT, PHONE, "sent")
    with outbox.engine.begin() as conn:
        changed = conn.execute(text("UPDATE oaksend_messages SET session_id = :sid WHERE id = :id"),
                               {"sid": session_id, "id": mid}).rowcount
    assert changed == 1
    row = outbox.get(mid)
    assert row is not None and row.session_id == session_id
    with reader.connect() as conn:
        assert conn.scalar(text("SELECT session_id FROM oaksend_messages WHERE id = :id"), {"id": mid}) == session_id
