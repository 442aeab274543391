"""What both parts of `python -m bench.limits` share: the chatbots (Bot), a fresh stack whose chatbots have
limits at the sandbox and in oaksend (LimitStack), the sandbox's request records, the sliding-window count,
the workers' log totals, and the per-chatbot correctness checks."""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from bench.harness import (
    API_KEY,
    TERMINAL,
    BenchError,
    Check,
    Processes,
    child_env,
    flush_redis,
    fresh_postgres,
    oaksend_cli,
    phone,
    say,
    start_sandbox,
    text_of,
)

QUEUE = "oaksend-bench-limits"
PG_DATABASE = "oaksend_bench_limits"
#: A chatbot with a limit far above anything measured, for warming the workers up.
WARM_CHATBOT = "bench-limits-warmup"
WARMUP_BASE = 7_000_000
#: Phone numbers of each chatbot's messages start here (phone(i) is distinct per i).
PHONE_BASE = {"A": 0, "B": 100_000, "C": 200_000, "D": 3_000_000, "E": 1_000_000}


def serial_of(letter: str) -> str:
    return f"bench-limits-{letter}"


@dataclass(frozen=True)
class Bot:
    letter: str
    rate: float
    burst: int

    @property
    def serial(self) -> str:
        return serial_of(self.letter)

    def request(self, i: int) -> Any:
        from oaksend.worker.message.validation import SendRequest

        n = PHONE_BASE[self.letter] + i
        return SendRequest(self.serial, phone(n), text_of(n))


