"""Pure: quiet hours in the recipient's local time, and the recipient's zones.

The default window is 21:00-08:00 local (the TCPA allows 8 am to 9 pm). A window
holds when the message is SENT, not only when it is scheduled: a campaign
message carries its window and zone on its row in a compact form
(``"21:00-08:00 America/New_York"``, see `compact`), and the send path asks
`at_send` before the request leaves.

Edges: the start is quiet, the end is not (21:00 is quiet, 08:00 is allowed).
An end that a spring-forward day skips is read like a skipped schedule time
(02:30 -> 03:30 after the change); an end in a fall-back hour is its first occurrence.

A number whose candidate zones differ (South Dakota's 605: Central and Mountain; an
Australian mobile: twelve zones) is sent to only at a time allowed in every one of
them (`next_allowed_in_all`), so no one of its possible places gets a text at night.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

import phonenumbers

from oaksend.errors import ValidationError
from oaksend.worker.campaigns.schedule import zone as parse_zone
from oaksend.worker.message import phone as fast_phone
from oaksend.worker.message.zones import NO_ZONE, NumberZones, number_zones, resolve

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


def next_allowed_in_all(now_utc: datetime, window: QuietHours | None,
                        zones: tuple[ZoneInfo, ...]) -> datetime | None:
    """The first instant from `now_utc` outside the window in EVERY one of `zones` (None: none within a week).

    One zone, or zones that share one UTC offset then, answer as `next_allowed` does. Zones apart
    move the time on until each allows it: the latest of their answers, asked again from there.
    """
    if window is None or not zones:
        return now_utc
    at = now_utc
    for _ in range(_MAX_ROUNDS):
        later = max(next_allowed(at, window, tz) for tz in zones)
        if later == at:
            return at
        if later - now_utc > _SEARCH:
            break
        at = later
    return None


#: How far and how long next_allowed_in_all looks: zones that allow no common hour have none within a week.
_SEARCH = timedelta(days=7)
_MAX_ROUNDS = 64


def compact(window: QuietHours | None, tz: ZoneInfo | str) -> str | None:
    """What a message row carries for the send-time check: '21:00-08:00 America/New_York'.

    `tz` is a zone or a zone set's short name (oaksend.worker.message.zones: names, '@AU', '+61')."""
    return None if window is None else f"{window} {tz if isinstance(tz, str) else tz.key}"


def from_compact(value: str) -> tuple[QuietHours | None, tuple[ZoneInfo, ...]]:
    window, _, names = value.partition(" ")
    if " " not in names and not names.startswith(("@", "+")):
        return parse_window(window), (parse_zone(names),)
    try:
        return parse_window(window), resolve(names)
    except ValueError as exc:
        raise ValidationError("quiet", str(exc)) from None


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
    window, zones = from_compact(quiet)
    allowed = next_allowed_in_all(now_utc, window, zones)
    if allowed is None:
        return SendCheck("expire", None, "quiet hours: no hour is allowed in every zone of the number")
    if allowed <= now_utc:
        return SendCheck("send")
    if deadline_at is not None and allowed >= deadline_at:
        return SendCheck("expire", None, "quiet hours: the next allowed time is past the deadline")
    return SendCheck("wait", allowed, f"quiet hours until {allowed.astimezone(zones[0]):%H:%M %Z}")


@dataclass(frozen=True)
class RecipientZones:
    """A recipient's zones. `home`: where its appointment times are read and its texts written
    (the row's zone, else the campaign's). `quiet`: where quiet hours hold (the row's zone, else
    every candidate zone of the number, else the campaign's, with `fallback` saying why)."""

    home: ZoneInfo
    quiet: tuple[ZoneInfo, ...]
    token: str
    fallback: str = ""


def recipient_zones(row_zone: str | None, phone: str, campaign_zone: ZoneInfo, field: str = "tz",
                    parsed: phonenumbers.PhoneNumber | None = None, kind: int | None = None) -> RecipientZones:
    """The zones of one recipient: its row's zone when given, else its number's and the campaign's."""
    if row_zone and row_zone.strip():
        tz = parse_zone(row_zone.strip(), field)
        return _single(tz)
    try:
        number = parsed if parsed is not None else fast_phone.parse_e164(phone)
        if kind is None:
            kind = fast_phone.number_type(number)
        found = number_zones(number, kind, fast_phone.e164(number, phone))
    except phonenumbers.NumberParseException:
        found = NumberZones((), "", NO_ZONE)
    if not found.zones:
        return _fallback(campaign_zone, found.why)
    return _with_home(campaign_zone, found)


@lru_cache(maxsize=1024)
def _single(tz: ZoneInfo) -> RecipientZones:
    return RecipientZones(tz, (tz,), tz.key)


@lru_cache(maxsize=1024)
def _fallback(tz: ZoneInfo, why: str) -> RecipientZones:
    return RecipientZones(tz, (tz,), tz.key, why or NO_ZONE)


@lru_cache(maxsize=8192)
def _with_home(home: ZoneInfo, found: NumberZones) -> RecipientZones:
    return RecipientZones(home, found.zones, found.token)


__all__ = ["DEFAULT_WINDOW", "QuietHours", "RecipientZones", "SendCheck", "at_send", "compact", "from_compact",
           "next_allowed", "next_allowed_in_all", "parse_window", "recipient_zones"]
