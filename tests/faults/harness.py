"""Fault-injection helpers for the liveness runs (tests/faults/test_liveness.py).

Everything here acts on real processes, sockets and servers on 127.0.0.1:

- `FaultStack`: a `tests.support.Stack` whose processes can each get extra
  environment (a skewed clock, a Redis URL through a proxy, a PostgreSQL
  application name);
- libfaketime: where Debian's library is, and the environment that starts a
  process with its wall clock offset (monotonic time stays real);
- Redis stalls: `tests.support.private_redis_server` (a server of the test's own, DEBUG allowed) and `stall_redis`;
- `TcpProxy`: a TCP proxy that can stall or reset its connections (a worker cut from Redis);
- `Stream`: messages enqueued at a steady rate from a thread while faults are injected;
- `terminate_backends`, `audit`: a database blip, and the exactness figures of a run.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import create_engine, func, select, text

from oaksend.models.tables import Attempt, Message
from oaksend.worker.message.validation import SendRequest
from tests.faults.report import SUMMARIES, delivered, summarize
from tests.support import CI, ROOT, Stack, wait_until

TERMINAL = frozenset({"sent", "failed", "unknown", "expired", "cancelled"})
OPEN = ("pending", "dispatched", "sending")


# -- processes with extra environment ---------------------------------------------------------
@dataclass(repr=False)
class FaultStack(Stack):
    """A Stack whose processes, by name, start with extra environment over the stack's own."""

    process_env: dict[str, dict[str, str]] = field(default_factory=dict)

    def __repr__(self) -> str:  # short in assertion tracebacks: not the whole environment
        return f"FaultStack({', '.join(f'{n}={p.pid}' for n, p, _ in self.procs)})"

    def _start(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        base = self.env
        self.env = {**base, **self.process_env.get(name, {})}
        try:
            return super()._start(name, args)
        finally:
            self.env = base

    def proc(self, name: str) -> subprocess.Popen[bytes]:
        return next(p for n, p, _ in self.procs if n == name)


# -- libfaketime -----------------------------------------------------------------------------
_FAKETIME_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
    "/usr/local/lib/faketime/libfaketime.so.1",
)

#: Written as `sitecustomize.py` for the processes started under libfaketime.
_SLEEP_WORKAROUND = '''"""Loaded by processes the liveness tests start under libfaketime (tests/faults/harness.py).

libfaketime 0.9.10 (Debian 12) with FAKETIME_DONT_FAKE_MONOTONIC=1 breaks Python 3.11's
time.sleep, which waits with clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME): it fails with
EINVAL (wolfcw/libfaketime#426). Only when that happens, time.sleep waits with select() on the
real monotonic clock instead: the same wait, nothing faked.
"""
import select
import time


def _sleep_works():
    try:
        time.sleep(0)
    except OSError:
        return False
    return True


if not _sleep_works():
    def _sleep(seconds, _monotonic=time.monotonic, _select=select.select):
        if seconds < 0:
            raise ValueError("sleep length must be non-negative")
        end = _monotonic() + seconds
        while True:
            left = end - _monotonic()
            if left <= 0:
                return
            _select([], [], [], left)

    time.sleep = _sleep
'''


def faketime_library() -> str | None:
    """The path of libfaketime.so.1 (from `dpkg -L libfaketime`, else the usual places), or None."""
    found: list[str] = []
    if shutil.which("dpkg"):
        try:
            listing = subprocess.run(["dpkg", "-L", "libfaketime"], capture_output=True, text=True, timeout=10)
            found = [line.strip() for line in listing.stdout.splitlines() if line.strip().endswith("/libfaketime.so.1")]
        except (OSError, subprocess.SubprocessError):
            found = []
    for path in (*found, *_FAKETIME_CANDIDATES):
        if Path(path).is_file():
            return path
    return None


def require_faketime() -> str:
    """The library's path; a missing library skips the test, and fails it under CI=true."""
    path = faketime_library()
    if path is None:
        message = ("libfaketime is not installed (Debian: apt-get install faketime; looked in `dpkg -L libfaketime` "
                   f"and {', '.join(_FAKETIME_CANDIDATES)}): the clock-skew run needs it")
        if CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


