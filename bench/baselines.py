"""The two baselines of `python -m bench.pipeline`, each drained by Celery worker processes with oaksend's
pool (threads) and concurrency:

- a bare Celery no-op task (bench/noop.py) on the same broker: what one Celery task per message costs;
- what a user would write instead of oaksend (bench/naive.py): a plain Celery task per message that loads
  its row, POSTs with httpx to the same sandbox API and records one attempt row in oaksend's database.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable
from datetime import UTC
from typing import Any

from bench.harness import (
    API_KEY,
    BenchError,
    Check,
    Processes,
    child_env,
    cpu_report,
    cpu_snapshot,
    cpu_used,
    flush_redis,
    percentile,
    phone,
    say,
    text_of,
)
from bench.harness.stack import DEFAULT_CONCURRENCY, PROGRESS_EVERY_S, STALL_S, WARMUP_BASE, Stack


def threads(opts: argparse.Namespace) -> int:
    """Threads per worker process: oaksend's (`oaksend worker`'s default unless --concurrency)."""
    return int(opts.concurrency or DEFAULT_CONCURRENCY)


def start_celery_workers(opts: argparse.Namespace, procs: Processes, module: str, queue: str, names: tuple[str, str],
                         env: dict[str, str]) -> list[str]:
    """opts.workers Celery worker processes of `module` on `queue`, with oaksend's pool (threads) and
    concurrency; names = (log name prefix, node name prefix). Their log names, once they are ready."""
    started = []
    for i in range(opts.workers):
        name = f"{names[0]}{i}"
        procs.start(name, [sys.executable, "-m", "celery", "-A", module, "worker", "--loglevel", opts.log_level,
                           "-Q", queue, "--pool", "threads", "--concurrency", str(threads(opts)),
                           "--without-gossip", "--without-mingle", "--without-heartbeat", "-n", f"{names[1]}{i}@%h"],
                    env)
        started.append(name)
    if opts.log_level in ("DEBUG", "INFO"):
        procs.wait_for_log(started, " ready.", 60)
    return started


def run_baseline(opts: argparse.Namespace, procs: Processes) -> dict[str, float]:
    """N no-op tasks published one by one; tasks/s from the first publish to the last completion."""
    import redis
    from celery import Celery

    from bench import noop

    url = opts.baseline_redis_url
    n = opts.messages
    flush_redis(url)
    names = start_celery_workers(opts, procs, "bench.noop", noop.QUEUE, ("baseline-worker", "noop"),
                                 child_env(BENCH_NOOP_BROKER_URL=url))
    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=3)
    app = Celery("bench_noop_publisher", broker=url, set_as_current=False)
    app.conf.update(task_serializer="json", broker_pool_limit=10, task_send_sent_event=False)
    try:
        # Warm up: every connection made, every thread started, before the clock runs.
        with app.producer_or_acquire() as producer:
            for _ in range(opts.workers * threads(opts)):
                app.send_task(noop.TASK, queue=noop.QUEUE, producer=producer)
        wait_counter(client, noop.DONE_KEY, opts.workers * threads(opts), procs, "baseline warm-up")
        client.delete(noop.DONE_KEY, noop.LAST_KEY)

        say(f"baseline: publishing {n:,} no-op tasks one by one ...")
        cpu0 = cpu_snapshot(procs)
        t0 = time.time()
        with app.producer_or_acquire() as producer:
            for _ in range(n):
                app.send_task(noop.TASK, queue=noop.QUEUE, producer=producer)
        published_s = time.time() - t0
        say(f"  published {n:,} in {published_s:.2f} s ({n / published_s:,.0f} tasks/s)")
        wait_counter(client, noop.DONE_KEY, n, procs, "baseline", t0=t0)
        last = float(client.get(noop.LAST_KEY) or "nan")
        cpu1 = cpu_snapshot(procs)
        cpu = cpu_report(cpu0, cpu1, time.time() - t0)
        worker_cpu_s = sum(v for k, v in cpu_used(cpu0, cpu1).items() if k.startswith("baseline-worker"))
    finally:
        app.close()
        client.close()
        procs.stop(names)
        flush_redis(url)
    elapsed = last - t0
    rate = n / elapsed
    say(f"baseline: {n:,} no-op tasks drained in {elapsed:.2f} s: {rate:,.0f} tasks/s")
    if cpu:
        say(f"  CPU (% of one core; * = machine-wide): {cpu}")
        say(f"  worker CPU per task: {worker_cpu_s * 1000.0 / n:.2f} ms")
    return {"rate": rate, "elapsed_s": elapsed, "publish_rate": n / published_s}


def wait_counter(client: Any, key: str, target: int, procs: Processes, what: str, t0: float | None = None) -> None:
    """Poll a Redis counter until it reaches target; progress every 2 s when t0 (the start) is given."""
    wait_count(lambda: int(client.get(key) or 0), target, procs, what, t0)


def wait_count(read: Callable[[], int], target: int, procs: Processes, what: str, t0: float | None = None,
               every_s: float = 0.05) -> None:
    """Poll `read()` until it reaches target; BenchError after STALL_S without progress; progress every 2 s
    when t0 (the start, time.time()) is given."""
    start = time.time() if t0 is None else t0
    last_print = time.monotonic()
    last_value, last_change = -1, time.monotonic()
    while True:
        value = read()
        if value >= target:
            return
        now = time.monotonic()
        if value != last_value:
            last_value, last_change = value, now
        elif now - last_change > STALL_S:
            raise BenchError(f"{what}: no progress for {STALL_S:.0f} s at {value:,}/{target:,} "
                             f"(logs in {procs.logdir})")
        if t0 is not None and now - last_print >= PROGRESS_EVERY_S:
            say(f"  {time.time() - start:6.1f} s  done {value:,} / {target:,}")
            last_print = now
        procs.check_alive()
        time.sleep(every_s)


# -- what a user would write instead: a plain Celery task per message (bench/naive.py) -------------------------
def run_naive(opts: argparse.Namespace, stack: Stack, checks: list[Check]) -> dict[str, float]:
    """N messages: rows inserted and one `send_one` task each published, in chunks of --chunk, into the tables
    of bench.naive in oaksend's database, drained by its own workers against the stack's sandbox; msgs/s from
    the first enqueue to the last attempt row, checked against the tables and the sandbox's records."""
    from celery import Celery
    from sqlalchemy import create_engine

    from bench import naive

    url, n, procs = opts.baseline_redis_url, opts.messages, stack.procs
    flush_redis(url)
    engine = create_engine(stack.database_url)
    naive.metadata.create_all(engine)
    env = child_env(BENCH_NAIVE_BROKER_URL=url, BENCH_NAIVE_DATABASE_URL=stack.database_url,
                    BENCH_NAIVE_API_URL=stack.sandbox_url, BENCH_NAIVE_API_KEY=API_KEY,
                    BENCH_NAIVE_POOL_SIZE=str(threads(opts)))
    names = start_celery_workers(opts, procs, "bench.naive", naive.QUEUE, ("naive-worker", "naive"), env)
    app = Celery("bench_naive_publisher", broker=url, set_as_current=False)
    app.conf.update(task_serializer="json", broker_pool_limit=10, task_send_sent_event=False)
    try:
        # Warm up: a message per worker thread (connections made, threads started), then forgotten.
        warm = opts.workers * threads(opts)
        enqueue_naive(app, engine, stack, range(WARMUP_BASE, WARMUP_BASE + warm), opts.chunk)
        wait_count(lambda: naive_attempts(engine), warm, procs, "naive baseline warm-up")
        clear_naive(engine)
        stack.control.reset()

        say(f"naive baseline: enqueuing {n:,} messages (a row and a `send_one` task each) "
            f"in chunks of {opts.chunk:,} ...")
        cpu0 = cpu_snapshot(procs)
        t0 = time.time()
        ids = enqueue_naive(app, engine, stack, range(n), opts.chunk)
        enqueue_s = time.time() - t0
        say(f"  enqueued {n:,} in {enqueue_s:.2f} s ({n / enqueue_s:,.0f} msgs/s)")
        wait_count(lambda: naive_attempts(engine), n, procs, "naive baseline", t0=t0, every_s=0.1)
        cpu1 = cpu_snapshot(procs)
        cpu = cpu_report(cpu0, cpu1, time.time() - t0)
        worker_cpu_s = sum(v for k, v in cpu_used(cpu0, cpu1).items() if k.startswith("naive-worker"))
        last, latencies = check_naive(engine, stack, ids, n, checks)
    finally:
        app.close()
        procs.stop(names)
        flush_redis(url)
        with contextlib.suppress(Exception):  # leaving on an error: do not hide it
            stack.control.reset()
            naive.metadata.drop_all(engine)
        engine.dispose()
    elapsed = last - t0
    rate = n / elapsed
    say(f"naive baseline: {n:,} messages drained in {elapsed:.2f} s: {rate:,.0f} msgs/s")
    if latencies:
        say(f"  HTTP call (attempt latency_ms): mean {sum(latencies) / len(latencies):.1f} ms, "
            f"p50 {percentile(latencies, 50):.1f} ms, p99 {percentile(latencies, 99):.1f} ms")
    if cpu:
        say(f"  CPU (% of one core; * = machine-wide): {cpu}")
        say(f"  worker CPU per message: {worker_cpu_s * 1000.0 / n:.2f} ms")
    return {"rate": rate, "elapsed_s": elapsed, "enqueue_rate": n / enqueue_s}


