"""The sender: claim a group, take its rate slots, call, record the group.

`Sender.process` is what the send task (`delivery.task`) runs. A task carries the ids
of one chatbot's messages and their lease token. For the whole group at once: claim
(one conditional UPDATE ... RETURNING), reserve rate slots (one Lua call), mark
"calling" just before the requests leave (one UPDATE), make the calls concurrently
on the process's event loop (`newoaks.client`), then write every attempt and new
state in one transaction. It applies decisions; it makes none of its own.

"Was it called?" stays exact per message: a message is marked calling (in the
same window as its rate slot) only right before its request leaves; a message
claimed but never marked goes back to pending without an attempt, whoever
notices (this worker, or the dispatcher's rescue after this worker died).
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import redis

from oaksend.models.db import is_outage, make_engine
from oaksend.models.records import AttemptRecord, Transition, Work
from oaksend.models.repository import Outbox
from oaksend.worker import metrics
from oaksend.worker.clock import DatabaseClock
from oaksend.worker.delivery.classify import Verdict, classify
from oaksend.worker.delivery.heartbeat import WorkerHeartbeat, worker_id
from oaksend.worker.delivery.limits import LimitBook
from oaksend.worker.delivery.ratelimit import RateLimiter, binds, lateness
from oaksend.worker.delivery.transition import RetryPolicy, attempt_record, plan
from oaksend.worker.logs import mask_phone, send_fields
from oaksend.worker.message.cap import cap_reason, over_cap_at_send, parse_cap
from oaksend.worker.newoaks.client import Call, CallResult, Transport
from oaksend.worker.newoaks.outcome import TransportError
from oaksend.worker.settings import Settings

log = logging.getLogger(__name__)

#: Calls in flight: each one's future -> (its message, our request id).
Waiting = dict[Future[CallResult], tuple[Work, str]]

#: Messages whose slots fall within this much of each other are marked calling together.
MARK_WINDOW_S = 0.1
#: A window is marked a lead before its first slot, so the database write happens
#: while waiting and the requests leave at their slots (a late request would arrive
#: closer to the next one than the chatbot's rate allows); slots are reserved this far
#: ahead of now (RateLimiter.reserve_many). The lead is twice the recent time a mark
#: takes, within these bounds: it adds to every message's latency. A worker killed
#: earlier in its wait leaves its messages unmarked: they go back without an attempt.
MARK_LEAD_MIN_S = 0.02
MARK_LEAD_MAX_S = 0.1
#: Answers arriving within this much of the first are written in one transaction: a kill in that time
#: turns them into ambiguous calls, like the requests in flight.
RECORD_LINGER_S = 0.02
#: An auth failure holds the chatbot's other calls this long until its database pause lands.
PAUSE_HOLD_S = 5.0



@dataclass
class BatchResult:
    """What one batch did, for logs and tests."""

    throttled: int = 0
    skipped: int = 0
    calls: int = 0
    by_state: dict[str, int] = field(default_factory=dict)

    def count(self, state: str, n: int = 1) -> None:
        if n:
            self.by_state[state] = self.by_state.get(state, 0) + n


class Sender:
    """Everything a worker process needs to send, built once per process from Settings."""

    def __init__(self, settings: Settings, *, outbox: Outbox | None = None,
                 redis_client: redis.Redis | None = None, clock: Callable[[], datetime] | None = None,
                 rng: random.Random | None = None, sleep: Callable[[float], None] = time.sleep,
                 heartbeat: bool = True) -> None:
        settings.check_timeouts()
        self.settings = settings
        self._api_key = settings.api_key()  # fail fast, before any message is claimed
        self.outbox = outbox or Outbox(make_engine(settings.database_url, schema=settings.db_schema,
                                                   **settings.engine_options()))
        self.redis = redis_client or redis.Redis.from_url(settings.redis_url, socket_timeout=5,
                                                          socket_connect_timeout=5)
        self.limiter = RateLimiter(self.redis, settings.keys)
        self.limits = LimitBook(self.outbox, settings)
        self.cap = parse_cap(settings.frequency_cap)  # checked again here, after quiet-hour delays
        # The database's clock: what this worker writes, other hosts compare.
        self.clock = clock or DatabaseClock(self.outbox.database_now)
        self.rng = rng or random.Random()
        self.sleep = sleep
        self.policy = RetryPolicy(settings.max_attempts, settings.backoff_base_s, settings.backoff_cap_s,
                                  settings.ambiguous_policy)
        self.overrides = {code: Verdict(v) for code, v in settings.code_overrides.items()}
        self.name = worker_id()
        self.transport = Transport(settings.base_url, self._api_key, connect_timeout_s=settings.connect_timeout_s,
                                   read_timeout_s=settings.read_timeout_s,
                                   response_deadline_s=settings.response_deadline_s,
                                   ca_bundle=settings.ca_bundle, tls_trust=settings.tls_trust,
                                   client_cert=settings.client_cert, client_key=settings.client_key,
                                   pause_rule=self._pause_rule, pause_setter=self._pause_elsewhere,
                                   pause_probe=self.limiter.paused)
        self._mark_s = MARK_LEAD_MIN_S / 2  # a moving average of how long marking takes
        self.heartbeat = WorkerHeartbeat(self.redis, settings.keys, self.name) if heartbeat else None
        if self.heartbeat is not None:
            self.heartbeat.start()

    def _pause_rule(self, outcome: Any) -> float | None:
        """Seconds a chatbot pauses after this outcome (the same decision `plan` makes)."""
        decision = classify(outcome, overrides=self.overrides, retry_after_cap_s=self.settings.retry_after_cap_s,
                            retry_later_floor_s=self.settings.retry_later_floor_s)
        if not decision.pause_chatbot:
            return None
        if decision.verdict is Verdict.FINAL:
            return PAUSE_HOLD_S  # an auth failure: the database pause (until resumed) takes over
        return decision.retry_after_s or decision.min_delay_s or 1.0

    def _pause_elsewhere(self, serial_number: str, seconds: float) -> None:
        now = self.clock()
        self.limiter.pause(serial_number, now + timedelta(seconds=seconds), now)

    @property
    def mark_lead_s(self) -> float:
        return min(MARK_LEAD_MAX_S, max(MARK_LEAD_MIN_S, 2 * self._mark_s))

    # -- the batch ------------------------------------------------------------------------
    def process(self, ids: list[int], token: str) -> BatchResult:
        """Send the messages of one task. Rows no longer dispatched under `token` are skipped."""
        result = BatchResult()
        now = self.clock()
        lease_until = now + timedelta(seconds=self.settings.call_lease)
        works, stopped = self.outbox.claim_group(ids, token, now, lease_until, self.name)
        result.count("failed", stopped)
        result.skipped = len(ids) - len(works) - stopped
        by_bot: dict[str, list[Work]] = {}
        for work in works:
            by_bot.setdefault(work.serial_number, []).append(work)
        for serial_number, group in by_bot.items():
            try:
                self._group(serial_number, group, token, result)
            except redis.RedisError as exc:
                # Before any request left (Redis is only used before the calls): hand back.
                self._give_back_quietly([w.id for w in group], token, f"Redis unavailable ({type(exc).__name__})")
                result.throttled += len(group)
        return result

    def _give_back_quietly(self, ids: list[int], token: str, reason: str, *, called: bool | None = None) -> None:
        """Hand claimed, uncalled messages back; if the database is away too, the rescue will.

        `called=False`: marked calling, but this worker knows the request never started."""
        try:
            self.outbox.give_back_group(ids, token, self.clock(), None, reason, unmark=called is False)
        except Exception as exc:  # noqa: BLE001 - not called: the rescue returns them without an attempt
            log.warning("could not hand %d messages back (%s); the rescue will", len(ids), type(exc).__name__)

    def _group(self, serial_number: str, group: list[Work], token: str, result: BatchResult) -> None:
        now = self.clock()
        group = self._drop_too_late(group, token, now, 0.0, result)
        if not group:
            return
        # Campaigns: quiet hours hold when the message is SENT, not only when it was scheduled.
        group = self._over_cap(self._quiet(group, token, now, result), token, now, result)
        if not group:
            return
        state = self.limits.get(serial_number)
        if state.paused(now):
            self.outbox.give_back_group([w.id for w in group], token, now, None,
                                        f"chatbot paused: {state.pause_reason}")
            result.throttled += len(group)
            metrics.observe_throttle(serial_number, len(group))
            return
        lead_s = self.mark_lead_s
        start = time.monotonic() + lead_s
        reserve_with, late_ok_s = lateness(state.limit)
        admission = self.limiter.reserve_many(serial_number, reserve_with, [w.segments for w in group],
                                              max_wait_s=self.settings.max_token_wait_s, lead_s=lead_s)
        admitted = group[: len(admission.waits_s)]
        refused = group[len(admission.waits_s):]
        if refused:
            if admission.paused:
                self.outbox.give_back_group([w.id for w in refused], token, self.clock(), None, "chatbot paused")
            else:
                self.limiter.hold(serial_number, admission.retry_in_s)
                due = self.clock() + timedelta(seconds=max(admission.retry_in_s, 0.001))
                self.outbox.give_back_group([w.id for w in refused], token, self.clock(), due,
                                            "throttled: waiting for the chatbot's rate limit")
            result.throttled += len(refused)
            metrics.observe_throttle(serial_number, len(refused))
        if not admitted:
            return
        if not binds(state.limit, admission.waits_s):
            late_ok_s = math.inf  # nothing on its heels: a late request is made, not handed back
        calls = [(w, start + wait) for w, wait in zip(admitted, admission.waits_s, strict=True)]
        waiting: Waiting = {}
        try:
            self._call_windows(serial_number, calls, token, waiting, result, lead_s, late_ok_s)
        finally:
            # Whatever stopped the later windows (Redis or the database away), the calls
            # already made are waited for and recorded; the unmarked rest is handed back
            # by the caller, or by the rescue.
            self._drain(token, waiting, result, until=None)

    def _call_windows(self, serial_number: str, calls: list[tuple[Work, float]], token: str,
                      waiting: Waiting, result: BatchResult, lead_s: float, late_ok_s: float) -> None:
        """Mark each window of slots calling just before it, then hand its calls to the transport
        (each may leave at most `late_ok_s` after its slot); record answers while waiting."""
        i = 0
        while i < len(calls):
            window_start = calls[i][1]
            j = i
            while j < len(calls) and calls[j][1] <= window_start + MARK_WINDOW_S:
                j += 1
            window = calls[i:j]
            i = j
            delay = window_start - lead_s - time.monotonic()
            if delay > 0:
                self._drain(token, waiting, result, until=time.monotonic() + delay)
                if self.limiter.paused(serial_number):
                    # Paused (a 429 elsewhere) while we waited: hand the rest back.
                    rest = [w.id for w, _ in window] + [w.id for w, _ in calls[i:]]
                    self.outbox.give_back_group(rest, token, self.clock(), None, "chatbot paused")
                    result.throttled += len(rest)
                    break
            now = self.clock()
            late_by = max(0.0, window[-1][1] - time.monotonic())
            keep = self._drop_too_late([w for w, _ in window], token, now, late_by, result)
            if not keep:
                continue
            t0 = time.monotonic()
            marked, stopped = self.outbox.mark_calling([w.id for w in keep], token, now)
            self._mark_s = 0.8 * self._mark_s + 0.2 * (time.monotonic() - t0)
            result.count("failed", len(stopped))
            ok = set(marked)
            result.skipped += len(keep) - len(marked) - len(stopped)
            chosen = [(w, at) for w, at in window if w.id in ok]
            if chosen:
                # Each request carries an id of ours, stored on its attempt row under a unique index.
                requests = [(w, uuid.uuid4().hex) for w, _ in chosen]
                futures = self.transport.submit_each([Call(w.serial_number, w.to_phone, w.body, at, late_ok_s, rid)
                                                      for (w, at), (_, rid) in zip(chosen, requests, strict=True)])
                waiting.update(zip(futures, requests, strict=True))

    def _drop_too_late(self, group: list[Work], token: str, now: datetime, ahead_s: float,
                       result: BatchResult) -> list[Work]:
        """Expire those whose request could not start with the connect timeout left before the deadline."""
        margin = timedelta(seconds=self.settings.connect_timeout_s + ahead_s)
        late = [w for w in group if w.deadline_at is not None and w.deadline_at - margin <= now]
        if late:
            result.count("expired", self.outbox.expire_group(
                [w.id for w in late], token, now, "deadline too close: the request would not start in time"))
            gone = {w.id for w in late}
            group = [w for w in group if w.id not in gone]
        return group

    def _quiet(self, group: list[Work], token: str, now: datetime, result: BatchResult) -> list[Work]:
        """Inside the recipient's quiet hours: wait for the next allowed time, or expire if that is too late."""
        if not any(w.quiet for w in group):
            return group
        from oaksend.worker.message.quiet import at_send

        keep = []
        for work in group:
            check = at_send(work.quiet, work.deadline_at, now)
            if check.action == "send":
                keep.append(work)
            elif check.action == "wait":
                self.outbox.give_back_group([work.id], token, now, check.at, check.reason)
                result.throttled += 1
            else:
                result.count("expired", self.outbox.expire_group([work.id], token, now, check.reason))
        return keep

    def _over_cap(self, group: list[Work], token: str, now: datetime, result: BatchResult) -> list[Work]:
        """The deployment's frequency cap, at send time: campaign messages over it end cancelled, uncalled."""
        if self.cap is None or not group:
            return group
        over = set(self.outbox.stop_over_cap([w.id for w in group], token, now, self.cap.period,
                                             partial(over_cap_at_send, cap=self.cap), cap_reason(self.cap)))
        result.count("cancelled", len(over))
        return [w for w in group if w.id not in over]

    def _drain(self, token: str, waiting: Waiting, result: BatchResult, *, until: float | None) -> None:
        """Record answers as they arrive, each batch in one transaction, until the monotonic time `until`
        (None: until every call has answered). A kill now duplicates only what is in flight."""
        while True:
            left = None if until is None else until - time.monotonic()
            if left is not None and left <= 0:
                return
            if not waiting:
                if left is not None:
                    self.sleep(left)
                return
            if not wait(waiting, timeout=left, return_when=FIRST_COMPLETED).done:
                return
            # A short linger gathers the answers that arrive together into one transaction.
            wait(waiting, timeout=RECORD_LINGER_S, return_when=ALL_COMPLETED)
            done = [f for f in waiting if f.done()]
            self._answers(token, [(*waiting.pop(f), f.result()) for f in done], result)

    def _answers(self, token: str, made: list[tuple[Work, str, CallResult]], result: BatchResult) -> None:
        outcomes: list[tuple[Work, AttemptRecord, Transition]] = []
        not_made: list[int] = []
        for work, request_id, call in made:
            # Not made: paused, too late for its slot, or no connection of ours free in time (a wait
            # for our own pool is no call: nothing reached the API, so no attempt row either).
            outcome = call.outcome
            if outcome is None or (isinstance(outcome, TransportError) and outcome.kind == "pool_timeout"):
                not_made.append(work.id)
                continue
            result.calls += 1
            decision = classify(outcome, overrides=self.overrides,
                                retry_after_cap_s=self.settings.retry_after_cap_s,
                                retry_later_floor_s=self.settings.retry_later_floor_s)
            metrics.observe_send(decision.verdict, work.serial_number, call.latency_ms / 1000.0)
            now = self.clock()
            session_id = getattr(outcome, "session_id", None)
            change = plan(decision, failures=work.failures, deadline_at=work.deadline_at, now=now,
                          policy=self.policy, rng=self.rng, session_id=session_id)
            # When the request started, on the clock this worker writes with.
            started = now - timedelta(seconds=max(0.0, time.monotonic() - call.started_monotonic))
            record = attempt_record(outcome, decision, number=work.attempts + 1, started_at=started,
                                    latency_ms=call.latency_ms, worker=self.name, request_id=request_id)
            outcomes.append((work, record, change))
            result.count(change.state)
            if log.isEnabledFor(logging.INFO):
                log.info("message %s to %s: %s (%s) -> %s", work.id, mask_phone(work.to_phone), decision.verdict,
                         decision.reason, change.state,
                         extra=send_fields(work.id, work.serial_number, work.to_phone, decision.verdict, record.number))
        if not_made:
            # Their chatbot was paused before they started, or they would have left too late
            # after their rate slot: certainly not called.
            self._give_back_quietly(not_made, token, "not started: chatbot paused, too late for its rate slot, "
                                    "or no connection free in time", called=False)
            result.throttled += len(not_made)
        self._record(token, outcomes)
        for work, _, change in outcomes:
            if change.pause_until is not None:
                self._pause(work.serial_number, change.pause_until, self.clock())

    def _record(self, token: str, outcomes: list[tuple[Work, AttemptRecord, Transition]]) -> None:
        """Write the outcomes; while the database is away, keep trying (within the call lease)."""
        give_up = time.monotonic() + self.settings.record_retry_s
        delay = 0.2
        again = False  # after a failure the write may have landed: the next one looks first
        while True:
            try:
                self.outbox.record_group(token, outcomes, self.clock(), again=again)
                return
            except Exception as exc:  # noqa: BLE001 - sorted below: outage or not
                ids = [w.id for w, _, _ in outcomes]
                if not is_outage(exc):
                    # Not an outage: it would fail again. The rows stay `sending` and marked
                    # calling, so the rescue records the ambiguous stand-in the call deserves.
                    log.error("messages %s: could not record the outcome (%s); left for the rescue",
                              ids, type(exc).__name__)
                    return
                if time.monotonic() + delay > give_up:
                    log.error("messages %s: database away for %.0fs; outcome not recorded, left for the rescue",
                              ids, self.settings.record_retry_s)
                    return
                log.warning("%d outcomes: database unavailable (%s); retrying the write in %.1fs",
                            len(ids), type(exc).__name__, delay)
                self.sleep(delay)
                delay = min(delay * 2, 5.0)
                again = True

    def _pause(self, serial_number: str, until: datetime, now: datetime) -> None:
        metrics.observe_pause(serial_number)
        # Redis away: the database holds the pause too, and the dispatcher re-creates the key.
        with contextlib.suppress(redis.RedisError):
            self.limiter.pause(serial_number, until, now)
        self.limits.forget(serial_number)

    def close(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.stop()
        self.transport.close()
        self.redis.close()
        self.outbox.engine.dispose()
