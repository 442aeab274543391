"""The outbox schema: messages, their append-only attempts, chatbots, operator actions.

The schema only ever reaches a database through Alembic migrations
(`oaksend migrate`); these classes are the models that `alembic check`
compares the migrations against.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from oaksend.models.records import ATTEMPT_STRING_LENGTHS

#: Every table, index, constraint and sequence of oaksend starts with this, so that
#: oaksend can share the application's database (transactional outbox) without
#: touching its `messages` or `alembic_version` tables.
PREFIX = "oaksend_"
#: Alembic's version table of oaksend (the application keeps its own `alembic_version`).
VERSION_TABLE = PREFIX + "alembic_version"

#: Explicit constraint names, so migrations are stable across databases. Table
#: names carry the prefix, so every constraint name does too.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: Message states. Open states can still change; terminal ones only by operator retry.
OPEN_STATES = ("pending", "dispatched", "sending")
TERMINAL_STATES = ("sent", "failed", "unknown", "expired", "cancelled")
STATES = OPEN_STATES + TERMINAL_STATES
#: States an operator may send again.
RETRYABLE_STATES = ("failed", "unknown", "expired", "cancelled")

#: A 64-bit integer primary key that is still SQLite's ROWID alias.
BigId = BigInteger().with_variant(Integer, "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)

    if TYPE_CHECKING:
        # Every model is declared with a Table (DeclarativeBase types it as any FromClause):
        # the repositories build Core statements on it (`.insert()`, `.delete()`, `.name`).
        __table__: ClassVar[Table]


#: Partial-index predicates; queries that should use an index repeat them word for word
#: (SQLite matches a partial index by the text of its WHERE).
PENDING = "state = 'pending'"
WAITING = "state = 'pending' AND NOT ready"
READY = "state = 'pending' AND ready"
LEASED = "state IN ('dispatched', 'sending')"
#: Messages that will not change again (unless an operator retries them): what a purge looks at.
TERMINAL = "state IN ('sent', 'failed', 'unknown', 'expired', 'cancelled')"
#: Messages made by a campaign.
FROM_CAMPAIGN = "campaign_id IS NOT NULL"


def _states_check(column: str, states: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(s) for s in states)})"


class Message(Base):
    """One SMS to send: a row of the outbox. Created before anything else happens."""

    __tablename__ = PREFIX + "messages"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    serial_number: Mapped[str] = mapped_column(String(64))
    to_phone: Mapped[str] = mapped_column(String(16))
    body: Mapped[str] = mapped_column(Text)
    segments: Mapped[int] = mapped_column(Integer, default=1)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    #: 0 high, 1 normal, 2 bulk (models.records.PRIORITIES): a chatbot's due messages are leased in this order.
    priority: Mapped[int] = mapped_column(SmallInteger, default=1, server_default=text("1"))
    #: A pending message whose time has come: only these are in the dispatcher's due index.
    #: Set when a message is written already due, or by the dispatcher's staging step once
    #: `next_attempt_at` passes; cleared when it is leased. Code that makes a row pending
    #: again may leave it false: the next pass stages it (one write, one pass later). Code
    #: that moves a pending message's time later should clear it (else the dispatcher does,
    #: the next time it finds nothing due for that chatbot).
    ready: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    #: Calls made to the API for this message (every one has an attempts row).
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: Failures counted against max_attempts (throttling does not count).
    failures: Mapped[int] = mapped_column(Integer, default=0)
    #: Attempts whose outcome was ambiguous (the SMS may have gone out).
    ambiguous: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    deadline_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: Set while dispatched or sending: who holds the row, and until when.
    lease_token: Mapped[str | None] = mapped_column(String(36), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: While sending: the worker process ("host:pid") holding the row, for the heartbeat rescue.
    claimed_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    #: Set just before the request may leave; None while sending means the API was certainly
    #: not called under this claim, so a rescue hands the row back without an attempt.
    calling_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: Claims taken back from dead workers before any call (bounded by max_attempts).
    lost: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    #: Unique per chatbot (see uq_oaksend_messages_chatbot_key): two chatbots may use one key.
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    last_outcome: Mapped[str | None] = mapped_column(String(32), nullable=True)
    last_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    session_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    #: A SessionID of a sent message that is not a signed 64-bit integer, as the API wrote it.
    session_id_text: Mapped[str | None] = mapped_column(Text, nullable=True)
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: The campaign that made this message (None for application and CLI messages).
    campaign_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    #: Quiet hours checked when the message is sent: "21:00-08:00 America/New_York" (oaksend.worker.message.quiet).
    quiet: Mapped[str | None] = mapped_column(String(80), nullable=True)

    __table_args__ = (
        CheckConstraint(_states_check("state", STATES), name="state"),
        # A campaign's messages by state; application messages (no campaign) stay out of it.
        Index("ix_oaksend_messages_campaign", "campaign_id", "state",
              postgresql_where=text(FROM_CAMPAIGN), sqlite_where=text(FROM_CAMPAIGN)),
        CheckConstraint("priority IN (0, 1, 2)", name="priority"),
        # Hot indexes are partial: a row is in each only while the dispatcher may need it there,
        # so a sent message leaves them all, and a state change writes few entries.
        # Waiting rows whose time has not come: staging and the dispatcher's next wake-up.
        Index("ix_oaksend_messages_waiting", "next_attempt_at",
              postgresql_where=text(WAITING), sqlite_where=text(WAITING)),
        # Due rows: chatbots with due work (a loose scan, one probe per chatbot) and the
        # lease of one chatbot's rows in priority, then due-time order.
        Index("ix_oaksend_messages_ready", "serial_number", "priority", "next_attempt_at", "id",
              postgresql_where=text(READY), sqlite_where=text(READY)),
        # Leased rows: rescue of lost leases, and messages in flight per chatbot.
        Index("ix_oaksend_messages_leased", "state", "lease_until", "serial_number",
              postgresql_where=text(LEASED), sqlite_where=text(LEASED)),
        # Pending rows with a deadline: expiry.
        Index("ix_oaksend_messages_deadline", "deadline_at",
              postgresql_where=text(PENDING), sqlite_where=text(PENDING)),
        Index("ix_oaksend_messages_phone", "to_phone", "state"),
        # Finished messages by age: retention (purge). An open message is in neither this index nor
        # the campaign index while it waits or moves through the send path: fewer entries per write.
        Index("ix_oaksend_messages_finished", "created_at",
              postgresql_where=text(TERMINAL), sqlite_where=text(TERMINAL)),
        # Producers insert with ON CONFLICT (serial_number, idempotency_key) DO NOTHING.
        Index("uq_oaksend_messages_chatbot_key", "serial_number", "idempotency_key", unique=True),
    )


class Attempt(Base):
    """One call made to SendTwilioMessage: append-only, never updated."""

    __tablename__ = PREFIX + "attempts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    message_id: Mapped[int] = mapped_column(BigInteger, ForeignKey(PREFIX + "messages.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    latency_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    http_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    success: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    message: Mapped[str | None] = mapped_column(Text, nullable=True)
    data_status: Mapped[str | None] = mapped_column(String(ATTEMPT_STRING_LENGTHS["data_status"]), nullable=True)
    data_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    session_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    #: Data.SessionID when it is not a signed 64-bit integer (too large, a float, a word).
    session_id_text: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: What in the response differed from the documented envelope, and values that did not
    #: fit their column (a Code beyond 32 bits, a clamped text): "; "-separated.
    anomalies: Mapped[str | None] = mapped_column(Text, nullable=True)
    classification: Mapped[str] = mapped_column(String(ATTEMPT_STRING_LENGTHS["classification"]))
    reason: Mapped[str] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    worker: Mapped[str | None] = mapped_column(String(ATTEMPT_STRING_LENGTHS["worker"]), nullable=True)
    #: Our id of the request (sent as X-Request-ID); none on the rescue's stand-ins. Unique: writing a
    #: group's answers again after a database blip can never add a second row for one call.
    request_id: Mapped[str | None] = mapped_column(String(ATTEMPT_STRING_LENGTHS["request_id"]), nullable=True)

    __table_args__ = (Index("ix_oaksend_attempts_message", "message_id", "number"),
                      Index("uq_oaksend_attempts_request", "request_id", unique=True))


class Chatbot(Base):
    """Per-chatbot (SerialNumber) limits and pause state; a missing row means defaults."""

    __tablename__ = PREFIX + "chatbots"

    serial_number: Mapped[str] = mapped_column(String(64), primary_key=True)
    rate_per_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    burst: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: Optional second limit counted in SMS segments rather than messages.
    segments_per_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    paused_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    pause_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class OperatorAction(Base):
    """An operator's (or campaign's) action on a message, kept for the audit trail."""

    __tablename__ = PREFIX + "operator_actions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    message_id: Mapped[int] = mapped_column(BigInteger, ForeignKey(PREFIX + "messages.id", ondelete="CASCADE"))
    action: Mapped[str] = mapped_column(String(32))
    from_state: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str | None] = mapped_column(String(200), nullable=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)

    __table_args__ = (Index("ix_oaksend_operator_actions_message", "message_id"),)


class SuppressedNumber(Base):
    """Numbers that must not be texted again (recipient replied STOP, or a landline)."""

    __tablename__ = PREFIX + "suppressed_numbers"

    to_phone: Mapped[str] = mapped_column(String(16), primary_key=True)
    reason: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UTCDateTime)


#: Campaign states: a draft (create --draft) holds its messages until it is started.
CAMPAIGN_STATES = ("draft", "scheduled", "running", "paused", "cancelled", "finished")


class Campaign(Base):
    """An audience and a schedule that become outbox messages (oaksend.worker.campaigns.service)."""

    __tablename__ = PREFIX + "campaigns"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    serial_number: Mapped[str] = mapped_column(String(64))
    template: Mapped[str] = mapped_column(Text)
    #: once | relative | cron, and its parameters ({"at": ...} | {"column": ..., "offsets_s": [...]} | {"cron": ...}).
    schedule_kind: Mapped[str] = mapped_column(String(16))
    schedule: Mapped[dict[str, Any]] = mapped_column(JSON)
    tz: Mapped[str] = mapped_column(String(64))
    phone_column: Mapped[str] = mapped_column(String(64))
    key_column: Mapped[str | None] = mapped_column(String(64), nullable=True)
    tz_column: Mapped[str | None] = mapped_column(String(64), nullable=True)
    #: "21:00-08:00", or None for off.
    quiet_hours: Mapped[str | None] = mapped_column(String(16), nullable=True)
    deadline_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    rate_cap_per_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    #: At most this many campaign messages (of any campaign) per number within 24 h; None: no cap.
    frequency_cap: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: --max-segments: a recipient whose text is longer is skipped (revision 0018).
    max_segments: Mapped[int | None] = mapped_column(Integer, nullable=True)
    missed: Mapped[str] = mapped_column(String(8), default="send")
    state: Mapped[str] = mapped_column(String(16), default="scheduled")
    #: Occurrences not turned into messages, by cause: quiet_hours, deadline, suppressed, frequency_cap.
    skipped: Mapped[dict[str, int] | None] = mapped_column(JSON, nullable=True)
    recipients: Mapped[int] = mapped_column(Integer, default=0)
    #: Cron campaigns: occurrences up to this instant are materialized.
    materialized_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: Cron campaigns: the first occurrence after materialized_until (None: the next tick computes it).
    next_fire_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: Why the scheduler could not tick this campaign last time (None once a tick succeeds).
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        CheckConstraint(_states_check("state", CAMPAIGN_STATES), name="state"),
        Index("ix_oaksend_campaigns_state", "state"),
        # A tick reads only the cron campaigns whose next occurrence is near.
        Index("ix_oaksend_campaigns_next_fire", "next_fire_at"),
    )


class CampaignRecipient(Base):
    """One recipient of a campaign: its key, phone, zone and columns (kept for updates and cron)."""

    __tablename__ = PREFIX + "campaign_recipients"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    #: The campaign's id; no foreign key (checked row by row, it doubled a bulk load's time), as messages.campaign_id.
    campaign_id: Mapped[int] = mapped_column(BigInteger)
    key: Mapped[str] = mapped_column(String(150))
    phone: Mapped[str] = mapped_column(String(16))
    tz: Mapped[str] = mapped_column(String(64))
    data: Mapped[dict[str, str]] = mapped_column(JSON)

    __table_args__ = (UniqueConstraint("campaign_id", "key"),)
class OperatorAudit(Base):
    """One operator command (retry, cancel, resolve, purge, campaign and chatbot actions, migrate).

    Per-message effects stay in `oaksend_operator_actions`; this row says who ran
    what, when, on which selection, and how many messages it touched. Purge keeps it.
    It is written, committed, before the command acts (`state` 'started'), and completed
    after it ('done' or 'failed', `finished_at`, `count`, `result`): an interrupted
    command leaves its intent, still 'started'.
    """

    __tablename__ = PREFIX + "operator_audit"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    actor: Mapped[str | None] = mapped_column(String(200), nullable=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    command: Mapped[str] = mapped_column(String(200))
    #: The selection as given: ids, or the filters (state, chatbot, since, until, older_than, ...).
    selection: Mapped[dict[str, Any]] = mapped_column(JSON)
    count: Mapped[int] = mapped_column(Integer)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: 'started' (the intent, written before acting), then 'done' or 'failed'. Rows older
    #: than revision 0015 were written after the work: 'done'.
    state: Mapped[str] = mapped_column(String(16), server_default=text("'done'"))
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: What the command did, by kind (e.g. {"selected": 150, "refused": {...}}), or the error's type.
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)

    __table_args__ = (Index("ix_oaksend_operator_audit_at", "at"),)


#: What a dashboard user may do (oaksend.web): read, act on messages and chatbots, and manage users.
WEB_ROLES = ("read", "operator", "admin")


class WebUser(Base):
    """A user of the dashboard (`oaksend web add-user`): a name, an argon2 hash, a role."""

    __tablename__ = PREFIX + "web_users"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    #: argon2id, in its own encoded form (parameters and salt included); never the password.
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (CheckConstraint(_states_check("role", WEB_ROLES), name="role"),
                      UniqueConstraint("name"))
