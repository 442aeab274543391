"""`python -m bench.recovery` (`make bench-recovery`): how soon a worker killed with SIGKILL has its messages sent.

On the real services of this machine, in a PostgreSQL database and a Redis db of
its own (both emptied first): the sandbox API answering in `--latency-ms` (200),
one dispatcher and two worker processes with default settings, and a steady
stream of messages (`--rate` per second over `--chatbots` chatbots, sent with
Producer.send_many every 50 ms; 100/s by default, about half of what one worker
sends here, so the survivor carries the stream and what is measured is the
recovery, not a backlog; `--rate 200` puts the survivor near its capacity).
Then, `--kills` times: let the stream settle, SIGKILL one worker (the older
one), start a replacement a second later (as `oaksend run` restarts a dead
child), measure.

What the dead worker held, read from the database just after the kill:
- the rows it had claimed (`sending`, `claimed_by` its "host:pid");
- the rows of tasks delivered to it and not started, or not claimed yet. Nothing
  in the database says whose those are, so every row `dispatched` at the kill is
  counted (the live worker's and the queued ones end within a second or so
  anyway). How many of them the broker had delivered to the dead worker is
  printed too: kombu's `unacked` entries present at the kill and still there
  once the live worker has started what it had received (an entry is removed
  when its task starts: early ack), less those left by earlier kills.

Recovery of one kill: the seconds from the kill until the last of those messages
ended (`sent_at` of a sent one, `updated_at` of any other final state). Printed
per kill, with p50 and max over the kills, how long the dispatcher took to say
the worker stopped beating (its log), and for reference the stream's own
enqueue -> sent over the same run.

Checks (exit 1 when one fails): every message of the stream ends `sent` (the
`retry` ambiguous policy) or, under `hold`, `unknown` after a `worker_lost`
stand-in; each message's attempt rows match the API's requests for it (the real
ones are at most what the API saw, and what the API saw is at most all of them:
a stand-in may stand for a request that never left); a message requested twice
has a `worker_lost` stand-in (the ambiguous policy's at-least-once); no message
has two `sent` attempts. It asserts no speed. 4 when Redis or PostgreSQL is
unreachable, 130 when interrupted; every process it starts is stopped on the way out.

    python -m bench.recovery [--kills N] [--rate MSGS_PER_S] [--chatbots N] [--latency-ms MS]
                             [--settle-s S] [--redis-url URL] [--pg-database NAME] [--keep-logs]

The stack reads OAKSEND_* tuning variables from the environment as usual (e.g.
OAKSEND_WORKER_HEARTBEAT_TTL_S=5 python -m bench.recovery for an earlier default).

The stream, the kill and what it held are in bench.recovery_kills, the checks in bench.recovery_audit,
the stack (bench.pipeline's, on a queue of its own) in bench.harness.stack.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

from bench.harness import BenchError, Check, Processes, Session, flush_redis, percentile, report_checks, run_session, say
from bench.harness.stack import Stack, stores_key
from bench.recovery_audit import check, stream_latency_s
from bench.recovery_kills import RECOVERY_LIMIT_S, BeatWatch, Kill, Stream, Workers, one_kill

QUEUE = "oaksend-bench-recovery"
PG_DATABASE = "oaksend_bench_recovery"
REDIS_URL = "redis://127.0.0.1:6379/10"


def stack_options(opts: argparse.Namespace) -> argparse.Namespace:
    """What bench.harness.stack's Stack reads: two default workers, a limit far above the stream."""
    return argparse.Namespace(
        database="postgresql", pg_admin_url=opts.pg_admin_url, pg_database=opts.pg_database,
        redis_url=opts.redis_url, baseline_redis_url="", rate=100_000.0, burst=1_000, chatbots=opts.chatbots,
        log_level="INFO", workers=opts.workers, concurrency=None, latency_ms=opts.latency_ms)


def summary(kills: list[Kill]) -> str:
    values = sorted(k.recovery_s for k in kills)
    return f"p50 {percentile(values, 50):.2f} s, max {values[-1]:.2f} s" if values else "no kills"


def run(opts: argparse.Namespace, procs: Processes, checks: list[Check]) -> list[Kill]:
    stack = Stack(stack_options(opts), procs)
    stack.queue = QUEUE
    try:
        stack.start()
        s = stack.settings
        say(f"  stack: heartbeat TTL {s.worker_heartbeat_ttl_s:g} s, lease {s.lease_s:g} s, dispatch batch "
            f"{s.dispatch_batch_size}, ambiguous policy {s.ambiguous_policy}, sandbox {stack.sandbox_url}")
        kills, ids = kill_in_stream(opts, stack)
        say(f"  stream stopped: {len(ids):,} messages; waiting for all of them to end ...")
        stack.wait_sent(min(ids), max(ids), len(ids), "stream", progress=False)
        check(stack, ids, s.ambiguous_policy, checks)
        held = {i for k in kills for i in (*k.claimed, *k.dispatched)}
        reference = stream_latency_s(stack, ids, held)
        say(f"  the stream's own enqueue -> sent meanwhile (messages not in flight at a kill): p50 "
            f"{percentile(reference, 50):.2f} s, p99 {percentile(reference, 99):.2f} s, max "
            f"{reference[-1] if reference else math.nan:.2f} s")
        checks.append(("every kill recovered", all(math.isfinite(k.recovery_s) for k in kills),
                       f"{sum(not math.isfinite(k.recovery_s) for k in kills)} of {len(kills)} not within "
                       f"{RECOVERY_LIMIT_S:.0f} s"))
        return kills
    finally:
        stack.close()


