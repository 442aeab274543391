"""`python -m bench.scale` (`make bench-scale`): the dispatcher with 50,000 chatbots waiting, as figures.

Two stacks of the real services of this machine run side by side, each with
its own fresh PostgreSQL database, its own private redis-server (started here),
one dispatcher and one worker process, sharing one sandbox API:

- baseline: 10 chatbots holding 1,000 messages due tomorrow;
- scale: 50,000 chatbots holding 1,000,000 messages due tomorrow (the rows a
  reminder campaign writes: pending, not yet due; inserted with INSERT ...
  SELECT generate_series for speed, then VACUUM ANALYZE).

Every figure is measured on both at the same time, interleaved, so that the
load of a shared machine falls on both alike and their ratio means something:
- one pass: run_pass() and sleep_for() of an in-process Dispatcher on each
  database (rescue and expiry forced on every pass, as the worst case),
  alternating between the two, p50/p99;
- idle CPU: each running dispatcher's user+system CPU time over the same
  interval (/proc/PID/stat), as a share of one core;
- latency: messages to other chatbots (a new chatbot each, Producer.send),
  alternating between the stacks, each stack one every 0.1 s: enqueue -> the
  sandbox received the request, p50/p99/max.
The summary prints the scale figures with their goals (p99 <= 100 ms, idle CPU
<= 5% of a core, one pass <= 20 ms) and as a ratio of the baseline.

It asserts no speed. It exits 1 when a correctness check fails (a probe not
sent, a waiting message touched), 4 when PostgreSQL or redis-server is missing.

    python -m bench.scale [--chatbots 50000] [--messages 1000000] [--baseline-chatbots 10] [--probes 200]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import sys
import time
from typing import Any

from bench.harness import (
    API_KEY,
    EXIT_UNAVAILABLE,
    BenchError,
    Check,
    Processes,
    Session,
    child_env,
    drop_postgres,
    fresh_postgres,
    oaksend_cli,
    percentile,
    pg_engine,
    proc_cpu_s,
    report_checks,
    run_session,
    say,
    start_sandbox,
)

PG_DATABASE = os.environ.get("BENCH_SCALE_PG_DATABASE", "oaksend_bench_scale")
#: Each stack gets a latency probe this often (the two alternate).
PROBE_GAP_S = 0.1
WARMUP_PROBES = 10

#: The rows Producer.send_many writes for a message due tomorrow (pending, not ready), without
#: validating a million phone numbers first: chatbot i % chatbots, due over one hour tomorrow.
FILL = """
INSERT INTO oaksend_messages (serial_number, to_phone, body, segments, state, priority, ready, attempts,
    failures, ambiguous, next_attempt_at, deadline_at, created_at, updated_at)
SELECT CAST(:prefix AS text) || lpad((g % CAST(:chatbots AS integer))::text, 6, '0'), '+1415' || lpad((g % 10000000)::text, 7, '0'),
       'Reminder: your appointment is tomorrow at 10:00. Reply C to confirm.', 1, 'pending', 2, false, 0, 0, 0,
       :now + interval '1 day' + (g % 3600) * interval '1 second', :now + interval '1 day 3 hours', :now, :now
FROM generate_series(CAST(:lo AS integer), CAST(:hi AS integer)) g
"""


def probe_phone(i: int) -> str:
    return f"+1415{5000000 + i:07d}"


class RedisServer:
    """A redis-server of the benchmark's own on a free port (nothing shared is flushed or touched)."""

    def __init__(self, procs: Processes, name: str) -> None:
        import socket

        binary = shutil.which("redis-server")
        if binary is None:
            raise BenchError("redis-server is not on PATH (the benchmark starts its own)", EXIT_UNAVAILABLE)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        procs.start(name, [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                           "--dir", str(procs.logdir)], child_env())
        self.url = f"redis://127.0.0.1:{port}/0"
        import redis

        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise BenchError(f"{name} did not answer in 10 s") from None
                    time.sleep(0.05)
        finally:
            client.close()


