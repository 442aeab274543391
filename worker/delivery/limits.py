"""Each chatbot's limit and pause, read from the database with a short cache.

Operators change a limit with `oaksend chatbot set-limit`; every worker and the
dispatcher see it within `ttl_s`, without a restart.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime

from oaksend.models.repository import Outbox
from oaksend.worker.delivery.ratelimit import Limit
from oaksend.worker.settings import Settings


@dataclass(frozen=True)
class ChatbotState:
    """A chatbot's effective limit and, if paused, until when and why."""

    limit: Limit
    paused_until: datetime | None = None
    pause_reason: str | None = None

    def paused(self, now: datetime) -> bool:
        return self.paused_until is not None and self.paused_until > now


class LimitBook:
    """Effective per-chatbot limits: the chatbots table over the settings' defaults."""

    def __init__(self, outbox: Outbox, settings: Settings, ttl_s: float = 2.0) -> None:
        self.outbox = outbox
        self.default = Limit(settings.default_rate_per_s, settings.default_burst, None)
        self.ttl_s = ttl_s
        self._cache: dict[str, tuple[float, ChatbotState]] = {}
        self._lock = threading.Lock()

    def get(self, serial_number: str) -> ChatbotState:
        return self.get_many([serial_number])[serial_number]

    def get_many(self, serial_numbers: list[str]) -> dict[str, ChatbotState]:
        now = time.monotonic()
        out: dict[str, ChatbotState] = {}
        missing: list[str] = []
        with self._lock:
            for sn in serial_numbers:
                hit = self._cache.get(sn)
                if hit and hit[0] > now:
                    out[sn] = hit[1]
                else:
                    missing.append(sn)
        if missing:
            rows = self.outbox.chatbots(missing)
            with self._lock:
                for sn in missing:
                    row = rows.get(sn)
                    state = ChatbotState(self.default)
                    if row is not None:
                        state = ChatbotState(
                            Limit(
                                row.rate_per_s or self.default.rate_per_s,
                                row.burst or self.default.burst,
                                row.segments_per_s,
                            ),
                            row.paused_until,
                            row.pause_reason,
                        )
                    self._cache[sn] = (now + self.ttl_s, state)
                    out[sn] = state
        return out

    def forget(self, serial_number: str) -> None:
        with self._lock:
            self._cache.pop(serial_number, None)
