"""The two baselines of `python -m bench.pipeline`: a bare Celery no-op task (bench/noop.py) drained on the same
broker, and a raw httpx POST loop against the same sandbox API."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from bench.harness import (
    API_KEY,
    BenchError,
    Processes,
    child_env,
    cpu_report,
    cpu_snapshot,
    cpu_used,
    flush_redis,
    phone,
    say,
    text_of,
)
from bench.harness.stack import CHATBOT, DEFAULT_CONCURRENCY, PROGRESS_EVERY_S, STALL_S, Stack

#: Phone numbers of the raw loop (distinct from every measured message).
RAW_BASE = 6_000_000


def start_noop_workers(opts: argparse.Namespace, procs: Processes, url: str) -> list[str]:
    """The baseline's Celery workers, with oaksend's pool and concurrency; their names."""
    from bench import noop

    env = child_env(BENCH_NOOP_BROKER_URL=url)
    names = []
    for i in range(opts.workers):
        name = f"baseline-worker{i}"
        procs.start(name, [sys.executable, "-m", "celery", "-A", "bench.noop", "worker", "--loglevel", opts.log_level,
                           "-Q", noop.QUEUE, "--pool", "threads",
                           "--concurrency", str(opts.concurrency or DEFAULT_CONCURRENCY),
                           "--without-gossip", "--without-mingle", "--without-heartbeat", "-n", f"noop{i}@%h"], env)
        names.append(name)
    if opts.log_level in ("DEBUG", "INFO"):
        procs.wait_for_log(names, " ready.", 60)
    return names


def run_baseline(opts: argparse.Namespace, procs: Processes) -> dict[str, float]:
    """N no-op tasks published one by one; tasks/s from the first publish to the last completion."""
    import redis
    from celery import Celery

    from bench import noop

    url = opts.baseline_redis_url
    n = opts.messages
    flush_redis(url)
    names = start_noop_workers(opts, procs, url)
    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=3)
    app = Celery("bench_noop_publisher", broker=url, set_as_current=False)
    app.conf.update(task_serializer="json", broker_pool_limit=10, task_send_sent_event=False)
    try:
        # Warm up: every connection made, every thread started, before the clock runs.
        with app.producer_or_acquire() as producer:
            for _ in range(opts.workers * (opts.concurrency or DEFAULT_CONCURRENCY)):
                app.send_task(noop.TASK, queue=noop.QUEUE, producer=producer)
        wait_counter(client, noop.DONE_KEY, opts.workers * (opts.concurrency or DEFAULT_CONCURRENCY), procs,
                     "baseline warm-up")
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
    start = time.time() if t0 is None else t0
    last_print = time.monotonic()
    last_value, last_change = -1, time.monotonic()
    while True:
        value = int(client.get(key) or 0)
        if value >= target:
            return
        now = time.monotonic()
        if value != last_value:
            last_value, last_change = value, now
        elif now - last_change > STALL_S:
            raise BenchError(f"{what}: no progress for {STALL_S:.0f} s at {value:,}/{target:,} (logs in {procs.logdir})")
        if t0 is not None and now - last_print >= PROGRESS_EVERY_S:
            say(f"  {time.time() - start:6.1f} s  done {value:,} / {target:,}")
            last_print = now
        procs.check_alive()
        time.sleep(0.05)


def run_raw_loop(opts: argparse.Namespace, stack: Stack) -> dict[str, float]:
    """N POSTs one after the other from this process, one keep-alive client: the API's bare pace."""
    import httpx

    from oaksend.worker.newoaks.endpoint import SEND_PATH

    n = opts.messages
    say(f"raw httpx: {n:,} POSTs one after the other from one process ...")
    with httpx.Client(headers={"Authorization": API_KEY, "Content-Type": "application/json"}) as client:
        url = stack.sandbox_url.rstrip("/") + SEND_PATH
        for i in range(50):  # warm-up
            client.post(url, json={"SerialNumber": CHATBOT, "ToPhoneNumber": phone(RAW_BASE + n + i), "Message": "w"})
        t0 = time.monotonic()
        bad = 0
        for i in range(n):
            r = client.post(url, json={"SerialNumber": CHATBOT, "ToPhoneNumber": phone(RAW_BASE + i),
                                       "Message": text_of(i)})
            bad += r.status_code != 200
        elapsed = time.monotonic() - t0
    stack.control.reset()
    rate = n / elapsed
    say(f"raw httpx: {n:,} POSTs in {elapsed:.2f} s: {rate:,.0f} requests/s ({bad} not 200)")
    return {"rate": rate}