class ScaleStack:
    """One stack: a fresh database, a private redis-server, one dispatcher, one worker."""

    def __init__(self, opts: argparse.Namespace, procs: Processes, name: str, sandbox_url: str) -> None:
        self.opts = opts
        self.procs = procs
        self.name = name
        self.database = f"{PG_DATABASE}_{name}"
        self.database_url = fresh_postgres(opts.pg_admin_url, self.database)
        self.redis_url = RedisServer(procs, f"{name}-redis").url
        queue = f"oaksend-bench-scale-{name}"
        self.env = child_env(DATABASE_URL=self.database_url, REDIS_URL=self.redis_url,
                             NEWOAKS_BASE_URL=sandbox_url, NEWOAKS_API_KEY=API_KEY, OAKSEND_QUEUE_NAME=queue)
        oaksend_cli(["migrate"], self.env)
        say(f"  {name}: database {self.database} (fresh), Redis {self.redis_url} (its own)")

        import redis

        from oaksend.models.db import make_engine
        from oaksend.models.repository import Outbox
        from oaksend.worker.delivery.app import make_app
        from oaksend.worker.delivery.dispatcher import Dispatcher
        from oaksend.worker.enqueue import Producer
        from oaksend.worker.settings import load_settings

        self.settings = load_settings(database_url=self.database_url, redis_url=self.redis_url, queue_name=queue)
        self.producer = Producer(self.settings)
        self.engine = make_engine(self.database_url, pool_size=2)
        # An in-process dispatcher on the same database, only to time passes (it never holds the lock
        # and has nothing to lease: every message waits for tomorrow).
        self._redis = redis.Redis.from_url(self.redis_url)
        self.timer = Dispatcher(self.settings, Outbox(self.engine), self._redis, make_app(self.settings),
                                name=f"bench-pass-timer-{name}")
        self.dispatcher = procs.start(f"{name}-dispatcher", [sys.executable, "-m", "oaksend.worker.cli", "dispatcher",
                                                             "--log-level", "INFO"], self.env)
        procs.start(f"{name}-worker", [sys.executable, "-m", "oaksend.worker.cli", "worker", "--concurrency",
                                       str(opts.concurrency), "--log-level", "INFO", "-n", f"{name}@%h"], self.env)
        self.probes_sent = 0

    def wait_ready(self) -> None:
        self.procs.wait_for_log([f"{self.name}-worker"], " ready.", 90)
        self.procs.wait_for_log([f"{self.name}-dispatcher"], "is now active", 30)

    # -- filling --------------------------------------------------------------------------------
    def fill(self, chatbots: int, messages: int) -> float:
        """Insert `messages` waiting messages over `chatbots` chatbots; seconds taken."""
        from sqlalchemy import text

        from oaksend.worker.clock import utcnow

        t0 = time.monotonic()
        now = utcnow()
        chunk = 200_000
        for lo in range(1, messages + 1, chunk):
            hi = min(messages, lo + chunk - 1)
            with self.engine.begin() as conn:
                conn.execute(text(FILL), {"prefix": "wait-", "chatbots": chatbots, "now": now, "lo": lo, "hi": hi})
        admin = pg_engine(self.database_url)
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
    def time_pass_ms(self) -> float:
        self.timer._last_rescue = None  # rescue and expiry on every pass: the worst case
        t0 = time.perf_counter()
        stats = self.timer.run_pass()
        self.timer.sleep_for(stats)
        took = (time.perf_counter() - t0) * 1000.0
        if stats.dispatched:
            raise BenchError(f"{self.name}: the pass timer leased messages; nothing should have been due")
        return took

    def cpu_s(self) -> float:
        got = proc_cpu_s(self.dispatcher.pid)
        return got[1] if got is not None else math.nan

    def probe(self, tag: str) -> tuple[str, float]:
        """Send one message to a chatbot never seen before; (its phone, the enqueue time)."""
        n = self.probes_sent
        self.probes_sent += 1
        to = probe_phone(n + (0 if self.name == "baseline" else 500_000))
        at = time.time()
        self.producer.send(f"probe-{self.name}-{tag}-{n:05d}", to, "Your code is 1234")
        return to, at

    def close(self) -> None:
        for closer in (self.producer.close, self._redis.close, self.engine.dispose):
            with contextlib.suppress(Exception):
                closer()


