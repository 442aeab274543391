"""`python -m bench.scale` (`make bench-scale`): the dispatcher with 50,000 chatbots waiting, as figures.

One stack of the real services of this machine (a fresh PostgreSQL database,
a flushed Redis db, the sandbox API, one dispatcher and one worker process) is
measured twice in the same run:

1. baseline: 10 chatbots holding 1,000 messages due tomorrow;
2. scale: 50,000 chatbots holding 1,000,000 messages due tomorrow (the rows a
   reminder campaign writes: pending, not yet due; inserted with INSERT ...
   SELECT generate_series for speed, then VACUUM ANALYZE).

In each phase, with those messages waiting:
- one pass: run_pass() and sleep_for() of an in-process Dispatcher on the same
  database (rescue and expiry forced on every pass, as the worst case), p50/p99;
- idle CPU: the running dispatcher's user+system CPU time over an interval
  (/proc/PID/stat), as a share of one core;
- latency: messages to other chatbots (a new chatbot each, Producer.send, one
  every 0.1 s): enqueue -> the sandbox received the request, p50/p99/max.
The summary prints the scale figures with their goals (p99 <= 100 ms, idle CPU
<= 5% of a core, one pass <= 20 ms) and as a ratio of the baseline.

It asserts no speed. It exits 1 when a correctness check fails (a probe not
sent, a waiting message touched), 4 when Redis or PostgreSQL is unreachable.

    python -m bench.scale [--chatbots 50000] [--messages 1000000] [--baseline-chatbots 10] [--probes 200]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.pipeline import (
    API_KEY,
    EXIT_INTERRUPTED,
    BenchError,
    Processes,
    _child_env,
    _pg_engine,
    _proc_cpu_s,
    _raise_interrupt,
    _single_run_lock,
    check_postgres,
    check_redis,
    flush_redis,
    fresh_postgres,
    oaksend_cli,
    percentile,
    report_checks,
    say,
)

QUEUE = "oaksend-bench-scale"
PG_DATABASE = os.environ.get("BENCH_SCALE_PG_DATABASE", "oaksend_bench_scale")
PROBE_GAP_S = 0.1
WARMUP_PROBES = 10

#: The rows Producer.send_many writes for a message due tomorrow (pending, not ready), without
#: validating a million phone numbers first: chatbot i % chatbots, due over one hour tomorrow.
_FILL = """
INSERT INTO oaksend_messages (serial_number, to_phone, body, segments, state, priority, ready, attempts,
    failures, ambiguous, next_attempt_at, deadline_at, created_at, updated_at)
SELECT CAST(:prefix AS text) || lpad((g % CAST(:chatbots AS integer))::text, 6, '0'), '+1415' || lpad((g % 10000000)::text, 7, '0'),
       'Reminder: your appointment is tomorrow at 10:00. Reply C to confirm.', 1, 'pending', 2, false, 0, 0, 0,
       :now + interval '1 day' + (g % 3600) * interval '1 second', :now + interval '1 day 3 hours', :now, :now
