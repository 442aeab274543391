"""`python -m bench.pipeline` (`make bench`): throughput and latency of the whole pipeline, as figures.

Four measurements in one run, on the real services of this machine:

1. baseline: a bare Celery no-op task (bench/noop.py) on the same Redis broker
   (its own db, flushed), drained by worker processes with oaksend's pool and
   concurrency; tasks/s from the first publish to the last completion;
2. oaksend end to end: a fresh database, `oaksend migrate`, the sandbox API (no
   latency, no faults), one dispatcher and the worker processes, the chatbot's
   limit set far above what is measured; N messages bulk-enqueued with
   Producer.send_many; messages/s from the first enqueue to the last `sent`
   (messages.sent_at), checked against the database and the sandbox's records;
3. a raw httpx POST loop: one process, one keep-alive httpx.Client, N POSTs one
   after the other to the same sandbox (at zero API latency only): what one process
   can push through the API with nothing else;
4. latency at low load: with the stack idle, messages sent one at a time at a
   steady rate with Producer.send; enqueue-to-sent (sent_at - created_at) p50/p99.

`--latency-ms` makes the sandbox answer that late (200 ms is a realistic relay to
Twilio); `--chatbots` spreads the messages over that many chatbots; `--rss-messages`
adds a long run and prints how much the worker and dispatcher RSS grew over it.

It asserts no speed. It exits 1 when a correctness check fails (not every
message sent, or the sandbox did not see each exactly once), 4 when Redis or
PostgreSQL is unreachable, 130 when interrupted. Every process it starts is
stopped on the way out, Ctrl-C and errors included.

    python -m bench.pipeline [--messages N] [--database sqlite|postgresql]
                             [--workers N] [--concurrency N] [--latency-ms MS] [--chatbots N]
                             [--rss-messages N] [--redis-url URL] [--baseline-redis-url URL]
                             [--pg-database NAME] [--keep-logs]

Without --concurrency the workers run with `oaksend worker`'s default.

The stack reads OAKSEND_* tuning variables from the environment as usual (e.g.
OAKSEND_DISPATCH_BATCH_SIZE=100 python -m bench.pipeline); the stores, the
queue, the API URL and key are the benchmark's own.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
CHATBOT = "0be4c0a4c5e6f708192a3b4c5d6e7f80"
API_KEY = "bench-key-5e1f09a2"
QUEUE = "oaksend-bench"
PG_DATABASE = "oaksend_bench"
#: `oaksend worker`'s default --concurrency (for the warm-up and the baseline's shape).
DEFAULT_CONCURRENCY = 16
#: Warm-up messages use numbers from here; the measured ones count from 0.
WARMUP_BASE = 7_000_000
TERMINAL = ("sent", "failed", "unknown", "expired", "cancelled")

EXIT_OK, EXIT_CHECK_FAILED, EXIT_UNAVAILABLE, EXIT_INTERRUPTED = 0, 1, 4, 130
PROGRESS_EVERY_S = 2.0
STALL_S = 60.0


class BenchError(Exception):
    """A one-line reason to stop, and the exit code."""

    def __init__(self, message: str, code: int = EXIT_CHECK_FAILED) -> None:
        super().__init__(message)
        self.code = code


def say(text: str = "") -> None:
    print(text, flush=True)


def phone(i: int) -> str:
    """A distinct, valid US number per message (+1 415 200 0000 onwards)."""
    return f"+1415{2000000 + i:07d}"


def chatbots(n: int) -> list[str]:
    """n chatbot serial numbers, the first one CHATBOT."""
    return [CHATBOT] + [f"{i:032x}" for i in range(1, n)]


def text_of(i: int) -> str:
    return f"oaksend bench {i}: your appointment is tomorrow at 10:00"


def report_checks(checks: Sequence[tuple[str, bool, str]], logdir: Path) -> int:
    """Print each correctness check; the exit code says whether all held."""
    failed = [c for c in checks if not c[1]]
    for name, passed, detail in checks:
        say(f"check {'ok  ' if passed else 'FAIL'} {name}: {detail}")
    if failed:
        say(f"bench: {len(failed)} check(s) failed; logs kept in {logdir}")
    return EXIT_CHECK_FAILED if failed else EXIT_OK


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


# -- processes --------------------------------------------------------------------------------
class Processes:
    """Every subprocess the benchmark starts, each logging to a file in `logdir`."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.procs: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str], *, stdout_pipe: bool = False) -> subprocess.Popen[bytes]:
        log = open(self.logdir / f"{name}.log", "ab")
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout_pipe else log,
            stderr=log if stdout_pipe else subprocess.STDOUT,
        )
        self.procs.append((name, proc, log))
        return proc

    def log_path(self, name: str) -> Path:
        return self.logdir / f"{name}.log"

    def log_text(self, name: str) -> str:
        path = self.log_path(name)
        return path.read_text(errors="replace") if path.exists() else ""

    def check_alive(self) -> None:
        for name, proc, _ in self.procs:
            if proc.poll() is not None:
                tail = self.log_text(name).strip().splitlines()[-1:] or ["(no output)"]
                raise BenchError(f"{name} exited with code {proc.returncode}: {tail[0][:200]} "
                                 f"(log: {self.log_path(name)})")

    def wait_for_log(self, names: Sequence[str], needle: str | Callable[[str], bool], timeout_s: float) -> None:
        test = needle if callable(needle) else (lambda text: needle in text)
        deadline = time.monotonic() + timeout_s
        while True:
            self.check_alive()
            if all(test(self.log_text(n)) for n in names):
                return
            if time.monotonic() > deadline:
                raise BenchError(f"{', '.join(names)} not ready after {timeout_s:.0f} s (logs in {self.logdir})")
            time.sleep(0.1)

    def stop(self, names: Sequence[str] | None = None) -> None:
        """SIGTERM, then wait up to 15 s each, then SIGKILL. Only our own children, by pid."""
        chosen = [p for p in self.procs if names is None or p[0] in names]
        for _, proc, _ in chosen:
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for name, proc, log in chosen:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                say(f"  {name} (pid {proc.pid}) did not stop in 15 s; killing it")
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
            log.close()
        self.procs = [p for p in self.procs if p not in chosen]


