"""What `python -m bench.recovery` does to a worker and reads back: the steady stream of messages, the kill
of one worker (SIGKILL) and its replacement, what the dead worker held (claimed rows, and tasks the broker had
delivered to it: kombu's `unacked` entries), and when each of those messages ended."""

from __future__ import annotations

import base64
import json
import math
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from bench.harness import TERMINAL
from bench.harness.stack import Stack

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
                    self.ids += self.stack.producer.send_many([self.stack.request(i) for i in range(made, due)])
                    made = due
                self.stop.wait(CHUNK_EVERY_S)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.error = exc


class BeatWatch(threading.Thread):
    """The largest age a live worker's heartbeat reached (how close a slow worker came to the TTL)."""

    def __init__(self, redis_url: str, key: str, live: Callable[[], set[str]]) -> None:
        """`key`: the workers' heartbeat sorted set (the stack's `settings.keys.workers`)."""
        super().__init__(name="beat-watch", daemon=True)
        import redis

        self.client = redis.Redis.from_url(redis_url, socket_timeout=5)
        self.key = key
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
