"""`python -m bench.limits` (`make bench-limits`): per-chatbot rate limits and fairness, as figures.

Two measurements, each on a fresh stack of the real services of this machine
(a fresh PostgreSQL database, a flushed Redis db, the sandbox API enforcing the
same limits as oaksend, one dispatcher and N worker processes):

1. limits: chatbots A, B and C (default 5/s burst 1, 20/s burst 2, 50/s burst 5)
   each get a backlog of rate * 80 messages (Producer.send_many). Measured by
   the sandbox's request records over a 60 s window per chatbot (after a 2 s
   warm-up from its first request): requests received, observed rate and
   observed/limit (goal >= 0.97), the most requests in any 1 s sliding window
   over the whole run (goal <= rate + burst), the sandbox's own max_1s and GCRA
   violations (with --limit-slack-ms of network jitter forgiven), and how often
   workers handed a message back because its rate slot was too far away.
2. fairness: chatbot E (50/s) gets 100,000 messages (send_many in chunks of
   5,000); while that backlog drains at E's limit, chatbot D (20/s burst 5) gets
   20 messages one at a time, 0.5 s apart (Producer.send): D's enqueue-to-sent
   latency p50/p99 (goal p99 <= 1 s), and what E sent meanwhile.

It asserts no speed or latency. It exits 1 when a correctness check fails
(a message lost, sent twice, failed, or left in flight), 4 when Redis or
PostgreSQL is unreachable, 130 when interrupted. Every process it starts is
stopped on the way out, Ctrl-C and errors included.

    python -m bench.limits [--workers 4] [--concurrency 8] [--window 60] [--skip-limits] [--skip-fairness]

The stack reads OAKSEND_* tuning variables from the environment as usual; the
stores, the queue, the API URL and key are the benchmark's own.

The database is dropped after a run whose checks all held, and kept (with the process logs)
after one that failed or was interrupted. Part 1 is here, part 2 in bench.fairness, what both
share (the stack, the records, the checks) in bench.limits_stack.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Any

from bench.fairness import run_fairness
from bench.harness import (
    BenchError,
    Check,
    Processes,
    Session,
    cpu_report,
    cpu_snapshot,
    dispatcher_passes,
    drop_postgres,
    flush_redis,
    log_marks,
    report_checks,
    run_session,
    say,
)
from bench.limits_stack import (
    PG_DATABASE,
    Bot,
    LimitStack,
    Records,
    check_bot,
    count_between,
    max_in_window,
    parse_bot,
    worker_log_counts,
)

PROGRESS_EVERY_S = 5.0
WARMUP_S = 2.0


# -- part 1 -------------------------------------------------------------------------------------
def run_limits(opts: argparse.Namespace, procs: Processes, checks: list[Check]) -> list[dict[str, Any]]:
    bots: list[Bot] = opts.bot
    say(f"== part 1: limits ({', '.join(f'{b.letter} {b.rate:g}/s burst {b.burst}' for b in bots)}) ==")
    stack = LimitStack(opts, procs, bots, "limits")
    try:
        stack.start()
        say(f"  sandbox limits as oaksend's, --limit-slack-ms {opts.slack_ms:g} (a request up to {opts.slack_ms:g} ms "
            f"early is not counted a violation: network and scheduling jitter between the worker's Redis slot "
            f"and the sandbox reading the request)")
        records = Records(stack.control)
        marks = log_marks(procs, stack.workers + [stack.dispatcher])
        cpu0 = cpu_snapshot(procs)
        cpu_t0 = time.monotonic()
        enqueued = enqueue_backlogs(opts, stack, bots)
        span = WARMUP_S + opts.window
        watch_windows(opts, procs, records, bots, span)
        cpu = cpu_report(cpu0, cpu_snapshot(procs), time.monotonic() - cpu_t0)
        stats = stack.control.stats().get("chatbots", {})
        dlog = dispatcher_passes(procs.log_text(stack.dispatcher)[marks[stack.dispatcher]:])
        say("  stopping: dispatcher first, then the workers once nothing is in flight ...")
        left = stack.quiesce()
        checks.append(("part 1: nothing left dispatched or sending after the dispatcher stopped", left == 0,
                       f"{left} in flight"))
        records.poll()
        # Every log line, now that the workers have stopped.
        wlog = worker_log_counts(procs, stack.workers, marks)
        rows = [bot_row(opts, stack, records, bot, stats.get(bot.serial, {}), enqueued[bot.serial], checks)
                for bot in bots]
        print_limits(opts, rows, wlog, dlog, cpu)
        return rows
    finally:
        procs.stop()
        stack.close()


def enqueue_backlogs(opts: argparse.Namespace, stack: LimitStack, bots: list[Bot]) -> dict[str, int]:
    """Each chatbot's backlog (--backlog-s of its rate) with Producer.send_many; serial -> messages."""
    enqueued: dict[str, int] = {}
    for bot in bots:
        n = math.ceil(bot.rate * opts.backlog_s)
        m0 = time.monotonic()
        stack.producer.send_many([bot.request(i) for i in range(n)])
        enqueued[bot.serial] = n
        say(f"  {bot.letter}: enqueued {n:,} messages ({opts.backlog_s:g} s of its rate) in "
            f"{time.monotonic() - m0:.2f} s")
    return enqueued