def _child_env(**pinned: str) -> dict[str, str]:
    """The environment of a child: ours, minus what would point it elsewhere, plus `pinned`."""
    drop = ("NEWOAKS_", "SANDBOX_", "DATABASE_URL", "REDIS_URL", "OAKSEND_DATABASE_URL", "OAKSEND_REDIS_URL",
            "OAKSEND_QUEUE_NAME", "BENCH_NOOP_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(pinned)
    return env


# -- where the CPU went (Linux /proc; silently nothing elsewhere) ------------------------------
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
#: Server processes whose CPU is summed machine-wide (other users' backends included).
_SERVERS = ("postgres", "redis-server")


def _proc_cpu_s(pid: int) -> tuple[str, float] | None:
    """(command name, user+system CPU seconds) of one process, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    return comm, (int(fields[11]) + int(fields[12])) / _TICK


def cpu_snapshot(procs: Processes) -> dict[str, float]:
    """CPU seconds so far: of our children by name, of server processes by 'name*:pid', and of the machine."""
    out: dict[str, float] = {}
    for name, proc, _ in procs.procs:
        got = _proc_cpu_s(proc.pid)
        if got is not None:
            out[name] = got[1]
    try:
        pids = [int(d) for d in os.listdir("/proc") if d.isdigit()]
        with open("/proc/stat") as f:
            cpu = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return out
    for pid in pids:
        got = _proc_cpu_s(pid)
        if got is not None and got[0] in _SERVERS:
            out[f"{got[0]}*:{pid}"] = got[1]
    idle = cpu[3] + (cpu[4] if len(cpu) > 4 else 0)
    out["machine busy*"] = (sum(cpu[:8]) - idle) / _TICK
    return out


def cpu_used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds used between two snapshots; server processes summed by name (new ones counted whole)."""
    used: dict[str, float] = {}
    for key, value in after.items():
        if "*:" in key:
            name = key.split(":", 1)[0]
            used[name] = used.get(name, 0.0) + value - before.get(key, 0.0)
        elif key in before:
            used[key] = value - before[key]
    return used


def cpu_report(before: dict[str, float], after: dict[str, float], elapsed_s: float) -> str:
    """'worker0 61.2 s (95%), ...': what each process used over the interval, in % of one core."""
    if elapsed_s <= 0:
        return ""
    return ", ".join(f"{name} {v:.1f} s ({v / elapsed_s * 100:.0f}%)" for name, v in cpu_used(before, after).items())


# -- services ---------------------------------------------------------------------------------
def check_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=3, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise BenchError(f"Redis is not reachable at {url} ({type(exc).__name__}: {exc})", EXIT_UNAVAILABLE) from None
    finally:
        client.close()


def flush_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=3)
    try:
        client.flushdb()
    finally:
        client.close()


def _pg_engine(url: str) -> Any:
    from sqlalchemy import create_engine

    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})


