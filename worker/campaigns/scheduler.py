"""The scheduler: the process that ticks campaigns (`oaksend scheduler`).

Each tick materializes cron occurrences within the horizon and moves campaign
states along (scheduled -> running -> finished); one-off and relative campaigns
were written out in full when created, so the outbox and dispatcher carry them
even while no scheduler runs.

One instance is active at a time (a Redis lock with a TTL it renews, like the
dispatcher's); others stand by. If two ever tick at once (Redis lost the lock),
nothing is sent twice: every occurrence has one idempotency key and is inserted
with ON CONFLICT DO NOTHING, and state changes are conditional updates. A long
tick (an occurrence of 100,000 recipients) renews the lock between pages of
work, and stops if another scheduler took it over.

Nothing one campaign does stops the scheduler: the tick marks a campaign it
cannot tick (`last_error`) and goes on, and an error the tick did not expect is
logged and the next tick runs as usual.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from datetime import timedelta

import redis
from sqlalchemy.exc import SQLAlchemyError

from oaksend.worker.campaigns.service import CRON_HORIZON, Campaigns
from oaksend.worker.leadership import Leadership
from oaksend.worker.settings import Settings

log = logging.getLogger(__name__)

LOCK_TTL_S = 10.0
#: Seconds between ticks by default.
TICK_S = 5.0

class Scheduler:
    """Ticks campaigns while it holds the scheduler lock."""

    def __init__(self, campaigns: Campaigns, redis_client: redis.Redis, *, tick_s: float = TICK_S,
                 horizon: timedelta = CRON_HORIZON, name: str | None = None, use_lock: bool = True) -> None:
        self.campaigns = campaigns
        self.redis = redis_client
        self.tick_s = tick_s
        self.horizon = horizon
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.use_lock = use_lock
        self.leader = Leadership(redis_client, campaigns.settings.keys.scheduler_lock, self.name, role="scheduler")

    @property
    def active(self) -> bool:
        return self.leader.active

    def hold_lock(self) -> bool:
        """Acquire or renew the lock; False means: stand by."""
        if not self.use_lock:
            return True
        return self.leader.hold(max(LOCK_TTL_S, self.tick_s * 3))

    def release_lock(self) -> None:
        if self.use_lock:
            self.leader.release()

    def run_forever(self, stop: threading.Event) -> None:
        log.info("scheduler %s started", self.name)
        last_error = ""
        while not stop.is_set():
            try:
                if self.hold_lock():
                    stats = self.campaigns.tick(horizon=self.horizon, keep_alive=self.hold_lock)
                    if stats:
                        log.info("tick: %s", stats)
                last_error = ""
            except (redis.RedisError, SQLAlchemyError, OSError) as exc:
                text = type(exc).__name__
                if text != last_error:
                    log.warning("scheduler: a service is unavailable (%s); retrying", text)
                last_error = text
            except Exception:  # the scheduler outlives any one tick's surprise
                log.exception("scheduler: the tick failed; the next one runs as usual")
                last_error = ""
            stop.wait(self.tick_s)
        self.release_lock()
        log.info("scheduler %s stopped", self.name)


def run(settings: Settings, stop: threading.Event | None = None, *, tick_s: float = TICK_S,
        horizon: timedelta = CRON_HORIZON, use_lock: bool = True) -> None:
    """Build a scheduler from settings and run it until stopped (SIGTERM/SIGINT in the CLI)."""
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=10, socket_connect_timeout=5)
    campaigns = Campaigns(settings, redis_client=client)
    scheduler = Scheduler(campaigns, client, tick_s=tick_s, horizon=horizon, use_lock=use_lock)
    try:
        scheduler.run_forever(stop or threading.Event())
    finally:
        campaigns.close()
