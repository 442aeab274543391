"""Pure: when a campaign's messages go out. Time and zones are passed in; nothing reads the clock.

Three kinds of schedule:

- `Once(at)`: one local wall time in the campaign's zone (``--at 2026-12-01T09:00``).
- `Relative(column, offsets)`: before a per-recipient datetime (``--before appointment_at:24h,2h``).
  A value without a zone is read in the recipient's zone (else the campaign's).
- `Cron(expr)`: a five-field cron expression evaluated on local wall-clock time
  (``--cron "0 9 * * MON"``) with croniter, so "09:00" stays 09:00 across DST.

Daylight-saving rules (the same for every kind of schedule):

- A wall time that a spring-forward day skips (02:30 on 8 March 2026 in New
  York) fires once, at the instant that wall time would have had before the
  change, which reads as the same distance past the gap (03:30 EDT). This is
  what zoneinfo does with ``fold=0`` and what cron daemons do.
- A wall time that a fall-back day repeats (01:30 on 1 November 2026 in New
  York) fires once, at its first occurrence (``fold=0``, EDT).
- Two cron occurrences that land on the same instant (a skipped 02:30 and a real
  03:30) are one occurrence: occurrences are identified by their UTC instant.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from oaksend.errors import ValidationError

_OFFSET_RE = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
#: Offsets further ahead than this are refused (a reminder a year early is a typo).
MAX_OFFSET = timedelta(days=366)


@dataclass(frozen=True)
class Once:
    """One send at a local wall time (naive) in the campaign's zone."""

    at: datetime
    kind: str = "once"


@dataclass(frozen=True)
class Relative:
    """Sends `offsets` before each recipient's datetime in `column`."""

    column: str
    offsets: tuple[timedelta, ...]
    kind: str = "relative"


@dataclass(frozen=True)
class Cron:
    """Recurring sends at local wall times matching a five-field cron expression."""

    expr: str
    kind: str = "cron"


Schedule = Once | Relative | Cron


def zone(name: str, field: str = "tz") -> ZoneInfo:
    """A ZoneInfo for an IANA name, or ValidationError naming `field`."""
    if not isinstance(name, str) or not name or name.startswith(("/", ".")) or ".." in name:
        raise ValidationError(field, f"{name!r} is not an IANA time zone (e.g. America/New_York)")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError(field, f"{name!r} is not an IANA time zone (e.g. America/New_York)") from None


def local_to_utc(wall: datetime, tz: ZoneInfo) -> datetime:
    """A naive local wall time -> the UTC instant it names (DST rules in the module docstring)."""
    aware = wall.replace(tzinfo=tz, fold=0)
    return aware.astimezone(UTC)


def parse_duration(text: str, field: str) -> timedelta:
    """'24h', '90m', '2d', '30s', '1h30m' -> timedelta (strictly positive)."""
    value = text.strip().lower()
    pos = 0
    total = 0.0
    for match in _OFFSET_RE.finditer(value):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS_S[match.group(2)]
        pos = match.end()
    if not value or pos != len(value):
        raise ValidationError(field, f"{text!r} is not a duration (e.g. 24h, 90m, 2d, 30s)")
    if total <= 0:
        raise ValidationError(field, f"{text!r} must be longer than zero")
    if total > MAX_OFFSET.total_seconds():
        raise ValidationError(field, f"{text!r} is longer than {MAX_OFFSET.days} days")
    return timedelta(seconds=total)


