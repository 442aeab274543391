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
  York) fires once, at its first occurrence (``fold=0``, EDT), unless it comes
  from a cron whose hour field is a wildcard (``*``, ``*/2``): those run by the
  clock on the wall all day, so the repeated hour fires again (01:30 EDT and
  01:30 EST), as Vixie cron runs its wildcard jobs. An hourly cron fires every
  real hour of a 25-hour day, and 24 times on a 23-hour day.
- Two cron occurrences that land on the same instant (a skipped 02:30 and a real
  03:30) are one occurrence: occurrences are identified by their UTC instant.
- Offsets (``--before appointment_at:1d``) are fixed durations: ``1d`` is 24
  hours, so a reminder 1d before 10:00 on the day after a change reads 09:00 or
  11:00 on the wall.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter

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
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a folder of zones ("America")
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
    if cron_next(expr, ZoneInfo("UTC"), datetime(2000, 1, 1, tzinfo=UTC)) is None:
        raise ValidationError("cron", f"{cron!r} never fires (a date that does not exist)")
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
    module docstring says (a wildcard hour also fires the repeated one). Cached:
    a tick asks once per recipient, with the same window.
    """
    return list(_cron_times(expr, tz, after_utc, until_utc))


@lru_cache(maxsize=256)
def _cron_times(expr: str, tz: ZoneInfo, after_utc: datetime, until_utc: datetime) -> tuple[datetime, ...]:
    # Walk a little wider in wall time near an offset change: it moves wall times against instants.
    start_wall = after_utc.astimezone(tz).replace(tzinfo=None) - _margin(tz, after_utc)
    end_wall = until_utc.astimezone(tz).replace(tzinfo=None) + _margin(tz, until_utc)
    wildcard_hour = expr.split(" ")[1].startswith("*")
    it = croniter(expr, start_wall)
    found: set[datetime] = set()
    while True:
        try:
            wall = it.get_next(datetime)
        except CroniterBadDateError:  # a date that never comes ("0 9 30 2 *")
            break
        if wall > end_wall:
            break
        instants = [local_to_utc(wall, tz)]
        if wildcard_hour and _repeated(wall, tz):
            instants.append(wall.replace(tzinfo=tz, fold=1).astimezone(UTC))
        found.update(i for i in instants if after_utc < i <= until_utc)
    return tuple(sorted(found))


#: No offset change moves a wall time further than this against its instant.
_SHIFT = timedelta(hours=3)


def _margin(tz: ZoneInfo, instant: datetime) -> timedelta:
    """How much wider to walk wall time around `instant`: nothing where the offset is steady."""
    steady = (instant - _SHIFT).astimezone(tz).utcoffset() == (instant + _SHIFT).astimezone(tz).utcoffset()
    return timedelta(0) if steady else _SHIFT


def _repeated(wall: datetime, tz: ZoneInfo) -> bool:
    """A wall time that happens twice (fall-back): both folds exist and name different instants."""
    first, second = wall.replace(tzinfo=tz, fold=0), wall.replace(tzinfo=tz, fold=1)
    if first.utcoffset() == second.utcoffset():
        return False
    # In a gap both folds exist on paper too; a repeated time reads back as itself in both.
    return all(d.astimezone(UTC).astimezone(tz).replace(tzinfo=None) == wall for d in (first, second))


#: How far `cron_next` looks: "0 9 29 2 *" may wait 8 years (2096 -> 2104 has no 29 February).
_CRON_REACH = (timedelta(days=2), timedelta(days=40), timedelta(days=400), timedelta(days=366 * 9))


def cron_next(expr: str, tz: ZoneInfo, after_utc: datetime) -> datetime | None:
    """The first occurrence strictly after `after_utc` (None if there is none within 9 years)."""
    if not _margin(tz, after_utc):
        # The offset is steady around `after_utc`: the next wall time is the next instant, if it is near.
        try:
            wall = croniter(expr, after_utc.astimezone(tz).replace(tzinfo=None)).get_next(datetime)
        except CroniterBadDateError:
            return None
        instant = local_to_utc(wall, tz)
        if instant <= after_utc + _SHIFT:
            return instant
    for reach in _CRON_REACH:
        times = cron_times(expr, tz, after_utc, after_utc + reach)
        if times:
            return times[0]
    return None


def cron_upcoming(expr: str, tz: ZoneInfo, after_utc: datetime, n: int) -> list[datetime]:
    """The next `n` occurrences after `after_utc` (fewer if the cron is that rare)."""
    out: list[datetime] = []
    at: datetime | None = after_utc
    while at is not None and len(out) < n:
        at = cron_next(expr, tz, at)
        if at is not None:
            out.append(at)
    return out


@lru_cache(maxsize=256)
def cron_occurrences(expr: str, tz: ZoneInfo, after_utc: datetime,
                     until_utc: datetime) -> tuple[tuple[datetime, datetime | None], ...]:
    """Each occurrence in (after_utc, until_utc] with the one that follows it (None: none in 9 years).

    A cron message is moot once the next occurrence is due: its deadline stops there, so
    after any downtime (scheduler, dispatcher, pause) only the latest missed one is sent.
    """
    times = _cron_times(expr, tz, after_utc, until_utc)
    if not times:
        return ()
    following: list[datetime | None] = [*times[1:], cron_next(expr, tz, times[-1])]
    return tuple(zip(times, following, strict=True))


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


def spread_deadlines(rows: list[tuple[datetime, datetime | None, datetime | None]],
                     rate_per_s: float | None) -> list[tuple[datetime, datetime | None]]:
    """`spread` for messages (send time, deadline, hard limit), sorted by send time: each message
    spaced later by the rate cap gets its deadline moved by as much, never past its hard limit
    (a reminder's appointment). Returns (send time, deadline) in the same order."""
    times = spread([at for at, _, _ in rows], rate_per_s)
    out: list[tuple[datetime, datetime | None]] = []
    for (old, deadline, limit), new in zip(rows, times, strict=True):
        if deadline is not None and new != old:
            deadline = deadline + (new - old)
            if limit is not None:
                deadline = min(deadline, limit)
        out.append((new, deadline))
    return out


def late_at_rate(rows: list[tuple[datetime, datetime | None]], rate_per_s: float, now: datetime) -> int:
    """How many messages (send time, deadline; sorted by send time) cannot go out before their
    deadline at `rate_per_s`, even with nothing else on the chatbot: certain to expire."""
    late = 0
    for (_, deadline), at in zip(rows, spread([max(at, now) for at, _ in rows], rate_per_s), strict=True):
        if deadline is not None and at >= deadline:
            late += 1
    return late


def finish_at(times: list[datetime], rate_per_s: float, now: datetime) -> datetime | None:
    """When the last of these send times (sorted) goes out at `rate_per_s`: a campaign's ETA."""
    if not times:
        return None
    return spread([max(t, now) for t in times], rate_per_s)[-1]


def anchor_of(occurrence: str) -> datetime | None:
    """The appointment of a relative occurrence label ('-7200s@20261220T150000Z'), else None."""
    _, sep, stamp = occurrence.partition("@")
    if not sep:
        return None
    try:
        return datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None


__all__ = [
    "Cron", "Once", "Relative", "Schedule", "anchor_at", "anchor_of", "cron_next", "cron_occurrences", "cron_times",
    "cron_upcoming", "finish_at", "late_at_rate", "local_to_utc", "occurrence_label", "once_at", "parse_duration",
    "parse_schedule", "relative_times", "spread", "spread_deadlines", "zone",
]
