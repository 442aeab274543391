"""Quiet hours: edges, windows across midnight and DST, the send-time decision, the recipient's zone."""

from __future__ import annotations

from datetime import datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from oaksend.errors import ValidationError
from oaksend.worker.message.quiet import (
    QuietHours,
    at_send,
    compact,
    from_compact,
    next_allowed,
    parse_window,
    recipient_zones,
)

NY = ZoneInfo("America/New_York")
LON = ZoneInfo("Europe/London")
UTC = timezone.utc
NIGHT = QuietHours(time(21), time(8))


def local(tz: ZoneInfo, *args: int) -> datetime:
    return datetime(*args, tzinfo=tz).astimezone(UTC)


@pytest.mark.parametrize(
    ("now", "window", "tz", "expected"),
    [
        # edges: the start is quiet, the end is not
        (local(NY, 2026, 12, 1, 20, 59), NIGHT, NY, local(NY, 2026, 12, 1, 20, 59)),
        (local(NY, 2026, 12, 1, 21, 0), NIGHT, NY, local(NY, 2026, 12, 2, 8, 0)),
        (local(NY, 2026, 12, 1, 23, 30), NIGHT, NY, local(NY, 2026, 12, 2, 8, 0)),
        (local(NY, 2026, 12, 2, 0, 0), NIGHT, NY, local(NY, 2026, 12, 2, 8, 0)),
        (local(NY, 2026, 12, 2, 7, 59), NIGHT, NY, local(NY, 2026, 12, 2, 8, 0)),
        (local(NY, 2026, 12, 2, 8, 0), NIGHT, NY, local(NY, 2026, 12, 2, 8, 0)),
        # a window inside one day
        (local(NY, 2026, 12, 2, 12, 30), QuietHours(time(12), time(13)), NY, local(NY, 2026, 12, 2, 13, 0)),
        (local(NY, 2026, 12, 2, 13, 0), QuietHours(time(12), time(13)), NY, local(NY, 2026, 12, 2, 13, 0)),
        # the night of spring forward is an hour shorter: 08:00 EDT is 12:00 UTC
        (local(NY, 2026, 3, 7, 22, 0), NIGHT, NY, datetime(2026, 3, 8, 12, 0, tzinfo=UTC)),
        # the night of fall back is an hour longer: 08:00 EST is 13:00 UTC
        (local(NY, 2026, 10, 31, 22, 0), NIGHT, NY, datetime(2026, 11, 1, 13, 0, tzinfo=UTC)),
        (local(LON, 2026, 3, 28, 23, 0), NIGHT, LON, datetime(2026, 3, 29, 7, 0, tzinfo=UTC)),
        (local(LON, 2026, 10, 24, 22, 0), NIGHT, LON, datetime(2026, 10, 25, 8, 0, tzinfo=UTC)),
        # a window ending at a skipped wall time ends as a skipped schedule time would (03:30 EDT)
        (local(NY, 2026, 3, 7, 23, 0), QuietHours(time(22), time(2, 30)), NY, datetime(2026, 3, 8, 7, 30, tzinfo=UTC)),
        # the leap day
        (local(NY, 2028, 2, 28, 22, 0), NIGHT, NY, local(NY, 2028, 2, 29, 8, 0)),
        # one instant, three recipients: quiet in New York, not in London, quiet in Tokyo
        (datetime(2026, 12, 2, 3, 0, tzinfo=UTC), NIGHT, NY, local(NY, 2026, 12, 2, 8, 0)),
        (datetime(2026, 12, 2, 12, 0, tzinfo=UTC), NIGHT, LON, datetime(2026, 12, 2, 12, 0, tzinfo=UTC)),
        (datetime(2026, 12, 2, 12, 0, tzinfo=UTC), NIGHT, ZoneInfo("Asia/Tokyo"),
         datetime(2026, 12, 2, 23, 0, tzinfo=UTC)),
        # off
        (local(NY, 2026, 12, 1, 23, 0), None, NY, local(NY, 2026, 12, 1, 23, 0)),
    ],
)
def test_next_allowed(now: datetime, window: QuietHours | None, tz: ZoneInfo, expected: datetime) -> None:
    assert next_allowed(now, window, tz) == expected