FROM generate_series(CAST(:lo AS integer), CAST(:hi AS integer)) g
"""


def probe_phone(i: int) -> str:
    return f"+1415{5000000 + i:07d}"


class ScaleStack:
    """A fresh stack: database, Redis db, sandbox, one dispatcher, one worker."""

    def __init__(self, opts: argparse.Namespace, procs: Processes) -> None:
        self.opts = opts
        self.procs = procs
        self.database_url = fresh_postgres(opts.pg_admin_url, PG_DATABASE)
        flush_redis(opts.redis_url)
        self.sandbox_url = self._start_sandbox()
        self.env = _child_env(DATABASE_URL=self.database_url, REDIS_URL=opts.redis_url,
                              NEWOAKS_BASE_URL=self.sandbox_url, NEWOAKS_API_KEY=API_KEY, OAKSEND_QUEUE_NAME=QUEUE)
        say(f"  database {PG_DATABASE} (fresh), Redis {opts.redis_url} (flushed), sandbox {self.sandbox_url}")
        oaksend_cli(["migrate"], self.env)

        import redis

        from oaksend.models.db import make_engine
        from oaksend.models.repository import Outbox
        from oaksend.sandbox.control import SandboxControl
        from oaksend.worker.app import make_app
        from oaksend.worker.dispatcher import Dispatcher
        from oaksend.worker.enqueue import Producer
        from oaksend.worker.settings import load_settings

        self.settings = load_settings(database_url=self.database_url, redis_url=opts.redis_url, queue_name=QUEUE)
        self.producer = Producer(self.settings)
        self.engine = make_engine(self.database_url, pool_size=2)
        self.control = SandboxControl(self.sandbox_url)
        # An in-process dispatcher on the same database, only to time passes (it never holds the lock
        # and has nothing to lease: every message waits for tomorrow).
        self._redis = redis.Redis.from_url(opts.redis_url)
        self.timer = Dispatcher(self.settings, Outbox(self.engine), self._redis, make_app(self.settings),
                                name="bench-pass-timer")
        self.dispatcher = procs.start("dispatcher", [sys.executable, "-m", "oaksend.worker.cli", "dispatcher",
                                                     "--log-level", "INFO"], self.env)
        procs.start("worker", [sys.executable, "-m", "oaksend.worker.cli", "worker", "--concurrency",
                               str(opts.concurrency), "--log-level", "INFO", "-n", "scale@%h"], self.env)
        procs.wait_for_log(["worker"], " ready.", 90)
        procs.wait_for_log(["dispatcher"], "is now active", 30)
        self.probes_sent = 0

    def _start_sandbox(self) -> str:
        proc = self.procs.start("sandbox", [sys.executable, "-m", "oaksend.sandbox", "--port", "0", "--api-key",
                                            API_KEY, "--seed", "1"], _child_env(), stdout_pipe=True)
        assert proc.stdout is not None
        first: list[bytes] = []
        reader = threading.Thread(target=lambda: first.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(15)
        line = first[0].decode(errors="replace").strip() if first else ""
        if "listening on" not in line:
            raise BenchError(f"the sandbox did not start: {line or 'no output in 15 s'!r}")

        def drain() -> None:
            with contextlib.suppress(ValueError, OSError):
                for _ in iter(proc.stdout.readline, b""):  # type: ignore[union-attr]
                    pass

        threading.Thread(target=drain, daemon=True).start()
        return line.rsplit(" ", 1)[-1]

    # -- filling --------------------------------------------------------------------------------
    def fill(self, prefix: str, chatbots: int, messages: int, start: int = 0) -> float:
        """Insert `messages` waiting messages over `chatbots` chatbots; seconds taken."""
        from sqlalchemy import text

        from oaksend.worker.clock import utcnow

        t0 = time.monotonic()
        now = utcnow()
        chunk = 200_000
        for lo in range(start + 1, start + messages + 1, chunk):
            hi = min(start + messages, lo + chunk - 1)
            with self.engine.begin() as conn:
                conn.execute(text(_FILL), {"prefix": prefix, "chatbots": chatbots, "now": now, "lo": lo, "hi": hi})
        admin = _pg_engine(self.database_url)
        try:
            with admin.connect() as conn:
                conn.execute(text("VACUUM ANALYZE oaksend_messages"))
        finally:
            admin.dispose()
        return time.monotonic() - t0

    def waiting_touched(self) -> int:
        """Messages of the fill that are no longer pending-and-waiting (there must be none)."""
        from sqlalchemy import text

        with self.engine.connect() as conn:
            return int(conn.scalar(text("SELECT count(*) FROM oaksend_messages WHERE serial_number LIKE 'wait-%' "
                                        "AND (state <> 'pending' OR ready)")) or 0)

    # -- measuring ------------------------------------------------------------------------------
    def pass_times_ms(self, passes: int) -> list[float]:
        out = []
        for _ in range(passes):
            self.timer._last_rescue = None  # rescue and expiry on every pass: the worst case
            t0 = time.perf_counter()
            stats = self.timer.run_pass()
            self.timer.sleep_for(stats)
            out.append((time.perf_counter() - t0) * 1000.0)
            if stats.dispatched:
                raise BenchError("the pass timer leased messages; nothing should have been due")
        return sorted(out)

    def idle_cpu(self, seconds: float) -> float:
        """The running dispatcher's CPU over `seconds`, as a share of one core."""
        before = _proc_cpu_s(self.dispatcher.pid)
        t0 = time.monotonic()
        time.sleep(seconds)
        after = _proc_cpu_s(self.dispatcher.pid)
        elapsed = time.monotonic() - t0
        if before is None or after is None:
            return math.nan
        return (after[1] - before[1]) / elapsed

    def latencies_ms(self, count: int, tag: str) -> tuple[list[float], int]:
        """Messages to new chatbots, one every PROBE_GAP_S: enqueue -> received by the API."""
        enqueued: dict[str, float] = {}
        start = time.monotonic()
        for i in range(count):
            delay = start + i * PROBE_GAP_S - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            n = self.probes_sent + i
            to = probe_phone(n)
            enqueued[to] = time.time()
            self.producer.send(f"probe-{tag}-{n:05d}", to, "Your code is 1234")
        self.probes_sent += count
        deadline = time.monotonic() + 30
        while True:
            seen = {r["to_phone_number"]: r["received_at"] for r in self.control.requests()
                    if r.get("to_phone_number") in enqueued}
            if len(seen) == len(enqueued) or time.monotonic() > deadline:
                break
            self.procs.check_alive()
            time.sleep(0.2)
        lat = sorted((seen[p] - t) * 1000.0 for p, t in enqueued.items() if p in seen)
        return lat, len(enqueued) - len(seen)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.producer.close()
        with contextlib.suppress(Exception):
            self.control.close()
        with contextlib.suppress(Exception):
            self._redis.close()
        with contextlib.suppress(Exception):
            self.engine.dispose()