def faketime_env(library: str, offset: str, workdir: Path) -> dict[str, str]:
    """Environment that starts a Python process with its wall clock moved by `offset` ("+60s", "-60s")."""
    site = workdir / "faketime-site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(_SLEEP_WORKAROUND)
    preload = " ".join(p for p in (os.environ.get("LD_PRELOAD", ""), library) if p)
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    return {"LD_PRELOAD": preload, "FAKETIME": offset, "FAKETIME_DONT_FAKE_MONOTONIC": "1", "PYTHONPATH": path}


def measured_offset_s(env: dict[str, str]) -> float:
    """How far a Python process started with `env` sees the wall clock from ours (it also sleeps, to prove it can)."""
    probe = "import time; t = time.time(); time.sleep(0.01); print(t)"
    before = time.time()
    out = subprocess.run([sys.executable, "-c", probe], env={**os.environ, **env}, capture_output=True, text=True,
                         timeout=30, cwd=ROOT)
    after = time.time()
    if out.returncode != 0:
        raise AssertionError(f"a process under libfaketime failed: {out.stderr[-2000:]}")
    return float(out.stdout.strip()) - (before + after) / 2


# -- Redis ------------------------------------------------------------------------------------
def stall_redis(url: str, seconds: float) -> float:
    """`DEBUG SLEEP seconds` from a connection of its own; returns how long the server was blocked."""
    client = redis.Redis.from_url(url, socket_timeout=seconds + 30)
    try:
        started = time.monotonic()
        client.execute_command("DEBUG", "SLEEP", str(seconds))
        return time.monotonic() - started
    finally:
        client.close()


# -- a TCP proxy that can cut its connections ---------------------------------------------------
def _reset(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0), not a FIN."""
    with suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with suppress(OSError):
        sock.close()


class _Pair:
    """A client connection and its upstream connection."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.closed = False
        self._lock = threading.Lock()

    def close(self, reset: bool = False) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
        for sock in (self.client, self.upstream):
            if reset:
                _reset(sock)
                continue
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class TcpProxy:
    """Forwards 127.0.0.1:<port> to an upstream address, one thread per direction of each connection.

    `cut("stall")` stops forwarding: established connections stay open but no byte moves
    either way (a pump holds what it already read), and new connections are accepted and
    held the same way (a silent partition). `cut("reset")` resets every established
    connection and resets new ones at once. `resume()` forwards again.
    """

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._forwarding = threading.Event()
        self._forwarding.set()
        self._mode: str | None = None
        self._pairs: set[_Pair] = set()
        self._lock = threading.Lock()
        self._stopped = False
        self.accepted = 0
        self.reset_connections = 0
        self.stalled_connections = 0
        threading.Thread(target=self._accept_loop, name="tcp-proxy-accept", daemon=True).start()

    def url_for(self, redis_url: str) -> str:
        """`redis_url` with its host and port replaced by this proxy's (the database number kept)."""
        tail = redis_url.split("://", 1)[1].split("/", 1)
        return f"redis://127.0.0.1:{self.port}/{tail[1] if len(tail) > 1 else '0'}"

    def live(self) -> int:
        with self._lock:
            return sum(1 for p in self._pairs if not p.closed)

    def cut(self, mode: str) -> int:
        """Stop forwarding ("stall") or reset everything ("reset"); returns the connections it cut."""
        if mode not in ("stall", "reset"):
            raise ValueError(mode)
        with self._lock:
            self._mode = mode
            self._forwarding.clear()
            pairs = [p for p in self._pairs if not p.closed]
        if mode == "reset":
            for pair in pairs:
                pair.close(reset=True)
            self.reset_connections += len(pairs)
        else:
            self.stalled_connections += len(pairs)
        return len(pairs)

    def resume(self) -> None:
        with self._lock:
            self._mode = None
            self._forwarding.set()

    def close(self) -> None:
        self._stopped = True
        self._forwarding.set()
        with suppress(OSError):
            self._listener.close()
        with self._lock:
            pairs = list(self._pairs)
        for pair in pairs:
            pair.close(reset=True)

    def _accept_loop(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.accepted += 1
            with self._lock:
                mode = self._mode
            if mode == "reset":
                _reset(client)
                self.reset_connections += 1
                continue
            if mode == "stall":
                self.stalled_connections += 1
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _reset(client)
                continue
            pair = _Pair(client, upstream)
            with self._lock:
                self._pairs = {p for p in self._pairs if not p.closed} | {pair}
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(pair, src, dst), name="tcp-proxy-pump", daemon=True).start()

    def _pump(self, pair: _Pair, src: socket.socket, dst: socket.socket) -> None:
        try:
            while not pair.closed:
                self._forwarding.wait()
                data = src.recv(65536)
                if not data:
                    break
                self._forwarding.wait()  # cut while this was read: held, not forwarded
                if pair.closed:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            pair.close()