@pytest.mark.parametrize(("text", "expected"), [
    (None, NIGHT), ("21:00-08:00", NIGHT), (" 22:30 - 07:15 ", QuietHours(time(22, 30), time(7, 15))),
    ("off", None), ("OFF", None),
])
def test_parse_window(text: str | None, expected: QuietHours | None) -> None:
    assert parse_window(text) == expected


@pytest.mark.parametrize("text", ["21-08", "21:00", "25:00-08:00", "21:00-21:00", "nine to five"])
def test_parse_window_refuses(text: str) -> None:
    with pytest.raises(ValidationError, match="^quiet_hours: "):
        parse_window(text)


def test_compact_round_trip() -> None:
    value = compact(NIGHT, NY)
    assert value == "21:00-08:00 America/New_York"
    assert from_compact(value) == (NIGHT, (NY,))
    assert compact(None, NY) is None


@pytest.mark.parametrize(
    ("now", "deadline", "action", "at"),
    [
        (local(NY, 2026, 12, 1, 12, 0), None, "send", None),
        (local(NY, 2026, 12, 1, 22, 0), None, "wait", local(NY, 2026, 12, 2, 8, 0)),
        (local(NY, 2026, 12, 1, 22, 0), local(NY, 2026, 12, 2, 9, 0), "wait", local(NY, 2026, 12, 2, 8, 0)),
        # the reminder could only arrive after the appointment: none is better
        (local(NY, 2026, 12, 1, 22, 0), local(NY, 2026, 12, 2, 7, 0), "expire", None),
        (local(NY, 2026, 12, 1, 22, 0), local(NY, 2026, 12, 2, 8, 0), "expire", None),
    ],
)
def test_at_send(now: datetime, deadline: datetime | None, action: str, at: datetime | None) -> None:
    check = at_send("21:00-08:00 America/New_York", deadline, now)
    assert (check.action, check.at) == (action, at)
    if action == "expire":
        assert check.reason.startswith("quiet hours")


def test_at_send_without_quiet_hours_sends() -> None:
    assert at_send(None, None, datetime(2026, 1, 1, 3, tzinfo=UTC)).action == "send"


@pytest.mark.parametrize(
    ("row_zone", "phone", "home", "quiet"),
    [
        ("Europe/Paris", "+14155550123", "Europe/Paris", ["Europe/Paris"]),  # the row wins
        ("", "+14155550123", "America/Chicago", ["America/Los_Angeles"]),  # a 415 number: quiet hours there
        (None, "+12125550100", "America/Chicago", ["America/New_York"]),
        (None, "+33612345678", "America/Chicago", ["Europe/Paris"]),
        (None, "+18687531234", "America/Chicago", ["America/Port_of_Spain"]),  # a Trinidad mobile: its region's
    ],
)
def test_recipient_zones(row_zone: str | None, phone: str, home: str, quiet: list[str]) -> None:
    zones = recipient_zones(row_zone, phone, ZoneInfo("America/Chicago"))
    assert (zones.home.key, [z.key for z in zones.quiet], zones.fallback) == (home, quiet, "")


def test_recipient_zones_refuses_a_bad_row_zone() -> None:
    with pytest.raises(ValidationError, match="^tz_col: 'Moon/Base' is not an IANA"):
        recipient_zones("Moon/Base", "+14155550123", NY, "tz_col")


def test_windows_do_not_drift_over_a_year() -> None:
    # Every hour of 2026 in New York: the allowed instant is never inside the window, never earlier than now.
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for hour in range(0, 365 * 24, 7):
        now = start + timedelta(hours=hour)
        allowed = next_allowed(now, NIGHT, NY)
        assert allowed >= now
        assert not NIGHT.contains(allowed.astimezone(NY).time())
        assert allowed - now <= timedelta(hours=12)
