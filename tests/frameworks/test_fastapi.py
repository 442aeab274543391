"""A FastAPI service on AsyncSession enqueues with AsyncProducer in its own transaction, without
blocking its event loop; a real worker then sends what it committed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text

from tests.support import CHATBOT, wait_until

pytest.importorskip("fastapi")
pytest.importorskip("aiosqlite")


def make_app(settings: Any) -> Any:
    from fastapi import Depends, FastAPI, HTTPException
    from sqlalchemy.ext.asyncio import AsyncSession

    from oaksend import AsyncProducer, ValidationError
    from oaksend.models.db import make_async_engine

    engine = make_async_engine(settings.database_url, pool_size=20, max_overflow=20) \
        if settings.database_url.startswith("postgres") else make_async_engine(settings.database_url)
    producer = AsyncProducer(settings, engine=engine)
    app = FastAPI()

    async def session() -> AsyncIterator[AsyncSession]:
        async with AsyncSession(engine, expire_on_commit=False) as s:
            yield s

    @app.post("/bookings/{booking}", status_code=201)
    async def book(booking: int, phone: str, fail: bool = False,
                   s: AsyncSession = Depends(session)) -> Any:  # noqa: B008 - FastAPI's way
        async with s.begin():
            await s.execute(text("INSERT INTO booking (id, phone) VALUES (:id, :phone)"),
                            {"id": booking, "phone": phone})
            try:
                mid = await producer.send(CHATBOT, phone, "See you at 10:00", idempotency_key=f"booking-{booking}",
                                          session=s)
            except ValidationError as exc:
                raise HTTPException(400, str(exc)) from None
            if fail:
                raise HTTPException(500, "payment declined")  # leaving the block rolls it all back
        return {"message": mid}

    app.state.producer, app.state.engine = producer, engine
    return app


async def lag_during(work: Any) -> tuple[Any, float]:
    """Run `work`; meanwhile measure the longest the loop went without running a 1 ms ticker."""
    worst = 0.0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal worst
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            worst = max(worst, now - last)
            last = now

    tick = asyncio.create_task(ticker())
    try:
        result = await work
    finally:
        done.set()
        await tick
    return result, worst


def test_fastapi_async_session_commit_rollback_and_a_thousand_concurrent(
        settings: Any, outbox: Any, make_stack: Any, sandbox: Any) -> None:
    import httpx

    sync = create_engine(settings.database_url)
    with sync.begin() as c:
        c.execute(text("CREATE TABLE booking (id INTEGER PRIMARY KEY, phone VARCHAR(20))"))
    sync.dispose()
    app = make_app(settings)
    sqlite = settings.database_url.startswith("sqlite")

    async def scenario() -> dict[str, Any]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            ok = await client.post("/bookings/1", params={"phone": "+14155550131"})
            failed = await client.post("/bookings/2", params={"phone": "+14155550132", "fail": "true"})
            refused = await client.post("/bookings/3", params={"phone": "nope"})
            n = 200 if sqlite else 1000  # SQLite has one writer: fewer, the same rules
            many = await asyncio.gather(*(client.post(f"/bookings/{1000 + i}", params={"phone": f"+1415556{i:04d}"})
                                          for i in range(n)))
        await app.state.producer.close()
        await app.state.engine.dispose()
        return {"ok": ok.status_code, "failed": failed.status_code, "refused": refused.status_code,
                "many": [r.status_code for r in many], "n": n}

    out = asyncio.run(scenario())
    assert (out["ok"], out["failed"], out["refused"]) == (201, 500, 400)
    assert out["many"] == [201] * out["n"]
    from oaksend.models.tables import Message

    with outbox.session() as s:
        phones = list(s.scalars(select(Message.to_phone)))
    assert "+14155550132" not in phones  # rolled back with its booking
    assert sorted(phones) == sorted(["+14155550131", *(f"+1415556{i:04d}" for i in range(out["n"]))])
    make_stack(workers=1)
    wait_until(lambda: len(sandbox.requests()) >= len(phones), 60, what="every committed message to be sent")
    assert sorted(r["to_phone_number"] for r in sandbox.requests()) == sorted(phones)  # each once


def test_the_loop_runs_while_the_database_makes_enqueues_wait(pg_database: str, redis_url: str) -> None:
    """A sync driver would freeze the loop for as long as a lock holds its statement: with the async
    one, the loop keeps ticking while 50 enqueues wait a whole second for a table lock."""
    from oaksend import AsyncProducer, SendRequest
    from oaksend.migrations.runner import upgrade
    from oaksend.worker.settings import Settings
    from tests.support import reset_pg

    reset_pg(pg_database)
    upgrade(pg_database)
    settings = Settings(database_url=pg_database, redis_url=redis_url, _env_file=None)  # type: ignore[call-arg]
    locker = create_engine(pg_database)

    async def scenario() -> tuple[list[list[int]], float]:
        producer = AsyncProducer(settings)
        with locker.connect() as conn:
            conn.execute(text("LOCK TABLE oaksend_messages IN ACCESS EXCLUSIVE MODE"))

            async def release() -> None:
                await asyncio.sleep(1.0)
                conn.rollback()

            sends = asyncio.gather(*(producer.send_many([SendRequest(CHATBOT, f"+1415557{i:04d}", "hi")])
                                     for i in range(50)))
            (ids, _), worst = await lag_during(asyncio.gather(sends, release()))
        await producer.close()
        return ids, worst

    started = time.perf_counter()
    ids, worst = asyncio.run(scenario())
    assert time.perf_counter() - started >= 1.0  # they did wait for the lock
    assert len({i for batch in ids for i in batch}) == 50
    assert worst < 0.2, f"the event loop stalled {worst * 1000:.0f} ms"
    locker.dispose()


def test_async_upsert_and_remove_recipient_follow_the_booking(settings: Any, outbox: Any) -> None:
    """The booking system's calls from async code, in its AsyncSession: a move and a move back leave
    one open reminder per offset; a removal rolled back with its transaction removes nothing."""
    from datetime import timedelta

    from sqlalchemy.ext.asyncio import AsyncSession

    from oaksend import AsyncProducer
    from oaksend.models.db import make_async_engine
    from oaksend.models.tables import Message
    from oaksend.worker.campaigns.audience import AudienceSpec
    from oaksend.worker.campaigns.schedule import parse_schedule
    from oaksend.worker.campaigns.service import Campaigns, CampaignSpec
    from oaksend.worker.clock import utcnow

    a = (utcnow() + timedelta(days=3)).replace(minute=0, second=0, microsecond=0)
    b = a + timedelta(hours=5)

    def row(when: Any) -> dict[str, str]:
        return {"booking": "b1", "phone": "+12125550101", "appt": when.isoformat()}

    service = Campaigns(settings, outbox=outbox)
    cid = service.create(CampaignSpec(name="async", chatbot=CHATBOT, tz="America/New_York",
                                      audience=AudienceSpec(key_column="booking"), quiet_hours="off",
                                      schedule=parse_schedule(before="appt:2h"), template="See you {appt:%H:%M}"),
                         [row(a)]).id
    service.redis.close()

    def open_times() -> list[Any]:
        with outbox.session() as s:
            return sorted(m.next_attempt_at for m in s.scalars(
                select(Message).where(Message.campaign_id == cid, Message.state == "pending")))

    async def scenario() -> None:
        engine = make_async_engine(settings.database_url)
        async with AsyncProducer(settings, engine=engine) as producer:
            await producer.upsert_recipient(cid, row(b))                       # moved: its own transaction
            async with AsyncSession(engine) as s, s.begin():
                await producer.upsert_recipient(cid, row(a), session=s)     # moved back, in the caller's
            async with AsyncSession(engine) as s:
                await s.begin()
                await producer.remove_recipient(cid, "b1", session=s)
                await s.rollback()                                           # the booking stays
        await engine.dispose()

    asyncio.run(scenario())
    times = open_times()
    assert len(times) == 1 and times[0].replace(tzinfo=None) == (a - timedelta(hours=2)).replace(tzinfo=None)