def kill_in_stream(opts: argparse.Namespace, stack: Stack) -> tuple[list[Kill], list[int]]:
    """Start the stream, kill a worker --kills times, stop the stream; (the kills, the stream's message ids)."""
    import redis

    s = stack.settings
    client = redis.Redis.from_url(opts.redis_url, socket_timeout=5)
    workers = Workers(stack)
    stream = Stream(stack, opts.rate)
    stream.start()
    watch = BeatWatch(opts.redis_url, s.keys.workers, workers.members)
    watch.start()
    kills: list[Kill] = []
    orphans: set[str] = set()
    try:
        for k in range(opts.kills):
            time.sleep(opts.settle_s)
            if stream.error is not None:
                raise BenchError(f"the stream failed: {stream.error!r}")
            kill = one_kill(stack, workers, client, orphans)
            kills.append(kill)
            say(f"  kill {k + 1}: {kill.victim}: recovered in {kill.recovery_s:.2f} s (noticed dead after "
                f"{kill.noticed_s:.2f} s; {len(kill.claimed)} it claimed ended after {kill.claimed_s:.2f} s, "
                f"{len(kill.dispatched)} dispatched ({len(kill.received)} delivered to it, not started) after "
                f"{kill.dispatched_s:.2f} s; {kill.backlog} "
                f"messages open at the kill, load {kill.load:.1f})")
    finally:
        stream.stop.set()
        watch.stop.set()
        stream.join(10)
        watch.join(10)
        say(f"  largest age a live worker's heartbeat reached: {watch.largest_s:.2f} s "
            f"(beats every second; judged dead at {s.worker_heartbeat_ttl_s:g} s)")
        client.close()
    return kills, stream.ids


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.recovery",
                                description="Seconds until a SIGKILLed worker's messages are sent by another.")
    p.add_argument("--kills", type=int, default=5, help="workers killed, one after another (5)")
    p.add_argument("--rate", type=float, default=100.0,
                   help="messages/s of the stream (100: about half of what one worker sends here, so that the "
                        "survivor carries it)")
    p.add_argument("--chatbots", type=int, default=4, help="the stream spread over this many chatbots (4)")
    p.add_argument("--latency-ms", type=float, default=200.0, help="the sandbox answers this late (200)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (2)")
    p.add_argument("--settle-s", type=float, default=4.0, help="stream time before each kill (4)")
    p.add_argument("--pg-database", default=os.environ.get("BENCH_RECOVERY_PG_DATABASE", PG_DATABASE),
                   help=f"the benchmark's own PostgreSQL database, dropped and created ({PG_DATABASE})")
    p.add_argument("--pg-admin-url",
                   default=os.environ.get("BENCH_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
                   help="an existing database to connect to for dropping/creating the benchmark's")
    p.add_argument("--redis-url", default=os.environ.get("BENCH_RECOVERY_REDIS_URL", REDIS_URL),
                   help=f"a Redis db of the benchmark's own, flushed ({REDIS_URL})")
    p.add_argument("--keep-logs", action="store_true", help="keep the process logs even when all went well")
    opts = p.parse_args(argv)
    if opts.kills < 1 or opts.chatbots < 1 or opts.workers < 2:
        p.error("--kills and --chatbots must be at least 1, --workers at least 2")
    if opts.rate <= 0 or opts.latency_ms < 0 or opts.settle_s < 0:
        p.error("--rate must be above 0; --latency-ms and --settle-s not negative")
    return opts


def results(kills: list[Kill]) -> None:
    say()
    say("== results ==")
    say(f"recovery after SIGKILL (kill -> the last message it held, or dispatched then, ended), {len(kills)} kills: "
        f"{summary(kills)}  (goal < 5 s)")
    say("  per kill: " + ", ".join(f"{k.recovery_s:.2f}" for k in kills) + " s; noticed dead after: "
        + ", ".join(f"{k.noticed_s:.2f}" for k in kills) + " s")
    say(f"  messages in flight at the kills: claimed by the dead worker {sum(len(k.claimed) for k in kills)}, "
        f"dispatched {sum(len(k.dispatched) for k in kills)} (delivered to it, not started: "
        f"{sum(len(k.received) for k in kills)})")


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)

    def body(session: Session) -> int:
        session.at_exit(lambda: flush_redis(opts.redis_url))
        say(f"bench: recovery after SIGKILL: {opts.kills} kills of one of {opts.workers} default workers, a stream "
            f"of {opts.rate:g} msgs/s over {opts.chatbots} chatbot(s), API latency {opts.latency_ms:g} ms, "
            f"{os.cpu_count()} CPUs; logs in {session.logdir}")
        kills = run(opts, session.procs, session.checks)
        results(kills)
        return report_checks(session.checks, session.logdir)

    return run_session(body, prefix="oaksend-bench-recovery-", keep_logs=opts.keep_logs,
                       lock=stores_key(stack_options(opts)), redis_urls=[opts.redis_url],
                       pg_admin_url=opts.pg_admin_url)


if __name__ == "__main__":
    sys.exit(main())
