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
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.pipeline import (
    API_KEY,
    EXIT_INTERRUPTED,
    BenchError,
    Processes,
    _child_env,
    _raise_interrupt,
    _single_run_lock,
    check_postgres,
    check_redis,
    cpu_report,
    report_checks,
    cpu_snapshot,
    flush_redis,
    fresh_postgres,
    oaksend_cli,
    percentile,
    phone,
    say,
    text_of,
)

ROOT = Path(__file__).resolve().parent.parent
QUEUE = "oaksend-bench-limits"
PG_DATABASE = "oaksend_bench_limits"
#: A chatbot with a limit far above anything measured, for warming the workers up.
WARM_CHATBOT = "bench-limits-warmup"
WARMUP_BASE = 7_000_000
#: Phone numbers of each chatbot's messages start here (phone(i) is distinct per i).
PHONE_BASE = {"A": 0, "B": 100_000, "C": 200_000, "D": 3_000_000, "E": 1_000_000}
PROGRESS_EVERY_S = 5.0
WARMUP_S = 2.0
TERMINAL = ("sent", "failed", "unknown", "expired", "cancelled")


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
        self._start_sandbox()
        self.env = _child_env(DATABASE_URL=self.database_url, REDIS_URL=opts.redis_url,
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
        self.control = SandboxControl(self.sandbox_url)

        self.procs.start(self.dispatcher, [sys.executable, "-m", "oaksend.worker.cli", "dispatcher", "--log-level", "INFO"],
                         self.env)
        self.workers = []
        for i in range(opts.workers):
            name = f"{self.tag}-worker{i}"
            self.procs.start(name, [sys.executable, "-m", "oaksend.worker.cli", "worker", "--concurrency",
                                    str(opts.concurrency), "--log-level", "INFO", "-n", f"limits{i}@%h"], self.env)
            self.workers.append(name)
        self.procs.wait_for_log(self.workers, " ready.", 90)
        self.procs.wait_for_log([self.dispatcher], "is now active", 30)
        # Warm up every worker thread on a chatbot of its own, then forget it at the sandbox.
        from oaksend.worker.message.validation import SendRequest

        warm = opts.workers * opts.concurrency
        ids = self.producer.send_many([SendRequest(WARM_CHATBOT, phone(WARMUP_BASE + i), text_of(WARMUP_BASE + i))
                                       for i in range(warm)])
        counts = self.wait_terminal(ids, "warm-up", timeout_s=60)
        if counts.get("sent", 0) != warm:
            raise BenchError(f"warm-up messages were not all sent: {counts} (logs in {self.procs.logdir})")
        self.control.reset()
        s = self.settings
        say(f"  stack: {opts.workers} workers x --concurrency {opts.concurrency} + 1 dispatcher; defaults: "
            f"dispatch batch {s.dispatch_batch_size}, lookahead {s.dispatch_lookahead_s:g} s, max token wait "
            f"{s.max_token_wait_s:g} s, dispatch interval {s.dispatch_interval_s:g} s, max in flight {s.max_inflight}")

    def _start_sandbox(self) -> None:
        argv = [sys.executable, "-m", "oaksend.sandbox", "--port", "0", "--api-key", API_KEY, "--seed", "1",
                "--limit-slack-ms", f"{self.opts.slack_ms:g}"]
        for bot in self.bots:
            argv += ["--limit", f"{bot.serial}={bot.rate:g}:{bot.burst}"]
        proc = self.procs.start(f"{self.tag}-sandbox", argv, _child_env(), stdout_pipe=True)
        assert proc.stdout is not None
        first: list[bytes] = []
        reader = threading.Thread(target=lambda: first.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(15)
        line = first[0].decode(errors="replace").strip() if first else ""
        if "listening on" not in line:
            raise BenchError(f"the sandbox did not start: {line or 'no output in 15 s'!r} "
                             f"(log: {self.procs.log_path(self.tag + '-sandbox')})")
        self.sandbox_url = line.rsplit(" ", 1)[-1]

        def drain() -> None:
            try:
                for _ in iter(proc.stdout.readline, b""):  # type: ignore[union-attr]
                    pass
            except (ValueError, OSError):
                pass

        threading.Thread(target=drain, daemon=True).start()

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


# -- logs ---------------------------------------------------------------------------------------
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


def dispatcher_log_counts(text: str) -> dict[str, int]:
    out = {"passes": 0, "dispatched": 0, "tasks": 0, "rescued": 0}
    for m in re.finditer(r"pass: dispatched (\d+) in (\d+) tasks, rescued \{(?:'dispatched': (\d+))?", text):
        out["passes"] += 1
        out["dispatched"] += int(m.group(1))
        out["tasks"] += int(m.group(2))
        out["rescued"] += int(m.group(3) or 0)
    return out


def log_marks(procs: Processes, names: list[str]) -> dict[str, int]:
    return {n: len(procs.log_text(n)) for n in names}


# -- checks -------------------------------------------------------------------------------------
def check_bot(stack: LimitStack, records: Records, bot: Bot, enqueued: int, checks: list[tuple[str, bool, str]]) -> int:
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


# -- part 1 -------------------------------------------------------------------------------------
def run_limits(opts: argparse.Namespace, procs: Processes, checks: list[tuple[str, bool, str]]) -> list[dict[str, Any]]:
    bots: list[Bot] = opts.bot
    say(f"== part 1: limits ({', '.join(f'{b.letter} {b.rate:g}/s burst {b.burst}' for b in bots)}) ==")
    stack = LimitStack(opts, procs, bots, "limits")
    rows: list[dict[str, Any]] = []
    try:
        stack.start()
        say(f"  sandbox limits as oaksend's, --limit-slack-ms {opts.slack_ms:g} (a request up to {opts.slack_ms:g} ms "
            f"early is not counted a violation: network and scheduling jitter between the worker's Redis slot "
            f"and the sandbox reading the request)")
        records = Records(stack.control)
        enqueued: dict[str, int] = {}
        marks = log_marks(procs, stack.workers + [stack.dispatcher])
        cpu0 = cpu_snapshot(procs)
        cpu_t0 = time.monotonic()
        for bot in bots:
            n = math.ceil(bot.rate * opts.backlog_s)
            m0 = time.monotonic()
            stack.producer.send_many([bot.request(i) for i in range(n)])
            enqueued[bot.serial] = n
            say(f"  {bot.letter}: enqueued {n:,} messages ({opts.backlog_s:g} s of its rate) in "
                f"{time.monotonic() - m0:.2f} s")
        span = WARMUP_S + opts.window
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
            if all(f is not None for f in firsts) and now_unix > max(firsts) + span + 0.5:  # type: ignore[type-var]
                break
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
        cpu = cpu_report(cpu0, cpu_snapshot(procs), time.monotonic() - cpu_t0)
        stats = stack.control.stats().get("chatbots", {})
        wlog = worker_log_counts(procs, stack.workers, marks)
        dlog = dispatcher_log_counts(procs.log_text(stack.dispatcher)[marks[stack.dispatcher]:])
        say("  stopping: dispatcher first, then the workers once nothing is in flight ...")
        left = stack.quiesce()
        checks.append(("part 1: nothing left dispatched or sending after the dispatcher stopped", left == 0,
                       f"{left} in flight"))
        records.poll()
        # Every log line, now that the workers have stopped.
        wlog = worker_log_counts(procs, stack.workers, marks)
        for bot in bots:
            sn = bot.serial
            times = records.times(sn)
            t0 = records.first_at[sn]
            got = count_between(times, t0 + WARMUP_S, t0 + span)
            warm = count_between(times, t0, t0 + WARMUP_S)
            rate = got / opts.window
            st = stats.get(sn, {})
            moved, throttled_pending = stack.given_back(sn)
            sent = check_bot(stack, records, bot, enqueued[sn], checks)
            rows.append({
                "bot": bot, "received": got, "warmup": warm, "rate": rate, "ratio": rate / bot.rate,
                "max_1s": max_in_window(times), "max_1s_window": max_in_window(
                    [t for t in times if t0 + WARMUP_S <= t < t0 + span]),
                "sandbox_max_1s": st.get("max_1s"), "violations": st.get("violations"),
                "by_status": st.get("by_status"), "moved": moved, "throttled_pending": throttled_pending,
                "total_received": len(times), "sent": sent, "max_1s_left": max_in_window(stack.departures(sn)),
            })
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
        return rows
    finally:
        procs.stop()
        stack.close()


# -- part 2 -------------------------------------------------------------------------------------
def run_fairness(opts: argparse.Namespace, procs: Processes, checks: list[tuple[str, bool, str]]) -> dict[str, Any]:
    big: Bot = opts.big
    small: Bot = opts.small
    say()
    say(f"== part 2: fairness (E {big.rate:g}/s burst {big.burst} with a {opts.backlog:,}-message backlog; "
        f"D {small.rate:g}/s burst {small.burst}, {opts.small_messages} messages {opts.small_gap_s:g} s apart) ==")
    stack = LimitStack(opts, procs, [big, small], "fairness")
    try:
        stack.start()
        records = Records(stack.control)
        marks = log_marks(procs, stack.workers + [stack.dispatcher])
        say(f"  E: enqueuing {opts.backlog:,} messages with Producer.send_many in chunks of {opts.chunk:,} "
            f"(the workers are running: E starts draining at once) ...")
        m0 = time.monotonic()
        last_print = m0
        n_done = 0
        for lo in range(0, opts.backlog, opts.chunk):
            hi = min(opts.backlog, lo + opts.chunk)
            stack.producer.send_many([big.request(i) for i in range(lo, hi)])
            n_done = hi
            now = time.monotonic()
            if now - last_print >= 2.0 or n_done == opts.backlog:
                records.poll()
                say(f"    {now - m0:5.1f} s  enqueued {n_done:,} / {opts.backlog:,} "
                    f"({n_done / (now - m0):,.0f} msgs/s); E requests at the API so far {records.count(big.serial):,}")
                last_print = now
            procs.check_alive()
        # Let E's drain settle into its steady state before D starts.
        while True:
            records.poll()
            first = records.first_at.get(big.serial)
            if first is not None and time.time() >= first + opts.settle_s:
                break
            if time.monotonic() - m0 > 120:
                raise BenchError(f"part 2: E sent nothing (logs in {procs.logdir})")
            procs.check_alive()
            time.sleep(0.2)
        t_before = time.time()
        e_before = records.count(big.serial)
        recent = count_between(records.times(big.serial), t_before - 5.0, t_before)
        say(f"  E is draining: {e_before:,} requests at the API so far, {recent / 5.0:.1f}/s over the last 5 s")

        say(f"  D: {opts.small_messages} messages one at a time, {opts.small_gap_s:g} s apart, with Producer.send ...")
        ids: list[int] = []
        d_start_unix = time.time()
        d_start = time.monotonic()
        for i in range(opts.small_messages):
            delay = d_start + i * opts.small_gap_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            req = small.request(i)
            ids.append(stack.producer.send(req.serial_number, req.to, req.text))
        counts = stack.wait_terminal(ids, "D's messages", timeout_s=60, progress=True)
        d_end_unix = time.time()
        records.poll()

        from sqlalchemy import select

        from oaksend.models.tables import Attempt, Message

        with stack.reader.connect() as conn:
            d_rows = list(conn.execute(select(Message.id, Message.created_at, Message.sent_at, Message.attempts)
                                       .where(Message.id.in_(ids))))
            d_parts = list(conn.execute(
                select(Message.created_at, Attempt.started_at, Attempt.latency_ms)
                .join(Attempt, Attempt.message_id == Message.id).where(Message.id.in_(ids))))
        lat = sorted((s - c).total_seconds() * 1000.0 for _, c, s, _a in d_rows if s is not None)
        last_sent = max((s for _, _c, s, _a in d_rows if s is not None), default=None)
        d_window_end = last_sent.timestamp() if last_sent is not None else d_end_unix
        e_times = records.times(big.serial)
        e_during = count_between(e_times, d_start_unix, d_window_end)
        e_span = d_window_end - d_start_unix
        stats = stack.control.stats().get("chatbots", {})
        d_times = records.times(small.serial)
        wait_parts = sorted((st - c).total_seconds() * 1000.0 for c, st, _ in d_parts)
        http_parts = sorted(ms for _c, _st, ms in d_parts if ms is not None)

        say("  stopping: dispatcher first, then the workers once nothing is in flight ...")
        left = stack.quiesce()
        checks.append(("part 2: nothing left dispatched or sending after the dispatcher stopped", left == 0,
                       f"{left} in flight"))
        records.poll()
        wlog = worker_log_counts(procs, stack.workers, marks)
        dlog = dispatcher_log_counts(procs.log_text(stack.dispatcher)[marks[stack.dispatcher]:])
        checks.append(("part 2: D's messages all sent", counts.get("sent", 0) == len(ids), f"{counts}"))
        e_sent = check_bot(stack, records, big, opts.backlog, checks)
        check_bot(stack, records, small, opts.small_messages, checks)
        e_total_s = (e_times[-1] - e_times[0]) if len(e_times) > 1 else math.nan
        out = {"p50": percentile(lat, 50), "p99": percentile(lat, 99), "min": lat[0] if lat else math.nan,
               "max": lat[-1] if lat else math.nan, "n": len(lat), "e_during": e_during, "e_span": e_span}

        say()
        say("part 2 results:")
        say(f"  D enqueue -> sent (messages.sent_at - created_at) over {len(lat)} messages: p50 {out['p50']:.0f} ms, "
            f"p99 {out['p99']:.0f} ms (min {out['min']:.0f}, max {out['max']:.0f}); goal p99 <= 1000 ms")
        if wait_parts:
            say(f"    parts p50 / p99: enqueue -> call started {percentile(wait_parts, 50):.0f} / "
                f"{percentile(wait_parts, 99):.0f} ms, HTTP call {percentile(http_parts, 50):.1f} / "
                f"{percentile(http_parts, 99):.1f} ms; attempts per D message {sorted({a for *_x, a in d_rows})}")
        say(f"  E meanwhile: {e_during:,} requests at the API in the {e_span:.1f} s from D's first enqueue to its "
            f"last sent ({e_during / e_span if e_span > 0 else math.nan:.1f}/s, limit {big.rate:g}/s); "
            f"E until then: {len(e_times):,} requests over {e_total_s:.1f} s; when stopped: {e_sent:,} sent, "
            f"{opts.backlog - e_sent:,} still waiting")
        for bot in (big, small):
            st = stats.get(bot.serial, {})
            times = e_times if bot is big else d_times
            say(f"  {bot.letter}: sandbox max_1s {st.get('max_1s')} (sliding from records {max_in_window(times)}; "
                f"limit + burst {bot.rate + bot.burst:g}), violations {st.get('violations')}, "
                f"by status {st.get('by_status')}")
        say(f"  workers: {wlog.get('tasks', 0):,} tasks, {wlog.get('calls', 0):,} API calls, "
            f"{wlog.get('throttled', 0):,} throttled give-backs; dispatcher: {dlog['passes']:,} passes that "
            f"dispatched, {dlog['dispatched']:,} leases in {dlog['tasks']:,} tasks, {dlog['rescued']:,} rescued")
        return out
    finally:
        procs.stop()
        stack.close()


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


def drop_database(admin_url: str) -> None:
    from sqlalchemy import text

    from bench.pipeline import _pg_engine

    engine = _pg_engine(admin_url)
    try:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{PG_DATABASE}" WITH (FORCE)'))
    finally:
        engine.dispose()


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
    logdir = Path(tempfile.mkdtemp(prefix="oaksend-bench-limits-"))
    procs = Processes(logdir)
    checks: list[tuple[str, bool, str]] = []
    ok = False
    try:
        say(f"bench.limits: {opts.workers} worker process(es) x --concurrency {opts.concurrency}, 1 dispatcher, "
            f"PostgreSQL, {os.cpu_count()} CPUs; logs in {logdir}")
        limits = run_limits(opts, procs, checks) if not opts.skip_limits else []
        fair = run_fairness(opts, procs, checks) if not opts.skip_fairness else None

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
        return report_checks(checks, logdir)
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
            with contextlib.suppress(Exception):  # Redis may be the reason we are leaving
                flush_redis(opts.redis_url)
            if ok:
                with contextlib.suppress(Exception):  # the database is recreated on the next run anyway
                    drop_database(opts.pg_admin_url)
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
        if ok and not opts.keep_logs:
            shutil.rmtree(logdir, ignore_errors=True)
        elif logdir.exists():
            print(f"bench: process logs kept in {logdir}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
