"""The HTTP API's tables: API keys, idempotency records, webhook endpoints, events and deliveries.

On the outbox's own `Base` (same prefix, same naming convention), in a module of their own so
`tables.py` stays the send path's schema. `migrations/env.py` imports this module so that
`alembic check` compares them too (revision 0016).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, CheckConstraint, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from oaksend.models.tables import PREFIX, Base, BigId, UTCDateTime

#: What a key may do: send messages, read them, act on them (retry, cancel, chatbots), everything.
SCOPES = ("send", "read", "operate", "admin")
#: The outcomes a webhook endpoint may subscribe to.
EVENTS = ("sent", "failed", "unknown", "expired")
#: A delivery: waiting (first try or a retry), delivered (2xx), failed (attempts used up).
DELIVERY_STATES = ("pending", "delivered", "failed")
#: Pending deliveries, by time (the delivery loop's scan).
DELIVERY_PENDING = "state = 'pending'"
#: Events not fanned out to deliveries yet.
EVENT_NEW = "fanned_at IS NULL"


class ApiKey(Base):
    """An API key: only its SHA-256 is stored; `prefix` (shown in lists and the audit) names it."""

    __tablename__ = PREFIX + "api_keys"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    #: Hex SHA-256 of the whole token (a 256-bit random token needs no slow hash).
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    scopes: Mapped[list[str]] = mapped_column(JSON)
    #: The chatbots this key may see and use; None: every chatbot.
    chatbots: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    #: Requests per OAKSEND_API_RATE_WINDOW_S for this key; None: OAKSEND_API_RATE_LIMIT.
    rate_limit: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class IdempotencyRecord(Base):
    """A POST made with an Idempotency-Key: its body's hash, then the response it got."""

    __tablename__ = PREFIX + "api_idempotency"

    key_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    idem_key: Mapped[str] = mapped_column(String(255), primary_key=True)
    #: Hex SHA-256 of method, path and body.
    request_hash: Mapped[str] = mapped_column(String(64))
    #: 'started' while the first request runs, then 'done' with its response.
    state: Mapped[str] = mapped_column(String(16))
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    response: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_oaksend_api_idempotency_created", "created_at"),)


class WebhookEndpoint(Base):
    """A URL that receives signed outcome events. Its secret is derived, never stored (see signing)."""

    __tablename__ = PREFIX + "webhook_endpoints"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[list[str]] = mapped_column(JSON)
    #: Only events of these chatbots; None: all (an endpoint made by a limited key gets its chatbots).
    chatbots: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    #: The random salt the signing secret is derived from (with OAKSEND_KEY_HASH_SECRET).
    salt: Mapped[str] = mapped_column(String(64))
    #: During a rotation: the previous salt, whose secret still signs until `old_until`.
    old_salt: Mapped[str | None] = mapped_column(String(64), nullable=True)
    old_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: Consecutive failed deliveries, and the time before which the endpoint is not called again.
    failures: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    retry_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class WebhookEvent(Base):
    """An outcome to announce, written in the same transaction as the outcome itself."""

    __tablename__ = PREFIX + "webhook_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    message_id: Mapped[int] = mapped_column(BigInteger)
    serial_number: Mapped[str] = mapped_column(String(64))
    event: Mapped[str] = mapped_column(String(16))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: Set once the delivery loop has made this event's deliveries.
    fanned_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (Index("ix_oaksend_webhook_events_new", "id",
                            postgresql_where=text(EVENT_NEW), sqlite_where=text(EVENT_NEW)),)


class WebhookDelivery(Base):
    """One event to one endpoint: tried until delivered or out of attempts; retryable by hand."""

    __tablename__ = PREFIX + "webhook_deliveries"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[int] = mapped_column(BigInteger)
    endpoint_id: Mapped[int] = mapped_column(BigInteger)
    #: The event's message: deliveries of one message to one endpoint go out in id order.
    message_id: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (
        CheckConstraint("state IN ('pending', 'delivered', 'failed')", name="state"),
        Index("ix_oaksend_webhook_deliveries_due", "next_attempt_at",
              postgresql_where=text(DELIVERY_PENDING), sqlite_where=text(DELIVERY_PENDING)),
        # Order per message: is an earlier delivery of this message to this endpoint still pending?
        Index("ix_oaksend_webhook_deliveries_order", "endpoint_id", "message_id", "id",
              postgresql_where=text(DELIVERY_PENDING), sqlite_where=text(DELIVERY_PENDING)),
        Index("ix_oaksend_webhook_deliveries_endpoint", "endpoint_id", "id"),
    )
