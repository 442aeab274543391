"""The first baseline of `python -m bench.pipeline` (bench/naive.py is the second): a bare Celery app with
one no-op task.

Configured like oaksend's app (worker.app.make_app): JSON, no results, early
ack, prefetch multiplier 1, no events, so the figure it gives is what one
Celery task per message costs on this broker and machine, nothing else.

The task only counts itself: INCR a counter and note the wall-clock time of the
latest completion, in one round trip to Redis. The benchmark starts the worker
as a subprocess:

    python -m celery -A bench.noop worker --pool threads --concurrency 8 -Q bench-noop
"""

from __future__ import annotations

import os
import time

import redis

from bench.baseline_app import baseline_app

#: The broker (and the counter's home): a Redis db of its own, flushed by the benchmark.
BROKER_URL = os.environ.get("BENCH_NOOP_BROKER_URL", "redis://127.0.0.1:6379/14")
QUEUE = "bench-noop"
TASK = "bench.noop"
DONE_KEY = "bench:noop:done"
LAST_KEY = "bench:noop:last"

app = baseline_app("bench_noop", BROKER_URL, QUEUE)

_counter = redis.Redis.from_url(BROKER_URL, socket_timeout=5, socket_connect_timeout=5)


@app.task(name=TASK, ignore_result=True)
def noop() -> None:
    pipe = _counter.pipeline(transaction=False)
    pipe.incr(DONE_KEY)
    pipe.set(LAST_KEY, repr(time.time()))
    pipe.execute()
