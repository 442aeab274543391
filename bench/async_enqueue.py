"""`python -m bench.async_enqueue` (`make bench-async`): `AsyncProducer.send` in a caller's transaction.

On a fresh PostgreSQL database of its own, in one event loop, interleaved (so both see
the same load on a shared machine), each in its own transaction of the same
`AsyncSession` engine:

- `AsyncProducer.send(..., session=session)` (validation, canonical number, STOP list,
  idempotency, the insert in a savepoint, the wake-up after commit);
- a bare `INSERT ... RETURNING id` of the same row through the same kind of session.

Prints p50 / p99 / max of each and the ratio of their rates (goal: p99 <= 5 ms, rate
>= 0.8 of the bare insert). Asserts no speed; exits 1 if a row is missing.

    python -m bench.async_enqueue [--sends N] [--pg-admin-url URL] [--redis-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta

from bench.harness import EXIT_CHECK_FAILED, EXIT_OK, EXIT_UNAVAILABLE, fresh_postgres, phone, say

CHATBOT = "3254a9d0424c4806b9ea3d0763a1b2c3"


def figures(name: str, samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (f"{name}: p50 {statistics.median(ordered) * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms, "
            f"max {ordered[-1] * 1000:.2f} ms, {len(ordered) / sum(ordered):,.0f}/s")


async def run(url: str, redis_url: str, sends: int) -> int:
    from sqlalchemy import func, insert, select
    from sqlalchemy.ext.asyncio import AsyncSession

    from oaksend import AsyncProducer
    from oaksend.models.db import make_async_engine
    from oaksend.models.tables import Message
    from oaksend.worker.settings import Settings

    settings = Settings(database_url=url, redis_url=redis_url, _env_file=None)  # type: ignore[call-arg]
    engine = make_async_engine(url)
    producer = AsyncProducer(settings, engine=engine)
    ours: list[float] = []
    bare: list[float] = []
    now = datetime.now(UTC)
    for i in range(sends + 50):  # the first 50 of each warm up and are not counted
        started = time.perf_counter()
        async with AsyncSession(engine) as session, session.begin():
            await producer.send(CHATBOT, phone(i), "Reminder: tomorrow 10:00", idempotency_key=f"bench-{i}",
                                session=session)
        took = time.perf_counter() - started
        started = time.perf_counter()
        async with AsyncSession(engine) as session, session.begin():
            await session.execute(insert(Message).values(
                serial_number=CHATBOT, to_phone=phone(1_000_000 + i), body="Reminder: tomorrow 10:00",
                state="pending", priority=1, next_attempt_at=now, deadline_at=now + timedelta(hours=1),
                created_at=now, updated_at=now).returning(Message.id))
        bare_took = time.perf_counter() - started
        if i >= 50:
            ours.append(took)
            bare.append(bare_took)
    async with AsyncSession(engine) as session:
        count = await session.scalar(select(func.count()).select_from(Message))
    await producer.close()
    await engine.dispose()
    say(figures("AsyncProducer.send in the caller's transaction", ours))
    say(figures("bare INSERT ... RETURNING, same session kind   ", bare))
    say(f"ratio of rates (ours / bare): {sum(bare) / sum(ours):.2f}  (goal >= 0.8); "
        f"p99 goal <= 5 ms")
    expected = 2 * (sends + 50)
    if count != expected:
        say(f"check FAILED: {count} rows, expected {expected}")
        return EXIT_CHECK_FAILED
    say(f"check ok   {count} rows")
    return EXIT_OK


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.async_enqueue")
    parser.add_argument("--sends", type=int, default=2000)
    parser.add_argument("--pg-admin-url", default=os.environ.get(
        "BENCH_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13"))
    args = parser.parse_args()
    try:
        url = fresh_postgres(args.pg_admin_url, "oaksend_bench_async")
    except Exception as exc:  # noqa: BLE001 - any driver error: PostgreSQL is not reachable
        say(f"PostgreSQL unavailable: {type(exc).__name__}")
        return EXIT_UNAVAILABLE
    from oaksend.migrations.runner import upgrade

    upgrade(url)
    return asyncio.run(run(url, args.redis_url, args.sends))


if __name__ == "__main__":
    sys.exit(main())