def parse_local(text: str, field: str) -> datetime:
    """An ISO local time without a zone ('2026-12-01T09:00') -> naive datetime."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValidationError(field, f"{text!r} is not a time (ISO 8601, e.g. 2026-12-01T09:00)") from None
    return value


def parse_schedule(*, at: str | None = None, before: str | None = None, cron: str | None = None) -> Schedule:
    """Exactly one of --at / --before / --cron -> a Schedule."""
    given = [name for name, v in (("at", at), ("before", before), ("cron", cron)) if v]
    if len(given) != 1:
        raise ValidationError("schedule", "give exactly one of --at, --before or --cron")
    if at:
        value = parse_local(at, "at")
        return Once(value.replace(tzinfo=None) if value.tzinfo is None else value)
    if before:
        column, sep, offsets = before.partition(":")
        if not sep or not column.strip() or not offsets.strip():
            raise ValidationError("before", f"{before!r} is not COLUMN:OFFSETS (e.g. appointment_at:24h,2h)")
        parsed = tuple(parse_duration(o, "before") for o in offsets.split(","))
        if len(set(parsed)) != len(parsed):
            raise ValidationError("before", "an offset is given twice")
        return Relative(column.strip(), tuple(sorted(parsed, reverse=True)))
    assert cron is not None
    expr = " ".join(cron.split())
    if len(expr.split(" ")) != 5 or not croniter.is_valid(expr):
        raise ValidationError("cron", f"{cron!r} is not a five-field cron expression (e.g. '0 9 * * MON')")
    return Cron(expr)


def once_at(schedule: Once, tz: ZoneInfo) -> datetime:
    """The UTC instant of a one-off schedule (an aware --at keeps its own offset)."""
    if schedule.at.tzinfo is not None:
        return schedule.at.astimezone(UTC)
    return local_to_utc(schedule.at, tz)


def anchor_at(value: str, tz: ZoneInfo, field: str) -> datetime:
    """A recipient's datetime cell -> UTC; a value without a zone is read in `tz`."""
    try:
        return _anchor(value.strip(), tz)
    except (ValueError, AttributeError):
        raise ValidationError(field, f"{value!r} is not a datetime (ISO 8601, e.g. 2026-12-01T10:30)") from None


@lru_cache(maxsize=4096)  # appointments fall on a few slots: most rows repeat a recent value
def _anchor(text: str, tz: ZoneInfo) -> datetime:
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        return local_to_utc(parsed, tz)
    return parsed.astimezone(UTC)


@lru_cache(maxsize=4096)
def relative_times(anchor_utc: datetime, offsets: tuple[timedelta, ...]) -> tuple[tuple[str, datetime], ...]:
    """(occurrence label, UTC send time) for each offset before the anchor, earliest first.

    The label names the offset and the anchor, so a moved appointment is a new
    occurrence (and gets new reminders) while an unchanged one keeps its key.
    """
    stamp = anchor_utc.strftime("%Y%m%dT%H%M%SZ")
    out = [(f"-{int(o.total_seconds())}s@{stamp}", anchor_utc - o) for o in offsets]
    return tuple(sorted(out, key=lambda item: item[1]))


def cron_times(expr: str, tz: ZoneInfo, after_utc: datetime, until_utc: datetime) -> list[datetime]:
    """UTC instants of cron occurrences in (after_utc, until_utc], sorted, each instant once.

    The expression walks local wall-clock time (naive), so each wall time is
    visited once; `local_to_utc` maps skipped and repeated wall times as the
    module docstring says.
    """
    # Walk a little wider in wall time: an offset change moves wall times against instants.
    start_wall = after_utc.astimezone(tz).replace(tzinfo=None) - timedelta(hours=3)
    end_wall = until_utc.astimezone(tz).replace(tzinfo=None) + timedelta(hours=3)
    it = croniter(expr, start_wall)
    found: set[datetime] = set()
    while True:
        wall = it.get_next(datetime)
        if wall > end_wall:
            break
        instant = local_to_utc(wall, tz)
        if after_utc < instant <= until_utc:
            found.add(instant)
    return sorted(found)


def occurrence_label(instant_utc: datetime) -> str:
    """The occurrence id of a once or cron send: its UTC instant."""
    return instant_utc.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def spread(times: list[datetime], rate_per_s: float | None) -> list[datetime]:
    """Space sorted send times at least 1/rate apart (a campaign's rate cap), keeping order.

    Pure; the durable outbox then holds each message's own time, so a rate cap
    costs nothing at run time and survives restarts.
    """
    if not rate_per_s:
        return list(times)
    gap = timedelta(seconds=1.0 / rate_per_s)
    out: list[datetime] = []
    previous: datetime | None = None
    for t in times:
        if previous is not None and t < previous + gap:
            t = previous + gap
        out.append(t)
        previous = t
    return out


__all__ = [
    "Cron", "Once", "Relative", "Schedule", "anchor_at", "cron_times", "local_to_utc", "occurrence_label",
    "once_at", "parse_duration", "parse_schedule", "relative_times", "spread", "zone",
]