# -- PostgreSQL -------------------------------------------------------------------------------
def blip_when_written(database_url: Any, ids: Sequence[int], application_prefix: str,
                      timeout_s: float) -> tuple[int, int]:
    """As soon as the first attempt row of `ids` is committed, terminate every connection whose
    application_name starts with `application_prefix`, once. One connection, opened beforehand,
    both watches and terminates (a round trip between the two, no connect). Returns (attempt rows
    of `ids` when seen, connections terminated)."""
    engine = create_engine(database_url, isolation_level="AUTOCOMMIT")
    watch = select(func.count()).select_from(Attempt).where(Attempt.message_id.in_(list(ids)))
    terminate = text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE datname = current_database() AND application_name LIKE :app AND pid <> pg_backend_pid()")
    try:
        with engine.connect() as conn:
            deadline = time.monotonic() + timeout_s
            while not (written := int(conn.execute(watch).scalar_one())):
                if time.monotonic() > deadline:
                    raise AssertionError(f"no attempt row of the group within {timeout_s}s")
            killed = len(conn.execute(terminate, {"app": application_prefix + "%"}).all())
        return written, killed
    finally:
        engine.dispose()


# -- a stream of messages ---------------------------------------------------------------------
def chatbots(run: int, n: int) -> list[str]:
    """`n` chatbot serial numbers (32 hex digits) of one run."""
    return [f"5eed{run:04x}{i:024x}" for i in range(n)]


def phone(block: int, i: int) -> str:
    return f"+1415{block + i // 10000:03d}{i % 10000:04d}"


class Stream:
    """Enqueues `total` messages over `bots` at `per_s` from a thread: a chunk (one transaction) every `tick_s`."""

    def __init__(self, producer: Any, bots: Sequence[str], *, block: int, total: int, per_s: float,
                 label: str, tick_s: float = 0.2) -> None:
        self.producer = producer
        self.tick_s = tick_s
        self.bots = list(bots)
        self.block = block
        self.total = total
        self.per_s = per_s
        self.label = label
        self.ids: list[int] = []
        self.phones: list[str] = []
        self.started = 0.0
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="stream")
        self._done: Future[None] | None = None

    def start(self) -> Stream:
        self.started = time.monotonic()
        self._done = self._pool.submit(self._run)
        return self

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def sleep_until(self, at_s: float) -> None:
        """Sleep until `at_s` seconds after the stream started."""
        time.sleep(max(0.0, at_s - self.elapsed()))

    def join(self, timeout_s: float = 120) -> list[int]:
        """Wait for the last chunk; an error of the producer fails the test here."""
        assert self._done is not None, "the stream was not started"
        try:
            self._done.result(timeout_s)
        finally:
            self._pool.shutdown(wait=False)
        return self.ids

    def _run(self) -> None:
        tick_s = self.tick_s
        per_tick = max(1, round(self.per_s * tick_s))
        for n, start in enumerate(range(0, self.total, per_tick)):
            time.sleep(max(0.0, self.started + n * tick_s - time.monotonic()))
            chunk = range(start, min(start + per_tick, self.total))
            numbers = [phone(self.block, i) for i in chunk]
            reqs = [SendRequest(self.bots[i % len(self.bots)], p, f"{self.label} {i}")
                    for i, p in zip(chunk, numbers, strict=True)]
            self.ids += self.producer.send_many(reqs)
            self.phones += numbers


