"""Who is asking, and what they may do: users, roles, passwords, sessions, the login brake.

Three ways to know the user, tried in this order:
- a `resolver` the application passes (`create_app(settings, resolver=...)`) when it mounts the
  dashboard under its own login: request -> `User` or None;
- a trusted reverse proxy's header (`OAKSEND_WEB_PROXY_HEADER`), believed only from the addresses
  in `OAKSEND_WEB_TRUSTED_PROXIES`;
- a login against `oaksend_web_users` (argon2id hashes), kept as a server-side session in Redis.

Sessions live in Redis under the deployment's prefix, keyed by a digest of the cookie's random
token (a Redis dump holds no usable cookie); each holds the user, their role and the CSRF token.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import secrets
from dataclasses import dataclass
from typing import Any

from oaksend.models.tables import WEB_ROLES

__all__ = ["ROLES", "LoginBrake", "Sessions", "User", "allowed", "check_role", "hash_password", "proxy_user",
           "verify_password"]

ROLES = WEB_ROLES
#: What each role may do beyond reading (pure data: the pages and the POST handlers both ask `allowed`).
PERMISSIONS: dict[str, frozenset[str]] = {
    "read": frozenset(),
    "operator": frozenset({"act", "chatbot", "campaign"}),
    "admin": frozenset({"act", "chatbot", "campaign", "limits", "reveal"}),
}
#: Failed logins allowed per name, and per address (many users may share a proxy's), within LOGIN_WINDOW_S.
LOGIN_ATTEMPTS = 5
LOGIN_ATTEMPTS_PER_ADDRESS = 30
LOGIN_WINDOW_S = 300
ANONYMOUS_TTL_S = 1800


@dataclass(frozen=True)
class User:
    """A dashboard user as the pages see it: a name (for the audit) and a role (read, operator, admin)."""

    name: str
    role: str


def check_role(role: object) -> str:
    """The role if it is one of ROLES, else ValueError naming it."""
    if role not in ROLES:
        raise ValueError(f"role: {role!r} is not one of {', '.join(ROLES)}")
    return str(role)


def allowed(user: User | None, action: str) -> bool:
    """Whether `user` may do `action` ("act", "chatbot", "campaign", "limits", "reveal")."""
    return user is not None and action in PERMISSIONS.get(user.role, frozenset())


# -- passwords: argon2id (argon2-cffi's defaults follow RFC 9106's recommendations) ---------------------
def _hasher() -> Any:
    from argon2 import PasswordHasher

    return PasswordHasher()


def hash_password(password: str) -> str:
    if not password or len(password) < 8:
        raise ValueError("password: at least 8 characters")
    return str(_hasher().hash(password))


def verify_password(stored: str, password: str) -> tuple[bool, bool]:
    """(the password matches, the stored hash should be recomputed with today's parameters)."""
    from argon2.exceptions import InvalidHashError, VerificationError

    hasher = _hasher()
    try:
        hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False, False
    return True, bool(hasher.check_needs_rehash(stored))


#: Verified against when the name is unknown, so that a wrong name costs the same time as a wrong password.
_DUMMY_HASH: list[str] = []


def dummy_verify(password: str) -> None:
    if not _DUMMY_HASH:
        _DUMMY_HASH.append(hash_password(secrets.token_urlsafe(16)))
    verify_password(_DUMMY_HASH[0], password)


# -- a trusted proxy's header -----------------------------------------------------------------------
def trusted_networks(spec: str | None) -> tuple[Any, ...]:
    """`OAKSEND_WEB_TRUSTED_PROXIES` parsed: addresses and networks; ValueError naming the setting."""
    out = []
    for part in (spec or "").split(","):
        if part.strip():
            try:
                out.append(ipaddress.ip_network(part.strip(), strict=False))
            except ValueError:
                raise ValueError(f"OAKSEND_WEB_TRUSTED_PROXIES: {part.strip()!r} is not an address or "
                                 f"network") from None
    return tuple(out)


def proxy_user(header: str | None, networks: tuple[Any, ...], client_host: str | None,
               headers: Any) -> str | None:
    """The user a trusted proxy names, or None (no header configured, an untrusted peer, no value)."""
    if not header or not networks or not client_host:
        return None
    try:
        peer = ipaddress.ip_address(client_host)
    except ValueError:
        return None
    if not any(peer in net for net in networks):
        return None
    name = (headers.get(header) or "").strip()
    return name[:200] or None


# -- sessions in Redis ------------------------------------------------------------------------------
class Sessions:
    """Server-side sessions: the cookie holds a random token, Redis its digest's record."""

    def __init__(self, redis_client: Any, prefix: str, ttl_s: float) -> None:
        self.redis, self.prefix, self.ttl_s = redis_client, prefix, int(ttl_s)

    def _key(self, token: str, kind: str = "session") -> str:
        return f"{self.prefix}:web:{kind}:{hashlib.sha256(token.encode()).hexdigest()}"

    def new(self, user: str | None = None, role: str | None = None) -> tuple[str, dict[str, str]]:
        """A fresh session (a new token: login never keeps the anonymous one, against fixation)."""
        token = secrets.token_urlsafe(32)
        record = {"csrf": secrets.token_urlsafe(32), "user": user or "", "role": role or ""}
        self.redis.set(self._key(token), json.dumps(record), ex=self._ttl(record))
        return token, record

    def _ttl(self, record: dict[str, str]) -> int:
        """A logged-in session lasts the configured TTL; an anonymous one (a login form) at most 30 minutes."""
        return self.ttl_s if record.get("user") else min(self.ttl_s, ANONYMOUS_TTL_S)

    def get(self, token: str | None) -> dict[str, str] | None:
        if not token or len(token) > 100:
            return None
        key = self._key(token)
        raw = self.redis.get(key)
        if raw is None:
            return None
        record = dict(json.loads(raw))
        self.redis.expire(key, self._ttl(record))  # sliding: a session ends after its TTL without activity
        return record

    def update(self, token: str, record: dict[str, str]) -> None:
        self.redis.set(self._key(token), json.dumps(record), ex=self._ttl(record))

    def end(self, token: str | None) -> None:
        if token:
            self.redis.delete(self._key(token))

    # Filters of the messages page, kept here so that no number or text is ever in a URL.
    def put_filter(self, token: str, values: dict[str, Any]) -> str:
        ref = secrets.token_urlsafe(12)
        self.redis.set(self._key(token + ":" + ref, "filter"), json.dumps(values), ex=self.ttl_s)
        return ref

    def get_filter(self, token: str, ref: str | None) -> dict[str, Any] | None:
        if not ref or len(ref) > 40:
            return None
        raw = self.redis.get(self._key(token + ":" + ref, "filter"))
        return None if raw is None else dict(json.loads(raw))


def same_token(expected: str | None, given: object) -> bool:
    return bool(expected) and isinstance(given, str) and hmac.compare_digest(str(expected), given)


class LoginBrake:
    """Failed logins per name and per address in a window (Redis counters); a success clears the name's."""

    def __init__(self, redis_client: Any, prefix: str) -> None:
        self.redis, self.prefix = redis_client, prefix

    def _keys(self, name: str, address: str) -> list[str]:
        digest = hashlib.sha256(name.lower().encode()).hexdigest()[:32]
        return [f"{self.prefix}:web:login:name:{digest}", f"{self.prefix}:web:login:addr:{address}"]

    def blocked(self, name: str, address: str) -> bool:
        by_name, by_address = self.redis.mget(self._keys(name, address))
        return int(by_name or 0) >= LOGIN_ATTEMPTS or int(by_address or 0) >= LOGIN_ATTEMPTS_PER_ADDRESS

    def failed(self, name: str, address: str) -> None:
        pipe = self.redis.pipeline()
        for key in self._keys(name, address):
            pipe.incr(key)
            pipe.expire(key, LOGIN_WINDOW_S, nx=True)
        pipe.execute()

    def succeeded(self, name: str, address: str) -> None:
        self.redis.delete(self._keys(name, address)[0])
