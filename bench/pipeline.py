"""`python -m bench.pipeline` (`make bench`): throughput and latency of the whole pipeline, as figures.

Four measurements in one run, on the real services of this machine:

1. baseline, bare Celery: a no-op task (bench/noop.py) on the same Redis broker
   (its own db, flushed), drained by worker processes with oaksend's pool and
   concurrency; tasks/s from the first publish to the last completion;
2. baseline, what a user would write instead (bench/naive.py): a plain Celery
   app (same broker, its own queue) with one task per message that loads its row,
   POSTs with a keep-alive httpx.Client to the same sandbox and, in one
   transaction, inserts one attempt row and updates the message's state (tables
   of its own in oaksend's database, run while oaksend's stack is up and idle);
   the same worker processes, pool and threads as oaksend's; messages/s from
   the first enqueue to the last attempt row, checked against its tables and
   the sandbox's records;
3. oaksend end to end: a fresh database, `oaksend migrate`, the sandbox API (no
   latency, no faults), one dispatcher and the worker processes, the chatbot's
   limit set far above what is measured; N messages bulk-enqueued with
   Producer.send_many; messages/s from the first enqueue to the last `sent`
   (messages.sent_at), checked against the database and the sandbox's records;
4. latency at low load: with the stack idle, messages sent one at a time at a
   steady rate with Producer.send; enqueue-to-sent (sent_at - created_at) p50/p99.

`--latency-ms` makes the sandbox answer that late (200 ms is a realistic relay to
Twilio); `--chatbots` spreads the messages over that many chatbots; `--rss-messages`
adds a long run and prints how much the worker and dispatcher RSS grew over it.

It asserts no speed. It exits 1 when a correctness check fails (not every
message sent, or the sandbox did not see each exactly once, in oaksend's run or
the second baseline's), 4 when Redis or PostgreSQL is unreachable, 130 when
interrupted. Every process it starts is stopped on the way out, Ctrl-C and
errors included. `--skip-baseline` skips both baselines.

    python -m bench.pipeline [--messages N] [--database sqlite|postgresql]
                             [--workers N] [--concurrency N] [--latency-ms MS] [--chatbots N]
                             [--rss-messages N] [--redis-url URL] [--baseline-redis-url URL]
                             [--pg-database NAME] [--keep-logs]

Without --concurrency the workers run with `oaksend worker`'s default.

The stack reads OAKSEND_* tuning variables from the environment as usual (e.g.
OAKSEND_DISPATCH_BATCH_SIZE=100 python -m bench.pipeline); the stores, the
queue, the API URL and key are the benchmark's own.

The measurements are bench.baselines (1 and 2), bench.throughput (3), bench.latency (4)
and bench.memory (--rss-messages); the stack under test is bench.harness.stack.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from bench.baselines import run_baseline, run_naive
from bench.harness import Session, flush_redis, report_checks, run_session, say
from bench.harness.stack import DEFAULT_CONCURRENCY, PG_DATABASE, REDIS_URL, WARMUP_BASE, Stack, stores_key
from bench.latency import run_latency
from bench.memory import run_rss
from bench.throughput import run_throughput


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline",
                                     description="Throughput and latency of oaksend against a bare Celery drain "
                                                 "and a plain Celery + httpx task per message.")
    parser.add_argument("--messages", type=int, default=10_000, help="messages (and baseline tasks) per run (10,000)")
    parser.add_argument("--database", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--workers", type=int, default=2, help="worker processes, for oaksend and the baselines (2)")
    parser.add_argument("--concurrency", type=int, default=None,
                        help=f"batches in flight per worker process (default: the worker's, {DEFAULT_CONCURRENCY})")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="the sandbox answers this late (0)")
    parser.add_argument("--chatbots", type=int, default=1, help="messages spread over this many chatbots (1)")
    parser.add_argument("--rss-messages", type=int, default=0,
                        help="a long run of this many more messages, printing worker/dispatcher RSS growth (0: none)")
    parser.add_argument("--pg-database", default=os.environ.get("BENCH_PG_DATABASE", PG_DATABASE),
                        help=f"the benchmark's own PostgreSQL database, dropped and created ({PG_DATABASE})")
    parser.add_argument("--chunk", type=int, default=1_000,
                        help="messages per Producer.send_many call (and per INSERT of the second baseline) (1,000)")
    parser.add_argument("--latency-messages", type=int, default=200, help="messages of the latency run (200)")
    parser.add_argument("--latency-rate", type=float, default=10.0, help="messages/s of the latency run (10)")
    parser.add_argument("--rate", type=float, default=100_000.0, help="the chatbot's limit, msgs/s (100,000)")
    parser.add_argument("--burst", type=int, default=1_000, help="the chatbot's burst (1,000)")
    parser.add_argument("--log-level", default="INFO", type=str.upper,
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="of the workers and dispatcher (INFO)")
    parser.add_argument("--skip-baseline", action="store_true", help="measure oaksend only (no baseline at all)")
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", REDIS_URL),
                        help=f"oaksend's Redis db, flushed ({REDIS_URL})")
    parser.add_argument("--baseline-redis-url",
                        default=os.environ.get("BENCH_BASELINE_REDIS_URL", "redis://127.0.0.1:6379/14"),
                        help="the baselines' Redis db, flushed (redis://127.0.0.1:6379/14)")
    parser.add_argument("--pg-admin-url",
                        default=os.environ.get("BENCH_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
                        help=f"an existing database to connect to for dropping/creating {PG_DATABASE}")
    parser.add_argument("--keep-logs", action="store_true", help="keep the process logs even when all went well")
    opts = parser.parse_args(argv)
    check_args(parser, opts)
    return opts


def check_args(parser: argparse.ArgumentParser, opts: argparse.Namespace) -> None:
    for name in ("messages", "workers", "chunk", "latency_messages", "burst", "chatbots"):
        if getattr(opts, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if opts.messages + opts.latency_messages > WARMUP_BASE:
        parser.error(f"--messages plus --latency-messages must be at most {WARMUP_BASE:,} (one phone number each)")
    if opts.concurrency is not None and opts.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    if opts.latency_ms < 0 or opts.rss_messages < 0:
        parser.error("--latency-ms and --rss-messages must not be negative")
    if opts.latency_rate <= 0 or opts.rate <= 0:
        parser.error("rates must be greater than 0")
    if opts.redis_url.rstrip("/") == opts.baseline_redis_url.rstrip("/"):
        parser.error("--redis-url and --baseline-redis-url must be different Redis dbs (both are flushed)")


def measure(opts: argparse.Namespace, session: Session) -> int:
    """The four measurements, then the results; the exit code."""
    procs, checks = session.procs, session.checks
    shape_ = f"--concurrency {opts.concurrency}" if opts.concurrency else "default settings"
    say(f"bench: {opts.messages:,} messages, {opts.database}, {opts.workers} worker process(es) with "
        f"{shape_}, API latency {opts.latency_ms:g} ms, {opts.chatbots} chatbot(s), {os.cpu_count()} CPUs; "
        f"logs in {session.logdir}")
    baseline = run_baseline(opts, procs) if not opts.skip_baseline else None
    stack = Stack(opts, procs)
    session.at_exit(stack.close)
    stack.start()
    s = stack.settings
    say(f"  stack: dispatch batch {s.dispatch_batch_size}, max/pass {s.dispatch_max_per_pass}, lookahead "
        f"{s.dispatch_lookahead_s:g} s, chatbot limit {opts.rate:g}/s burst {opts.burst}, sandbox {stack.sandbox_url}")
    naive = run_naive(opts, stack, checks) if not opts.skip_baseline else None
    through = run_throughput(opts, stack, checks)
    latency = run_latency(opts, stack, checks)
    rss = run_rss(opts, stack, checks) if opts.rss_messages else None
    results(opts, (baseline, naive), through, latency, rss)
    return report_checks(checks, session.logdir)


def results(opts: argparse.Namespace, baselines: tuple[dict[str, float] | None, dict[str, float] | None],
            through: dict[str, float], latency: dict[str, float], rss: dict[str, Any] | None) -> None:
    baseline, naive = baselines
    say()
    say("== results ==")
    shape = f"{opts.workers} worker x {opts.concurrency or 'default'} concurrency, {opts.latency_ms:g} ms API"
    if baseline:
        say(f"baseline, bare Celery no-op ({shape}):  {baseline['rate']:8,.0f} tasks/s drained  "
            f"(published at {baseline['publish_rate']:,.0f}/s)")
    if naive:
        say(f"baseline, plain Celery + httpx + one attempt row ({opts.database}, {shape}, one task per message):  "
            f"{naive['rate']:8,.0f} msgs/s drained  (enqueued at {naive['enqueue_rate']:,.0f}/s)")
    say(f"oaksend end to end ({opts.database}, {shape}):  {through['rate']:8,.0f} msgs/s sent  "
        f"(enqueued at {through['enqueue_rate']:,.0f}/s, {opts.messages:,} in {through['elapsed_s']:.1f} s)")
    if baseline:
        say(f"ratio oaksend / bare Celery:  {through['rate'] / baseline['rate']:.2f}  (goal >= 1.2)")
    if naive:
        say(f"ratio oaksend / plain Celery task:  {through['rate'] / naive['rate']:.2f}  (goal >= 2.0)")
    say(f"latency at {opts.latency_rate:g} msgs/s, enqueue -> sent:  p50 {latency['p50_ms']:.1f} ms,  "
        f"p99 {latency['p99_ms']:.1f} ms  ({opts.latency_messages} messages)")
    if rss:
        say(f"memory over {rss['messages']:,} messages: largest RSS growth {rss['max_growth_pct']:+.1f}% "
            "(goal < 10%)")


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)

    def body(session: Session) -> int:
        # Emptied on the way out, whatever happened (Redis may be the reason we are leaving: errors ignored).
        session.at_exit(lambda: flush_redis(opts.redis_url))
        return measure(opts, session)

    return run_session(body, prefix="oaksend-bench-", keep_logs=opts.keep_logs, lock=stores_key(opts),
                       redis_urls=[opts.redis_url, opts.baseline_redis_url],
                       pg_admin_url=opts.pg_admin_url if opts.database == "postgresql" else None)


if __name__ == "__main__":
    sys.exit(main())
