"""Every Redis key oaksend writes, under one prefix (`OAKSEND_REDIS_PREFIX`, default `oaksend`).

Two deployments that share a Redis database keep apart by giving each its own
prefix: locks, heartbeats, wake-ups, rate limits and pauses are all named here.
(The Celery queue is named by `OAKSEND_QUEUE_NAME`.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["DEFAULT_PREFIX", "Keys", "check_prefix"]

DEFAULT_PREFIX = "oaksend"
_PREFIX_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def check_prefix(prefix: str) -> str:
    """The prefix if usable: 1-64 letters, digits, `_ . : -` (no braces: they are cluster hash tags)."""
    if not _PREFIX_RE.fullmatch(prefix):
        raise ValueError("must be 1-64 letters, digits or _ . : -")
    return prefix


@dataclass(frozen=True)
class Keys:
    """The key names of one deployment."""

    prefix: str = DEFAULT_PREFIX

    @property
    def workers(self) -> str:
        """A sorted set: worker process -> its last beat (Redis time, seconds)."""
        return f"{self.prefix}:workers"

    @property
    def dispatcher_heartbeat(self) -> str:
        return f"{self.prefix}:dispatcher:heartbeat"

    @property
    def dispatcher_lock(self) -> str:
        return f"{self.prefix}:dispatcher:lock"

    @property
    def scheduler_lock(self) -> str:
        return f"{self.prefix}:scheduler:lock"

    @property
    def purge_lock(self) -> str:
        return f"{self.prefix}:purge:lock"

    @property
    def wake(self) -> str:
        """A short list: producers push, the dispatcher pops (losing it only costs latency)."""
        return f"{self.prefix}:wake"

    def chatbot(self, serial_number: str) -> tuple[str, str, str, str]:
        """A chatbot's (message GCRA, segment GCRA, pause, hold) keys.

        One hash tag per chatbot, so the limiter script's keys share a slot on Redis Cluster."""
        tag = "{" + serial_number + "}"
        p = self.prefix
        return f"{p}:rl:{tag}:msg", f"{p}:rl:{tag}:seg", f"{p}:pause:{tag}", f"{p}:hold:{tag}"
