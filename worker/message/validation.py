"""Pure: check a send request before anything is written, and shape it into a NewMessage.

Every refusal is a `ValidationError` naming the field, on one line. Input that
passes is stored as given, except the number: a number has one spelling, its
canonical E.164 (`+4407911123456`, a trunk zero typed after the country code,
is stored, keyed, suppressed and capped as `+447911123456`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import phonenumbers

from oaksend.errors import ValidationError
from oaksend.models.records import PRIORITIES, NewMessage
from oaksend.worker.logs import mask_phone
from oaksend.worker.message import phone
from oaksend.worker.message.segments import count_segments

#: The API's documented limit on a body, in characters.
MAX_BODY_CHARS = 1600
MAX_IDEMPOTENCY_KEY_CHARS = 255
MAX_METADATA_BYTES = 16 * 1024
#: The chatbot ID: hex in the documentation's example; white-label ids may differ, so a
#: conservative token of letters, digits, '-' and '_'.
_SERIAL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{3,63}")
E164_RE = re.compile(r"\+[1-9][0-9]{6,14}")


@dataclass(frozen=True)
class SendRequest:
    """One message that a producer asks oaksend to send."""

    serial_number: str
    to: str
    text: str
    idempotency_key: str | None = None
    send_at: datetime | None = None
    deadline: datetime | None = None
    metadata: dict[str, Any] | None = field(default=None)
    #: "high", "normal" or "bulk": a chatbot's due messages go out in this order.
    priority: str = "normal"


def validate(req: SendRequest, *, now: datetime, default_deadline_s: float) -> NewMessage:
    """Check every field of `req`; return the row to insert or raise ValidationError."""
    serial = check_serial_number(req.serial_number)
    to = check_phone(req.to)
    text = _text(req.text)
    key = _idempotency_key(req.idempotency_key)
    send_at = _aware("send_at", req.send_at) if req.send_at is not None else now
    if send_at < now - timedelta(days=1):
        raise ValidationError("send_at", "is more than a day in the past")
    if send_at > now + timedelta(days=366):
        raise ValidationError("send_at", "is more than a year ahead")
    if req.deadline is not None:
        deadline = _aware("deadline", req.deadline)
        if deadline <= send_at:
            raise ValidationError("deadline", "must be after send_at (or after now when send_at is not given)")
        if deadline <= now:
            raise ValidationError("deadline", "has already passed")
    else:
        deadline = max(send_at, now) + timedelta(seconds=default_deadline_s)
    meta = _metadata(req.metadata)
    priority = _priority(req.priority)
    return NewMessage(
        serial_number=serial,
        to_phone=to,
        body=text,
        segments=count_segments(text),
        next_attempt_at=send_at,
        deadline_at=deadline,
        idempotency_key=key,
        meta=meta,
        priority=priority,
    )


def _priority(value: object) -> int:
    if not isinstance(value, str) or value not in PRIORITIES:
        raise ValidationError("priority", f"must be one of {', '.join(PRIORITIES)}")
    return PRIORITIES.index(value)


def check_serial_number(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValidationError("serial_number", "is required (the chatbot ID from settings -> general)")
    if not _SERIAL_RE.fullmatch(value):
        raise ValidationError(
            "serial_number",
            "must be 4-64 letters, digits, '-' or '_' (the chatbot ID, e.g. 3254a9d0424c4806b9ea3d0763a1b2c3)",
        )
    return value


def check_phone(value: object, field: str = "to") -> str:
    """The number's canonical E.164 text, or ValidationError naming `field`.

    The input must be E.164-shaped (`+`, digits, no punctuation); phonenumbers reads it
    (a trunk zero after the country code is dropped when the number is valid without it)
    and its E.164 formatting is what is returned: one number, one spelling.
    """
    if not isinstance(value, str) or not value:
        raise ValidationError(field, "is required (an E.164 number such as +14155550123)")
    if not E164_RE.fullmatch(value):
        hint = _e164_hint(value)
        raise ValidationError(field, f"is not an E.164 number (+ country code and digits only){hint}")
    try:
        number, kind = phone.parse_and_type(value)
    except phonenumbers.NumberParseException:
        raise ValidationError(field, "is not a phone number") from None
    if kind == phone.UNKNOWN:
        raise ValidationError(field, "is not a valid phone number for its country code")
    return phone.e164(number, value)


def canonical_phone(value: str) -> str | None:
    """The canonical E.164 of a stored or typed number, or None when it is not a valid number."""
    try:
        return check_phone(value)
    except ValidationError:
        return None


def _e164_hint(value: str) -> str:
    try:
        parsed = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException:
        return ""
    if phonenumbers.is_valid_number(parsed):
        # Masked like every number in logs: errors end up in logs and on screens too.
        e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
        return f"; did you mean {mask_phone(e164)}?"
    return ""


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ValidationError("text", "must be a string")
    if not value.strip():
        raise ValidationError("text", "is empty")
    if len(value) > MAX_BODY_CHARS:
        raise ValidationError("text", f"is {len(value)} characters; the API takes at most {MAX_BODY_CHARS}")
    if "\x00" in value:
        raise ValidationError("text", "contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError("text", "is not valid Unicode (lone surrogate)") from None
    return value


def _idempotency_key(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValidationError("idempotency_key", "must be a non-empty string")
    if len(value) > MAX_IDEMPOTENCY_KEY_CHARS:
        raise ValidationError("idempotency_key", f"is longer than {MAX_IDEMPOTENCY_KEY_CHARS} characters")
    if not value.isprintable():
        raise ValidationError("idempotency_key", "must contain printable characters only")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError("idempotency_key", "is not valid Unicode") from None
    return value


def _aware(name: str, value: object) -> datetime:
    if not isinstance(value, datetime):
        raise ValidationError(name, "must be a datetime")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValidationError(name, "must be timezone-aware (e.g. 2026-12-01T09:00:00+00:00)")
    return value


def _metadata(value: object) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValidationError("metadata", "must be a JSON object (a dict)")
    try:
        encoded = json.dumps(value, allow_nan=False, ensure_ascii=False)
        encoded.encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValidationError("metadata", f"is not JSON-serialisable ({exc})") from None
    if _has_nul(value):
        raise ValidationError("metadata", "contains a NUL character")
    if len(encoded.encode("utf-8")) > MAX_METADATA_BYTES:
        raise ValidationError("metadata", f"is larger than {MAX_METADATA_BYTES} bytes as JSON")
    decoded: dict[str, Any] = json.loads(encoded)  # a dict: `value` is one, and it round-trips
    if decoded != value:
        # e.g. int keys or tuples: JSON would silently change them.
        raise ValidationError("metadata",
                              "must hold JSON types only (string keys, lists, numbers, strings, booleans, null)")
    return decoded


def _has_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_nul(v) for v in value)
    return False