def measure(stacks: list[ScaleStack], control: Any, procs: Processes, opts: argparse.Namespace,
            checks: list[Check]) -> dict[str, dict[str, float]]:
    """The three figures of every stack, measured interleaved."""
    names = [st.name for st in stacks]
    # Warm up: each new chatbot's limit cached, connections open.
    latencies(stacks, control, procs, WARMUP_PROBES, "warm")
    passes: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(opts.passes):
        for st in stacks:
            passes[st.name].append(st.time_pass_ms())
    before = {st.name: st.cpu_s() for st in stacks}
    t0 = time.monotonic()
    time.sleep(opts.idle_s)
    elapsed = time.monotonic() - t0
    cpu = {st.name: (st.cpu_s() - before[st.name]) / elapsed for st in stacks}
    lat, missing = latencies(stacks, control, procs, opts.probes, "probe")
    out: dict[str, dict[str, float]] = {}
    for st in stacks:
        n = st.name
        checks.append((f"{n}: every probe reached the API", missing[n] == 0, f"{missing[n]} missing of {opts.probes}"))
        p, la = sorted(passes[n]), sorted(lat[n])
        out[n] = {"pass_p50": percentile(p, 50), "pass_p99": percentile(p, 99), "cpu": cpu[n],
                  "lat_p50": percentile(la, 50), "lat_p99": percentile(la, 99), "lat_max": la[-1] if la else math.nan}
    return out


