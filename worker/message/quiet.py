"""Pure: quiet hours in the recipient's local time, and the recipient's zone.

The default window is 21:00-08:00 local (the TCPA allows 8 am to 9 pm). A window
holds when the message is SENT, not only when it is scheduled: a campaign
message carries its window and zone on its row in a compact form
(``"21:00-08:00 America/New_York"``, see `compact`), and the send path asks
`at_send` before the request leaves.

Edges: the start is quiet, the end is not (21:00 is quiet, 08:00 is allowed).
An end that a spring-forward day skips is read like a skipped schedule time
(02:30 -> 03:30 after the change); an end in a fall-back hour is its first occurrence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

import phonenumbers
from phonenumbers import timezone as phone_timezones

from oaksend.errors import ValidationError
from oaksend.worker.campaigns.schedule import zone as parse_zone
from oaksend.worker.message import phone as fast_phone

DEFAULT_WINDOW = "21:00-08:00"
_HHMM = re.compile(r"\d\d:\d\d")


@dataclass(frozen=True)
class QuietHours:
    """A daily window [start, end) of local wall time in which nothing is sent."""

    start: time
    end: time

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"

    def contains(self, wall: time) -> bool:
        """Is this local wall time inside the window (start inclusive, end exclusive)?"""
        if self.start <= self.end:
            return self.start <= wall < self.end
        return wall >= self.start or wall < self.end  # the window spans midnight


def parse_window(text: str | None, field: str = "quiet_hours") -> QuietHours | None:
    """'21:00-08:00' -> QuietHours; 'off' (or '') -> None."""
    if text is None:
        text = DEFAULT_WINDOW
    value = text.strip().lower()
    if value in ("off", "none", ""):
        return None
    start, sep, end = value.partition("-")
    try:
        if not sep or not _HHMM.fullmatch(start.strip()) or not _HHMM.fullmatch(end.strip()):
            raise ValueError
        window = QuietHours(time.fromisoformat(start.strip()), time.fromisoformat(end.strip()))
    except ValueError:
        raise ValidationError(field, f"{text!r} is not HH:MM-HH:MM or off (e.g. 21:00-08:00)") from None
    if window.start == window.end:
        raise ValidationError(field, "start and end are the same (use off for no quiet hours)")
    return window


def next_allowed(now_utc: datetime, window: QuietHours | None, tz: ZoneInfo) -> datetime:
    """`now_utc` if it is outside the window in `tz`, else the (UTC) instant the window ends."""
    if window is None:
        return now_utc
    local = now_utc.astimezone(tz)
    if not window.contains(local.time().replace(tzinfo=None)):
        return now_utc
    day = local.date()
    # The window ends today if it does not span midnight, or if we are in its morning part.
    if window.start > window.end and local.time().replace(tzinfo=None) >= window.start:
        day = day + timedelta(days=1)
    end_wall = datetime.combine(day, window.end)
    end = end_wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    # In a spring-forward gap, fold=0 maps forward past the gap: still the first allowed instant.
    return max(end, now_utc)


def compact(window: QuietHours | None, tz: ZoneInfo) -> str | None:
    """What a message row carries for the send-time check: '21:00-08:00 America/New_York'."""
    return None if window is None else f"{window} {tz.key}"


def from_compact(value: str) -> tuple[QuietHours | None, ZoneInfo]:
    window, _, name = value.partition(" ")
    return parse_window(window), parse_zone(name)


@dataclass(frozen=True)
class SendCheck:
    """What the send path does with a message about to leave: go, wait until `at`, or expire."""

    action: str  # "send" | "wait" | "expire"
    at: datetime | None = None
    reason: str = ""


def at_send(quiet: str | None, deadline_at: datetime | None, now_utc: datetime) -> SendCheck:
    """Pure: the send-time quiet-hours decision for a message row's `quiet` value."""
    if not quiet:
        return SendCheck("send")
    window, tz = from_compact(quiet)
    allowed = next_allowed(now_utc, window, tz)
    if allowed <= now_utc:
        return SendCheck("send")
    if deadline_at is not None and allowed >= deadline_at:
        return SendCheck("expire", None, "quiet hours: the next allowed time is past the deadline")
    return SendCheck("wait", allowed, f"quiet hours until {allowed.astimezone(tz):%H:%M %Z}")


def recipient_zone(row_zone: str | None, phone: str, campaign_zone: ZoneInfo, field: str = "tz",
                   parsed: phonenumbers.PhoneNumber | None = None, kind: int | None = None) -> ZoneInfo:
    """The row's zone, else the number's when phonenumbers gives exactly one, else the campaign's."""
    if row_zone and row_zone.strip():
        return parse_zone(row_zone.strip(), field)
    try:
        number = parsed if parsed is not None else fast_phone.parse_e164(phone)
        zones = _zones_of(number, phone, kind)
    except phonenumbers.NumberParseException:
        zones = ()
    if len(zones) == 1 and zones[0] != phone_timezones.UNKNOWN_TIMEZONE:
        return _zone_named(zones[0]) or campaign_zone
    return campaign_zone


def _zones_of(number: phonenumbers.PhoneNumber, text: str, kind: int | None) -> tuple[str, ...]:
    # time_zones_for_number, reusing the number type (the costly part) when the caller has it.
    if kind is None:
        kind = fast_phone.number_type(number)
    # `or 0`: a parsed number always has a country code; 0, like None, is in none of phonenumbers' lists.
    if phonenumbers.is_number_type_geographical(kind, number.country_code or 0):
        return fast_phone.geographical_time_zones(fast_phone.e164(number, text))
    return tuple(phone_timezones.time_zones_for_number(number))


@lru_cache(maxsize=1024)
def _zone_named(name: str) -> ZoneInfo | None:
    """The zone phonenumbers names, or None when this system's time-zone data lacks it."""
    try:
        return ZoneInfo(name)
    except (ValueError, KeyError, OSError):
        return None


__all__ = ["DEFAULT_WINDOW", "QuietHours", "SendCheck", "at_send", "compact", "from_compact", "next_allowed",
           "parse_window", "recipient_zone"]
