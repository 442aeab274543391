"""Checks of a SendTwilioMessage request, in the order a real API answers them.

Pure: the caller passes the parsed HTTP request; the answer is a
:class:`SendCheck` that says what was sent (as far as it can be read, for the
record) and the first error, if any.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

SEND_PATH = "/chat/Chatbot/SendTwilioMessage"
REQUIRED_FIELDS = ("SerialNumber", "ToPhoneNumber", "Message")
MAX_MESSAGE_CHARS = 1600  # Twilio's limit on a body, whatever the segments
# [0-9], not \d: \d also matches non-ASCII digits, which no phone number holds.
E164 = re.compile(r"\+[1-9][0-9]{6,14}")


@dataclass(slots=True)
class SendCheck:
    """What a send request carried and whether it is acceptable."""

    auth_ok: bool
    serial: str | None = None
    phone: str | None = None
    message: str | None = None
    error_status: int | None = None  #: None when the request is valid
    error_message: str = ""

    @property
    def ok(self) -> bool:
        return self.error_status is None


def _string_or_none(payload: object, name: str) -> str | None:
    value = payload.get(name) if isinstance(payload, dict) else None
    return value if isinstance(value, str) else None


def check_send(method: str, headers: Mapping[str, str], body: bytes, api_key: str) -> SendCheck:
    """Validates one request to :data:`SEND_PATH`. ``headers`` has lower-case names."""
    auth_ok = hmac.compare_digest(
        headers.get("authorization", "").encode("latin-1"), api_key.encode("utf-8")
    )
    payload: object = None
    json_error = ""
    try:
        payload = json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError) as exc:
        json_error = f"Invalid JSON body: {exc}"
    check = SendCheck(
        auth_ok,
        _string_or_none(payload, "SerialNumber"),
        _string_or_none(payload, "ToPhoneNumber"),
        _string_or_none(payload, "Message"),
    )
    error = _first_error(method, headers, payload, json_error, auth_ok)
    if error is not None:
        check.error_status, check.error_message = error
    return check


def _first_error(
    method: str, headers: Mapping[str, str], payload: object, json_error: str, auth_ok: bool
) -> tuple[int, str] | None:
    if method != "POST":
        return 405, f"Method {method} not allowed: use POST"
    if not auth_ok:
        return 401, "Unauthorized: invalid or missing API key in the Authorization header"
    media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        return 415, "Unsupported Media Type: Content-Type must be application/json"
    if json_error:
        return 400, json_error
    if not isinstance(payload, dict):
        return 400, "Invalid body: expected a JSON object"
    for name in REQUIRED_FIELDS:
        if name not in payload or payload[name] is None:
            return 400, f"Missing required field: {name}"
        if not isinstance(payload[name], str):
            return 400, f"Invalid field {name}: must be a string"
        if not payload[name]:
            return 400, f"Invalid field {name}: must not be empty"
    if not E164.fullmatch(payload["ToPhoneNumber"]):
        return 400, "Invalid field ToPhoneNumber: must be an E.164 number such as +15551234567"
    if len(payload["Message"]) > MAX_MESSAGE_CHARS:
        return 400, (
            f"Invalid field Message: at most {MAX_MESSAGE_CHARS} characters "
            f"(got {len(payload['Message'])})"
        )
    return None


def mask_phone(phone: str | None) -> str:
    """``+15550001111`` -> ``+1555****111``: enough to tell numbers apart in a log, not to dial."""
    if not phone:
        return "-"
    if len(phone) <= 8:
        return phone[:2] + "****"
    return phone[:5] + "****" + phone[-3:]
