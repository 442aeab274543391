"""One active holder of a role at a time: a Redis key with a TTL that its holder renews.

The dispatcher and the campaign scheduler each run one active instance; others
stand by and take over when the key lapses. Renewal and release are atomic (a
script compares the holder's name before it extends or deletes), so a holder
whose key already lapsed can never extend or delete its successor's.
"""

from __future__ import annotations

import contextlib
import logging

import redis

__all__ = ["Leadership"]

log = logging.getLogger(__name__)

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class Leadership:
    """The lock of one role (`key`), held under this process's `name`."""

    def __init__(self, redis_client: redis.Redis, key: str, name: str, *, role: str) -> None:
        self.redis = redis_client
        self.key = key
        self.name = name
        self.role = role
        self._renew = redis_client.register_script(_RENEW)
        self._release = redis_client.register_script(_RELEASE)
        self.active = False

    def hold(self, ttl_s: float) -> bool:
        """Acquire or renew the lock for `ttl_s`; False means: stand by."""
        ttl_ms = int(ttl_s * 1000)
        if self.active and self._renew(keys=[self.key], args=[self.name, ttl_ms]):
            return True
        got = bool(self.redis.set(self.key, self.name, nx=True, px=ttl_ms))
        if got != self.active:
            log.info("%s %s is now %s", self.role, self.name, "active" if got else "standby")
        self.active = got
        return got

    def release(self) -> None:
        """Give the lock up if this process still holds it (best effort: it lapses anyway)."""
        with contextlib.suppress(redis.RedisError):
            self._release(keys=[self.key], args=[self.name])
        self.active = False
