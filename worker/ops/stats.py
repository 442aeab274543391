"""`oaksend stats`: what the outbox holds and how sending went over a window.

Counts by state and chatbot, attempts by verdict and Code, API latency
percentiles, sent per minute over the last hour, and the oldest due age.
All read through the repository; nothing here holds SQL.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

#: The latency quantiles reported.
QUANTILES = (0.5, 0.95, 0.99)


def gather(outbox: Any, now: datetime, window: timedelta) -> dict[str, Any]:
    """Every figure of `oaksend stats`, as plain data (the `--json` output)."""
    since = now - window
    by_chatbot = outbox.counts_by_chatbot()
    states: dict[str, int] = {}
    chatbots: dict[str, dict[str, int]] = {}
    for sn, state, n in by_chatbot:
        states[state] = states.get(state, 0) + n
        chatbots.setdefault(sn, {})[state] = n
    attempts = [{"verdict": verdict, "code": code, "attempts": n} for verdict, code, n in outbox.attempt_counts(since)]
    latency = outbox.latency_percentiles(since, QUANTILES)
    hour_ago = (now - timedelta(hours=1)).replace(second=0, microsecond=0)
    per_minute = outbox.sent_per_minute(hour_ago)
    minutes = []
    t = hour_ago
    while t <= now:
        key = t.strftime("%Y-%m-%dT%H:%M")
        minutes.append({"minute": key, "sent": per_minute.get(key, 0)})
        t += timedelta(minutes=1)
    oldest = outbox.oldest_due_at(now)
    return {
        "at": now.isoformat(),
        "window_s": window.total_seconds(),
        "by_state": dict(sorted(states.items())),
        "by_chatbot": chatbots,
        "attempts": attempts,
        "latency_ms": {f"p{int(q * 100)}": (round(v, 1) if v is not None else None) for q, v in latency.items()},
        "sent_per_minute": minutes,
        "sent_last_hour": sum(m["sent"] for m in minutes),
        "oldest_due_age_s": round((now - oldest).total_seconds(), 1) if oldest is not None else None,
    }


def sparkline(values: list[int]) -> str:
    """Pure: a one-line chart of counts (for people; --json gives the numbers)."""
    bars = "·▁▂▃▄▅▆▇█"
    top = max(values, default=0)
    if top == 0:
        return bars[0] * len(values)
    return "".join(bars[0] if v == 0 else bars[max(1, round(v / top * 8))] for v in values)
