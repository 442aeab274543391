"""The producer API: validate, insert the outbox row, wake the dispatcher.

    from oaksend import Producer, load_settings

    producer = Producer(load_settings())
    message_id = producer.send("3254a9d0424c4806b9ea3d0763a1b2c3", "+14155550123",
                               "Reminder: your appointment is tomorrow at 10:00",
                               idempotency_key="appointment-981-reminder")

Nothing reaches Redis but a wake-up signal: the dispatcher moves due rows into
Celery. Losing the signal only costs latency (the dispatcher also polls).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import redis
from sqlalchemy import event
from sqlalchemy.orm import Session

from oaksend.errors import ValidationError
from oaksend.models.db import make_engine
from oaksend.models.records import NewMessage
from oaksend.models.repository import Outbox
from oaksend.worker.clock import utcnow
from oaksend.worker.keys import Keys
from oaksend.worker.message.validation import SendRequest, validate
from oaksend.worker.settings import Settings

log = logging.getLogger(__name__)

def wake(client: redis.Redis, keys: Keys) -> None:
    """Tell the dispatcher there is new work (the list it blocks on). Best effort: the database is the truth."""
    try:
        pipe = client.pipeline(transaction=False)
        pipe.lpush(keys.wake, "1")
        pipe.ltrim(keys.wake, 0, 9)
        pipe.execute()
    except redis.RedisError as exc:
        log.warning("could not wake the dispatcher (%s); it will find the work on its next poll", type(exc).__name__)


def validate_many(requests: Iterable[SendRequest], *, now: datetime, default_deadline_s: float) -> list[NewMessage]:
    """Every request validated (before any is written); an error names its position: `requests[3].to`."""
    rows: list[NewMessage] = []
    for i, req in enumerate(requests):
        if not isinstance(req, SendRequest):
            raise ValidationError(f"requests[{i}]", "must be a SendRequest")
        try:
            rows.append(validate(req, now=now, default_deadline_s=default_deadline_s))
        except ValidationError as exc:
            raise ValidationError(f"requests[{i}].{exc.field}", exc.message) from None
    return rows


class Producer:
    """Enqueue messages into the outbox. Thread-safe; build one per process."""

    def __init__(self, settings: Settings, *, outbox: Outbox | None = None,
                 redis_client: redis.Redis | None = None) -> None:
        self.settings = settings
        self.outbox = outbox or Outbox(make_engine(settings.database_url, schema=settings.db_schema))
        self.redis = redis_client or redis.Redis.from_url(settings.redis_url, socket_timeout=2,
                                                          socket_connect_timeout=2)

    def send(self, serial_number: str, to: str, text: str, *, idempotency_key: str | None = None,
             send_at: datetime | None = None, deadline: datetime | None = None,
             metadata: dict[str, Any] | None = None, priority: str = "normal",
             session: Session | None = None) -> int:
        """Enqueue one message; return its id.

        serial_number: the chatbot ID. to: an E.164 number. text: at most 1600 characters.
        idempotency_key: the same key with the same content returns the existing id;
        with different content raises IdempotencyConflict. send_at: not before this
        time. deadline: never send after it (default: DEFAULT_DEADLINE_S after send_at).
        metadata: a JSON object kept with the message. priority: "high", "normal"
        (the default) or "bulk": a chatbot's due messages go out most urgent first,
        so a confirmation is not held behind a campaign. session: your SQLAlchemy
        Session, so the row commits (or rolls back) with your own data.
        Raises ValidationError naming the field; then nothing is written.
        """
        request = SendRequest(serial_number, to, text, idempotency_key, send_at, deadline, metadata, priority)
        now = utcnow()
        row = validate(request, now=now, default_deadline_s=self.settings.default_deadline_s)
        return self._write([row], now, session)[0]

    def send_many(self, requests: Iterable[SendRequest], *, session: Session | None = None) -> list[int]:
        """Enqueue many messages in one transaction; all are validated before any is written.

        An error names the request's position: `requests[3].to: ...`.
        """
        now = utcnow()
        rows = validate_many(requests, now=now, default_deadline_s=self.settings.default_deadline_s)
        return self._write(rows, now, session) if rows else []

    def _write(self, rows: Sequence[NewMessage], now: datetime, session: Session | None) -> list[int]:
        # One transaction (or one savepoint in the caller's): the suppression check, the
        # idempotency look-up and the insert. On SQLite a second connection would wait for
        # the caller's own write lock, so nothing runs outside `session` when one is given.
        ids = self.outbox.add(rows, now, session=session, refuse=refuse_suppressed,
                              key_secret=self.settings.key_secret)
        if session is None:
            wake(self.redis, self.settings.keys)
        else:
            # Wake only once the caller's transaction has really committed.
            event.listen(session, "after_commit", lambda _s: wake(self.redis, self.settings.keys), once=True)
        return ids

    def close(self) -> None:
        self.redis.close()
        self.outbox.engine.dispose()


def refuse_suppressed(suppressed: dict[str, str]) -> None:
    from oaksend.worker.logs import mask_phone

    phone, reason = min(suppressed.items())
    raise ValidationError("to", f"{mask_phone(phone)} is suppressed ({reason}); it must not be texted")
