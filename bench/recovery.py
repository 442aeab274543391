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
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.pipeline import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    TERMINAL,
    BenchError,
    Processes,
    Stack,
    _raise_interrupt,
    _single_run_lock,
    check_postgres,
    check_redis,
    flush_redis,
    percentile,
    report_checks,
    say,
)

QUEUE = "oaksend-bench-recovery"
PG_DATABASE = "oaksend_bench_recovery"
REDIS_URL = "redis://127.0.0.1:6379/10"
#: kombu's Redis transport keeps each delivered, unacknowledged message in this hash.
UNACKED_KEY = "unacked"
#: Stream chunks: one send_many this often.
CHUNK_EVERY_S = 0.05
#: A kill whose messages have not all ended after this long is reported as not recovered.
RECOVERY_LIMIT_S = 90.0
#: A replacement worker is started this long after the kill (`oaksend run` restarts a dead child after 1 s).
RESTART_AFTER_S = 1.0
#: The live worker has started whatever it had received by then (its tasks last about a second).
UNACKED_SETTLE_S = 5.0


# -- pure: what the dead worker held, and how long it took -----------------------------------
def task_of(raw: bytes | str) -> tuple[list[int], str] | None:
    """The (ids, lease token) of one kombu `unacked` entry holding an oaksend send task, else None."""
    try:
        payload = json.loads(raw)[0]
        body = payload["body"]
        if payload.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return [int(i) for i in args[0]], str(args[1])
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def dead_tasks(at_kill: dict[str, list[int]], later: Iterable[str]) -> list[int]:
    """Ids of the tasks delivered at the kill and still unacknowledged later: the dead worker's."""
    still = set(later)
    return sorted({i for tag, ids in at_kill.items() if tag in still for i in ids})


def ended_at(state: str, sent_at: datetime | None, updated_at: datetime) -> datetime | None:
    """When a message ended: sent_at for a sent one, updated_at for another final state, else None."""
    if state == "sent":
        return sent_at or updated_at
    return updated_at if state in TERMINAL else None


@dataclass
class Audit:
    """One message, as the database and the API saw it."""

    state: str
    attempts: int
    stand_ins: int  #: `worker_lost` attempts (the rescue's ambiguous stand-in)
    sent_attempts: int
    numbers_ok: bool  #: attempt numbers are 1..n
    requests: int  #: requests the API received for its number


def audit_problems(audits: dict[int, Audit], policy: str) -> dict[str, list[int]]:
    """Pure: the messages breaking each rule (empty lists when all hold)."""
    allowed = {"sent"} if policy == "retry" else {"sent", "unknown"}
    problems: dict[str, list[int]] = {"not ended as the policy says": [], "attempts differ from the API's requests": [],
                                      "requested twice without a stand-in": [], "two sent attempts": [],
                                      "attempt numbers not 1..n": []}
    for mid, a in audits.items():
        if a.state not in allowed or (a.state == "unknown" and not a.stand_ins):
            problems["not ended as the policy says"].append(mid)
        if not (a.attempts - a.stand_ins <= a.requests <= a.attempts):
            problems["attempts differ from the API's requests"].append(mid)
        if a.requests > 1 and not a.stand_ins:
            problems["requested twice without a stand-in"].append(mid)
        if a.sent_attempts > 1:
            problems["two sent attempts"].append(mid)
        if not a.numbers_ok:
            problems["attempt numbers not 1..n"].append(mid)
    return problems


@dataclass
class Kill:
    """What one kill showed."""

    victim: str
    claimed: list[int] = field(default_factory=list)  #: rows it had claimed (sending)
    dispatched: list[int] = field(default_factory=list)  #: rows dispatched, not claimed, at the kill (anyone's)
    received: list[int] = field(default_factory=list)  #: of those, in tasks the broker had delivered to it
    recovery_s: float = math.nan  #: kill -> the last of them ended
    claimed_s: float = math.nan  #: kill -> the last claimed one ended
    dispatched_s: float = math.nan  #: kill -> the last dispatched one ended
    noticed_s: float = math.nan  #: kill -> the dispatcher logged it stopped beating
    backlog: int = 0  #: messages of the stream not ended at the kill (the workers' pace vs the stream's)
    load: float = math.nan  #: the machine's 1-minute load average at the kill


