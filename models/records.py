"""Domain values passed between the service (`oaksend.worker`) and the repository.

The repository stores and returns these; the worker computes them (see
`oaksend.worker.delivery.transition`). Neither side owns them, so both import them from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

#: Lengths of the attempt's bounded text columns: models.tables builds the columns from
#: these, and models.fit clamps values to them (one number, so the two cannot drift apart).
ATTEMPT_STRING_LENGTHS: dict[str, int] = {"data_status": 64, "classification": 16, "worker": 200, "request_id": 32}
#: Message priorities, most urgent first; a message stores its position here (0, 1, 2).
#: A chatbot's due messages are dispatched in this order, then by due time.
PRIORITIES = ("high", "normal", "bulk")
NORMAL = PRIORITIES.index("normal")


def priority_name(value: int | None) -> str:
    """A stored priority (0, 1, 2) as its name; anything else reads as normal."""
    return PRIORITIES[value if value is not None and 0 <= value < len(PRIORITIES) else NORMAL]

#: Pause used for "until an operator resumes" (401/403): far enough to mean never.
INDEFINITE = timedelta(days=3650)


@dataclass(frozen=True)
class NewMessage:
    """A validated message, ready to insert (see oaksend.worker.message.validation)."""

    serial_number: str
    to_phone: str
    body: str
    segments: int
    next_attempt_at: datetime
    deadline_at: datetime | None
    idempotency_key: str | None
    meta: dict[str, Any] | None
    #: Position in PRIORITIES: 0 high, 1 normal, 2 bulk.
    priority: int = NORMAL

    def same_content(self, row: Any) -> bool:
        return bool(
            row.serial_number == self.serial_number
            and row.to_phone == self.to_phone
            and row.body == self.body
        )


@dataclass(frozen=True)
class Work:
    """What a worker needs of a dispatched message: loaded once per batch."""

    id: int
    serial_number: str
    to_phone: str
    body: str
    segments: int
    attempts: int
    failures: int
    deadline_at: datetime | None
    #: A campaign message's quiet hours, checked before it is sent (oaksend.worker.message.quiet.at_send).
    quiet: str | None = None


@dataclass(frozen=True)
class AttemptRecord:
    """One call's audit row (see models.tables.Attempt)."""

    number: int
    started_at: datetime
    latency_ms: float | None
    classification: str
    reason: str
    http_status: int | None = None
    success: bool | None = None
    code: int | None = None
    message: str | None = None
    data_status: str | None = None
    data_message: str | None = None
    session_id: int | None = None
    error: str | None = None
    worker: str | None = None
    session_id_text: str | None = None  #: a SessionID that is not a 64-bit integer
    anomalies: str | None = None  #: what was odd in the response, or did not fit a column
    request_id: str | None = None  #: our id of the request (X-Request-ID); unique among attempts


@dataclass(frozen=True)
class Transition:
    """The new state of a message after an attempt (computed by oaksend.worker.delivery.transition)."""

    state: str
    reason: str
    outcome: str
    next_attempt_at: datetime | None = None
    failures_delta: int = 0
    ambiguous_delta: int = 0
    session_id: int | None = None
    sent: bool = False
    #: Pause the chatbot until this time (429, auth failure), with the reason shown to operators.
    pause_until: datetime | None = None
    pause_reason: str | None = None
    suppress_number: bool = False



__all__ = ["INDEFINITE", "NORMAL", "PRIORITIES", "AttemptRecord", "NewMessage", "Transition", "Work", "priority_name"]