def wait_drained(outbox: Any, ids: Sequence[int], timeout_s: float) -> Counter[str]:
    """Wait until none of `ids` is pending, dispatched or sending (or `timeout_s`); return their states."""
    deadline = time.monotonic() + timeout_s
    while True:
        states = message_states(outbox, ids)
        if not any(states.get(s, 0) for s in OPEN) or time.monotonic() > deadline:
            return states
        time.sleep(0.5)


def message_states(outbox: Any, ids: Sequence[int]) -> Counter[str]:
    with outbox.session() as s:
        rows = s.execute(select(Message.state, func.count()).where(Message.id.in_(list(ids))).group_by(Message.state))
        return Counter({state: n for state, n in rows})


def message_rows(outbox: Any, ids: Sequence[int]) -> list[Any]:
    with outbox.session() as s:
        return list(s.execute(
            select(Message.id, Message.to_phone, Message.state, Message.claimed_by, Message.calling_at,
                   Message.sent_at, Message.ambiguous, Message.lost, Message.created_at)
            .where(Message.id.in_(list(ids))).order_by(Message.id)))


def _marked_phones(outbox: Any, pid: int) -> set[str]:
    """Numbers of the messages the worker process `pid` holds marked calling (claimed_by "<host>:<pid>")."""
    with outbox.session() as s:
        rows = s.execute(select(Message.claimed_by, Message.to_phone)
                         .where(Message.state == "sending", Message.calling_at.is_not(None))).all()
    return {r.to_phone for r in rows if str(r.claimed_by).endswith(f":{pid}")}


def calls_out(outbox: Any, sandbox: Any, pid: int) -> tuple[int, int]:
    """(messages the worker `pid` holds marked calling, those of them the API has received and not answered yet)."""
    phones = _marked_phones(outbox, pid)
    if not phones:
        return 0, 0
    now = time.time()
    return len(phones), sum(1 for rec in sandbox.requests() if rec["to_phone_number"] in phones
                            and rec["received_at"] + rec["delay_ms"] / 1000.0 > now)


def wait_for_calls_out(outbox: Any, sandbox: Any, pid: int, timeout_s: float, at_least: int = 2) -> tuple[int, int]:
    """Until the worker `pid` has at least `at_least` requests at the API, unanswered; returns `calls_out`."""
    def out() -> tuple[int, int] | None:
        held = calls_out(outbox, sandbox, pid)
        return held if held[1] >= at_least else None

    return wait_until(out, timeout_s, 0.005, f"worker {pid} to have {at_least} requests out")


def answered_unwritten(outbox: Any, sandbox: Any, pid: int, older_than_s: float) -> int:
    """Messages the worker `pid` holds marked calling whose request the API answered more than
    `older_than_s` ago (by the API's record): answers read, or on their way, and not written yet."""
    phones = _marked_phones(outbox, pid)
    if not phones:
        return 0
    answered_at = {rec["to_phone_number"]: rec["received_at"] + rec["delay_ms"] / 1000.0
                   for rec in sandbox.requests() if rec["to_phone_number"] in phones}
    cutoff = time.time() - older_than_s
    return sum(1 for at in answered_at.values() if at < cutoff)


def attempt_rows(outbox: Any, ids: Sequence[int]) -> dict[int, list[Any]]:
    out: dict[int, list[Any]] = {}
    with outbox.session() as s:
        for row in s.execute(select(Attempt.message_id, Attempt.number, Attempt.reason, Attempt.classification,
                                    Attempt.worker)
                             .where(Attempt.message_id.in_(list(ids))).order_by(Attempt.id)):
            out.setdefault(row.message_id, []).append(row)
    return out