# -- the stream -------------------------------------------------------------------------------
class Stream(threading.Thread):
    """A steady stream of messages: send_many every CHUNK_EVERY_S, `rate` per second in all."""

    def __init__(self, stack: Stack, rate: float) -> None:
        super().__init__(name="stream", daemon=True)
        self.stack = stack
        self.rate = rate
        self.stop = threading.Event()
        self.ids: list[int] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        start = time.monotonic()
        made = 0
        try:
            while not self.stop.is_set():
                due = int((time.monotonic() - start) * self.rate)
                if due > made:
                    self.ids += self.stack.producer.send_many([self.stack._request(i) for i in range(made, due)])
                    made = due
                self.stop.wait(CHUNK_EVERY_S)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.error = exc


class BeatWatch(threading.Thread):
    """The largest age a live worker's heartbeat reached (how close a slow worker came to the TTL)."""

    def __init__(self, redis_url: str, live: Callable[[], set[str]]) -> None:
        super().__init__(name="beat-watch", daemon=True)
        import redis

        from oaksend.worker.delivery.heartbeat import WORKERS_KEY

        self.client = redis.Redis.from_url(redis_url, socket_timeout=5)
        self.key = WORKERS_KEY
        self.live = live
        self.stop = threading.Event()
        self.largest_s = 0.0

    def run(self) -> None:
        while not self.stop.wait(0.1):
            live = self.live()
            now = time.time()
            for member, score in self.client.zrange(self.key, 0, -1, withscores=True):
                name = member.decode() if isinstance(member, bytes) else str(member)
                if name in live:
                    self.largest_s = max(self.largest_s, now - float(score))
        self.client.close()


# -- reading the stores -----------------------------------------------------------------------
def unacked(client: Any) -> dict[str, list[int]]:
    """Delivery tag -> message ids of every oaksend task delivered and not yet started."""
    out = {}
    for tag, raw in client.hgetall(UNACKED_KEY).items():
        task = task_of(raw)
        if task is not None:
            out[tag.decode() if isinstance(tag, bytes) else str(tag)] = task[0]
    return out


def in_flight(stack: Stack, member: str) -> tuple[list[int], list[int]]:
    """(rows `member` had claimed, rows dispatched and not claimed by anyone)."""
    from sqlalchemy import select

    from oaksend.models.tables import Message

    with stack.reader.connect() as conn:
        rows = list(conn.execute(select(Message.id, Message.state, Message.claimed_by)
                                 .where(Message.state.in_(("sending", "dispatched")))))
    return (sorted(i for i, state, by in rows if state == "sending" and by == member),
            sorted(i for i, state, _ in rows if state == "dispatched"))


def open_messages(stack: Stack) -> int:
    from sqlalchemy import func, select

    from oaksend.models.tables import Message

    with stack.reader.connect() as conn:
        return int(conn.scalar(select(func.count()).where(Message.state.in_(("pending", "dispatched", "sending")))))


def ends(stack: Stack, ids: Sequence[int]) -> dict[int, datetime | None]:
    from sqlalchemy import select

    from oaksend.models.tables import Message

    if not ids:
        return {}
    with stack.reader.connect() as conn:
        rows = conn.execute(select(Message.id, Message.state, Message.sent_at, Message.updated_at)
                            .where(Message.id.in_(list(ids))))
        return {mid: ended_at(state, sent, updated) for mid, state, sent, updated in rows}


def noticed_at(dispatcher_log: str, member: str) -> datetime | None:
    """When the dispatcher first logged that `member` stopped beating (its local-time log stamp)."""
    for line in dispatcher_log.splitlines():
        if "stopped beating" in line and member in line:
            m = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})", line)
            if m:
                local = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
                return datetime.fromtimestamp(local.timestamp(), tz=timezone.utc)
    return None