def watch_windows(opts: argparse.Namespace, procs: Processes, records: Records, bots: list[Bot], span: float) -> None:
    """Until every chatbot's window (`span` s from its first request at the API) is over, with progress."""
    say(f"  measuring each chatbot over [{WARMUP_S:g} s, {span:g} s) after its first request reached the API ...")
    start = time.monotonic()
    last_print = start
    last_counts = {b.serial: 0 for b in bots}
    while True:
        time.sleep(0.5)
        procs.check_alive()
        records.poll()
        now_unix = time.time()
        firsts = [records.first_at.get(b.serial) for b in bots]
        known = [f for f in firsts if f is not None]
        if len(known) == len(bots) and now_unix > max(known) + span + 0.5:
            return
        now = time.monotonic()
        if now - start > span + 60:
            missing = [b.letter for b, f in zip(bots, firsts) if f is None]
            raise BenchError(f"part 1: chatbot(s) {missing or '?'} did not run their window in time "
                             f"(logs in {procs.logdir})")
        if now - last_print >= PROGRESS_EVERY_S:
            parts = []
            for b in bots:
                c = records.count(b.serial)
                parts.append(f"{b.letter} {c:,} ({(c - last_counts[b.serial]) / (now - last_print):.1f}/s)")
                last_counts[b.serial] = c
            say(f"    {now - start:5.1f} s  API received: " + ", ".join(parts))
            last_print = now


def bot_row(opts: argparse.Namespace, stack: LimitStack, records: Records, bot: Bot, st: dict[str, Any],
            enqueued: int, checks: list[Check]) -> dict[str, Any]:
    """One chatbot's figures over its window (and the whole run), after its checks."""
    sn = bot.serial
    span = WARMUP_S + opts.window
    times = records.times(sn)
    t0 = records.first_at[sn]
    got = count_between(times, t0 + WARMUP_S, t0 + span)
    warm = count_between(times, t0, t0 + WARMUP_S)
    rate = got / opts.window
    moved, throttled_pending = stack.given_back(sn)
    sent = check_bot(stack, records, bot, enqueued, checks)
    return {
        "bot": bot, "received": got, "warmup": warm, "rate": rate, "ratio": rate / bot.rate,
        "max_1s": max_in_window(times), "max_1s_window": max_in_window(
            [t for t in times if t0 + WARMUP_S <= t < t0 + span]),
        "sandbox_max_1s": st.get("max_1s"), "violations": st.get("violations"),
        "by_status": st.get("by_status"), "moved": moved, "throttled_pending": throttled_pending,
        "total_received": len(times), "sent": sent, "max_1s_left": max_in_window(stack.departures(sn)),
    }


