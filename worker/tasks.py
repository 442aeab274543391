"""The send task: claim, send, record. It applies decisions; it makes none of its own.

For each id of a batch (all of one chatbot): expire it if its deadline passed,
take a rate token (or hand it back to the database to wait), claim it
atomically, call the API, classify, plan, and write the attempt and the new
state in one transaction.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable

import redis
from celery import Celery
from sqlalchemy.exc import SQLAlchemyError

from oaksend.models.db import make_engine
from oaksend.models.records import Work
from oaksend.models.repository import Outbox
from oaksend.worker.classify import Verdict, classify
from oaksend.worker.client import NewOaksClient
from oaksend.worker.clock import utcnow
from oaksend.worker.limits import LimitBook
from oaksend.worker import metrics
from oaksend.worker.logs import mask_phone, send_fields
from oaksend.worker.ratelimit import Admission, RateLimiter
from oaksend.worker.settings import Settings
from oaksend.worker.transition import RetryPolicy, attempt_record, plan

log = logging.getLogger(__name__)

#: The name the dispatcher publishes and the worker consumes.
SEND_TASK = "oaksend.send_batch"

#: How long a worker keeps trying to write an outcome while the database is away.
RECORD_RETRY_S = 120.0


@dataclass
class BatchResult:
    """What one batch did, for logs and tests."""

    throttled: int = 0
    skipped: int = 0
    calls: int = 0
    by_state: dict[str, int] = field(default_factory=dict)

    def count(self, state: str) -> None:
        self.by_state[state] = self.by_state.get(state, 0) + 1


class Sender:
    """Everything a worker process needs to send, built once per process from Settings."""

    def __init__(self, settings: Settings, *, outbox: Outbox | None = None,
                 redis_client: redis.Redis | None = None, clock: Callable[[], datetime] = utcnow,
                 rng: random.Random | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        self.settings = settings
        self._api_key = settings.api_key()  # fail fast, before any message is claimed
        self.outbox = outbox or Outbox(make_engine(settings.database_url, schema=settings.db_schema))
        self.redis = redis_client or redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
        self.limiter = RateLimiter(self.redis)
        self.limits = LimitBook(self.outbox, settings)
        self.clock = clock
        self.rng = rng or random.Random()
        self.sleep = sleep
        self.policy = RetryPolicy(settings.max_attempts, settings.backoff_base_s, settings.backoff_cap_s,
                                  settings.ambiguous_policy)
        self.overrides = {code: Verdict(v) for code, v in settings.code_overrides.items()}
        self._local = threading.local()
        self._host = socket.gethostname()

    # -- per thread -----------------------------------------------------------------------
    def _client(self) -> NewOaksClient:
        client = getattr(self._local, "client", None)
        if client is None:
            client = NewOaksClient(self.settings.base_url, self._api_key,
                                   connect_timeout_s=self.settings.connect_timeout_s,
                                   read_timeout_s=self.settings.read_timeout_s)
            self._local.client = client
        return client

    @property
    def name(self) -> str:
        return f"{self._host}:{os.getpid()}:{threading.current_thread().name}"

    # -- the batch ------------------------------------------------------------------------
    def process(self, ids: list[int], token: str) -> BatchResult:
        """Send the messages of one task. Rows no longer dispatched under `token` are skipped."""
        result = BatchResult()
        works = self.outbox.load_dispatched(ids, token)
        result.skipped = len(ids) - len(works)
        for work in works:
            self._one(work, token, result)
        return result

    def _one(self, work: Work, token: str, result: BatchResult) -> None:
        now = self.clock()
        if self._expired(work, token, now, result):
            return
        # Campaigns: quiet hours hold when the message is SENT, not only when it was scheduled.
        if work.quiet and self._quiet(work, token, now, result):
            return
        state = self.limits.get(work.serial_number)
        if state.paused(now):
            self.outbox.give_back(work.id, token, now, None, f"chatbot paused: {state.pause_reason}")
            result.throttled += 1
            metrics.observe_throttle(work.serial_number)
            return
        # Claim first, so that nothing but the HTTP call stands between the rate slot and
        # the request reaching the API (the API sees our pacing, not our database's).
        call_lease = timedelta(seconds=self.settings.max_token_wait_s + self.settings.connect_timeout_s
                               + self.settings.read_timeout_s + 30)
        if not self.outbox.claim(work.id, token, now, now + call_lease):
            result.skipped += 1
            return
        client = self._client()  # built before the slot: creating one takes tens of ms
        admission = self._admit(work, state)
        if not admission.allowed:
            if admission.paused:
                self.outbox.give_back(work.id, token, self.clock(), None, "chatbot paused")
            else:
                self.limiter.hold(work.serial_number, admission.wait_s)
                due = self.clock() + timedelta(seconds=max(admission.wait_s, 0.001))
                self.outbox.give_back(work.id, token, self.clock(), due, "throttled: waiting for the chatbot's rate limit")
            result.throttled += 1
            metrics.observe_throttle(work.serial_number)
            return
        now = self.clock()
        if self._expired(work, token, now, result):
            return
        started = self.clock()
        t0 = time.perf_counter()
        outcome = client.send(work.serial_number, work.to_phone, work.body)
        latency_ms = (time.perf_counter() - t0) * 1000.0
        result.calls += 1
        decision = classify(outcome, overrides=self.overrides, retry_after_cap_s=self.settings.retry_after_cap_s,
                            retry_later_floor_s=self.settings.retry_later_floor_s)
        metrics.observe_send(decision.verdict, work.serial_number, latency_ms / 1000.0)
        now = self.clock()
        session_id = getattr(outcome, "session_id", None)
        change = plan(decision, failures=work.failures, deadline_at=work.deadline_at, now=now,
                      policy=self.policy, rng=self.rng, session_id=session_id)
        record = attempt_record(outcome, decision, number=work.attempts + 1, started_at=started,
                                latency_ms=latency_ms, worker=self.name)
        self._record(work, token, record, change, now)
        if change.pause_until is not None:
            self._pause(work.serial_number, change.pause_until, now)
        result.count(change.state)
        log.info("message %s to %s: %s (%s) -> %s", work.id, mask_phone(work.to_phone), decision.verdict,
                 decision.reason, change.state,
                 extra=send_fields(work.id, work.serial_number, work.to_phone, decision.verdict, record.number))

    def _expired(self, work: Work, token: str, now: datetime, result: BatchResult) -> bool:
        """Past its deadline: expired without a call (never sent late)."""
        if work.deadline_at is None or work.deadline_at > now:
            return False
        if self.outbox.expire(work.id, token, now):
            result.count("expired")
        return True

    def _quiet(self, work: Work, token: str, now: datetime, result: BatchResult) -> bool:
        """Inside the recipient's quiet hours: wait for the next allowed time, or expire if that is too late."""
        from oaksend.worker.quiet import at_send

        check = at_send(work.quiet, work.deadline_at, now)
        if check.action == "send":
            return False
        if check.action == "wait":
            self.outbox.give_back(work.id, token, now, check.at, check.reason)
            result.throttled += 1
        elif self.outbox.expire_with_reason(work.id, token, now, check.reason):
            result.count("expired")
        return True

    def _admit(self, work: Work, state: Any) -> Admission:
        """Reserve a rate slot at most `max_token_wait_s` ahead and sleep until it (no busy loop)."""
        admission = self.limiter.reserve(work.serial_number, state.limit, work.segments,
                                         max_wait_s=self.settings.max_token_wait_s)
        if admission.allowed and admission.wait_s > 0:
            self.sleep(admission.wait_s)
            if self.limiter.paused(work.serial_number):
                # Paused (a 429 elsewhere) while we waited: hand the message back.
                return Admission(False, 1.0, True)
        return admission

    def _record(self, work: Work, token: str, record: Any, change: Any, now: datetime) -> None:
        """Write the outcome; while the database is away, keep trying rather than lose it."""
        deadline = time.monotonic() + RECORD_RETRY_S
        delay = 0.2
        while True:
            try:
                self.outbox.record(work.id, work.serial_number, work.to_phone, token, record, change, now)
                return
            except SQLAlchemyError as exc:
                if time.monotonic() > deadline:
                    # The row stays `sending`; the dispatcher's rescue will treat it as ambiguous.
                    log.error("message %s: could not record the outcome (%s); left for rescue as ambiguous",
                              work.id, type(exc).__name__)
                    return
                log.warning("message %s: database unavailable (%s); retrying the write in %.1fs",
                            work.id, type(exc).__name__, delay)
                self.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _pause(self, serial_number: str, until: datetime, now: datetime) -> None:
        metrics.observe_pause(serial_number)
        try:
            self.limiter.pause(serial_number, until, now)
        except redis.RedisError:
            pass  # the database holds the pause too; the dispatcher re-creates the key
        self.limits.forget(serial_number)

    def close(self) -> None:
        client = getattr(self._local, "client", None)
        if client is not None:
            client.close()
        self.redis.close()
        self.outbox.engine.dispose()


def register(app: Celery, settings: Settings) -> None:
    """Register the send task on `app`; its Sender is built lazily, once per process."""
    lock = threading.Lock()
    holder: dict[str, Any] = {}

    def sender() -> Sender:
        pid = os.getpid()
        if holder.get("pid") != pid:
            with lock:
                if holder.get("pid") != pid:
                    holder["sender"] = Sender(settings)
                    holder["pid"] = pid
        return holder["sender"]

    @app.task(name=SEND_TASK, ignore_result=True)
    def send_batch(ids: list[int], token: str) -> dict[str, int]:
        result = sender().process([int(i) for i in ids], str(token))
        return {"calls": result.calls, "skipped": result.skipped, "throttled": result.throttled, **result.by_state}

    app.oaksend_sender = sender  # type: ignore[attr-defined]
