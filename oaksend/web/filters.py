"""Template filters: times, ages and masked numbers (pure)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from oaksend.worker.logs import mask_phone


def when(value: datetime | None) -> str:
    """UTC, to the second: '2026-12-02 09:15:04'."""
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def clock(value: datetime | None) -> str:
    """UTC, to the millisecond: '09:15:04.123' (attempts)."""
    return "" if value is None else value.strftime("%H:%M:%S.%f")[:-3]


def seconds(value: float | None) -> str:
    """An age or a duration: '42s', '3m 05s', '2h 07m', '3d 4h'."""
    if value is None:
        return ""
    s = max(0, int(value))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def masked(value: str | None) -> str:
    return mask_phone(value) if value else ""


def ms(value: float | None) -> str:
    return "" if value is None else f"{value:.0f} ms"


FILTERS: dict[str, Any] = {"when": when, "clock": clock, "seconds": seconds, "masked": masked, "ms": ms}
