"""API keys of the HTTP API: made, hashed, recognised. No I/O (the repository stores them).

A key is `oks_<8 hex>_<43 characters of base64url>` (256 random bits). Its first
twelve characters, `oks_<8 hex>`, are its prefix: stored in clear, shown in
`oaksend api-key list` and written as the actor of what it does. The whole key
is stored only as its SHA-256 (a key of 256 random bits needs no slow hash): it
is shown once, when it is made.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable

from oaksend.errors import ValidationError

__all__ = ["PREFIX_CHARS", "SCOPES", "check_scopes", "new_key", "prefix_of", "token_hash"]

SCOPES = ("send", "read", "operate", "admin")
PREFIX_CHARS = 12
_KEY_RE = re.compile(r"oks_[0-9a-f]{8}_[A-Za-z0-9_-]{43}")


def new_key() -> tuple[str, str, str]:
    """(the key, its prefix, its hash)."""
    key = f"oks_{secrets.token_hex(4)}_{secrets.token_urlsafe(32)}"
    return key, key[:PREFIX_CHARS], token_hash(key)


def token_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def prefix_of(key: str) -> str | None:
    """The prefix of a well-formed key, else None (nothing is looked up for a malformed one)."""
    return key[:PREFIX_CHARS] if _KEY_RE.fullmatch(key) else None


def check_scopes(values: Iterable[str]) -> list[str]:
    """The scopes, checked and in their canonical order; `admin` implies every other."""
    given = {v.strip() for v in values if v.strip()}
    bad = sorted(given - set(SCOPES))
    if bad:
        raise ValidationError("scopes", f"{bad[0]!r} is not a scope (one of {', '.join(SCOPES)})")
    if not given:
        raise ValidationError("scopes", f"give at least one of {', '.join(SCOPES)}")
    return [s for s in SCOPES if s in given]
