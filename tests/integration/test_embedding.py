"""oaksend inside an application's own PostgreSQL database, and the status API it offers that application.

The application here has tables of its own named `messages`, `attempts` and
`chatbots`, its own `alembic_version` at a revision oaksend does not know, and
its own engine and Session (no schema translate map, no oaksend settings).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, inspect, text
from sqlalchemy.orm import Session

from oaksend import (
    AttemptStatus,
    IdempotencyConflict,
    MessagePage,
    MessageStatus,
    NotFound,
    Producer,
    SendRequest,
    Status,
    ValidationError,
)
from oaksend.worker.settings import Settings
from tests.support import API_KEY, CHATBOT, ROOT, Sandbox, Stack, flush_redis, stack_env, wait_until

PHONE = "+14155550123"
OTHER = "+14155550124"
APP_REVISION = "a1b2c3d4e5f6"
SCHEMA = "oaksend"


# -- the application's database ----------------------------------------------------------------
def plain_engine(url: str) -> Engine:
    """The application's own engine: psycopg, no oaksend options."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(url)


def drop_everything(url: str) -> None:
    engine = plain_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE'))
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
    finally:
        engine.dispose()


APP_DDL = [
    "CREATE TABLE chatbots (id serial PRIMARY KEY, name text NOT NULL)",
    "CREATE TABLE messages (id serial PRIMARY KEY, chatbot_id int REFERENCES chatbots(id), body text NOT NULL)",
    "CREATE TABLE attempts (id serial PRIMARY KEY, message_id int REFERENCES messages(id), ok boolean)",
    "CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)",
    f"INSERT INTO alembic_version VALUES ('{APP_REVISION}')",
    "INSERT INTO chatbots (name) VALUES ('support'), ('sales')",
    "INSERT INTO messages (chatbot_id, body) VALUES (1, 'hello from the app'), (2, 'another')",
    "INSERT INTO attempts (message_id, ok) VALUES (1, true), (2, false)",
]