# -- one kill ---------------------------------------------------------------------------------
class Workers:
    """The worker processes, oldest first; a replacement gets the next number."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.names = [f"worker{i}" for i in range(stack.opts.workers)]
        self.next = stack.opts.workers

    def members(self) -> set[str]:
        """The heartbeat members of the workers running now."""
        host = socket.gethostname()
        return {f"{host}:{p.pid}" for n, p, _ in list(self.stack.procs.procs) if n in set(self.names)}

    def pid(self, name: str) -> int:
        return next(p.pid for n, p, _ in self.stack.procs.procs if n == name)

    def kill_oldest(self) -> tuple[str, int]:
        name = self.names.pop(0)
        pid = self.pid(name)
        os.kill(pid, signal.SIGKILL)  # our own child, by its pid
        return name, pid

    def replace(self) -> str:
        """Start a replacement (as `oaksend run` restarts a dead child); `ready` waits for it."""
        name = f"worker{self.next}"
        self.stack.procs.start(name, [sys.executable, "-m", "oaksend.worker.cli", "worker", "--log-level",
                                      self.stack.opts.log_level, "-n", f"recovery{self.next}@%h"], self.stack.env)
        self.next += 1
        self.names.append(name)
        return name

    def ready(self, name: str) -> None:
        self.stack.procs.wait_for_log([name], " ready.", 60)


def one_kill(stack: Stack, workers: Workers, client: Any, orphans: set[str]) -> Kill:
    """Kill one worker and measure; `orphans` (updated) are the broker entries earlier dead workers left."""
    from oaksend.worker.clock import utcnow

    name, pid = workers.kill_oldest()
    killed = utcnow()
    t0 = time.monotonic()
    at_kill = {tag: ids for tag, ids in unacked(client).items() if tag not in orphans}
    kill = Kill(victim=f"{socket.gethostname()}:{pid}", load=os.getloadavg()[0], backlog=open_messages(stack))
    stack.procs.stop([name])  # reaps it (it is dead already)
    time.sleep(0.1)  # a commit that was on its way when it died has landed
    kill.claimed, kill.dispatched = in_flight(stack, kill.victim)
    time.sleep(max(0.0, RESTART_AFTER_S - (time.monotonic() - t0)))
    replacement = workers.replace()
    candidates = sorted({*kill.claimed, *kill.dispatched, *(i for ids in at_kill.values() for i in ids)})
    while True:
        done = ends(stack, candidates)
        if all(done.get(i) is not None for i in candidates) and time.monotonic() - t0 >= UNACKED_SETTLE_S:
            break
        if time.monotonic() - t0 > RECOVERY_LIMIT_S:
            break
        stack.procs.check_alive()
        time.sleep(0.1)
    later = unacked(client)
    orphans.update(tag for tag in at_kill if tag in later)
    kill.received = [i for i in dead_tasks(at_kill, later) if i not in set(kill.claimed)]
    kill.dispatched = sorted({*kill.dispatched, *kill.received})
    done = ends(stack, kill.claimed + kill.dispatched)

    def last(ids: list[int]) -> float:
        if not ids:
            return 0.0
        times = [done.get(i) for i in ids]
        if any(t is None for t in times):
            return math.inf
        return max((t - killed).total_seconds() for t in times)  # type: ignore[operator]

    kill.claimed_s, kill.dispatched_s = last(kill.claimed), last(kill.dispatched)
    kill.recovery_s = max(kill.claimed_s, kill.dispatched_s)
    seen = noticed_at(stack.procs.log_text("dispatcher"), kill.victim)
    kill.noticed_s = (seen - killed).total_seconds() if seen else math.nan
    workers.ready(replacement)
    return kill


def stream_latency_s(stack: Stack, ids: list[int], held: set[int]) -> list[float]:
    """Enqueue -> sent (seconds, ascending) of the stream's messages not in flight at a kill: the reference."""
    from sqlalchemy import select

    from oaksend.models.tables import Message

    with stack.reader.connect() as conn:
        rows = conn.execute(select(Message.id, Message.created_at, Message.sent_at)
                            .where(Message.id.between(min(ids), max(ids)), Message.state == "sent",
                                   Message.attempts == 1, Message.lost == 0))
        return sorted((sent - created).total_seconds() for mid, created, sent in rows
                      if mid not in held and sent is not None)


# -- the checks -------------------------------------------------------------------------------
def audits(stack: Stack, ids: list[int]) -> dict[int, Audit]:
    from sqlalchemy import case, func, select

    from oaksend.models.tables import Attempt, Message

    lo, hi = min(ids), max(ids)
    requests: dict[str, int] = {}
    for record in stack.control.requests():
        number = record.get("to_phone_number")
        requests[number] = requests.get(number, 0) + 1
    with stack.reader.connect() as conn:
        per = {mid: (n, lost, sent, top) for mid, n, lost, sent, top in conn.execute(
            select(Attempt.message_id, func.count(), func.sum(case((Attempt.reason == "worker_lost", 1), else_=0)),
                   func.sum(case((Attempt.classification == "sent", 1), else_=0)), func.max(Attempt.number))
            .where(Attempt.message_id.between(lo, hi)).group_by(Attempt.message_id))}
        rows = list(conn.execute(select(Message.id, Message.state, Message.to_phone).where(Message.id.between(lo, hi))))
    wanted = set(ids)
    out = {}
    for mid, state, to in rows:
        if mid not in wanted:
            continue
        n, lost, sent, top = per.get(mid, (0, 0, 0, 0))
        out[mid] = Audit(state=state, attempts=n, stand_ins=int(lost or 0), sent_attempts=int(sent or 0),
                         numbers_ok=(top or 0) == n, requests=requests.get(to, 0))
    # Every message of the stream is there (one number each).
    missing = wanted - set(out)
    for mid in missing:
        out[mid] = Audit(state="missing", attempts=0, stand_ins=0, sent_attempts=0, numbers_ok=True, requests=0)
    return out


