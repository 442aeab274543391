"""Server-side per-chatbot rate limits, and the counts that judge a client.

The limiter is a GCRA (generic cell rate algorithm, the token bucket written
with one timestamp): cheap, exact, and the same arithmetic the project's
Redis limiter uses, so "the sandbox saw a violation" means "the client really
sent faster than its limit", not "the two sides round differently".
Time is passed in (monotonic seconds); nothing here reads a clock.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from oaksend.sandbox.config import Limit

#: length of the sliding window whose peak count is reported
WINDOW_S = 1.0
#: float rounding of summed intervals must not turn an exactly-on-time request into a violation
_ROUNDING_S = 1e-9


class Gcra:
    """One chatbot's bucket: ``rate_per_s`` sustained, ``burst`` back-to-back."""

    __slots__ = ("interval_s", "limit", "tat_s", "tolerance_s")

    def __init__(self, limit: Limit) -> None:
        self.limit = limit
        self.interval_s = 1.0 / limit.rate_per_s
        # A burst of B fits when the theoretical arrival time may run (B-1) intervals ahead.
        self.tolerance_s = (limit.burst - 1) * self.interval_s
        self.tat_s = float("-inf")  #: theoretical arrival time of the next conforming request

    def admit(self, now_s: float, slack_s: float = 0.0) -> float:
        """0.0 when the request conforms (and is counted), else the seconds until one would."""
        tat = max(self.tat_s, now_s)
        allowed_at = tat - self.tolerance_s
        if now_s + slack_s + _ROUNDING_S < allowed_at:
            return allowed_at - now_s  # rejected requests do not move the bucket
        self.tat_s = tat + self.interval_s
        return 0.0


class ChatbotCounts:
    """What one chatbot's client did: requests received, peak per window, violations."""

    __slots__ = ("first_s", "last_s", "max_in_window", "received", "violations", "window")

    def __init__(self) -> None:
        self.received = 0
        self.violations = 0
        self.max_in_window = 0
        self.window: deque[float] = deque()  #: arrival times within the last WINDOW_S
        self.first_s = 0.0
        self.last_s = 0.0

    def observe(self, now_s: float) -> None:
        if not self.received:
            self.first_s = now_s
        self.received += 1
        self.last_s = now_s
        window = self.window
        # Window (now - 1 s, now]: a client at exactly R/s peaks at R, not R + 1.
        while window and window[0] <= now_s - WINDOW_S:
            window.popleft()
        window.append(now_s)
        if len(window) > self.max_in_window:
            self.max_in_window = len(window)


class Limiter:
    """Per-chatbot GCRA buckets plus per-chatbot counts.

    Buckets are created lazily and rebuilt when a chatbot's configured limit
    changes, so a runtime config change takes effect on the next request.
    """

    def __init__(self) -> None:
        self._buckets: dict[str, Gcra] = {}
        self._counts: dict[str, ChatbotCounts] = {}

    def observe(self, serial: str, now_s: float) -> None:
        """Counts a request received for ``serial``, whatever its fate."""
        counts = self._counts.get(serial)
        if counts is None:
            counts = self._counts[serial] = ChatbotCounts()
        counts.observe(now_s)

    def admit(self, serial: str, limit: Limit | None, now_s: float, slack_s: float = 0.0) -> float:
        """0.0 when the request may pass, else seconds to wait (and a violation is counted)."""
        if limit is None:
            return 0.0
        bucket = self._buckets.get(serial)
        if bucket is None or bucket.limit != limit:
            bucket = self._buckets[serial] = Gcra(limit)
        wait_s = bucket.admit(now_s, slack_s)
        if wait_s > 0.0:
            counts = self._counts.get(serial)
            if counts is None:
                counts = self._counts[serial] = ChatbotCounts()
            counts.violations += 1
        return wait_s

    def snapshot(self, limits_of: dict[str, Limit | None]) -> dict[str, dict[str, Any]]:
        """Per-chatbot counts as JSON, for every chatbot seen or named in ``limits_of``."""
        out: dict[str, dict[str, Any]] = {}
        for serial in dict.fromkeys([*self._counts, *limits_of]):
            c = self._counts.get(serial) or ChatbotCounts()
            span_s = c.last_s - c.first_s
            limit = limits_of.get(serial)
            out[serial] = {
                "received": c.received,
                "limit": limit.to_json() if limit else None,
                "violations": c.violations,
                "max_1s": c.max_in_window,
                "span_s": round(span_s, 6),
                # (n - 1) gaps over the span: the rate the client actually sustained
                "mean_rate_per_s": round((c.received - 1) / span_s, 3) if span_s > 0 else None,
            }
        return out

    def serials(self) -> list[str]:
        return list(self._counts)

    def reset(self) -> None:
        self._buckets.clear()
        self._counts.clear()