def app_snapshot(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    with engine.connect() as conn:
        return {t: [tuple(r) for r in conn.execute(text(f"SELECT * FROM public.{t} ORDER BY 1"))]
                for t in ("chatbots", "messages", "attempts", "alembic_version")}


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OAKSEND_", "NEWOAKS_"))}
    base.pop("DATABASE_URL", None)
    return subprocess.run([sys.executable, "-m", "oaksend.worker.cli", *args], env={**base, **env},
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


@pytest.fixture(params=[None, SCHEMA], ids=["public", "schema"])
def app_db(request: pytest.FixtureRequest, pg_database: str) -> Iterator[tuple[str, str | None, Engine]]:
    """A PostgreSQL database holding the application's tables, migrated by `oaksend migrate`."""
    schema = request.param
    drop_everything(pg_database)
    engine = plain_engine(pg_database)
    with engine.begin() as conn:
        for ddl in APP_DDL:
            conn.execute(text(ddl))
    before = app_snapshot(engine)
    env = {"DATABASE_URL": pg_database, **({"OAKSEND_DB_SCHEMA": schema} if schema else {})}
    done = cli("migrate", **env)
    assert done.returncode == 0, done.stderr
    assert app_snapshot(engine) == before  # the application's rows and revision, untouched
    yield pg_database, schema, engine
    engine.dispose()


@pytest.fixture
def settings(app_db: tuple[str, str | None, Engine], redis_url: str) -> Settings:
    url, schema, _ = app_db
    return Settings(database_url=url, redis_url=redis_url, db_schema=schema, _env_file=None)  # type: ignore[call-arg]


@pytest.fixture
def producer(settings: Settings) -> Iterator[Producer]:
    p = Producer(settings)
    yield p
    p.close()


@pytest.fixture
def status(settings: Settings) -> Iterator[Status]:
    with Status(settings) as s:
        yield s


def oaksend_rows(engine: Engine, schema: str | None) -> int:
    table = f'"{schema}".oaksend_messages' if schema else "public.oaksend_messages"
    with engine.connect() as conn:
        return int(conn.scalar(text(f"SELECT count(*) FROM {table}")) or 0)


# -- migrate beside the application's tables -----------------------------------------------------
def test_migrate_leaves_the_applications_tables_and_revision_alone(app_db: tuple[str, str | None, Engine]) -> None:
    url, schema, engine = app_db
    insp = inspect(engine)
    public = set(insp.get_table_names(schema="public"))
    assert {"messages", "attempts", "chatbots", "alembic_version"} <= public
    ours = set(insp.get_table_names(schema=schema or "public"))
    assert {"oaksend_messages", "oaksend_attempts", "oaksend_chatbots", "oaksend_alembic_version"} <= ours
    if schema:
        assert not {t for t in public if t.startswith("oaksend_")}  # nothing of oaksend in public
    with engine.connect() as conn:
        table = f'"{schema}".oaksend_alembic_version' if schema else "oaksend_alembic_version"
        ours_rev = conn.scalar(text(f"SELECT version_num FROM {table}"))
    env = {"DATABASE_URL": url, **({"OAKSEND_DB_SCHEMA": schema} if schema else {})}
    before = app_snapshot(engine)
    again = cli("migrate", **env)  # idempotent
    assert again.returncode == 0, again.stderr
    assert app_snapshot(engine) == before
    assert before["alembic_version"] == [(APP_REVISION,)]
    assert ours_rev and ours_rev != APP_REVISION


# -- the transactional outbox in the application's Session --------------------------------------
def test_a_send_commits_and_rolls_back_with_the_applications_row(app_db: tuple[str, str | None, Engine],
                                                                 producer: Producer, status: Status) -> None:
    _, schema, engine = app_db
    with Session(engine) as session:
        session.execute(text("INSERT INTO public.messages (chatbot_id, body) VALUES (1, 'app row, committed')"))
        mid = producer.send(CHATBOT, PHONE, "reminder, committed", session=session, idempotency_key="appt-1")
        assert oaksend_rows(engine, schema) == 0  # not visible before the application commits
        session.commit()
    assert status.get_message(mid).text == "reminder, committed"

    with Session(engine) as session:
        session.execute(text("INSERT INTO public.messages (chatbot_id, body) VALUES (1, 'app row, rolled back')"))
        gone = producer.send_many([SendRequest(CHATBOT, OTHER, "never sent")], session=session)[0]
        session.rollback()
    with pytest.raises(NotFound):
        status.get_message(gone)
    with engine.connect() as conn:
        bodies = [r[0] for r in conn.execute(text("SELECT body FROM public.messages ORDER BY id"))]
    assert bodies == ["hello from the app", "another", "app row, committed"]
    assert oaksend_rows(engine, schema) == 1


def test_a_conflict_does_not_abort_the_applications_transaction(app_db: tuple[str, str | None, Engine],
                                                                producer: Producer) -> None:
    _, schema, engine = app_db
    first = producer.send(CHATBOT, PHONE, "original", idempotency_key="appt-2")
    with Session(engine) as session:
        session.execute(text("INSERT INTO public.messages (chatbot_id, body) VALUES (2, 'before the conflict')"))
        with pytest.raises(IdempotencyConflict):
            producer.send_many([SendRequest(CHATBOT, OTHER, "new one"),
                                SendRequest(CHATBOT, PHONE, "changed", idempotency_key="appt-2")], session=session)
        # Same key, same content: the stored id, inside the application's transaction.
        assert producer.send(CHATBOT, PHONE, "original", idempotency_key="appt-2", session=session) == first
        session.execute(text("INSERT INTO public.messages (chatbot_id, body) VALUES (2, 'after the conflict')"))
        session.commit()
    with engine.connect() as conn:
        bodies = [r[0] for r in conn.execute(text("SELECT body FROM public.messages WHERE chatbot_id = 2"))]
    assert bodies == ["another", "before the conflict", "after the conflict"]
    assert oaksend_rows(engine, schema) == 1  # "new one" went with the failed call's savepoint


# -- idempotency under concurrency (PostgreSQL) ---------------------------------------------------
def _race(n: int, call: Any) -> list[Any]:
    barrier = threading.Barrier(n)
    out: list[Any] = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            out[i] = call(i)
        except Exception as exc:  # noqa: BLE001 - reported to the test
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


@pytest.mark.parametrize("with_session", [False, True], ids=["own", "callers_session"])
def test_producers_racing_on_one_key_get_one_row(app_db: tuple[str, str | None, Engine], producer: Producer,
                                                 with_session: bool) -> None:
    _, schema, engine = app_db
    key = f"race-{uuid.uuid4().hex[:8]}"

    def send(i: int) -> int:
        if not with_session:
            return producer.send(CHATBOT, PHONE, "same", idempotency_key=key)
        with Session(engine) as session:
            session.execute(text("INSERT INTO public.attempts (message_id, ok) VALUES (1, true)"))
            mid = producer.send(CHATBOT, PHONE, "same", idempotency_key=key, session=session)
            session.commit()  # the application's own row commits with it
            return mid

    results = _race(8, send)
    assert all(isinstance(r, int) for r in results), results
    assert len(set(results)) == 1
    assert oaksend_rows(engine, schema) == 1
    if with_session:
        with engine.connect() as conn:
            assert conn.scalar(text("SELECT count(*) FROM public.attempts")) == 2 + 8


@pytest.mark.parametrize("with_session", [False, True], ids=["own", "callers_session"])
def test_racing_with_different_content_one_wins_the_rest_conflict_cleanly(
        app_db: tuple[str, str | None, Engine], producer: Producer, with_session: bool) -> None:
    _, schema, engine = app_db
    key = f"race-{uuid.uuid4().hex[:8]}"

    def send(i: int) -> int:
        requests = [SendRequest(CHATBOT, OTHER, f"batch filler {i}"), SendRequest(CHATBOT, PHONE, f"text {i}",
                                                                                 idempotency_key=key)]
        if not with_session:
            return producer.send_many(requests)[1]
        with Session(engine) as session:
            session.execute(text(f"INSERT INTO public.chatbots (name) VALUES ('app {i}')"))
            try:
                return producer.send_many(requests, session=session)[1]
            except IdempotencyConflict:
                # The application's transaction is still usable: its own row commits.
                session.execute(text(f"INSERT INTO public.chatbots (name) VALUES ('app {i} after')"))
                session.commit()
                raise
            finally:
                if session.in_transaction():
                    session.commit()

    results = _race(6, send)
    winners = [r for r in results if isinstance(r, int)]
    losers = [r for r in results if not isinstance(r, int)]
    assert len(winners) == 1, results
    assert all(isinstance(r, IdempotencyConflict) for r in losers), losers
    assert oaksend_rows(engine, schema) == 2  # the winner's two messages, nothing of the losers'
    if with_session:
        with engine.connect() as conn:
            names = {r[0] for r in conn.execute(text("SELECT name FROM public.chatbots"))}
        assert {f"app {i} after" for i, r in enumerate(results) if not isinstance(r, int)} <= names
        assert {f"app {i}" for i in range(6)} <= names


def test_a_key_held_by_an_open_transaction_waits_for_it(app_db: tuple[str, str | None, Engine],
                                                        producer: Producer) -> None:
    """B's insert waits for A's uncommitted row: A commits -> B gets A's id; A rolls back -> B inserts."""
    _, schema, engine = app_db
    for outcome in ("commit", "rollback"):
        key = f"held-{outcome}"
        holder = Session(engine)
        held = producer.send(CHATBOT, PHONE, "held", idempotency_key=key, session=holder)
        got: list[Any] = []
        waiter = threading.Thread(target=lambda: got.append(producer.send(CHATBOT, PHONE, "held",
                                                                          idempotency_key=key)))
        waiter.start()
        waiter.join(1.0)
        assert waiter.is_alive()  # blocked on A's row, not failed
        holder.commit() if outcome == "commit" else holder.rollback()
        holder.close()
        waiter.join(30)
        assert len(got) == 1 and isinstance(got[0], int)
        assert (got[0] == held) is (outcome == "commit")
    assert oaksend_rows(engine, schema) == 2


# -- the status API --------------------------------------------------------------------------------
def test_status_returns_frozen_plain_values(producer: Producer, status: Status) -> None:
    mid = producer.send(CHATBOT, PHONE, "status", metadata={"appointment": 7})
    message = status.get_message(mid)
    assert isinstance(message, MessageStatus)
    assert (message.id, message.chatbot, message.to, message.text, message.state) == (mid, CHATBOT, PHONE, "status",
                                                                                      "pending")
    assert message.metadata == {"appointment": 7} and message.attempt_history == ()
    assert message.operator_actions == () and message.deadline_at is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        message.state = "sent"  # type: ignore[misc]
    plain = (int, str, float, bool, dict, tuple, datetime, type(None))
    assert all(isinstance(getattr(message, f.name), plain) for f in dataclasses.fields(message))
    with pytest.raises(NotFound):
        status.get_message(mid + 1000)
    with pytest.raises(ValidationError) as info:
        status.get_message("1")  # type: ignore[arg-type]
    assert info.value.field == "message_id"


def test_list_filters_and_pages_with_a_cursor(producer: Producer, status: Status) -> None:
    ids = producer.send_many([SendRequest(CHATBOT, PHONE, f"page {i}") for i in range(7)])
    other = producer.send("other-chatbot", PHONE, "elsewhere")
    status.cancel([ids[0]])
    seen: list[int] = []
    cursor = None
    while True:
        page = status.list_messages(state="pending", chatbot=CHATBOT, limit=3, cursor=cursor)
        assert isinstance(page, MessagePage) and len(page.messages) <= 3
        assert all(m.attempt_history is None for m in page.messages)
        seen += [m.id for m in page.messages]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == sorted(ids[1:], reverse=True)  # newest first, each once, the cancelled one left out
    assert [m.id for m in status.list_messages(state=["cancelled"]).messages] == [ids[0]]
    assert [m.id for m in status.list_messages(chatbot="other-chatbot").messages] == [other]
    future = datetime.now(timezone.utc) + timedelta(hours=1)
    assert status.list_messages(since=future).messages == ()
    assert len(status.list_messages(until=future, limit=100).messages) == 8
    for bad, field in ((dict(state="nope"), "state"), (dict(limit=0), "limit"), (dict(cursor="x"), "cursor"),
                       (dict(since=datetime(2026, 1, 1)), "since")):
        with pytest.raises(ValidationError) as info:
            status.list_messages(**bad)  # type: ignore[arg-type]
        assert info.value.field == field


def test_cancel_and_retry_report_per_id_and_keep_the_audit(producer: Producer, status: Status) -> None:
    mid = producer.send(CHATBOT, PHONE, "to cancel")
    assert status.cancel([mid, 999_999], actor="alice") == {mid: "cancelled", 999_999: "not found"}
    assert status.cancel([mid])[mid].startswith("is cancelled")
    assert status.retry([mid], actor="bob") == {mid: "retried"}
    message = status.get_message(mid)
    assert message.state == "pending"
    assert [(a.action, a.from_state, a.actor) for a in message.operator_actions] == [
        ("cancel", "pending", "alice"), ("retry", "cancelled", "bob")]
    assert status.retry([mid])[mid].startswith("is pending")


def _expire(engine: Engine, schema: str | None, mid: int, deadline: datetime | None) -> None:
    table = f'"{schema}".oaksend_messages' if schema else "oaksend_messages"
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE {table} SET state = 'expired', deadline_at = :d WHERE id = :id"),
                     {"d": deadline, "id": mid})


def test_retry_of_an_expired_message_gives_it_a_new_deadline(app_db: tuple[str, str | None, Engine],
                                                             producer: Producer, status: Status) -> None:
    _, schema, engine = app_db
    past = datetime.now(timezone.utc) - timedelta(minutes=5)
    expired, no_deadline, explicit = (producer.send(CHATBOT, PHONE, f"expired {i}") for i in range(3))
    _expire(engine, schema, expired, past)
    _expire(engine, schema, no_deadline, None)
    _expire(engine, schema, explicit, past)
    before = datetime.now(timezone.utc)
    assert status.retry([expired, no_deadline]) == {expired: "retried", no_deadline: "retried"}
    after = datetime.now(timezone.utc)
    default = timedelta(seconds=status.settings.default_deadline_s)
    for mid in (expired, no_deadline):
        deadline = status.get_message(mid).deadline_at
        assert deadline is not None and before + default <= deadline <= after + default
    chosen = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(hours=6)
    assert status.retry([explicit], deadline=chosen) == {explicit: "retried"}
    assert status.get_message(explicit).deadline_at == chosen
    with pytest.raises(ValidationError) as info:
        status.retry([explicit], deadline=past)
    assert info.value.field == "deadline"


def test_cli_retry_deadline_defaults_and_flag(app_db: tuple[str, str | None, Engine], producer: Producer,
                                               status: Status, redis_url: str) -> None:
    url, schema, engine = app_db
    env = {"DATABASE_URL": url, "REDIS_URL": redis_url, **({"OAKSEND_DB_SCHEMA": schema} if schema else {})}
    mid = producer.send(CHATBOT, PHONE, "cli retry")
    _expire(engine, schema, mid, datetime.now(timezone.utc) - timedelta(seconds=1))
    done = cli("retry", str(mid), "--deadline", "+2h", "--json", **env)
    assert done.returncode == 0, done.stderr
    deadline = status.get_message(mid).deadline_at
    assert deadline is not None
    assert timedelta(hours=1, minutes=59) < deadline - datetime.now(timezone.utc) <= timedelta(hours=2)
    shown = cli("show", str(mid), "--json", **env)
    assert shown.returncode == 0 and '"state": "pending"' in shown.stdout
    past = cli("retry", str(mid), "--deadline=-1h", **env)
    assert past.returncode == 2 and past.stderr.count("\n") == 1 and "deadline" in past.stderr


# -- the whole send path with OAKSEND_DB_SCHEMA ----------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("app_db", [SCHEMA], indirect=True, ids=["schema"])
def test_whole_send_path_in_a_schema_of_its_own(app_db: tuple[str, str | None, Engine], producer: Producer,
                                                status: Status, tmp_path: Path) -> None:
    url, schema, engine = app_db
    assert schema == SCHEMA  # the public schema's send path: tests/integration/test_send_path.py
    flush_redis()  # rate and pause state left in this Redis db by other tests
    sandbox = Sandbox(tmp_path / "sandbox.log")
    env = stack_env(url, sandbox, queue=f"oaksend-test-{uuid.uuid4().hex[:8]}", OAKSEND_DB_SCHEMA=schema)
    stack = Stack(env, tmp_path)
    try:
        stack.start_dispatcher()
        stack.start_worker("worker0", concurrency=4)
        stack.wait_ready()
        with Session(engine) as session:  # the application's session: no schema map of its own
            in_session = producer.send(CHATBOT, OTHER, "through the app's session", session=session)
            session.commit()
        ids = [producer.send(CHATBOT, PHONE, "plain send"), in_session]
        wait_until(lambda: all(status.get_message(i).state == "sent" for i in ids), 30, what="both sends")
        for mid in ids:
            message = status.get_message(mid)
            assert message.session_id is not None and message.attempt_history is not None
            assert [a.classification for a in message.attempt_history] == ["sent"]
            assert isinstance(message.attempt_history[0], AttemptStatus)
        assert sorted(r["to_phone_number"] for r in sandbox.requests()) == sorted([PHONE, OTHER])
        with engine.connect() as conn:
            assert conn.scalar(text(f'SELECT count(*) FROM "{schema}".oaksend_attempts')) == 2
        assert API_KEY not in stack.logs()
    finally:
        stack.stop()
        sandbox.stop()
