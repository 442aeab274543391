"""Pure: a webhook endpoint's URL and events, checked (ValidationError naming the field)."""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from urllib.parse import urlsplit

from oaksend.errors import ValidationError
from oaksend.worker.message.validation import check_serial_number

__all__ = ["EVENTS", "check_chatbots", "check_events", "check_url", "new_salt"]

EVENTS = ("sent", "failed", "unknown", "expired")
MAX_URL_CHARS = 2000


def check_url(url: str) -> str:
    """An http(s) URL with a host, without credentials (they would be stored in clear)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError("url", "must be an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise ValidationError("url", "must not hold a user or password (the signature authenticates oaksend)")
    if len(url) > MAX_URL_CHARS:
        raise ValidationError("url", f"at most {MAX_URL_CHARS} characters")
    return url.strip()


def check_events(values: Iterable[str]) -> list[str]:
    given = {v.strip() for v in values if v.strip()}
    bad = sorted(given - set(EVENTS))
    if bad:
        raise ValidationError("events", f"{bad[0]!r} is not an event (one of {', '.join(EVENTS)})")
    if not given:
        raise ValidationError("events", f"give at least one of {', '.join(EVENTS)}")
    return [e for e in EVENTS if e in given]


def check_chatbots(values: Iterable[str] | None) -> list[str] | None:
    if values is None:
        return None
    out = []
    for i, v in enumerate(values):
        try:
            out.append(check_serial_number(v))
        except ValidationError as exc:
            raise ValidationError(f"chatbots[{i}]", exc.message) from None
    if not out:
        raise ValidationError("chatbots", "give at least one, or leave it out for every chatbot")
    return out


def new_salt() -> str:
    """The random salt an endpoint's secret is derived from (oaksend.worker.webhooks.signing)."""
    return secrets.token_hex(16)