def measure(stack: ScaleStack, opts: argparse.Namespace, name: str, checks: list[tuple[str, bool, str]]) -> dict[str, float]:
    stack.latencies_ms(WARMUP_PROBES, f"{name}-warm")  # new chatbots' limits cached, connections open
    passes = stack.pass_times_ms(opts.passes)
    cpu = stack.idle_cpu(opts.idle_s)
    lat, missing = stack.latencies_ms(opts.probes, name)
    checks.append((f"{name}: every probe reached the API", missing == 0, f"{missing} missing of {opts.probes}"))
    out = {"pass_p50": percentile(passes, 50), "pass_p99": percentile(passes, 99), "cpu": cpu,
           "lat_p50": percentile(lat, 50), "lat_p99": percentile(lat, 99), "lat_max": lat[-1] if lat else math.nan}
    say(f"  one pass (rescue, expiry, staging, due chatbots, in flight, next due) over {opts.passes} passes: "
        f"p50 {out['pass_p50']:.2f} ms, p99 {out['pass_p99']:.2f} ms")
    say(f"  idle dispatcher over {opts.idle_s:g} s: {out['cpu'] * 100:.2f}% of a core")
    say(f"  a message to another chatbot, enqueue -> API, {len(lat)} messages {PROBE_GAP_S:g} s apart: "
        f"p50 {out['lat_p50']:.1f} ms, p99 {out['lat_p99']:.1f} ms, max {out['lat_max']:.1f} ms")
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.scale",
                                description="The dispatcher with many chatbots holding future messages.")
    p.add_argument("--chatbots", type=int, default=50_000, help="chatbots holding waiting messages (50,000)")
    p.add_argument("--messages", type=int, default=1_000_000, help="waiting messages over them (1,000,000)")
    p.add_argument("--baseline-chatbots", type=int, default=10, help="the baseline's chatbots (10)")
    p.add_argument("--baseline-messages", type=int, default=1_000, help="the baseline's waiting messages (1,000)")
    p.add_argument("--probes", type=int, default=200, help="latency messages per phase (200)")
    p.add_argument("--passes", type=int, default=200, help="timed passes per phase (200)")
    p.add_argument("--idle-s", type=float, default=10.0, help="seconds of idle CPU measured per phase (10)")
    p.add_argument("--concurrency", type=int, default=4, help="worker threads (4)")
    p.add_argument("--redis-url", default=os.environ.get("BENCH_SCALE_REDIS_URL", "redis://127.0.0.1:6379/8"),
                   help="oaksend's Redis db, flushed (redis://127.0.0.1:6379/8)")
    p.add_argument("--pg-admin-url",
                   default=os.environ.get("BENCH_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"),
                   help=f"an existing database to connect to for dropping/creating {PG_DATABASE}")
    p.add_argument("--keep-logs", action="store_true")
    opts = p.parse_args(argv)
    for name in ("chatbots", "messages", "baseline_chatbots", "baseline_messages", "probes", "passes", "concurrency"):
        if getattr(opts, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if opts.chatbots > 999_999 or opts.baseline_chatbots > opts.chatbots:
        p.error("--chatbots must be at most 999,999 and at least --baseline-chatbots")
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    try:
        lock = _single_run_lock()  # noqa: F841 - held until the process exits
        check_redis(opts.redis_url)
        check_postgres(opts.pg_admin_url)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr, flush=True)
        return exc.code
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, _raise_interrupt)
    logdir = Path(tempfile.mkdtemp(prefix="oaksend-bench-scale-"))
    procs = Processes(logdir)
    checks: list[tuple[str, bool, str]] = []
    stack: ScaleStack | None = None
    code = 1
    try:
        say(f"bench.scale: 1 dispatcher, 1 worker x --concurrency {opts.concurrency}, PostgreSQL, "
            f"{os.cpu_count()} CPUs; logs in {logdir}")
        stack = ScaleStack(opts, procs)
        say()
        say(f"== baseline: {opts.baseline_chatbots:,} chatbots holding {opts.baseline_messages:,} messages due "
            f"tomorrow ==")
        took = stack.fill("wait-", opts.baseline_chatbots, opts.baseline_messages)
        say(f"  filled in {took:.1f} s")
        base = measure(stack, opts, "baseline", checks)
        say()
        say(f"== scale: {opts.chatbots:,} chatbots holding {opts.messages:,} messages due tomorrow ==")
        # The baseline's rows stay; the fill adds the rest (the baseline's chatbots are among the first).
        extra = opts.messages - opts.baseline_messages
        took = stack.fill("wait-", opts.chatbots, extra, start=opts.baseline_messages) if extra > 0 else 0.0
        say(f"  filled in {took:.1f} s (INSERT ... SELECT generate_series, then VACUUM ANALYZE)")
        big = measure(stack, opts, "scale", checks)
        touched = stack.waiting_touched()
        checks.append(("no waiting message was dispatched or marked ready", touched == 0, f"{touched} touched"))
        procs.check_alive()

        def ratio(key: str) -> str:
            return f"{big[key] / base[key]:.2f}x" if base[key] > 0 else "n/a"

        say()
        say("== summary ==")
        say(f"one pass: p99 {big['pass_p99']:.2f} ms ({'ok' if big['pass_p99'] <= 20 else 'MISSED'} <= 20 ms); "
            f"baseline p99 {base['pass_p99']:.2f} ms; ratio {ratio('pass_p99')}")
        say(f"idle dispatcher: {big['cpu'] * 100:.2f}% of a core ({'ok' if big['cpu'] <= 0.05 else 'MISSED'} <= 5%); "
            f"baseline {base['cpu'] * 100:.2f}%; ratio {ratio('cpu')}")
        say(f"new message to another chatbot: p50 {big['lat_p50']:.1f} ms, p99 {big['lat_p99']:.1f} ms "
            f"({'ok' if big['lat_p99'] <= 100 else 'MISSED'} <= 100 ms); baseline p50 {base['lat_p50']:.1f} ms, "
            f"p99 {base['lat_p99']:.1f} ms; ratio p99 {ratio('lat_p99')}")
        code = report_checks(checks, logdir)
        return code
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr, flush=True)
        return exc.code
    except KeyboardInterrupt:
        print("bench: interrupted; stopping the processes it started", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            procs.stop()
            if stack is not None:
                stack.close()
            with contextlib.suppress(Exception):
                flush_redis(opts.redis_url)
            if code == 0:
                with contextlib.suppress(Exception):
                    from sqlalchemy import text

                    engine = _pg_engine(opts.pg_admin_url)
                    with engine.connect() as conn:
                        conn.execute(text(f'DROP DATABASE IF EXISTS "{PG_DATABASE}" WITH (FORCE)'))
                    engine.dispose()
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
        if code == 0 and not opts.keep_logs:
            shutil.rmtree(logdir, ignore_errors=True)
        elif logdir.exists():
            print(f"bench: process logs kept in {logdir}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