def check(stack: Stack, ids: list[int], policy: str, checks: list[tuple[str, bool, str]]) -> None:
    found = audits(stack, ids)
    states: dict[str, int] = {}
    for a in found.values():
        states[a.state] = states.get(a.state, 0) + 1
    for rule, bad in audit_problems(found, policy).items():
        checks.append((f"no message: {rule}", not bad, f"{len(bad)} of {len(found):,} (first ids {bad[:5]}); "
                       f"states {states}"))
    twice = sum(1 for a in found.values() if a.requests > 1)
    stand_ins = sum(a.stand_ins for a in found.values())
    total = stack.control.stats().get("total", 0)
    checks.append(("the API saw only the stream's requests", total == sum(a.requests for a in found.values()),
                   f"sandbox total {total:,}; {stand_ins} worker_lost stand-ins, {twice} numbers requested twice"))


# -- the run ----------------------------------------------------------------------------------
def stack_options(opts: argparse.Namespace) -> argparse.Namespace:
    """What bench.pipeline's Stack reads: two default workers, a limit far above the stream."""
    return argparse.Namespace(
        database="postgresql", pg_admin_url=opts.pg_admin_url, pg_database=opts.pg_database,
        redis_url=opts.redis_url, baseline_redis_url="", rate=100_000.0, burst=1_000, chatbots=opts.chatbots,
        log_level="INFO", workers=opts.workers, concurrency=None, latency_ms=opts.latency_ms)


def summary(kills: list[Kill]) -> str:
    values = sorted(k.recovery_s for k in kills)
    return f"p50 {percentile(values, 50):.2f} s, max {values[-1]:.2f} s" if values else "no kills"


def run(opts: argparse.Namespace, procs: Processes, checks: list[tuple[str, bool, str]]) -> list[Kill]:
    import redis

    stack = Stack(stack_options(opts), procs)
    stack.queue = QUEUE
    try:
        stack.start()
        s = stack.settings
        say(f"  stack: heartbeat TTL {s.worker_heartbeat_ttl_s:g} s, lease {s.lease_s:g} s, dispatch batch "
            f"{s.dispatch_batch_size}, ambiguous policy {s.ambiguous_policy}, sandbox {stack.sandbox_url}")
        client = redis.Redis.from_url(opts.redis_url, socket_timeout=5)
        workers = Workers(stack)
        stream = Stream(stack, opts.rate)
        stream.start()
        watch = BeatWatch(opts.redis_url, workers.members)
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
        ids = stream.ids
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


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    try:
        lock = _single_run_lock(stack_options(opts))  # noqa: F841 - held until the process exits
        check_redis(opts.redis_url)
        check_postgres(opts.pg_admin_url)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr, flush=True)
        return exc.code
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, _raise_interrupt)
    logdir = Path(tempfile.mkdtemp(prefix="oaksend-bench-recovery-"))
    procs = Processes(logdir)
    checks: list[tuple[str, bool, str]] = []
    ok = False
    try:
        say(f"bench: recovery after SIGKILL: {opts.kills} kills of one of {opts.workers} default workers, a stream "
            f"of {opts.rate:g} msgs/s over {opts.chatbots} chatbot(s), API latency {opts.latency_ms:g} ms, "
            f"{os.cpu_count()} CPUs; logs in {logdir}")
        kills = run(opts, procs, checks)
        say()
        say("== results ==")
        say(f"recovery after SIGKILL (kill -> the last message it held, or dispatched then, ended), {len(kills)} kills: "
            f"{summary(kills)}  (goal < 5 s)")
        say("  per kill: " + ", ".join(f"{k.recovery_s:.2f}" for k in kills) + " s; noticed dead after: "
            + ", ".join(f"{k.noticed_s:.2f}" for k in kills) + " s")
        say(f"  messages in flight at the kills: claimed by the dead worker {sum(len(k.claimed) for k in kills)}, "
            f"dispatched {sum(len(k.dispatched) for k in kills)} (delivered to it, not started: "
            f"{sum(len(k.received) for k in kills)})")
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
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            procs.stop()
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