def enqueue_naive(app: Any, engine: Any, stack: Stack, indexes: range, chunk: int) -> list[int]:
    """Messages `indexes` (their own numbers, the stack's chatbots in turn), a chunk at a time: the rows in
    one INSERT, then a task per row; their ids."""
    from sqlalchemy import insert

    from bench import naive

    ids: list[int] = []
    serials = stack.serials
    with app.producer_or_acquire() as producer:
        for lo in range(indexes.start, indexes.stop, chunk):
            rows = [{"chatbot": serials[i % len(serials)], "to_phone": phone(i), "body": text_of(i)}
                    for i in range(lo, min(lo + chunk, indexes.stop))]
            with engine.begin() as conn:
                result = conn.execute(insert(naive.messages).returning(naive.messages.c.id), rows)
                got = [int(i) for i in result.scalars()]
            for message_id in got:
                app.send_task(naive.TASK, args=[message_id], queue=naive.QUEUE, producer=producer)
            ids.extend(got)
    return ids


def naive_attempts(engine: Any) -> int:
    from sqlalchemy import func, select

    from bench import naive

    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(naive.attempts)).scalar_one())


def clear_naive(engine: Any) -> None:
    from sqlalchemy import delete

    from bench import naive

    with engine.begin() as conn:
        conn.execute(delete(naive.attempts))
        conn.execute(delete(naive.messages))