def check_postgres(admin_url: str) -> None:
    from sqlalchemy import text
    from sqlalchemy.exc import SQLAlchemyError

    engine = _pg_engine(admin_url)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise BenchError(f"PostgreSQL is not reachable at {admin_url} ({detail})", EXIT_UNAVAILABLE) from None
    finally:
        engine.dispose()


def fresh_postgres(admin_url: str, name: str) -> str:
    """Drop and create database `name` next to the admin database; return its URL."""
    from sqlalchemy import text

    engine = _pg_engine(admin_url)
    try:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    return admin_url.rsplit("/", 1)[0] + "/" + name


def oaksend_cli(args: list[str], env: dict[str, str]) -> str:
    """Run `oaksend ARGS` (as `python -m worker.cli`) to completion; its stdout, or BenchError."""
    done = subprocess.run([sys.executable, "-m", "oaksend.worker.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise BenchError(f"`oaksend {' '.join(args)}` failed ({done.returncode}): {last}")
    return done.stdout


# -- 1. baseline ------------------------------------------------------------------------------
def run_baseline(opts: argparse.Namespace, procs: Processes) -> dict[str, float]:
    import redis
    from celery import Celery

    from bench import noop

    url = opts.baseline_redis_url
    n = opts.messages
    flush_redis(url)
    env = _child_env(BENCH_NOOP_BROKER_URL=url)
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

    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=3)
    app = Celery("bench_noop_publisher", broker=url, set_as_current=False)
    app.conf.update(task_serializer="json", broker_pool_limit=10, task_send_sent_event=False)
    try:
        # Warm up: every connection made, every thread started, before the clock runs.
        with app.producer_or_acquire() as producer:
            for _ in range(opts.workers * (opts.concurrency or DEFAULT_CONCURRENCY)):
                app.send_task(noop.TASK, queue=noop.QUEUE, producer=producer)
        _wait_counter(client, noop.DONE_KEY, opts.workers * (opts.concurrency or DEFAULT_CONCURRENCY), procs,
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
        _wait_counter(client, noop.DONE_KEY, n, procs, "baseline", t0=t0)
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


def _wait_counter(client: Any, key: str, target: int, procs: Processes, what: str,
                  t0: float | None = None) -> None:
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


# -- 2. oaksend end to end --------------------------------------------------------------------
class Stack:
    """The oaksend stack under test: database, sandbox, dispatcher, workers, and a producer."""

    def __init__(self, opts: argparse.Namespace, procs: Processes) -> None:
        self.opts = opts
        self.procs = procs
        self.database_url = ""
        self.sandbox_url = ""
        self.env: dict[str, str] = {}
        self.producer: Any = None
        self.reader: Any = None
        self.control: Any = None
        self.serials = chatbots(opts.chatbots)
        self.queue = QUEUE  #: the broker queue of its dispatcher and workers (another benchmark sets its own)

    def start(self) -> None:
        opts = self.opts
        if opts.database == "postgresql":
            self.database_url = fresh_postgres(opts.pg_admin_url, opts.pg_database)
        else:
            self.database_url = f"sqlite:///{self.procs.logdir / 'oaksend_bench.db'}"
        flush_redis(opts.redis_url)
        self._start_sandbox()
        self.env = _child_env(
            DATABASE_URL=self.database_url, REDIS_URL=opts.redis_url, NEWOAKS_BASE_URL=self.sandbox_url,
            NEWOAKS_API_KEY=API_KEY, OAKSEND_QUEUE_NAME=self.queue,
        )
        # So that rate limiting is not what is measured (an OAKSEND_ value in our environment wins).
        self.env.setdefault("OAKSEND_DEFAULT_RATE_PER_S", str(opts.rate))
        self.env.setdefault("OAKSEND_DEFAULT_BURST", str(opts.burst))
        say(f"oaksend: {opts.database} database {self._shown_db()}, migrating ...")
        oaksend_cli(["migrate"], self.env)
        for serial in chatbots(opts.chatbots):
            oaksend_cli(["chatbot", "set-limit", serial, "--rate", f"{opts.rate:g}", "--burst", str(opts.burst)],
                        self.env)

        from oaksend.models.db import make_engine
        from oaksend.worker.enqueue import Producer
        from oaksend.worker.settings import load_settings

        settings = load_settings(database_url=self.database_url, redis_url=opts.redis_url)
        self.settings = settings
        self.producer = Producer(settings)
        if opts.database == "sqlite":
            from sqlalchemy import create_engine

            # A plain engine: make_engine's BEGIN IMMEDIATE would take the write lock for every poll.
            self.reader = create_engine(self.database_url)
        else:
            self.reader = make_engine(self.database_url, pool_size=2)

        self.procs.start("dispatcher", [sys.executable, "-m", "oaksend.worker.cli", "dispatcher", "--log-level", opts.log_level],
                         self.env)
        workers = []
        for i in range(opts.workers):
            name = f"worker{i}"
            shape = ["--concurrency", str(opts.concurrency)] if opts.concurrency else []
            self.procs.start(name, [sys.executable, "-m", "oaksend.worker.cli", "worker", *shape,
                                    "--log-level", opts.log_level, "-n", f"bench{i}@%h"], self.env)
            workers.append(name)
        if opts.log_level in ("DEBUG", "INFO"):
            self.procs.wait_for_log(workers, " ready.", 60)
            self.procs.wait_for_log(["dispatcher"], "is now active", 30)
        # Warm up: one message per worker thread, then forget them at the sandbox.
        warm = opts.workers * (opts.concurrency or DEFAULT_CONCURRENCY)
        ids = self.producer.send_many(
            [self._request(WARMUP_BASE + i) for i in range(warm)]
        )
        counts = self.wait_sent(ids[0], ids[-1], warm, "warm-up", progress=False)
        if counts.get("sent", 0) != warm:
            raise BenchError(f"warm-up messages were not all sent: {counts} (logs in {self.procs.logdir})")
        from oaksend.sandbox.control import SandboxControl

        self.control = SandboxControl(self.sandbox_url)
        self.control.reset()

    def _shown_db(self) -> str:
        return self.opts.pg_database if self.opts.database == "postgresql" else self.database_url.removeprefix("sqlite:///")

    def _start_sandbox(self) -> None:
        env = _child_env()
        latency = ["--latency", f"{self.opts.latency_ms:g}"] if self.opts.latency_ms > 0 else []
        proc = self.procs.start("sandbox", [sys.executable, "-m", "oaksend.sandbox", "--port", "0", "--api-key", API_KEY,
                                            "--seed", "1", *latency], env, stdout_pipe=True)
        assert proc.stdout is not None
        first: list[bytes] = []
        reader = threading.Thread(target=lambda: first.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(15)
        line = first[0].decode(errors="replace").strip() if first else ""
        if "listening on" not in line:
            raise BenchError(f"the sandbox did not start: {line or 'no output in 15 s'!r} "
                             f"(log: {self.procs.log_path('sandbox')})")
        self.sandbox_url = line.rsplit(" ", 1)[-1]

        def drain() -> None:  # anything else it prints must not fill the pipe
            try:
                for _ in iter(proc.stdout.readline, b""):  # type: ignore[union-attr]
                    pass
            except (ValueError, OSError):
                pass

        threading.Thread(target=drain, daemon=True).start()

    def _request(self, i: int) -> Any:
        from oaksend.worker.message.validation import SendRequest

        return SendRequest(self.serials[i % len(self.serials)], phone(i), text_of(i))

    # -- reading the outbox -----------------------------------------------------------------
    def counts(self, lo: int, hi: int) -> dict[str, int]:
        from sqlalchemy import func, select

        from oaksend.models.tables import Message

        with self.reader.connect() as conn:
            rows = conn.execute(
                select(Message.state, func.count()).where(Message.id.between(lo, hi)).group_by(Message.state)
            )
            return {state: n for state, n in rows}

    def wait_sent(self, lo: int, hi: int, n: int, what: str, *, progress: bool = True,
                  t0: float | None = None) -> dict[str, int]:
        """Poll the outbox until the n messages with ids lo..hi are terminal; their counts per state."""
        start = time.monotonic() if t0 is None else t0
        last_print = start
        last_counts: dict[str, int] = {}
        last_change = time.monotonic()
        sent_at_print = 0
        while True:
            counts = self.counts(lo, hi)
            if sum(counts.get(s, 0) for s in TERMINAL) >= n:
                return counts
            now = time.monotonic()
            if counts != last_counts:
                last_counts, last_change = counts, now
            elif now - last_change > STALL_S:
                raise BenchError(f"{what}: no progress for {STALL_S:.0f} s: {counts} (logs in {self.procs.logdir})")
            if progress and now - last_print >= PROGRESS_EVERY_S:
                sent = counts.get("sent", 0)
                others = ", ".join(f"{s} {c:,}" for s, c in sorted(counts.items()) if s != "sent" and c)
                say(f"  {now - start:6.1f} s  sent {sent:,} / {n:,}  ({others or '-'})  "
                    f"{(sent - sent_at_print) / (now - last_print):,.0f} msgs/s lately")
                last_print, sent_at_print = now, sent
            self.procs.check_alive()
            time.sleep(0.1)

    def sent_rows(self, lo: int, hi: int) -> list[tuple[int, datetime, datetime | None, str]]:
        from sqlalchemy import select

        from oaksend.models.tables import Message

        with self.reader.connect() as conn:
            return [tuple(r) for r in conn.execute(  # type: ignore[misc]
                select(Message.id, Message.created_at, Message.sent_at, Message.state).where(Message.id.between(lo, hi))
            )]

    def attempt_latencies_ms(self, lo: int, hi: int) -> list[float]:
        from sqlalchemy import select

        from oaksend.models.tables import Attempt

        with self.reader.connect() as conn:
            return [r[0] for r in conn.execute(select(Attempt.latency_ms).where(Attempt.message_id.between(lo, hi)))
                    if r[0] is not None]

    def latency_parts(self, lo: int, hi: int, wanted: set[int]) -> dict[str, list[float]]:
        from sqlalchemy import select

        from oaksend.models.tables import Attempt, Message

        # sent_at is taken as the call returns (before the outcome is written), so there are two parts.
        parts: dict[str, list[float]] = {"enqueue -> call (wake, dispatch pass, broker, claim)": [], "HTTP call": []}
        with self.reader.connect() as conn:
            rows = conn.execute(
                select(Message.id, Message.created_at, Message.sent_at, Attempt.started_at, Attempt.latency_ms)
                .join(Attempt, Attempt.message_id == Message.id)
                .where(Message.id.between(lo, hi), Message.state == "sent")
            )
            for mid, created, sent, started, call_ms in rows:
                if mid not in wanted or sent is None or call_ms is None:
                    continue
                parts["enqueue -> call (wake, dispatch pass, broker, claim)"].append(
                    (started - created).total_seconds() * 1000.0)
                parts["HTTP call"].append(call_ms)
        return parts if parts["HTTP call"] else {}

    def close(self) -> None:
        if self.control is not None:
            self.control.close()
        if self.producer is not None:
            self.producer.close()
        if self.reader is not None:
            self.reader.dispose()


def run_throughput(opts: argparse.Namespace, stack: Stack, checks: list[tuple[str, bool, str]]) -> dict[str, float]:
    from oaksend.worker.clock import utcnow

    n = opts.messages
    requests = [stack._request(i) for i in range(n)]
    chunk = opts.chunk
    say(f"oaksend: enqueuing {n:,} messages with Producer.send_many in chunks of {chunk:,} ...")
    ids: list[int] = []
    cpu0 = cpu_snapshot(stack.procs)
    log_mark = len(stack.procs.log_text("dispatcher"))
    t0 = utcnow()
    m0 = time.monotonic()
    for i in range(0, n, chunk):
        ids.extend(stack.producer.send_many(requests[i : i + chunk]))
    enqueue_s = time.monotonic() - m0
    say(f"  enqueued {n:,} in {enqueue_s:.2f} s ({n / enqueue_s:,.0f} msgs/s)")
    lo, hi = min(ids), max(ids)
    counts = stack.wait_sent(lo, hi, n, "oaksend", t0=m0)
    cpu1 = cpu_snapshot(stack.procs)
    cpu = cpu_report(cpu0, cpu1, time.monotonic() - m0)
    worker_cpu_s = sum(v for k, v in cpu_used(cpu0, cpu1).items() if k.startswith("worker"))
    rows = stack.sent_rows(lo, hi)
    sent = [r for r in rows if r[3] == "sent" and r[2] is not None]
    last_sent = max(r[2] for r in sent) if sent else t0  # type: ignore[type-var]
    first_sent = min(r[2] for r in sent) if sent else t0  # type: ignore[type-var]
    elapsed = (last_sent - t0).total_seconds()
    rate = len(sent) / elapsed if elapsed > 0 else math.nan
    say(f"oaksend: {len(sent):,} messages sent in {elapsed:.2f} s: {rate:,.0f} msgs/s "
        f"(first sent {(first_sent - t0).total_seconds() * 1000:.0f} ms after the first enqueue)")

    # Checks: every message sent exactly once, as far as the database and the sandbox can tell.
    checks.append(("all messages sent", len(sent) == n and len(ids) == n and len(rows) == n,
                   f"{len(sent):,} of {n:,} sent; states {counts}"))
    stats = stack.control.stats()
    checks.append(("sandbox recorded exactly N requests", stats.get("total") == n,
                   f"sandbox total {stats.get('total'):,}, by status {stats.get('by_status')}"))
    records = stack.control.requests()
    phones = [r.get("to_phone_number") for r in records]
    expected = {phone(i) for i in range(n)}
    checks.append(("each number requested once", len(set(phones)) == len(phones) and set(phones) == expected,
                   f"{len(phones):,} requests to {len(set(phones)):,} distinct numbers"))
    latencies = sorted(stack.attempt_latencies_ms(lo, hi))
    checks.append(("one attempt per message", len(latencies) == n, f"{len(latencies):,} attempts"))

    # Where the time goes, roughly: worker-thread time per message vs the HTTP call inside it.
    if latencies and sent:
        say(f"  HTTP call (attempts.latency_ms): mean {sum(latencies) / len(latencies):.1f} ms, "
            f"p50 {percentile(latencies, 50):.1f} ms, p99 {percentile(latencies, 99):.1f} ms")
    if cpu:
        say(f"  CPU (% of one core; * = machine-wide): {cpu}")
        say(f"  worker CPU per message: {worker_cpu_s * 1000.0 / n:.2f} ms (one process holds one GIL: "
            f"at most ~{n / worker_cpu_s if worker_cpu_s else math.nan:,.0f} msgs/s per worker process)")
    churn = dispatcher_churn(stack.procs.log_text("dispatcher")[log_mark:])
    if churn:
        say(f"  dispatcher: {churn['tasks']:,} tasks published for {churn['dispatched']:,} leases; "
            f"{churn['rescued']:,} leases ran out before a worker claimed them and were dispatched again")
    return {"rate": rate, "elapsed_s": elapsed, "enqueue_rate": n / enqueue_s}


def dispatcher_churn(log: str) -> dict[str, int]:
    """Totals of the dispatcher's INFO pass lines (empty when it logged none)."""
    import re

    out = {"tasks": 0, "dispatched": 0, "rescued": 0}
    # "rescued {}" on passes that did not look for lost leases.
    for m in re.finditer(r"pass: dispatched (\d+) in (\d+) tasks, rescued \{(?:'dispatched': (\d+))?", log):
        out["dispatched"] += int(m.group(1))
        out["tasks"] += int(m.group(2))
        out["rescued"] += int(m.group(3) or 0)
    return out if out["tasks"] else {}


# -- 3. a raw httpx POST loop -----------------------------------------------------------------
RAW_BASE = 6_000_000  #: phone numbers of the raw loop (distinct from every measured message)


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


# -- memory over a long run -------------------------------------------------------------------
def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_rss(opts: argparse.Namespace, stack: Stack, checks: list[tuple[str, bool, str]]) -> dict[str, float]:
    """RSS of the worker and dispatcher processes after the first tenth of a long run and at its end."""
    total = opts.rss_messages
    chunk = 10_000
    names = [name for name, _, _ in stack.procs.procs if name.startswith(("worker", "dispatcher"))]
    pids = {name: proc.pid for name, proc, _ in stack.procs.procs if name in names}
    say(f"memory: {total:,} more messages in rounds of {chunk:,}; RSS of {', '.join(names)} ...")
    base = opts.messages + opts.latency_messages + 100
    first: dict[str, int] = {}
    done = 0
    t0 = time.monotonic()
    while done < total:
        k = min(chunk, total - done)
        ids: list[int] = []
        for i in range(0, k, opts.chunk):
            ids += stack.producer.send_many([stack._request(base + done + j) for j in range(i, min(k, i + opts.chunk))])
        stack.wait_sent(min(ids), max(ids), k, "memory", progress=False)
        done += k
        if not first and done >= total // 10:
            first = {name: rss_kb(pid) for name, pid in pids.items()}
            say("  RSS after " + f"{done:,}: " + ", ".join(f"{n} {v / 1024:.1f} MiB" for n, v in first.items()))
    last = {name: rss_kb(pid) for name, pid in pids.items()}
    elapsed = time.monotonic() - t0
    growth = {name: (last[name] - first[name]) / first[name] * 100.0 if first.get(name) else math.nan
              for name in names}
    say(f"  RSS after {total:,} ({elapsed:.0f} s, {total / elapsed:,.0f} msgs/s): " + ", ".join(
        f"{n} {last[n] / 1024:.1f} MiB ({growth[n]:+.1f}%)" for n in names))
    return {"max_growth_pct": max(growth.values()) if growth else math.nan, "messages": total}


# -- 4. latency at low load -------------------------------------------------------------------
def run_latency(opts: argparse.Namespace, stack: Stack, checks: list[tuple[str, bool, str]]) -> dict[str, float]:
    k, per_s = opts.latency_messages, opts.latency_rate
    time.sleep(1.5)  # let the dispatcher settle into its idle wait
    say(f"latency: {k} messages one at a time at {per_s:g}/s with Producer.send ...")
    before = stack.control.stats().get("total", 0)
    ids: list[int] = []
    start = time.monotonic()
    for i in range(k):
        delay = start + i / per_s - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        req = stack._request(opts.messages + i)
        ids.append(stack.producer.send(req.serial_number, req.to, req.text))
    stack.wait_sent(min(ids), max(ids), k, "latency", progress=False)
    wanted = set(ids)
    rows = [r for r in stack.sent_rows(min(ids), max(ids)) if r[0] in wanted]
    lat = sorted((r[2] - r[1]).total_seconds() * 1000.0 for r in rows if r[3] == "sent" and r[2] is not None)
    checks.append(("latency messages all sent", len(lat) == k, f"{len(lat)} of {k} sent"))
    total = stack.control.stats().get("total", 0)
    checks.append(("sandbox saw each latency message once", total - before == k, f"{total - before} requests"))
    p50, p99 = percentile(lat, 50), percentile(lat, 99)
    say(f"latency: enqueue -> sent over {len(lat)} messages: p50 {p50:.1f} ms, p99 {p99:.1f} ms "
        f"(min {lat[0] if lat else math.nan:.1f}, max {lat[-1] if lat else math.nan:.1f})")
    # The parts: enqueue -> HTTP call started (wake, dispatch pass, broker, claim), and the call itself.
    parts = stack.latency_parts(min(ids), max(ids), wanted)
    if parts:
        say("  parts (p50 / p99 ms): " + ", ".join(
            f"{name} {percentile(sorted(v), 50):.1f} / {percentile(sorted(v), 99):.1f}" for name, v in parts.items()))
    return {"p50_ms": p50, "p99_ms": p99}


# -- the run ----------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline",
                                     description="Throughput and latency of oaksend against a bare Celery baseline.")
    parser.add_argument("--messages", type=int, default=10_000, help="messages (and baseline tasks) per run (10,000)")
    parser.add_argument("--database", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--workers", type=int, default=2, help="worker processes, for oaksend and the baseline (2)")
    parser.add_argument("--concurrency", type=int, default=None,
                        help=f"batches in flight per worker process (default: the worker's, {DEFAULT_CONCURRENCY})")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="the sandbox answers this late (0)")
    parser.add_argument("--chatbots", type=int, default=1, help="messages spread over this many chatbots (1)")
    parser.add_argument("--rss-messages", type=int, default=0,
                        help="a long run of this many more messages, printing worker/dispatcher RSS growth (0: none)")
    parser.add_argument("--pg-database", default=os.environ.get("BENCH_PG_DATABASE", PG_DATABASE),
                        help=f"the benchmark's own PostgreSQL database, dropped and created ({PG_DATABASE})")
    parser.add_argument("--chunk", type=int, default=1_000, help="messages per Producer.send_many call (1,000)")
    parser.add_argument("--latency-messages", type=int, default=200, help="messages of the latency run (200)")
    parser.add_argument("--latency-rate", type=float, default=10.0, help="messages/s of the latency run (10)")
    parser.add_argument("--rate", type=float, default=100_000.0, help="the chatbot's limit, msgs/s (100,000)")
    parser.add_argument("--burst", type=int, default=1_000, help="the chatbot's burst (1,000)")
    parser.add_argument("--log-level", default="INFO", type=str.upper,
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="of the workers and dispatcher (INFO)")
    parser.add_argument("--skip-baseline", action="store_true", help="measure oaksend only")
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13"),
                        help="oaksend's Redis db, flushed (redis://127.0.0.1:6379/13)")
    parser.add_argument("--baseline-redis-url",
                        default=os.environ.get("BENCH_BASELINE_REDIS_URL", "redis://127.0.0.1:6379/14"),
                        help="the baseline's Redis db, flushed (redis://127.0.0.1:6379/14)")
    parser.add_argument("--pg-admin-url",
                        default=os.environ.get("BENCH_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
                        help=f"an existing database to connect to for dropping/creating {PG_DATABASE}")
    parser.add_argument("--keep-logs", action="store_true", help="keep the process logs even when all went well")
    opts = parser.parse_args(argv)
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
    return opts


def _raise_interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def _single_run_lock(opts: argparse.Namespace | None = None) -> IO[str]:
    """One benchmark at a time per set of stores: two would flush each other's Redis dbs and database.

    Without `opts` (the other benchmarks), or with the default stores: the machine-wide lock."""
    import fcntl
    import hashlib

    suffix = ""
    if opts is not None and not (opts.redis_url == "redis://127.0.0.1:6379/13" and opts.pg_database == PG_DATABASE):
        stores = f"{opts.redis_url}|{opts.baseline_redis_url}|{opts.pg_database}|{opts.database}"
        suffix = "-" + hashlib.sha1(stores.encode()).hexdigest()[:8]
    path = Path(tempfile.gettempdir()) / f"oaksend-bench{suffix}.lock"
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise BenchError(f"another benchmark is running on this machine (pid {holder}; lock {path})") from None
    handle.truncate(0)
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    try:
        lock = _single_run_lock(opts)  # noqa: F841 - held until the process exits
        check_redis(opts.redis_url)
        check_redis(opts.baseline_redis_url)
        if opts.database == "postgresql":
            check_postgres(opts.pg_admin_url)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr, flush=True)
        return exc.code
    # Explicitly, so that SIGINT works even where it was ignored at start (a shell's background job).
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, _raise_interrupt)
    logdir = Path(tempfile.mkdtemp(prefix="oaksend-bench-"))
    procs = Processes(logdir)
    stack: Stack | None = None
    checks: list[tuple[str, bool, str]] = []
    ok = False
    try:
        shape_ = f"--concurrency {opts.concurrency}" if opts.concurrency else "default settings"
        say(f"bench: {opts.messages:,} messages, {opts.database}, {opts.workers} worker process(es) with "
            f"{shape_}, API latency {opts.latency_ms:g} ms, {opts.chatbots} chatbot(s), {os.cpu_count()} CPUs; "
            f"logs in {logdir}")
        baseline = run_baseline(opts, procs) if not opts.skip_baseline else None
        stack = Stack(opts, procs)
        stack.start()
        s = stack.settings
        say(f"  stack: dispatch batch {s.dispatch_batch_size}, max/pass {s.dispatch_max_per_pass}, lookahead "
            f"{s.dispatch_lookahead_s:g} s, chatbot limit {opts.rate:g}/s burst {opts.burst}, sandbox {stack.sandbox_url}")
        raw = run_raw_loop(opts, stack) if not opts.skip_baseline and opts.latency_ms == 0 else None
        through = run_throughput(opts, stack, checks)
        latency = run_latency(opts, stack, checks)
        rss = run_rss(opts, stack, checks) if opts.rss_messages else None

        say()
        say("== results ==")
        shape = f"{opts.workers} worker x {opts.concurrency or 'default'} concurrency, {opts.latency_ms:g} ms API"
        if baseline:
            say(f"baseline, bare Celery no-op ({shape}):  {baseline['rate']:8,.0f} tasks/s drained  "
                f"(published at {baseline['publish_rate']:,.0f}/s)")
        say(f"oaksend end to end ({opts.database}, {shape}):  {through['rate']:8,.0f} msgs/s sent  "
            f"(enqueued at {through['enqueue_rate']:,.0f}/s, {opts.messages:,} in {through['elapsed_s']:.1f} s)")
        if baseline:
            say(f"ratio oaksend / baseline:  {through['rate'] / baseline['rate']:.2f}  (goal >= 1.0)")
        if raw:
            say(f"raw httpx POST loop, one process:  {raw['rate']:8,.0f} requests/s")
            say(f"ratio oaksend / raw httpx loop:  {through['rate'] / raw['rate']:.2f}  (goal >= 0.8)")
        say(f"latency at {opts.latency_rate:g} msgs/s, enqueue -> sent:  p50 {latency['p50_ms']:.1f} ms,  "
            f"p99 {latency['p99_ms']:.1f} ms  ({opts.latency_messages} messages)")
        if rss:
            say(f"memory over {rss['messages']:,} messages: largest RSS growth {rss['max_growth_pct']:+.1f}% "
                "(goal < 10%)")
        code = report_checks(checks, logdir)
        ok = code == EXIT_OK
        return code
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr, flush=True)
        return exc.code
    except KeyboardInterrupt:
        print("bench: interrupted; stopping the processes it started", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    finally:
        # A second Ctrl-C (or a TERM) must not skip the cleanup.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            procs.stop()
            if stack is not None:
                stack.close()
            try:
                flush_redis(opts.redis_url)
            except Exception:  # noqa: BLE001 - Redis may be the reason we are leaving
                pass
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
        if ok and not opts.keep_logs:
            shutil.rmtree(logdir, ignore_errors=True)
        elif logdir.exists():
            print(f"bench: process logs kept in {logdir}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
