"""`python -m bench.enqueue` (`make bench-enqueue`): how fast messages become durable, as figures.

Measured in one run on a fresh PostgreSQL database of the benchmark's own
(default `oaksend_bench_enqueue`, dropped and created) and a Redis db for the
wake-ups, each against a baseline taken in the same run:

1. baseline: the same N rows written with the bare driver (psycopg), no
   validation, no idempotency: a multi-row `executemany` INSERT in pipeline
   mode, and COPY (the floor of what PostgreSQL can take);
2. `Producer.send_many` of N messages (validation included), without and with
   an idempotency key per message (a campaign), and again with the same keys
   (every row found, none written);
3. `Producer.send` one at a time: p50, p99 and max of M calls, interleaved
   with M bare one-row INSERT ... RETURNING, each in its own transaction, with
   the same driver (so both see the same load on a shared machine).

It asserts no speed: it prints figures and ratios, and checks that every row
is there (exit 1 when not, 4 when a service is unreachable).

    python -m bench.enqueue [--messages N] [--sends M] [--pg-admin-url URL] [--pg-database NAME]
                            [--redis-url URL]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from bench.harness import EXIT_CHECK_FAILED, EXIT_OK, EXIT_UNAVAILABLE, fresh_postgres, phone, say, text_of

CHATBOT = "3254a9d0424c4806b9ea3d0763a1b2c3"


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def libpq_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


class Bench:
    def __init__(self, opts: argparse.Namespace) -> None:
        import psycopg
        import redis

        from oaksend.worker.enqueue import Producer
        from oaksend.migrations.runner import upgrade
        from oaksend.worker.settings import Settings

        self.opts = opts
        self.url = fresh_postgres(opts.pg_admin_url, opts.pg_database)
        upgrade(self.url)
        self.settings = Settings(database_url=self.url, redis_url=opts.redis_url, _env_file=None)  # type: ignore[call-arg]
        self.producer = Producer(self.settings, redis_client=redis.Redis.from_url(opts.redis_url))
        self.raw = psycopg.connect(libpq_url(self.url), autocommit=True)

    def close(self) -> None:
        self.producer.close()
        self.raw.close()

    def empty(self) -> None:
        self.raw.execute("TRUNCATE oaksend_messages RESTART IDENTITY CASCADE")
        self.raw.execute("VACUUM ANALYZE oaksend_messages")

    def rows(self) -> int:
        return int(self.raw.execute("SELECT count(*) FROM oaksend_messages").fetchone()[0])  # type: ignore[index]

    # -- baselines --------------------------------------------------------------------------
    def raw_values(self, n: int) -> list[tuple[Any, ...]]:
        now = datetime.now(timezone.utc)
        return [(CHATBOT, phone(i), text_of(i), 1, "pending", 0, 0, 0, now, None, None, now, now) for i in range(n)]

    def raw_insert(self, n: int) -> float:
        values = self.raw_values(n)
        sql = ("INSERT INTO oaksend_messages (serial_number, to_phone, body, segments, state, attempts, failures, "
               "ambiguous, next_attempt_at, deadline_at, idempotency_key, created_at, updated_at) "
               "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)")

        def run() -> None:
            with self.raw.transaction(), self.raw.cursor() as cur:
                cur.executemany(sql, values)

        return timed(run)[0]

    def raw_copy(self, n: int) -> float:
        values = self.raw_values(n)
        sql = ("COPY oaksend_messages (serial_number, to_phone, body, segments, state, attempts, failures, "
               "ambiguous, next_attempt_at, deadline_at, idempotency_key, created_at, updated_at) FROM STDIN")

        def run() -> None:
            with self.raw.transaction(), self.raw.cursor() as cur, cur.copy(sql) as copy:
                for row in values:
                    copy.write_row(row)

        return timed(run)[0]

    def singles(self, m: int) -> tuple[list[float], list[float]]:
        """m one-row INSERTs with the bare driver and m Producer.send calls, interleaved (same load for both)."""
        now = datetime.now(timezone.utc)
        sql = ("INSERT INTO oaksend_messages (serial_number, to_phone, body, segments, state, attempts, failures, "
               "ambiguous, next_attempt_at, created_at, updated_at) "
               "VALUES (%s, %s, %s, 1, 'pending', 0, 0, 0, %s, %s, %s) RETURNING id")
        raw, ours = [], []
        for i in range(m):
            start = time.perf_counter()
            with self.raw.transaction():
                self.raw.execute(sql, (CHATBOT, phone(i), text_of(i), now, now, now)).fetchone()
            raw.append(time.perf_counter() - start)
            start = time.perf_counter()
            self.producer.send(CHATBOT, phone(m + i), text_of(i))
            ours.append(time.perf_counter() - start)
        return raw, ours

    # -- oaksend ------------------------------------------------------------------------------
    def requests(self, n: int, keyed: bool) -> list[Any]:
        from oaksend.worker.message.validation import SendRequest

        return [SendRequest(CHATBOT, phone(i), text_of(i), idempotency_key=f"campaign-7:{i}" if keyed else None)
                for i in range(n)]

    def validation_only(self, requests: list[Any]) -> float:
        from oaksend.worker.message.validation import validate

        now = datetime.now(timezone.utc)
        return timed(lambda: [validate(r, now=now, default_deadline_s=3600.0) for r in requests])[0]

    def send_many(self, requests: list[Any]) -> tuple[float, list[int]]:
        return timed(lambda: self.producer.send_many(requests))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench.enqueue", description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000, help="messages per send_many run (default 100,000)")
    parser.add_argument("--sends", type=int, default=2_000, help="single Producer.send calls (default 2,000)")
    parser.add_argument("--pg-admin-url", default=os.environ.get(
        "BENCH_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
        help="an existing database to connect to for dropping/creating --pg-database")
    parser.add_argument("--pg-database", default=os.environ.get("BENCH_PG_DATABASE", "oaksend_bench_enqueue"))
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12"),
                        help="Redis for the dispatcher wake-ups (only a short list key is written)")
    return parser.parse_args(argv)


def bulk(bench: Bench, n: int, check: Callable[[str, bool, str], None]) -> None:
    """Parts 1 and 2: the raw baselines, validation alone, and send_many without and with keys."""
    bench.empty()
    raw = bench.raw_insert(n)
    check("raw insert rows", bench.rows() == n, f"{bench.rows():,}")
    bench.empty()
    copy = bench.raw_copy(n)
    say(f"baseline  raw executemany INSERT (psycopg pipeline)  {n:>9,}  {raw:7.2f} s  {n / raw:9,.0f} rows/s")
    say(f"baseline  raw COPY                                   {n:>9,}  {copy:7.2f} s  {n / copy:9,.0f} rows/s")

    plain = bench.requests(n, keyed=False)
    keyed = bench.requests(n, keyed=True)
    validation = bench.validation_only(plain)
    say(f"validation alone (phone numbers, segments, ...)      {n:>9,}  {validation:7.2f} s")

    bench.empty()
    t_plain, ids = bench.send_many(plain)
    check("send_many rows", bench.rows() == n and len(set(ids)) == n, f"{bench.rows():,} rows, {len(set(ids)):,} ids")
    bench.empty()
    t_keyed, keyed_ids = bench.send_many(keyed)
    check("send_many with keys rows", bench.rows() == n and len(set(keyed_ids)) == n, f"{bench.rows():,} rows")
    t_again, again_ids = bench.send_many(keyed)
    check("same keys again: same ids, nothing written", again_ids == keyed_ids and bench.rows() == n,
          f"{bench.rows():,} rows")
    for name, t in (("send_many", t_plain), ("send_many, a key each", t_keyed),
                    ("send_many, same keys again (all found)", t_again)):
        say(f"oaksend   {name:43}{n:>9,}  {t:7.2f} s  {n / t:9,.0f} msgs/s  "
            f"{t / raw:5.2f}x raw INSERT  {t / copy:5.2f}x COPY")

    say(f"oaksend   database part of send_many (minus validation alone)      {t_plain - validation:7.2f} s  "
        f"{(t_plain - validation) / raw:5.2f}x raw INSERT")


def single_sends(bench: Bench, m: int, check: Callable[[str, bool, str], None]) -> None:
    """Part 3: Producer.send one at a time, interleaved with bare one-row INSERTs."""
    bench.empty()
    bench.singles(min(m, 200))  # warm-up: connections, statement caches
    bench.empty()
    raw_one, one = bench.singles(m)
    check("single sends rows", bench.rows() == 2 * m, f"{bench.rows():,}")
    for name, values in (("baseline  raw one-row INSERT, own transaction", raw_one),
                         ("oaksend   Producer.send (interleaved with it)", one)):
        say(f"{name:47} p50 {pct(values, 0.5) * 1e3:6.2f} ms  p99 {pct(values, 0.99) * 1e3:6.2f} ms  "
            f"max {max(values) * 1e3:6.2f} ms  mean {statistics.fmean(values) * 1e3:6.2f} ms")
    say(f"ratio     Producer.send p99 / raw p99: {pct(one, 0.99) / pct(raw_one, 0.99):.2f}x")


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    n, m = opts.messages, opts.sends
    try:
        bench = Bench(opts)
    except Exception as exc:  # noqa: BLE001 - any driver error: the service is not there
        say(f"bench.enqueue: a service is unreachable: {type(exc).__name__}: {str(exc).splitlines()[0]}")
        return EXIT_UNAVAILABLE
    failures: list[str] = []

    def check(name: str, ok: bool, detail: str) -> None:
        say(f"check {'ok  ' if ok else 'FAIL'} {name}: {detail}")
        if not ok:
            failures.append(name)

    try:
        say(f"bench.enqueue: {n:,} messages per bulk run, {m:,} single sends, PostgreSQL {opts.pg_database}")
        bulk(bench, n, check)
        single_sends(bench, m, check)
    finally:
        bench.close()
    return EXIT_CHECK_FAILED if failures else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
