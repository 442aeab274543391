"""Producer on a real outbox (SQLite and PostgreSQL) and a real Redis: rows, idempotency, the caller's transaction."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session

from oaksend.models.keyhash import stored_key
from oaksend.models.repository import Outbox
from tests.support import CHATBOT, private_redis_server
from oaksend.worker.enqueue import Producer
from oaksend.worker.keys import Keys
from oaksend.worker.settings import Settings
from oaksend.errors import IdempotencyConflict, ValidationError
from oaksend.worker.message.validation import SendRequest

PHONE = "+14155550123"
OTHER = "+14155550124"

WAKE_KEY = Keys().wake


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


# -- large batches (PostgreSQL: COPY, with ON CONFLICT as the fallback) --------------------------------
def _batch(n: int, key_prefix: str | None = "bulk") -> list[SendRequest]:
    base = datetime.now(timezone.utc).replace(microsecond=0)
    return [
        SendRequest(CHATBOT if i % 3 else "second-chatbot", f"+1415555{i:04d}", f"Olá {i} 😀\n\"quoted\" \\ tab\t",
                    idempotency_key=f"{key_prefix}-{i}" if key_prefix and i % 2 else None,
                    send_at=base + timedelta(minutes=i % 7), deadline=base + timedelta(hours=1, minutes=i % 5),
                    metadata={"n": i, "nested": {"list": [1, None, "x"]}} if i % 4 else None)
        for i in range(n)
    ]


def test_a_large_batch_stores_every_field_exactly(producer: Producer, outbox: Outbox, reader: Engine) -> None:
    requests = _batch(450)
    ids = producer.send_many(requests)
    assert len(set(ids)) == 450 and count(reader) == 450
    for mid, req in zip(ids, requests):
        row = outbox.get(mid)
        assert row is not None
        assert (row.serial_number, row.to_phone, row.body, row.idempotency_key, row.meta) == (
            req.serial_number, req.to, req.text, stored_key(req.idempotency_key, None), req.metadata)
        assert (row.next_attempt_at, row.deadline_at, row.state, row.attempts) == (req.send_at, req.deadline,
                                                                                   "pending", 0)
    with reader.connect() as conn:  # no metadata is JSON null, as a single send stores it
        nulls = conn.scalar(text("SELECT count(*) FROM oaksend_messages WHERE metadata IS NULL"))
    assert nulls == 0


def test_a_large_batch_with_some_keys_stored_answers_them_and_writes_the_rest(
        producer: Producer, reader: Engine) -> None:
    requests = _batch(300)
    first = producer.send_many(requests[:40])
    assert count(reader) == 40
    ids = producer.send_many(requests)
    keyed = [i for i in range(40) if requests[i].idempotency_key]
    assert all(ids[i] == first[i] for i in keyed)  # a stored key answers with its row
    assert not set(ids[i] for i in range(40) if i not in keyed) & set(first)  # no key: a new message
    assert count(reader) == 40 + 300 - len(keyed)


def test_a_large_batch_conflicting_with_a_stored_key_writes_nothing(producer: Producer, reader: Engine,
                                                                    wake_client: redis.Redis) -> None:
    requests = _batch(300)
    producer.send(requests[1].serial_number, requests[1].to, "different text", idempotency_key=requests[1].idempotency_key)
    wake_client.delete(WAKE_KEY)
    with pytest.raises(IdempotencyConflict):
        producer.send_many(requests)
    assert count(reader) == 1 and wakes(wake_client) == 0


@pytest.fixture
def pg_producer(pg_database: str, redis_url: str, wake_redis_url: str) -> Iterator[Producer]:
    from oaksend.migrations.runner import upgrade
    from tests.support import reset_pg

    reset_pg(pg_database)
    upgrade(pg_database)
    settings = Settings(database_url=pg_database, redis_url=redis_url, _env_file=None)  # type: ignore[call-arg]
    p = Producer(settings, redis_client=redis.Redis.from_url(wake_redis_url))
    yield p
    p.close()


def test_a_large_batch_waits_for_a_key_in_an_open_transaction_then_goes_around_it(pg_producer: Producer) -> None:
    """COPY meets a key another transaction holds: it waits, fails once that commits, and the batch goes around it."""
    requests = _batch(300, key_prefix="held")
    holder = Session(pg_producer.outbox.engine)
    held = pg_producer.send(requests[1].serial_number, requests[1].to, requests[1].text,
                            idempotency_key=requests[1].idempotency_key, session=holder)
    got: list[Any] = []
    thread = threading.Thread(target=lambda: got.append(pg_producer.send_many(requests)))
    thread.start()
    thread.join(1.0)
    assert thread.is_alive()  # waiting on the uncommitted row
    holder.commit()
    holder.close()
    thread.join(60)
    assert len(got) == 1
    ids = got[0]
    assert ids[1] == held and len(set(ids)) == 300
    with pg_producer.outbox.session() as s:
        assert s.scalar(text("SELECT count(*) FROM oaksend_messages")) == 300


def test_the_on_conflict_fallback_skips_a_taken_key(pg_producer: Producer) -> None:
    """pg_bulk.insert_many: when COPY meets a stored key, the rows go in with ON CONFLICT DO NOTHING."""
    from oaksend.models.records import NewMessage
    from oaksend.models.repository import pg_bulk
    from oaksend.models.repository.enqueue import _values
    from oaksend.models.tables import Message

    outbox = pg_producer.outbox
    table = Message.__table__
    now = datetime.now(timezone.utc)
    rows = [NewMessage(CHATBOT, PHONE, f"m{i}", 1, now, None, f"k{i}" if i % 2 else None, None)
            for i in range(pg_bulk.COPY_MIN_ROWS + 10)]
    [stored] = outbox.add([rows[5]], now)
    with outbox.session() as s:
        conn = s.connection().connection.driver_connection
        ids = pg_bulk.take_ids(conn, None, table, len(rows))
        got = pg_bulk.insert_many(conn, None, table, ids,
                                  [_values(replace(r, idempotency_key=stored_key(r.idempotency_key, None)), now)
                                   for r in rows])
    assert got[5] is None and all(g == i for k, (g, i) in enumerate(zip(got, ids)) if k != 5)
    with outbox.session() as s:
        assert s.scalar(text("SELECT count(*) FROM oaksend_messages")) == len(rows)
        assert s.scalar(text("SELECT id FROM oaksend_messages WHERE idempotency_key = :k"),
                        {"k": stored_key("k5", None)}) == stored
