"""The oaksend stack under test in `bench.pipeline` and `bench.recovery`: a fresh database, a flushed Redis db,
the sandbox API, one dispatcher and the worker processes (warmed up), a producer, and the outbox read back."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime
from typing import Any

from bench.harness.core import API_KEY, TERMINAL, BenchError, phone, say, text_of
from bench.harness.processes import Processes, child_env, oaksend_cli, start_sandbox
from bench.harness.services import flush_redis, fresh_postgres

CHATBOT = "0be4c0a4c5e6f708192a3b4c5d6e7f80"
QUEUE = "oaksend-bench"
PG_DATABASE = "oaksend_bench"
REDIS_URL = "redis://127.0.0.1:6379/13"
#: `oaksend worker`'s default --concurrency (for the warm-up and the baseline's shape).
DEFAULT_CONCURRENCY = 16
#: Warm-up messages use numbers from here; the measured ones count from 0.
WARMUP_BASE = 7_000_000
PROGRESS_EVERY_S = 2.0
STALL_S = 60.0


def chatbots(n: int) -> list[str]:
    """n chatbot serial numbers, the first one CHATBOT."""
    return [CHATBOT] + [f"{i:032x}" for i in range(1, n)]


def stores_key(opts: argparse.Namespace) -> str | None:
    """The stores a Stack of `opts` flushes, for single_run_lock: None (the machine-wide lock) on the defaults."""
    if opts.redis_url == REDIS_URL and opts.pg_database == PG_DATABASE:
        return None
    return f"{opts.redis_url}|{opts.baseline_redis_url}|{opts.pg_database}|{opts.database}"


class Stack:
    """The oaksend stack under test: database, sandbox, dispatcher, workers, and a producer."""

    def __init__(self, opts: argparse.Namespace, procs: Processes) -> None:
        self.opts = opts
        self.procs = procs
        self.database_url = ""
        self.sandbox_url = ""
        self.env: dict[str, str] = {}
        self.settings: Any = None
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
        latency = ["--latency", f"{opts.latency_ms:g}"] if opts.latency_ms > 0 else []
        self.sandbox_url = start_sandbox(self.procs, "sandbox",
                                         ["--port", "0", "--api-key", API_KEY, "--seed", "1", *latency])
        self.env = child_env(
            DATABASE_URL=self.database_url, REDIS_URL=opts.redis_url, NEWOAKS_BASE_URL=self.sandbox_url,
            NEWOAKS_API_KEY=API_KEY, OAKSEND_QUEUE_NAME=self.queue,
        )
        # So that rate limiting is not what is measured (an OAKSEND_ value in our environment wins).
        self.env.setdefault("OAKSEND_DEFAULT_RATE_PER_S", str(opts.rate))
        self.env.setdefault("OAKSEND_DEFAULT_BURST", str(opts.burst))
        say(f"oaksend: {opts.database} database {self.shown_db()}, migrating ...")
        oaksend_cli(["migrate"], self.env)
        for serial in self.serials:
            oaksend_cli(["chatbot", "set-limit", serial, "--rate", f"{opts.rate:g}", "--burst", str(opts.burst)],
                        self.env)
        self.connect()
        self.start_processes()
        self.warm_up()

    def connect(self) -> None:
        """The producer and the outbox reader of this process."""
        from oaksend.models.db import make_engine
        from oaksend.worker.enqueue import Producer
        from oaksend.worker.settings import load_settings

        self.settings = load_settings(database_url=self.database_url, redis_url=self.opts.redis_url)
        self.producer = Producer(self.settings)
        if self.opts.database == "sqlite":
            from sqlalchemy import create_engine

            # A plain engine: make_engine's BEGIN IMMEDIATE would take the write lock for every poll.
            self.reader = create_engine(self.database_url)
        else:
            self.reader = make_engine(self.database_url, pool_size=2)

    def start_processes(self) -> None:
        opts = self.opts
        self.procs.start("dispatcher", [sys.executable, "-m", "oaksend.worker.cli", "dispatcher", "--log-level",
                                        opts.log_level], self.env)
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

    def warm_up(self) -> None:
        """One message per worker thread, then forget them at the sandbox."""
        from oaksend.sandbox.control import SandboxControl

        warm = self.opts.workers * (self.opts.concurrency or DEFAULT_CONCURRENCY)
        ids = self.producer.send_many([self.request(WARMUP_BASE + i) for i in range(warm)])
        counts = self.wait_sent(ids[0], ids[-1], warm, "warm-up", progress=False)
        if counts.get("sent", 0) != warm:
            raise BenchError(f"warm-up messages were not all sent: {counts} (logs in {self.procs.logdir})")
        self.control = SandboxControl(self.sandbox_url, API_KEY)
        self.control.reset()

    def shown_db(self) -> str:
        return self.opts.pg_database if self.opts.database == "postgresql" else self.database_url.removeprefix("sqlite:///")

    def request(self, i: int) -> Any:
        """Message i: its own phone number, the chatbots in turn."""
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
