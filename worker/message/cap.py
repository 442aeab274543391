"""Pure: the frequency cap, "at most N campaign messages per chatbot and number within PERIOD".

The deployment's cap (`OAKSEND_FREQUENCY_CAP`, e.g. "2 per 24h") binds every
campaign of a chatbot together: it is applied when a campaign writes its messages
(`keep_within_cap`, over what every campaign already holds for the number) and
again when a message is about to be sent (`over_cap_at_send`), after quiet-hour
delays may have moved messages together. Messages that are not from a campaign
(confirmations, one-time codes) are neither counted nor capped.

A cap is a sliding window: no PERIOD-long stretch of time holds more than N
messages to one number from one chatbot.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from oaksend.errors import ValidationError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_CAP_RE = re.compile(r"\s*([0-9]{1,6})\s*(?:per|/)\s*([0-9]{1,5})\s*([smhdw])\s*", re.IGNORECASE)
_OFF = ("", "off", "none")


@dataclass(frozen=True)
class FrequencyCap:
    """At most `count` messages per chatbot and number within any `period`."""

    count: int
    period: timedelta

    def __str__(self) -> str:
        seconds = int(self.period.total_seconds())
        for unit in ("w", "h", "m"):  # days as hours: "1 per 24h" reads back as it is usually written
            if seconds % _UNITS[unit] == 0:
                return f"{self.count} per {seconds // _UNITS[unit]}{unit}"
        return f"{self.count} per {seconds}s"


def parse_cap(text: str | None, field: str = "frequency_cap") -> FrequencyCap | None:
    """"N per PERIOD" (PERIOD: a number and s, m, h, d or w; "3 per 24h", "1/7d") or off (None)."""
    if text is None or text.strip().lower() in _OFF:
        return None
    match = _CAP_RE.fullmatch(text)
    if match is None:
        raise ValidationError(field, f"{text!r} is not 'N per PERIOD' (e.g. '2 per 24h', '1 per 7d') or off")
    count, amount, unit = int(match[1]), int(match[2]), match[3].lower()
    if count < 1 or amount < 1:
        raise ValidationError(field, "needs at least 1 message per a period longer than 0")
    return FrequencyCap(count, timedelta(seconds=amount * _UNITS[unit]))


def fits(times: Iterable[datetime], at: datetime, cap: FrequencyCap) -> bool:
    """Whether one more message at `at` keeps every `cap.period`-long stretch at `cap.count` or fewer,
    given the other messages' times (which already keep it)."""
    near = sorted([t for t in times if abs(t - at) < cap.period] + [at])
    n = cap.count
    return all(near[i + n] - near[i] >= cap.period for i in range(len(near) - n))


def keep_within_cap(rows: Sequence[dict[str, Any]], existing: dict[tuple[str, str], list[datetime]],
                    cap: FrequencyCap) -> tuple[list[dict[str, Any]], int]:
    """The message rows (serial_number, to_phone, next_attempt_at) that the cap lets through,
    earliest first, and how many it skipped.

    `existing` ((chatbot, number) -> send times of every campaign's messages) grows with each
    row kept, so the cap holds within `rows` too.
    """
    kept: list[dict[str, Any]] = []
    skipped = 0
    for row in sorted(rows, key=lambda r: r["next_attempt_at"]):
        times = existing.setdefault((row["serial_number"], row["to_phone"]), [])
        if not fits(times, row["next_attempt_at"], cap):
            skipped += 1
            continue
        times.append(row["next_attempt_at"])
        kept.append(row)
    return kept, skipped


def over_cap_at_send(candidates: Sequence[tuple[int, str]], used: dict[str, int], cap: FrequencyCap) -> list[int]:
    """The ids, among campaign messages about to be sent ((id, number), most urgent first), that would
    pass the cap: `used` counts each number's messages sent or on their way within the last period."""
    taken = dict(used)
    over: list[int] = []
    for message_id, phone in candidates:
        if taken.get(phone, 0) >= cap.count:
            over.append(message_id)
        else:
            taken[phone] = taken.get(phone, 0) + 1
    return over


def cap_reason(cap: FrequencyCap) -> str:
    """The reason a message stopped by the cap ends with."""
    return f"frequency cap: {cap} per chatbot and number reached"


__all__ = ["FrequencyCap", "cap_reason", "fits", "keep_within_cap", "over_cap_at_send", "parse_cap"]
