"""Pure: the keyed hash under which idempotency keys are stored, so that no stored key holds a number.

A producer's key (`appt-981`, or a phone number: producers do use them) is stored
as `h1:` followed by HMAC-SHA256(secret, key) in unpadded base64url (46
characters). A campaign's key keeps its structure, with the recipient's key
(the phone number, unless the audience has a key column) replaced by its digest:
`oaksend-campaign:<campaign id>:<digest>:<occurrence>` (oaksend.worker.campaigns.plan).

The same key always gives the same stored value while the secret is unchanged,
so de-duplication per chatbot is exactly what it was. The secret is
`OAKSEND_KEY_HASH_SECRET`; without it, `DEFAULT_SECRET` (public, so a stored
value can be matched against guessed numbers: set a secret in production).
Changing the secret makes earlier keys unmatchable: a producer that sends a key
again after the change gets a second message.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

#: The HMAC key when OAKSEND_KEY_HASH_SECRET is unset: fixed and documented (docs/configuration.md).
DEFAULT_SECRET = b"oaksend idempotency keys v1"
#: What a producer's stored key starts with (the version of this derivation).
STORED_PREFIX = "h1:"
#: Characters of a digest (256 bits in unpadded base64url).
DIGEST_CHARS = 43


def digest(value: str, secret: str | None) -> str:
    """HMAC-SHA256 of `value` under `secret` (or DEFAULT_SECRET), unpadded base64url: 43 characters."""
    key = secret.encode("utf-8") if secret else DEFAULT_SECRET
    mac = hmac.new(key, value.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def stored_key(key: str | None, secret: str | None) -> str | None:
    """What a producer's idempotency key is stored as (None stays None)."""
    return None if key is None else STORED_PREFIX + digest(key, secret)


__all__ = ["DEFAULT_SECRET", "DIGEST_CHARS", "STORED_PREFIX", "digest", "stored_key"]