def parse_bot(value: str) -> Bot:
    """'A=5:1' -> Bot('A', 5.0, 1)."""
    try:
        letter, _, limit = value.partition("=")
        rate, _, burst = limit.partition(":")
        bot = Bot(letter.strip(), float(rate), int(burst or 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LETTER=RATE[:BURST], got {value!r}") from None
    if bot.letter not in PHONE_BASE or bot.rate <= 0 or bot.burst < 1:
        raise argparse.ArgumentTypeError(f"expected one of {sorted(PHONE_BASE)}=RATE>0[:BURST>=1], got {value!r}")
    return bot


# -- pure helpers -------------------------------------------------------------------------------
def max_in_window(times: list[float], window_s: float = 1.0) -> int:
    """Most events in any window (t - window_s, t] of the ascending times (as the sandbox counts)."""
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - window_s:
            j += 1
        best = max(best, i - j + 1)
    return best


def count_between(times: list[float], lo: float, hi: float) -> int:
    return sum(1 for t in times if lo <= t < hi)


# -- the stack ----------------------------------------------------------------------------------
class LimitStack:
    """A fresh oaksend stack whose chatbots have the given limits, at the sandbox and in oaksend."""

    def __init__(self, opts: argparse.Namespace, procs: Processes, bots: list[Bot], tag: str) -> None:
        self.opts = opts
        self.tag = tag  # process (and log file) names: "<tag>-worker0", ...
        self.dispatcher = f"{tag}-dispatcher"
        self.procs = procs
        self.bots = bots
        self.env: dict[str, str] = {}
        self.sandbox_url = ""
        self.database_url = ""
        self.producer: Any = None
        self.reader: Any = None
        self.control: Any = None
        self.settings: Any = None
        self.workers: list[str] = []

    def start(self) -> None:
        opts = self.opts
        self.database_url = fresh_postgres(opts.pg_admin_url, PG_DATABASE)
        flush_redis(opts.redis_url)
        args = ["--port", "0", "--api-key", API_KEY, "--seed", "1", "--limit-slack-ms", f"{opts.slack_ms:g}"]
        for bot in self.bots:
            args += ["--limit", f"{bot.serial}={bot.rate:g}:{bot.burst}"]
        self.sandbox_url = start_sandbox(self.procs, f"{self.tag}-sandbox", args)
        self.env = child_env(DATABASE_URL=self.database_url, REDIS_URL=opts.redis_url,
                             NEWOAKS_BASE_URL=self.sandbox_url, NEWOAKS_API_KEY=API_KEY, OAKSEND_QUEUE_NAME=QUEUE)
        say(f"  database {PG_DATABASE} (fresh), Redis {opts.redis_url} (flushed), sandbox {self.sandbox_url}; "
            f"migrating ...")
        oaksend_cli(["migrate"], self.env)
        for bot in self.bots:
            oaksend_cli(["chatbot", "set-limit", bot.serial, "--rate", f"{bot.rate:g}", "--burst", str(bot.burst)],
                        self.env)
        oaksend_cli(["chatbot", "set-limit", WARM_CHATBOT, "--rate", "10000", "--burst", "1000"], self.env)

        from oaksend.models.db import make_engine
        from oaksend.sandbox.control import SandboxControl
        from oaksend.worker.enqueue import Producer
        from oaksend.worker.settings import load_settings

        self.settings = load_settings(database_url=self.database_url, redis_url=opts.redis_url)
        self.producer = Producer(self.settings)
        self.reader = make_engine(self.database_url, pool_size=2)
        self.control = SandboxControl(self.sandbox_url, API_KEY)
        self.start_processes()
        self.warm_up()
        s = self.settings
        say(f"  stack: {opts.workers} workers x --concurrency {opts.concurrency} + 1 dispatcher; defaults: "
            f"dispatch batch {s.dispatch_batch_size}, lookahead {s.dispatch_lookahead_s:g} s, max token wait "
            f"{s.max_token_wait_s:g} s, dispatch interval {s.dispatch_interval_s:g} s, max in flight {s.max_inflight}")

    def start_processes(self) -> None:
        opts = self.opts
        self.procs.start(self.dispatcher, [sys.executable, "-m", "oaksend.worker.cli", "dispatcher", "--log-level",
                                           "INFO"], self.env)
        self.workers = []
        for i in range(opts.workers):
            name = f"{self.tag}-worker{i}"
            self.procs.start(name, [sys.executable, "-m", "oaksend.worker.cli", "worker", "--concurrency",
                                    str(opts.concurrency), "--log-level", "INFO", "-n", f"limits{i}@%h"], self.env)
            self.workers.append(name)
        self.procs.wait_for_log(self.workers, " ready.", 90)
        self.procs.wait_for_log([self.dispatcher], "is now active", 30)

    def warm_up(self) -> None:
        """Every worker thread on a chatbot of its own, then forget it at the sandbox."""
        from oaksend.worker.message.validation import SendRequest

        warm = self.opts.workers * self.opts.concurrency
        ids = self.producer.send_many([SendRequest(WARM_CHATBOT, phone(WARMUP_BASE + i), text_of(WARMUP_BASE + i))
                                       for i in range(warm)])
        counts = self.wait_terminal(ids, "warm-up", timeout_s=60)
        if counts.get("sent", 0) != warm:
            raise BenchError(f"warm-up messages were not all sent: {counts} (logs in {self.procs.logdir})")
        self.control.reset()

    # -- the outbox -------------------------------------------------------------------------
    def states(self, ids: list[int] | None = None, serial: str | None = None) -> dict[str, int]:
        from sqlalchemy import func, select

        from oaksend.models.tables import Message

        q = select(Message.state, func.count()).group_by(Message.state)
        if ids is not None:
            q = q.where(Message.id.in_(ids))
        if serial is not None:
            q = q.where(Message.serial_number == serial)
        with self.reader.connect() as conn:
            return {state: n for state, n in conn.execute(q)}

    def wait_terminal(self, ids: list[int], what: str, *, timeout_s: float, progress: bool = False) -> dict[str, int]:
        start = time.monotonic()
        last_print = start
        while True:
            counts = self.states(ids)
            if sum(counts.get(s, 0) for s in TERMINAL) >= len(ids):
                return counts
            now = time.monotonic()
            if now - start > timeout_s:
                raise BenchError(f"{what}: not done after {timeout_s:.0f} s: {counts} (logs in {self.procs.logdir})")
            if progress and now - last_print >= 2.0:
                say(f"    {now - start:5.1f} s  {what}: {counts}")
                last_print = now
            self.procs.check_alive()
            time.sleep(0.1)

    def in_flight(self) -> int:
        counts = self.states()
        return counts.get("dispatched", 0) + counts.get("sending", 0)

    def quiesce(self, timeout_s: float = 30.0) -> int:
        """Stop dispatching, let the workers finish what is in the broker, stop them; messages left in flight."""
        self.procs.stop([self.dispatcher])
        deadline = time.monotonic() + timeout_s
        left = self.in_flight()
        while left and time.monotonic() < deadline:
            self.procs.check_alive()
            time.sleep(0.2)
            left = self.in_flight()
        self.procs.stop(self.workers)
        return left

    def sent_by_serial(self, serial: str) -> dict[str, Any]:
        """phone -> (created_at, sent_at, attempts) of the chatbot's sent messages."""
        from sqlalchemy import select

        from oaksend.models.tables import Message

        with self.reader.connect() as conn:
            return {r[0]: (r[1], r[2], r[3]) for r in conn.execute(
                select(Message.to_phone, Message.created_at, Message.sent_at, Message.attempts)
                .where(Message.serial_number == serial, Message.state == "sent"))}

    def given_back(self, serial: str) -> tuple[int, int]:
        """(messages handed back at least once with a later due time, pending ones whose last word was 'throttled')."""
        from sqlalchemy import func, select

        from oaksend.models.tables import Message

        with self.reader.connect() as conn:
            moved = conn.execute(select(func.count()).where(
                Message.serial_number == serial, Message.next_attempt_at > Message.created_at)).scalar_one()
            throttled = conn.execute(select(func.count()).where(
                Message.serial_number == serial, Message.last_reason.like("throttled%"))).scalar_one()
        return int(moved), int(throttled)

    def departures(self, serial: str) -> list[float]:
        """When each of the chatbot's requests left its worker (the attempts' started_at), ascending."""
        from sqlalchemy import select

        from oaksend.models.tables import Attempt, Message

        with self.reader.connect() as conn:
            rows = conn.execute(select(Attempt.started_at).join(Message, Message.id == Attempt.message_id)
                                .where(Message.serial_number == serial).order_by(Attempt.started_at)).scalars()
            return [t.timestamp() for t in rows]

    def close(self) -> None:
        for thing in (self.control, self.producer):
            if thing is not None:
                with contextlib.suppress(Exception):  # closing on the way out
                    thing.close()
        if self.reader is not None:
            self.reader.dispose()
        self.control = self.producer = self.reader = None


class Records:
    """The sandbox's request records, fetched incrementally."""

    def __init__(self, control: Any) -> None:
        self.control = control
        self.seq = 0
        self.all: list[dict[str, Any]] = []
        self.first_at: dict[str, float] = {}

    def poll(self) -> None:
        new = self.control.requests(since=self.seq)
        for r in new:
            self.seq = max(self.seq, int(r["seq"]))
            sn = r.get("serial_number")
            if sn is not None and sn not in self.first_at:
                self.first_at[sn] = float(r["received_at"])
            r.pop("message", None)
        self.all.extend(new)

    def times(self, serial: str, status: int | None = None) -> list[float]:
        return sorted(float(r["received_at"]) for r in self.all
                      if r.get("serial_number") == serial and (status is None or r.get("status") == status))

    def count(self, serial: str) -> int:
        return sum(1 for r in self.all if r.get("serial_number") == serial)


# -- logs and checks ----------------------------------------------------------------------------
def worker_log_counts(procs: Processes, names: list[str], marks: dict[str, int]) -> dict[str, int]:
    """Totals from the workers' Celery task results and per-message lines since `marks`."""
    out: Counter[str] = Counter()
    for name in names:
        text = procs.log_text(name)[marks.get(name, 0):]
        for m in re.finditer(r"succeeded in [\d.e-]+s: \{([^}]*)\}", text):
            out["tasks"] += 1
            for key, value in re.findall(r"'(\w+)': (\d+)", m.group(1)):
                out[key] += int(value)
        out["http_429"] += len(re.findall(r"\(http_429\)", text))
    return dict(out)


def check_bot(stack: LimitStack, records: Records, bot: Bot, enqueued: int, checks: list[Check]) -> int:
    """Database and sandbox agree for one chatbot: nothing lost, nothing twice, nothing failed. Returns sent."""
    states = stack.states(serial=bot.serial)
    total = sum(states.values())
    bad = {s: n for s, n in states.items() if s not in ("pending", "sent")}
    checks.append((f"{bot.letter}: every message still in the outbox, none failed/expired/in flight",
                   total == enqueued and not bad, f"{total:,} of {enqueued:,} rows; states {states}"))
    sent = stack.sent_by_serial(bot.serial)
    ok_phones = [r["to_phone_number"] for r in records.all
                 if r.get("serial_number") == bot.serial and r.get("status") == 200]
    dup = len(ok_phones) - len(set(ok_phones))
    same = set(ok_phones) == set(sent)
    checks.append((f"{bot.letter}: the sandbox accepted exactly the messages marked sent, each once",
                   same and dup == 0 and len(ok_phones) == len(sent),
                   f"{len(ok_phones):,} accepted requests ({dup} duplicates), {len(sent):,} sent rows"))
    return len(sent)