def print_limits(opts: argparse.Namespace, rows: list[dict[str, Any]], wlog: dict[str, int], dlog: dict[str, int],
                 cpu: str) -> None:
    say()
    say(f"part 1 results (window {opts.window:g} s per chatbot, after {WARMUP_S:g} s of warm-up from its first "
        f"request; sandbox --limit-slack-ms {opts.slack_ms:g}):")
    say(f"  {'chatbot':8} {'limit':>6} {'burst':>5} {'warm-up':>7} {'received':>8} {'obs/s':>7} {'obs/limit':>9} "
        f"{'max 1s':>6} {'<=':>4} {'sbx max_1s':>10} {'violations':>10} {'given back':>10}")
    for r in rows:
        b = r["bot"]
        say(f"  {b.letter:8} {b.rate:6g} {b.burst:5d} {r['warmup']:7d} {r['received']:8,d} {r['rate']:7.2f} "
            f"{r['ratio']:9.3f} {r['max_1s']:6d} {b.rate + b.burst:4g} {r['sandbox_max_1s']!s:>10} "
            f"{r['violations']!s:>10} {r['moved']:10,d}")
    say("  goals: obs/limit >= 0.97, max 1s (sliding, from the sandbox's records, whole run) <= limit + burst")
    for r in rows:
        b = r["bot"]
        say(f"  {b.letter}: by status at the window's end {r['by_status']}; max 1s inside the window {r['max_1s_window']}; "
            f"max 1s as the requests left the workers (attempts' started_at, whole run) {r['max_1s_left']}; "
            f"{r['sent']:,} sent in all; messages handed back at least once (next_attempt_at moved) "
            f"{r['moved']:,}, pending ones last 'throttled' {r['throttled_pending']:,}")
    say(f"  workers: {wlog.get('tasks', 0):,} tasks, {wlog.get('calls', 0):,} API calls, "
        f"{wlog.get('throttled', 0):,} throttled give-backs (attempt-less, from task results), "
        f"{wlog.get('skipped', 0):,} skipped, {wlog.get('http_429', 0):,} answered 429")
    say(f"  dispatcher: {dlog['passes']:,} passes that dispatched, {dlog['dispatched']:,} leases in "
        f"{dlog['tasks']:,} tasks, {dlog['rescued']:,} leases rescued")
    if cpu:
        say(f"  CPU (% of one core; * = machine-wide): {cpu}")


