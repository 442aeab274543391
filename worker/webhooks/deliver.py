"""The webhook process: fan new events out to their endpoints, POST the due deliveries, record.

At least once: a delivery is marked delivered only after its 2xx came back, so a crash
between the two sends it again (with the same webhook-id, for the receiver to de-duplicate).
In order per message: only the first pending delivery of a message to an endpoint is ever
due (the repository's look-up), so a message's `failed` never overtakes its retry's `sent`.
One process is active at a time (a Redis lock); others stand by.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

from oaksend.models.repository.api import DueDelivery
from oaksend.worker.clock import utcnow
from oaksend.worker.webhooks.client import WebhookClient
from oaksend.worker.webhooks.signing import derive_secret, retry_delay_s, signature_header

__all__ = ["Deliverer", "run"]

log = logging.getLogger(__name__)
#: Deliveries attempted per pass (concurrently, `workers` at a time).
BATCH = 200
LOCK_TTL_S = 10.0


class Deliverer:
    """One pass at a time: `once()` returns how many deliveries it attempted."""

    def __init__(self, outbox: Any, server_secret: str, *, timeout_s: float, retry_first_s: float,
                 workers: int = 16, clock: Callable[[], datetime] = utcnow) -> None:
        self.outbox = outbox
        self.server_secret = server_secret
        self.retry_first_s = retry_first_s
        self.clock = clock
        self.client = WebhookClient(timeout_s, max_connections=workers)
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="webhook")

    def once(self) -> int:
        now = self.clock()
        self.outbox.fan_out(now)
        due = self.outbox.due_deliveries(now, limit=BATCH)
        if not due:
            return 0
        answers = list(self.pool.map(lambda d: self._post(d, now), due))
        done = self.clock()
        results = []
        for delivery, (status, error) in zip(due, answers, strict=True):
            ok = status is not None and 200 <= status < 300
            delay = None if ok else retry_delay_s(delivery.attempts + 1, self.retry_first_s)
            results.append((delivery, status, error, None if delay is None else done + timedelta(seconds=delay)))
            if not ok:
                log.info("webhook delivery %s to endpoint %s failed (%s); %s", delivery.id, delivery.endpoint_id,
                         error, "given up" if delay is None else f"again in {delay:.1f} s")
        self.outbox.record_deliveries(results, done)
        return len(due)

    def _post(self, d: DueDelivery, now: datetime) -> tuple[int | None, str | None]:
        secrets = [derive_secret(self.server_secret, d.salt)]
        if d.old_salt and d.old_until is not None and d.old_until > now:
            secrets.append(derive_secret(self.server_secret, d.old_salt))
        body = json.dumps(d.payload, separators=(",", ":")).encode()
        msg_id, stamp = f"evt_{d.event_id}", int(time.time())
        headers = [("webhook-id", msg_id), ("webhook-timestamp", str(stamp)),
                   ("webhook-signature", signature_header(secrets, msg_id, stamp, body))]
        return self.client.post(d.url, body, headers)

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.client.close()


def run(settings: Any, stop: threading.Event, *, name: str) -> None:
    """Deliver until `stop` is set: one active process (a Redis lock), the others on standby."""
    import redis

    from oaksend.models.db import make_engine
    from oaksend.models.repository import Outbox
    from oaksend.worker.leadership import Leadership

    if not settings.key_secret:
        from oaksend.errors import ConfigError

        raise ConfigError("OAKSEND_KEY_HASH_SECRET is not set: webhook secrets are derived from it")
    outbox = Outbox(make_engine(settings.database_url, schema=settings.db_schema))
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
    lock = Leadership(client, f"{settings.keys.prefix}:webhooks:lock", name, role="webhooks")
    deliverer = Deliverer(outbox, settings.key_secret, timeout_s=settings.webhook_timeout_s,
                          retry_first_s=settings.webhook_retry_first_s)
    try:
        while not stop.is_set():
            try:
                busy = lock.hold(max(LOCK_TTL_S, 3 * settings.webhook_timeout_s)) and deliverer.once() > 0
            except Exception as exc:  # noqa: BLE001 - a store away: log one line, try again next poll
                log.warning("webhook pass failed: %s", type(exc).__name__)
                busy = False
            if not busy:
                stop.wait(settings.webhook_poll_s)
    finally:
        lock.release()
        deliverer.close()
        client.close()
        outbox.engine.dispose()
