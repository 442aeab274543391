"""The dispatcher: due rows -> fair, rate-aware batches -> Celery; and rescue of lost leases.

One instance is active at a time (a Redis lock with a TTL it keeps renewing);
others wait as standbys and take over when the lock lapses. If two were ever
active at once (Redis lost the lock), nothing is sent twice: leasing a row is a
conditional UPDATE, and a worker only claims a row under its lease token.

Each pass:
1. stage: waiting messages whose time has come are marked ready, each once, in
   due-time order (messages written already due are ready from the start);
2. for each chatbot with ready messages (one index probe per such chatbot, at
   most CHATBOTS_PER_PASS per pass, round-robin), lease at most what its rate
   allows for the next `dispatch_lookahead_s` (minus what is already in
   flight), most urgent priority first, so the broker holds only a second or
   two of work;
3. publish one task per batch, interleaving chatbots, so a chatbot with a huge
   backlog delays another's messages by at most one pass;
4. rescue (at most every RESCUE_EVERY_S, after the new work went out):
   dispatched rows whose lease ran out go back to pending; rows left `sending`
   by a dead worker are recorded as ambiguous (see Outbox.rescue); when a worker
   stops beating, the rows of tasks published before (it may have received them
   and died before starting them) go back to pending at once instead of after
   their lease; pending rows past their deadline are expired.
Then it sleeps until the next message is due, a producer wakes it, or
`dispatch_interval_s` passes. Nothing in a pass costs anything per chatbot or
per message that is only waiting for its time.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import redis
from celery import Celery
from sqlalchemy.exc import SQLAlchemyError

from oaksend.models.repository import Outbox
from oaksend.worker import metrics
from oaksend.worker.clock import DatabaseClock
from oaksend.worker.delivery.fairness import allowance, capped_wait, interleave
from oaksend.worker.delivery.heartbeat import LivenessView, write_dispatcher_heartbeat
from oaksend.worker.delivery.limits import LimitBook
from oaksend.worker.delivery.ratelimit import RateLimiter, lateness
from oaksend.worker.delivery.task import SEND_TASK
from oaksend.worker.leadership import Leadership
from oaksend.worker.settings import Settings

log = logging.getLogger(__name__)

#: How often dead workers, lost leases and overdue messages are looked for (while workers hold
#: messages the dispatcher wakes this often even when idle): part of the time a dead worker's
#: messages wait, on top of OAKSEND_WORKER_HEARTBEAT_TTL_S.
RESCUE_EVERY_S = 0.25
#: How long a pause copied from the database into Redis lasts before it is renewed.
MIRROR_PAUSE_S = 2.0
#: A claimed row not marked calling within the rate wait plus this is taken back (its
#: worker failed to mark it or hand it back: the database was away).
UNMARKED_GRACE_S = 15.0
#: The lock lives this long without renewal; a standby takes over after it.
LOCK_TTL_S = 5.0
#: Most chatbots with due work served in one pass; more are served by the next passes.
CHATBOTS_PER_PASS = 500
#: Most waiting messages marked ready in one pass (more: the next pass follows at once).
STAGE_PER_PASS = 5000
@dataclass
class PassStats:
    """What one dispatch pass did."""

    dispatched: int = 0
    tasks: int = 0
    rescued: dict[str, int] = field(default_factory=dict)
    expired: int = 0
    staged: int = 0
    #: More due work than the broker has room for: come back once workers have taken some.
    capped: bool = False
    #: Work left that the next pass can do at once (more to stage, more chatbots to serve).
    more: bool = False
    #: A rate-limited chatbot has more due work: come back within this many seconds.
    wait_s: float = float("inf")
    #: Messages dispatched and not yet claimed, all chatbots, after this pass.
    inflight: int = 0


def newly_gone(dead: list[str], stopped: Mapping[str, float], handled: Mapping[str, float]) -> list[str]:
    """Pure: the workers whose unstarted tasks are to be taken back now.

    Those judged dead while holding messages (`dead`), and those that stopped beating
    (`stopped`, member -> last beat) and were not handled yet at that same last beat (a
    worker that beats again and stops again is handled again).
    """
    return sorted({*dead, *(m for m, beat in stopped.items() if handled.get(m) != beat)})


class Dispatcher:
    """Moves due outbox rows into Celery, fairly and within each chatbot's rate."""

    def __init__(self, settings: Settings, outbox: Outbox, redis_client: redis.Redis, app: Celery, *,
                 clock: Callable[[], datetime] | None = None, name: str | None = None) -> None:
        self.settings = settings
        self.outbox = outbox
        self.redis = redis_client
        self.app = app
        # The database's clock: leases and claims are compared on it, whatever this host's says.
        self.clock = clock or DatabaseClock(outbox.database_now)
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.limits = LimitBook(outbox, settings, ttl_s=1.0)
        self.keys = settings.keys
        self.limiter = RateLimiter(redis_client, self.keys)
        self.leader = Leadership(redis_client, self.keys.dispatcher_lock, self.name, role="dispatcher")
        self._cursor = ""  # round-robin over chatbots with due work: the next pass starts after it
        self._last_rescue: datetime | None = None
        self._drain_per_s = 0.0  # how fast workers claim dispatched messages (smoothed)
        self._last_inflight: tuple[float, int] | None = None  # (monotonic time, in flight after a pass)
        self.liveness = LivenessView(settings.worker_heartbeat_ttl_s, self.keys)
        #: Workers found stopped (member -> last beat): the tasks they had not started were taken back once.
        self._stopped: dict[str, float] = {}
        self._holding = False  # workers held claimed messages at the last rescue

    # -- leadership -----------------------------------------------------------------------
    @property
    def active(self) -> bool:
        return self.leader.active

    def hold_lock(self) -> bool:
        """Acquire or renew the active-dispatcher lock; False means: stay standby."""
        was = self.leader.active
        got = self.leader.hold(LOCK_TTL_S)
        if got and not was:
            self.liveness.interrupted()  # judge workers only after watching them a whole TTL
        return got

    def release_lock(self) -> None:
        self.leader.release()

    # -- one pass -------------------------------------------------------------------------
    def run_pass(self) -> PassStats:
        """Lease and publish due work, then rescue. Call only while holding the lock."""
        stats = PassStats()
        now = self.clock()
        self._dispatch(stats, now)
        if self._last_rescue is None or now - self._last_rescue >= timedelta(seconds=RESCUE_EVERY_S):
            # After the new work went out, so that it does not wait for this. Leases last seconds:
            # looking for lost ones on every (fast) pass is wasted work.
            self._rescue(stats, now)
        return stats

    def _rescue(self, stats: PassStats, now: datetime) -> None:
        """Take back what lost its holder (see Outbox.rescue), expire what is overdue."""
        self.liveness.observe(self.redis)
        owners = self.outbox.sending_owners()
        self._holding = bool(owners)
        dead = self.liveness.dead(owners) if owners else []
        # Beyond a lease (and the TTL it took to notice), nothing a stopped worker received is still dispatched.
        horizon_s = self.settings.lease_s + self.settings.worker_heartbeat_ttl_s
        stopped = self.liveness.stopped(horizon_s)
        gone = newly_gone(dead, stopped, self._stopped)
        stats.rescued = self.outbox.rescue(now, self.settings.ambiguous_policy, worker=f"dispatcher {self.name}",
                                           max_attempts=self.settings.max_attempts, dead_workers=dead,
                                           unmarked_after=now - timedelta(seconds=self.settings.max_token_wait_s
                                                                          + UNMARKED_GRACE_S),
                                           # A silent worker's call can no longer be in flight: judged now.
                                           called_before=now - timedelta(seconds=self.settings.call_window_s),
                                           # Tasks it received and never started: any published before now.
                                           unstarted_before=now if gone else None)
        seen_at = self.liveness.now_s or 0.0
        self._stopped = {**{m: b for m, b in self._stopped.items() if seen_at - b < horizon_s}, **stopped}
        if gone:
            log.warning("workers %s stopped beating: their messages are taken back", gone)
        stats.expired = self.outbox.expire_overdue(now)
        self._last_rescue = now
        if stats.rescued.get("dispatched") or stats.rescued.get("unstarted") or (
                stats.rescued.get("sending") and self.settings.ambiguous_policy == "retry"):
            stats.more = True  # rescued messages are due again: lease them in the next pass

    def _dispatch(self, stats: PassStats, now: datetime) -> None:
        """Stage, then lease and publish what is due."""
        survey = self.outbox.survey(now, stage_limit=STAGE_PER_PASS, after=self._cursor, limit=CHATBOTS_PER_PASS)
        stats.staged = survey.staged
        # More to stage, or more chatbots after this slice: the next pass follows at once.
        stats.more = survey.staged >= STAGE_PER_PASS or survey.full
        inflight = survey.inflight
        self._observe_drain(sum(inflight.values()))
        stats.inflight = sum(inflight.values())
        due = survey.due
        # Round-robin: a full slice moves the cursor past it; otherwise the order rotates by
        # one chatbot each pass, so no one is always first.
        self._cursor = due[-1] if survey.full else due[0] if due else ""
        if not due:
            self._last_inflight = (time.monotonic(), stats.inflight)
            return
        states = self.limits.get_many(due)
        lease_until = now + timedelta(seconds=self.settings.lease_s)
        leased: list[tuple[str, list[list[int]]]] = []
        # Workers wait for a rate slot at most max_token_wait_s: no use sending further ahead.
        horizon_s = min(self.settings.dispatch_lookahead_s, self.settings.max_token_wait_s)
        room = self.settings.max_inflight - sum(inflight.values())
        for position, sn in enumerate(due):
            if room <= 0:
                stats.capped = True
                break
            state = states[sn]
            until = state.paused_until
            if until is not None and state.paused(now):
                self._mirror_pause(sn, until, now)
                continue
            ahead_s, hold_s = self.limiter.ahead(sn)
            if hold_s > 0:
                stats.wait_s = min(stats.wait_s, hold_s)
                continue
            # An equal share of the room left, so one fast chatbot cannot take it all.
            share = max(1, math.ceil(room / (len(due) - position)))
            by_rate = allowance(state.limit.rate_per_s, lateness(state.limit)[0].burst, inflight.get(sn, 0),
                                lookahead_s=horizon_s, max_per_pass=self.settings.dispatch_max_per_pass,
                                ahead_s=ahead_s)
            n = min(share, by_rate)
            if n == 0:
                # Its rate allows nothing more now; a quarter of the horizon later it will, and the
                # slots already reserved keep it busy meanwhile.
                stats.wait_s = min(stats.wait_s, horizon_s / 4)
                continue
            token, ids = self.outbox.lease_due(sn, now, n, lease_until)
            room -= len(ids)
            if len(ids) == n:
                if n < by_rate or n == self.settings.dispatch_max_per_pass:
                    stats.capped = True  # held back by the broker's room, not by its rate
                else:
                    stats.wait_s = min(stats.wait_s, horizon_s / 4)
            if ids:
                size = self.settings.dispatch_batch_size
                leased.append((token, [ids[i : i + size] for i in range(0, len(ids), size)]))
        flat: list[tuple[str, list[int]]] = [(token, batch) for token, batches in leased for batch in batches]
        for index in interleave([batches for _, batches in leased]):
            token, batch = flat[index]
            try:
                self.app.send_task(SEND_TASK, args=[batch, token], queue=self.settings.queue_name)
            except Exception as exc:  # noqa: BLE001 - the broker is away: give the rows back now
                log.warning("could not publish a batch (%s); giving %d messages back", type(exc).__name__, len(batch))
                self.outbox.release(batch, token, self.clock())
                continue
            stats.tasks += 1
            stats.dispatched += len(batch)
        stats.inflight += stats.dispatched
        self._last_inflight = (time.monotonic(), stats.inflight)

    def _observe_drain(self, inflight_now: int) -> None:
        """Learn how fast workers claim dispatched messages, from the in-flight count between passes."""
        if self._last_inflight is None:
            return
        at, before = self._last_inflight
        elapsed = time.monotonic() - at
        if elapsed <= 0.001 or before <= 0:
            return
        rate = max(0, before - inflight_now) / elapsed
        self._drain_per_s = rate if self._drain_per_s == 0 else 0.7 * self._drain_per_s + 0.3 * rate

    def _mirror_pause(self, serial_number: str, until: datetime, now: datetime) -> None:
        """Re-create a pause in Redis from the database (after Redis lost it).

        Only for a few seconds at a time and renewed each pass while the database
        says paused: our view may be a second stale, and an operator's resume must win.
        """
        try:
            if not self.limiter.paused(serial_number):
                self.limiter.pause(serial_number, min(until, now + timedelta(seconds=MIRROR_PAUSE_S)), now)
        except redis.RedisError:
            pass

    def sleep_for(self, stats: PassStats) -> float:
        """How long to wait for the next pass (a producer's wake-up cuts it short).

        Everything already due was handled by this pass (sent on, waiting for its
        rate, or paused), so only the next message that is not due yet matters.
        """
        horizon_s = min(self.settings.dispatch_lookahead_s, self.settings.max_token_wait_s)
        if stats.capped:
            # The broker is full: more chatbots or staging cannot help until workers take some.
            return capped_wait(stats.inflight, self._drain_per_s, longest_s=min(self.settings.dispatch_interval_s,
                                                                                 horizon_s / 4))
        if stats.more:
            return 0.0  # more chatbots or messages to handle now: the next pass is real work
        now = self.clock()
        wait_s = min(self.settings.dispatch_interval_s, max(0.05, stats.wait_s))
        if stats.inflight or self._holding:
            # Workers hold messages: look for a dead one at the rescue's pace, even with nothing to dispatch.
            wait_s = min(wait_s, RESCUE_EVERY_S)
        nxt = self.outbox.next_due_at(after=now)
        if nxt is not None:
            wait_s = min(wait_s, (nxt - now).total_seconds())
        return max(0.005, wait_s)

    # -- the loop -------------------------------------------------------------------------
    def run_forever(self, stop: threading.Event) -> None:
        """Dispatch until `stop` is set; survive Redis and database outages."""
        log.info("dispatcher %s started", self.name)
        last_error = ""
        while not stop.is_set():
            try:
                if not self.hold_lock():
                    stop.wait(LOCK_TTL_S / 5)
                    continue
                write_dispatcher_heartbeat(self.redis, self.keys, self.name)
                started = time.perf_counter()
                stats = self.run_pass()
                metrics.observe_pass(stats, time.perf_counter() - started)
                if stats.dispatched or stats.expired or any(stats.rescued.values()):
                    log.info("pass: dispatched %d in %d tasks, rescued %s, expired %d, staged %d",
                             stats.dispatched, stats.tasks, stats.rescued, stats.expired, stats.staged)
                self._wait(self.sleep_for(stats), stop)
                last_error = ""
            except (redis.RedisError, SQLAlchemyError, OSError) as exc:
                if isinstance(exc, redis.RedisError):
                    self.liveness.interrupted()  # Redis may come back empty: watch again first
                text = f"{type(exc).__name__}"
                if text != last_error:
                    log.warning("dispatcher: %s unavailable (%s); retrying", _which(exc), text)
                last_error = text
                stop.wait(0.5)
        self.release_lock()
        log.info("dispatcher %s stopped", self.name)

    def _wait(self, seconds: float, stop: threading.Event) -> None:
        if seconds <= 0.01 or stop.is_set():
            return
        # BLPOP takes whole or fractional seconds on Redis >= 6.
        got = self.redis.blpop([self.keys.wake], timeout=min(seconds, LOCK_TTL_S / 3))
        if got:
            self.redis.delete(self.keys.wake)


def _which(exc: BaseException) -> str:
    if isinstance(exc, redis.RedisError):
        return "Redis"
    return "the database" if isinstance(exc, SQLAlchemyError) else "a service"


def run(settings: Settings, stop: threading.Event | None = None) -> None:
    """Build a dispatcher from settings and run it until stopped (SIGTERM/SIGINT in the CLI)."""
    from oaksend.models.db import make_engine
    from oaksend.worker.delivery.app import make_app

    settings.check_timeouts()
    outbox = Outbox(make_engine(settings.database_url, schema=settings.db_schema, **settings.engine_options()))
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=10, socket_connect_timeout=5)
    app = make_app(settings)
    dispatcher = Dispatcher(settings, outbox, client, app)
    try:
        dispatcher.run_forever(stop or threading.Event())
    finally:
        client.close()
        outbox.engine.dispose()