def check_naive(engine: Any, stack: Stack, ids: list[int], n: int, checks: list[Check]) -> tuple[float, list[float]]:
    """The checks of the naive run (each message sent, with exactly one attempt; the sandbox saw each number
    once); the time of the last attempt row (time.time()) and the attempts' HTTP latencies (ms, ascending)."""
    from sqlalchemy import func, select

    from bench import naive

    a, m = naive.attempts, naive.messages
    with engine.connect() as conn:
        per = dict(conn.execute(select(a.c.message_id, func.count()).group_by(a.c.message_id)).all())
        states = dict(conn.execute(select(m.c.state, func.count()).group_by(m.c.state)).all())
        last_at = conn.execute(select(func.max(a.c.created_at))).scalar_one()
        latencies = sorted(r[0] for r in conn.execute(select(a.c.latency_ms)) if r[0] is not None)
    checks.append(("naive baseline: all messages sent", len(ids) == n and states.get("sent") == n and len(states) == 1,
                   f"{len(ids):,} enqueued; states {states}"))
    twice = sum(1 for c in per.values() if c != 1)
    checks.append(("naive baseline: one attempt per message", set(per) == set(ids) and twice == 0,
                   f"{sum(per.values()):,} attempts for {len(per):,} messages, {twice} with more than one"))
    stats = stack.control.stats()
    phones = [r.get("to_phone_number") for r in stack.control.requests()]
    checks.append(("naive baseline: sandbox recorded exactly N requests, each number once",
                   stats.get("total") == n and len(set(phones)) == len(phones) == n
                   and set(phones) == {phone(i) for i in range(n)},
                   f"sandbox total {stats.get('total'):,}, {len(set(phones)):,} distinct numbers, "
                   f"by status {stats.get('by_status')}"))
    if last_at is None:
        return float("nan"), latencies
    if last_at.tzinfo is None:  # SQLite keeps no zone: the worker wrote UTC
        last_at = last_at.replace(tzinfo=UTC)
    return last_at.timestamp(), latencies