def latencies(stacks: list[ScaleStack], control: Any, procs: Processes, count: int,
              tag: str) -> tuple[dict[str, list[float]], dict[str, int]]:
    """`count` probes per stack, alternating, each stack one every PROBE_GAP_S; enqueue -> API in ms."""
    enqueued: dict[str, tuple[str, float]] = {}
    step = PROBE_GAP_S / len(stacks)
    start = time.monotonic()
    for i in range(count * len(stacks)):
        delay = start + i * step - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        st = stacks[i % len(stacks)]
        to, at = st.probe(tag)
        enqueued[to] = (st.name, at)
    deadline = time.monotonic() + 30
    while True:
        seen = {r["to_phone_number"]: r["received_at"] for r in control.requests()
                if r.get("to_phone_number") in enqueued}
        if len(seen) == len(enqueued) or time.monotonic() > deadline:
            break
        procs.check_alive()
        time.sleep(0.2)
    lat: dict[str, list[float]] = {st.name: [] for st in stacks}
    missing = {st.name: 0 for st in stacks}
    for to, (name, at) in enqueued.items():
        if to in seen:
            lat[name].append((seen[to] - at) * 1000.0)
        else:
            missing[name] += 1
    return lat, missing


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.scale",
                                description="The dispatcher with many chatbots holding future messages.")
    p.add_argument("--chatbots", type=int, default=50_000, help="chatbots holding waiting messages (50,000)")
    p.add_argument("--messages", type=int, default=1_000_000, help="waiting messages over them (1,000,000)")
    p.add_argument("--baseline-chatbots", type=int, default=10, help="the baseline's chatbots (10)")
    p.add_argument("--baseline-messages", type=int, default=1_000, help="the baseline's waiting messages (1,000)")
    p.add_argument("--probes", type=int, default=200, help="latency messages per stack (200)")
    p.add_argument("--passes", type=int, default=200, help="timed passes per stack (200)")
    p.add_argument("--idle-s", type=float, default=10.0, help="seconds of idle CPU measured (10)")
    p.add_argument("--concurrency", type=int, default=4, help="threads per worker (4)")
    p.add_argument("--pg-admin-url",
                   default=os.environ.get("BENCH_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"),
                   help=f"an existing database to connect to for dropping/creating {PG_DATABASE}_*")
    p.add_argument("--keep-logs", action="store_true")
    opts = p.parse_args(argv)
    for name in ("chatbots", "messages", "baseline_chatbots", "baseline_messages", "probes", "passes", "concurrency"):
        if getattr(opts, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if opts.chatbots > 999_999 or opts.baseline_chatbots > 999_999:
        p.error("--chatbots and --baseline-chatbots must be at most 999,999")
    return opts


def run(opts: argparse.Namespace, session: Session) -> int:
    """Start both stacks, fill them, measure them interleaved, print the figures; the exit code."""
    from oaksend.sandbox.control import SandboxControl

    procs, checks = session.procs, session.checks
    stacks: list[ScaleStack] = []
    # Dropped after a run whose checks all held (kept for a look otherwise), once everything is closed.
    session.at_exit(lambda: drop_postgres(opts.pg_admin_url, *[st.database for st in stacks]), if_ok=True)
    say(f"bench.scale: two stacks side by side, each 1 dispatcher + 1 worker x --concurrency {opts.concurrency}, "
        f"PostgreSQL, its own redis-server; one sandbox; {os.cpu_count()} CPUs; logs in {session.logdir}")
    sandbox_url = start_sandbox(procs, "sandbox", ["--port", "0", "--api-key", API_KEY, "--seed", "1"])
    control = SandboxControl(sandbox_url, API_KEY)
    session.at_exit(control.close)
    for name in ("baseline", "scale"):
        stacks.append(ScaleStack(opts, procs, name, sandbox_url))
        session.at_exit(stacks[-1].close)
    for st in stacks:
        st.wait_ready()
    base, big = stacks
    took = base.fill(opts.baseline_chatbots, opts.baseline_messages)
    say(f"  baseline: {opts.baseline_chatbots:,} chatbots holding {opts.baseline_messages:,} messages due "
        f"tomorrow, filled in {took:.1f} s")
    took = big.fill(opts.chatbots, opts.messages)
    say(f"  scale: {opts.chatbots:,} chatbots holding {opts.messages:,} messages due tomorrow, filled in "
        f"{took:.1f} s (INSERT ... SELECT generate_series, then VACUUM ANALYZE)")
    say(f"  measuring both, interleaved: {opts.passes} passes each, {opts.idle_s:g} s idle, {opts.probes} "
        f"messages each to new chatbots ({PROBE_GAP_S:g} s apart per stack) ...")
    fig = measure(stacks, control, procs, opts, checks)
    for st in stacks:
        touched = st.waiting_touched()
        checks.append((f"{st.name}: no waiting message was dispatched or marked ready", touched == 0,
                       f"{touched} touched"))
    procs.check_alive()
    print_figures(fig["baseline"], fig["scale"])
    return report_checks(checks, session.logdir)


def print_figures(b: dict[str, float], s_: dict[str, float]) -> None:
    """The table of both stacks, then the summary of the scale one against its goals."""

    def ratio(key: str) -> str:
        return f"{s_[key] / b[key]:.2f}x" if b[key] > 0 else "n/a"

    say()
    say(f"{'':34}{'baseline':>12}{'scale':>12}{'ratio':>8}   goal (scale)")
    rows = [("one pass p50 (ms)", "pass_p50", ""), ("one pass p99 (ms)", "pass_p99", "<= 20 ms"),
            ("idle dispatcher (% of a core)", "cpu", "<= 5%"),
            ("new message -> API p50 (ms)", "lat_p50", ""), ("new message -> API p99 (ms)", "lat_p99", "<= 100 ms"),
            ("new message -> API max (ms)", "lat_max", "")]
    for label, key, goal in rows:
        scale = 100.0 if key == "cpu" else 1.0
        say(f"{label:34}{b[key] * scale:12.2f}{s_[key] * scale:12.2f}{ratio(key):>8}   {goal}")
    say()
    say("== summary ==")
    say(f"one pass: p99 {s_['pass_p99']:.2f} ms ({'ok' if s_['pass_p99'] <= 20 else 'MISSED'} <= 20 ms); "
        f"baseline p99 {b['pass_p99']:.2f} ms; ratio {ratio('pass_p99')}")
    say(f"idle dispatcher: {s_['cpu'] * 100:.2f}% of a core ({'ok' if s_['cpu'] <= 0.05 else 'MISSED'} <= 5%); "
        f"baseline {b['cpu'] * 100:.2f}%; ratio {ratio('cpu')}")
    say(f"new message to another chatbot: p50 {s_['lat_p50']:.1f} ms, p99 {s_['lat_p99']:.1f} ms "
        f"({'ok' if s_['lat_p99'] <= 100 else 'MISSED'} <= 100 ms); baseline p50 {b['lat_p50']:.1f} ms, "
        f"p99 {b['lat_p99']:.1f} ms; ratio p99 {ratio('lat_p99')}")


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    return run_session(lambda session: run(opts, session), prefix="oaksend-bench-scale-", keep_logs=opts.keep_logs,
                       pg_admin_url=opts.pg_admin_url)


if __name__ == "__main__":
    sys.exit(main())
