"""Pure: Standard Webhooks signatures, the secrets they use, and the retry schedule.

A delivery carries three headers (https://www.standardwebhooks.com):

    webhook-id: evt_42                  the event's id, the same on every retry (receivers de-duplicate on it)
    webhook-timestamp: 1764670000       seconds since the epoch (receivers refuse old ones: replays)
    webhook-signature: v1,<base64>      HMAC-SHA256 of "id.timestamp.body" under the secret's bytes

During a rotation the header holds two signatures, space-separated; a receiver
accepts the request when any one verifies. A secret is `whsec_` and base64 of
32 bytes. oaksend never stores it: it is derived from the endpoint's random salt
and OAKSEND_KEY_HASH_SECRET, so a copy of the database holds no signing secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence

__all__ = ["MAX_ATTEMPTS", "SECRET_PREFIX", "derive_secret", "retry_delay_s", "sign", "signature_header", "verify"]

SECRET_PREFIX = "whsec_"
#: Seconds before each retry (Standard Webhooks' suggested schedule): a receiver that is away
#: for a day still gets every event. After the last, the delivery fails (an operator can retry it).
_SCHEDULE_S = (5, 30, 120, 300, 900, 1800, 3600, 7200, 14400, 28800, 43200, 86400)
MAX_ATTEMPTS = len(_SCHEDULE_S) + 1
#: A timestamp this far from the receiver's clock is refused by `verify` (replays).
TOLERANCE_S = 300


def derive_secret(server_secret: str, salt: str) -> str:
    """The endpoint's signing secret: HMAC-SHA256(server secret, "webhook:" + salt), as `whsec_...`."""
    raw = hmac.new(server_secret.encode(), f"webhook:{salt}".encode(), hashlib.sha256).digest()
    return SECRET_PREFIX + base64.b64encode(raw).decode()


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """One signature: `v1,` and base64 of HMAC-SHA256(secret bytes, "id.timestamp.body")."""
    mac = hmac.new(_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def signature_header(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The webhook-signature header: one signature per live secret, space-separated."""
    return " ".join(sign(s, msg_id, timestamp, body) for s in secrets)


def verify(secret: str, msg_id: str, timestamp: str, body: bytes, header: str, *, now: float) -> bool:
    """The receiver's check: the timestamp within TOLERANCE_S of `now`, and one `v1` signature matching."""
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    if abs(now - ts) > TOLERANCE_S:
        return False
    expected = sign(secret, msg_id, ts, body)
    return any(hmac.compare_digest(expected, candidate) for candidate in header.split(" ") if candidate)


def retry_delay_s(attempts: int, first_s: float = 5.0) -> float | None:
    """Seconds before the next try after `attempts` failed ones; None: no more tries.

    `first_s` is the first delay; the schedule keeps its shape (x6, x24, x60, ... the first)."""
    if not 1 <= attempts <= len(_SCHEDULE_S):
        return None
    return _SCHEDULE_S[attempts - 1] * first_s / _SCHEDULE_S[0]