# -- the exactness figures of a run ------------------------------------------------------------
@dataclass
class Audit:
    """What a run left: every message's state, attempt rows and the requests the API saw."""

    name: str
    accepted: int
    states: Counter[str]
    requests: int
    attempts: int
    #: (message id, requests for its number, its attempt reasons) where attempt rows != requests
    mismatched: list[tuple[int, int, list[str]]]
    #: (number, requests, expected requests) where the API saw more requests than the run caused
    requested_again: list[tuple[str, int, int]]
    #: numbers that received more than one SMS (a SessionID issued twice)
    texted_twice: list[str]
    #: (message id, attempt number) of every "worker_lost" attempt; number 0: a stand-in since
    #: overwritten by the call's late answer (the message counts an ambiguous outcome no attempt row shows)
    worker_lost: list[tuple[int, int]]
    #: seconds from each message's enqueue (the test's clock) to its first delivered request (the API's)
    delays: dict[int, float] = field(default_factory=dict)
    line: str = ""

    def figures(self) -> dict[str, int]:
        """The four figures every run asserts are 0."""
        return {
            "not_sent": self.accepted - self.states.get("sent", 0),
            "attempt_rows_not_requests": len(self.mismatched),
            "numbers_requested_again": len(self.requested_again),
            "worker_lost_attempts": len(self.worker_lost),
        }

    def details(self) -> str:
        return (f"{self.line}\n  states={dict(self.states)}\n"
                f"  attempt rows != requests (id, requests, reasons), first 5: {self.mismatched[:5]}\n"
                f"  numbers requested beyond the run's own (number, requests, expected), first 5: "
                f"{self.requested_again[:5]}\n"
                f"  numbers texted twice: {len(self.texted_twice)}; worker_lost attempts (id, number), first 5: "
                f"{self.worker_lost[:5]}")


def audit(name: str, outbox: Any, sandbox: Any, ids: Sequence[int], drain_s: float, *,
          expected_requests: Callable[[str], int] = lambda _phone: 1, note: str = "") -> Audit:
    """Join the outbox with the API's requests; record the run's one-line summary (tests/faults/report.py)."""
    records = sandbox.requests()
    rows = message_rows(outbox, ids)
    history = attempt_rows(outbox, ids)
    by_phone: dict[str, list[dict[str, Any]]] = {}
    for rec in sorted(records, key=lambda r: r["seq"]):
        by_phone.setdefault(str(rec.get("to_phone_number")), []).append(rec)
    mismatched: list[tuple[int, int, list[str]]] = []
    requested_again: list[tuple[str, int, int]] = []
    texted_twice: list[str] = []
    worker_lost: list[tuple[int, int]] = []
    delays: dict[int, float] = {}
    for row in rows:
        seen = by_phone.get(row.to_phone, [])
        first = next((rec for rec in seen if delivered(rec)), None)
        if first is not None:
            delays[row.id] = first["received_at"] - row.created_at.timestamp()
        attempts = history.get(row.id, [])
        if len(attempts) != len(seen):
            mismatched.append((row.id, len(seen), [a.reason for a in attempts]))
        if len(seen) > expected_requests(row.to_phone):
            requested_again.append((row.to_phone, len(seen), expected_requests(row.to_phone)))
        if sum(1 for rec in seen if delivered(rec)) > 1:
            texted_twice.append(row.to_phone)
        worker_lost += [(row.id, a.number) for a in attempts if a.reason == "worker_lost"]
        overwritten = row.ambiguous - sum(1 for a in attempts if a.classification == "ambiguous")
        worker_lost += [(row.id, 0)] * max(0, overwritten)
    summary = summarize(name, rows, outbox, records, drain_s)
    extra = (f" requested_again={len(requested_again)} texted_twice={len(texted_twice)} "
             f"attempt_rows_not_requests={len(mismatched)} worker_lost={len(worker_lost)} "
             f"max_delay_s={max(delays.values(), default=0.0):.1f}")
    line = summary.line() + extra + (f" [{note}]" if note else "")
    SUMMARIES[-1] = line
    print(line)
    return Audit(name, len(rows), summary.states, len(records), sum(len(a) for a in history.values()), mismatched,
                 requested_again, texted_twice, worker_lost, delays, line)
