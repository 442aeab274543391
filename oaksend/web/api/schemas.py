"""The API's JSON shapes. Strict: an unknown field is refused, and no value is coerced
(a number where text is expected is an error). What a field may hold is the library's
business (oaksend.worker.message.validation): these models only give the JSON its shape."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from oaksend.worker.status import MessageStatus

__all__ = ["MAX_BATCH", "BatchIn", "EndpointIn", "MessageIn", "message_json"]

MAX_BATCH = 10_000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class MessageIn(_Strict):
    """One message to send (the fields of `Producer.send`)."""

    chatbot: str = Field(description="the chatbot's SerialNumber")
    to: str = Field(description="an E.164 number, e.g. +14155550123")
    text: str = Field(description="at most 1600 characters")
    send_at: datetime | None = Field(None, description="not before this time (ISO 8601 with a zone)")
    deadline: datetime | None = Field(None, description="never sent after this time")
    metadata: dict[str, Any] | None = Field(None, description="a JSON object kept with the message")
    priority: str = Field("normal", description="high, normal or bulk")
    idempotency_key: str | None = Field(None, description="per chatbot; default: the Idempotency-Key header")


class BatchIn(_Strict):
    """Up to 10,000 messages, all validated before any is written."""

    messages: list[MessageIn] = Field(min_length=1, max_length=MAX_BATCH)


class EndpointIn(_Strict):
    """A webhook endpoint: a URL and the outcomes it receives."""

    url: str = Field(description="http(s) URL that receives signed POSTs")
    events: list[str] = Field(min_length=1, description="any of sent, failed, unknown, expired")
    chatbots: list[str] | None = Field(None, description="only these chatbots' events (default: the key's)")


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def message_json(m: MessageStatus) -> dict[str, Any]:
    """A message as the API shows it (with its attempts when they were loaded)."""
    out: dict[str, Any] = {
        "id": m.id, "chatbot": m.chatbot, "to": m.to, "text": m.text, "segments": m.segments, "state": m.state,
        "priority": m.priority, "attempts": m.attempts, "failures": m.failures,
        "next_attempt_at": _time(m.next_attempt_at), "deadline_at": _time(m.deadline_at),
        "last_outcome": m.last_outcome, "last_reason": m.last_reason,
        "session_id": m.session_id if m.session_id is not None else m.session_id_text,
        "metadata": m.metadata, "created_at": _time(m.created_at), "updated_at": _time(m.updated_at),
        "sent_at": _time(m.sent_at),
    }
    if m.attempt_history is not None:
        out["attempt_history"] = [
            {"number": a.number, "started_at": _time(a.started_at), "latency_ms": a.latency_ms,
             "http_status": a.http_status, "code": a.code, "classification": a.classification, "reason": a.reason,
             "session_id": a.session_id if a.session_id is not None else a.session_id_text}
            for a in m.attempt_history
        ]
    return out