# -- the run ------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.limits",
                                description="Per-chatbot rate limits and fairness of oaksend against the sandbox.")
    p.add_argument("--workers", type=int, default=4, help="worker processes (4)")
    p.add_argument("--concurrency", type=int, default=8, help="threads per worker process (8)")
    p.add_argument("--bot", type=parse_bot, action="append",
                   help="part 1 chatbot LETTER=RATE[:BURST], repeatable (A=5:1 B=20:2 C=50:5)")
    p.add_argument("--window", type=float, default=60.0, help="part 1 measured seconds per chatbot (60)")
    p.add_argument("--backlog-s", type=float, default=80.0, help="part 1 backlog in seconds of each rate (80)")
    p.add_argument("--slack-ms", type=float, default=20.0, help="the sandbox's --limit-slack-ms (20)")
    p.add_argument("--big", type=parse_bot, default=Bot("E", 50.0, 5), help="part 2 backlog chatbot (E=50:5)")
    p.add_argument("--small", type=parse_bot, default=Bot("D", 20.0, 5), help="part 2 trickle chatbot (D=20:5)")
    p.add_argument("--backlog", type=int, default=100_000, help="part 2 messages waiting for E (100,000)")
    p.add_argument("--chunk", type=int, default=5_000, help="part 2 messages per send_many (5,000)")
    p.add_argument("--small-messages", type=int, default=20, help="part 2 messages of D (20)")
    p.add_argument("--small-gap-s", type=float, default=0.5, help="part 2 seconds between D's messages (0.5)")
    p.add_argument("--settle-s", type=float, default=5.0,
                   help="part 2: D starts once E has been sending this long and the backlog is enqueued (5)")
    p.add_argument("--skip-limits", action="store_true", help="run part 2 only")
    p.add_argument("--skip-fairness", action="store_true", help="run part 1 only")
    p.add_argument("--redis-url", default=os.environ.get("BENCH_LIMITS_REDIS_URL", "redis://127.0.0.1:6379/9"),
                   help="oaksend's Redis db, flushed (redis://127.0.0.1:6379/9)")
    p.add_argument("--pg-admin-url",
                   default=os.environ.get("BENCH_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"),
                   help=f"an existing database to connect to for dropping/creating {PG_DATABASE}")
    p.add_argument("--keep-logs", action="store_true", help="keep the process logs even when all went well")
    opts = p.parse_args(argv)
    opts.bot = opts.bot or [Bot("A", 5.0, 1), Bot("B", 20.0, 2), Bot("C", 50.0, 5)]
    if len({b.letter for b in opts.bot}) != len(opts.bot) or any(b.letter in ("D", "E") for b in opts.bot):
        p.error("--bot letters must be distinct and among A, B, C")
    if opts.big.letter != "E" or opts.small.letter != "D":
        p.error("--big is E=..., --small is D=...")
    for name in ("workers", "concurrency", "backlog", "chunk", "small_messages"):
        if getattr(opts, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if opts.window <= 0 or opts.backlog_s <= opts.window + WARMUP_S:
        p.error("--backlog-s must exceed --window + 2 s (the backlog must outlast the measurement)")
    return opts


def summary(opts: argparse.Namespace, limits: list[dict[str, Any]], fair: dict[str, Any] | None) -> None:
    say()
    say("== summary ==")
    for r in limits:
        b = r["bot"]
        say(f"limits {b.letter} {b.rate:g}/s burst {b.burst}: observed {r['rate']:.2f}/s = {r['ratio']:.3f} of the "
            f"limit ({'ok' if r['ratio'] >= 0.97 else 'MISSED'} >= 0.97); max in 1 s {r['max_1s']} "
            f"({'ok' if r['max_1s'] <= b.rate + b.burst else 'MISSED'} <= {b.rate + b.burst:g}; as they left the workers "
            f"{r['max_1s_left']}); sandbox max_1s "
            f"{r['sandbox_max_1s']}, violations {r['violations']} (slack {opts.slack_ms:g} ms)")
    if fair is not None:
        say(f"fairness: D p50 {fair['p50']:.0f} ms, p99 {fair['p99']:.0f} ms "
            f"({'ok' if fair['p99'] <= 1000 else 'MISSED'} <= 1000 ms) while E sent {fair['e_during']:,} in "
            f"{fair['e_span']:.1f} s ({fair['e_during'] / fair['e_span'] if fair['e_span'] > 0 else math.nan:.1f}/s)")


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)

    def body(session: Session) -> int:
        # On the way out: the Redis db emptied; the database dropped, but only after a run whose checks all
        # held (kept for a look after one that failed; the next run recreates it anyway).
        session.at_exit(lambda: drop_postgres(opts.pg_admin_url, PG_DATABASE), if_ok=True)
        session.at_exit(lambda: flush_redis(opts.redis_url))
        say(f"bench.limits: {opts.workers} worker process(es) x --concurrency {opts.concurrency}, 1 dispatcher, "
            f"PostgreSQL, {os.cpu_count()} CPUs; logs in {session.logdir}")
        limits = run_limits(opts, session.procs, session.checks) if not opts.skip_limits else []
        fair = run_fairness(opts, session.procs, session.checks) if not opts.skip_fairness else None
        summary(opts, limits, fair)
        return report_checks(session.checks, session.logdir)

    return run_session(body, prefix="oaksend-bench-limits-", keep_logs=opts.keep_logs, redis_urls=[opts.redis_url],
                       pg_admin_url=opts.pg_admin_url)


if __name__ == "__main__":
    sys.exit(main())
