"""Schedule arithmetic, table-tested across DST (New York, London), a leap day, several zones."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from oaksend.errors import ValidationError
from oaksend.worker.campaigns.schedule import (
    Cron,
    Once,
    Relative,
    anchor_at,
    cron_times,
    local_to_utc,
    once_at,
    parse_duration,
    parse_schedule,
    relative_times,
    spread,
    zone,
)

NY = ZoneInfo("America/New_York")
LON = ZoneInfo("Europe/London")
UTC = timezone.utc


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    ("wall", "tz", "expected"),
    [
        # ordinary days
        (datetime(2026, 12, 1, 9, 0), NY, utc(2026, 12, 1, 14, 0)),
        (datetime(2026, 7, 1, 9, 0), NY, utc(2026, 7, 1, 13, 0)),
        (datetime(2026, 12, 1, 9, 0), LON, utc(2026, 12, 1, 9, 0)),
        (datetime(2026, 7, 1, 9, 0), LON, utc(2026, 7, 1, 8, 0)),
        (datetime(2026, 7, 1, 9, 0), ZoneInfo("Asia/Kolkata"), utc(2026, 7, 1, 3, 30)),
        (datetime(2026, 7, 1, 9, 0), ZoneInfo("Australia/Sydney"), utc(2026, 6, 30, 23, 0)),
        # spring forward: the skipped wall time fires at the same distance past the gap
        (datetime(2026, 3, 8, 2, 30), NY, utc(2026, 3, 8, 7, 30)),  # = 03:30 EDT
        (datetime(2026, 3, 29, 1, 30), LON, utc(2026, 3, 29, 1, 30)),  # = 02:30 BST
        # fall back: the repeated wall time is its first occurrence
        (datetime(2026, 11, 1, 1, 30), NY, utc(2026, 11, 1, 5, 30)),  # EDT, not EST (06:30)
        (datetime(2026, 10, 25, 1, 30), LON, utc(2026, 10, 25, 0, 30)),  # BST, not GMT (01:30)
        # a leap day
        (datetime(2028, 2, 29, 9, 0), NY, utc(2028, 2, 29, 14, 0)),
    ],
)
def test_local_to_utc(wall: datetime, tz: ZoneInfo, expected: datetime) -> None:
    assert local_to_utc(wall, tz) == expected


@pytest.mark.parametrize(
    ("expr", "tz", "after", "until", "expected"),
    [
        # weekly 09:00 local keeps 09:00 across spring forward (14:00 UTC -> 13:00 UTC)
        ("0 9 * * MON", NY, utc(2026, 3, 1), utc(2026, 3, 17), [utc(2026, 3, 2, 14), utc(2026, 3, 9, 13),
                                                                  utc(2026, 3, 16, 13)]),
        ("0 9 * * MON", LON, utc(2026, 10, 18), utc(2026, 11, 3), [utc(2026, 10, 19, 8), utc(2026, 10, 26, 9),
                                                                     utc(2026, 11, 2, 9)]),
        # a skipped time fires once, at 03:30 EDT
        ("30 2 * * *", NY, utc(2026, 3, 7), utc(2026, 3, 10), [utc(2026, 3, 7, 7, 30), utc(2026, 3, 8, 7, 30),
                                                                 utc(2026, 3, 9, 6, 30)]),
        ("30 1 * * *", LON, utc(2026, 3, 28), utc(2026, 3, 31), [utc(2026, 3, 28, 1, 30), utc(2026, 3, 29, 1, 30),
                                                                   utc(2026, 3, 30, 0, 30)]),
        # a repeated time fires once, at its first occurrence
        ("30 1 * * *", NY, utc(2026, 10, 31), utc(2026, 11, 3), [utc(2026, 10, 31, 5, 30), utc(2026, 11, 1, 5, 30),
                                                                   utc(2026, 11, 2, 6, 30)]),
        ("30 1 * * *", LON, utc(2026, 10, 24), utc(2026, 10, 27), [utc(2026, 10, 24, 0, 30),
                                                                     utc(2026, 10, 25, 0, 30),
                                                                     utc(2026, 10, 26, 1, 30)]),
        # every 30 minutes through the gap: the skipped 02:00/02:30 land on 03:00/03:30 and count once
        ("*/30 * * * *", NY, utc(2026, 3, 8, 5, 59), utc(2026, 3, 8, 7, 59),
         [utc(2026, 3, 8, 6), utc(2026, 3, 8, 6, 30), utc(2026, 3, 8, 7), utc(2026, 3, 8, 7, 30)]),
        # ... and through the repeated hour: a wildcard hour runs by the wall clock, so 01:00 and
        # 01:30 fire in EDT and again in EST (tests/unit/test_cron_dst.py)
        ("*/30 * * * *", NY, utc(2026, 11, 1, 3, 59), utc(2026, 11, 1, 7, 1),
         [utc(2026, 11, 1, 4), utc(2026, 11, 1, 4, 30), utc(2026, 11, 1, 5), utc(2026, 11, 1, 5, 30),
          utc(2026, 11, 1, 6), utc(2026, 11, 1, 6, 30), utc(2026, 11, 1, 7)]),
        # the leap day, once every four years
        ("0 9 29 2 *", NY, utc(2026, 1, 1), utc(2029, 1, 1), [utc(2028, 2, 29, 14)]),
        # a window excludes its start and includes its end
        ("0 9 * * *", ZoneInfo("UTC"), utc(2026, 5, 1, 9), utc(2026, 5, 2, 9), [utc(2026, 5, 2, 9)]),
        ("0 9 * * *", ZoneInfo("Asia/Tokyo"), utc(2026, 5, 1), utc(2026, 5, 2), [utc(2026, 5, 2, 0)]),
    ],
)
def test_cron_times(expr: str, tz: ZoneInfo, after: datetime, until: datetime, expected: list[datetime]) -> None:
    assert cron_times(expr, tz, after, until) == expected


@pytest.mark.parametrize(
    ("value", "tz", "expected"),
    [
        ("2026-12-01T10:30", NY, utc(2026, 12, 1, 15, 30)),
        ("2026-12-01 10:30:00", LON, utc(2026, 12, 1, 10, 30)),
        ("2026-12-01T10:30:00+01:00", NY, utc(2026, 12, 1, 9, 30)),  # its own offset wins
        ("2026-03-08T02:30", NY, utc(2026, 3, 8, 7, 30)),
        ("2028-02-29T23:00", NY, utc(2028, 3, 1, 4, 0)),
    ],
)
def test_anchor_at(value: str, tz: ZoneInfo, expected: datetime) -> None:
    assert anchor_at(value, tz, "appointment_at") == expected


def test_anchor_at_refuses_text() -> None:
    with pytest.raises(ValidationError, match="appointment_at: 'tomorrow' is not a datetime"):
        anchor_at("tomorrow", NY, "appointment_at")


def test_relative_times_are_absolute_durations_before_the_anchor() -> None:
    # 24 h before 10:00 on the day after spring forward is 09:00 local (a real 24 hours).
    anchor = local_to_utc(datetime(2026, 3, 9, 10, 0), NY)
    times = relative_times(anchor, (timedelta(hours=24), timedelta(hours=2)))
    assert [t for _, t in times] == [utc(2026, 3, 8, 14), utc(2026, 3, 9, 12)]
    assert [label for label, _ in times] == ["-86400s@20260309T140000Z", "-7200s@20260309T140000Z"]


def test_once_at_reads_the_campaigns_zone() -> None:
    assert once_at(Once(datetime(2026, 12, 1, 9)), NY) == utc(2026, 12, 1, 14)
    assert once_at(Once(datetime(2026, 12, 1, 9, tzinfo=UTC)), NY) == utc(2026, 12, 1, 9)


@pytest.mark.parametrize(("text", "seconds"), [("24h", 86400), ("90m", 5400), ("2d", 172800), ("30s", 30),
                                               ("1h30m", 5400), ("1.5h", 5400)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text, "before") == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "h", "24", "24x", "-2h", "0h", "2h 3m", "400d", "1h-"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValidationError, match="^before: "):
        parse_duration(text, "before")


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"at": "2026-12-01T09:00"}, Once(datetime(2026, 12, 1, 9))),
        ({"before": "appointment_at:2h,24h"}, Relative("appointment_at", (timedelta(hours=24), timedelta(hours=2)))),
        ({"cron": "0  9 * *  MON"}, Cron("0 9 * * MON")),
    ],
)
def test_parse_schedule(kwargs: dict[str, str], expected: object) -> None:
    assert parse_schedule(**kwargs) == expected


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "schedule: give exactly one"),
        ({"at": "2026-12-01T09:00", "cron": "0 9 * * *"}, "schedule: give exactly one"),
        ({"at": "next tuesday"}, "at: 'next tuesday' is not a time"),
        ({"before": "appointment_at"}, "before: 'appointment_at' is not COLUMN:OFFSETS"),
        ({"before": "appointment_at:2h,2h"}, "before: an offset is given twice"),
        ({"cron": "0 9 * *"}, "cron: '0 9 \\* \\*' is not a five-field"),
        ({"cron": "61 9 * * *"}, "cron: .* is not a five-field"),
        ({"cron": "0 0 9 * * *"}, "cron: .* is not a five-field"),
    ],
)
def test_parse_schedule_refuses(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        parse_schedule(**kwargs)


@pytest.mark.parametrize("name", ["Mars/Olympus", "", "../etc/passwd", "/etc/localtime", "America/New York"])
def test_zone_refuses(name: str) -> None:
    with pytest.raises(ValidationError, match="tz: .* is not an IANA time zone"):
        zone(name)


@pytest.mark.parametrize(
    ("times", "rate", "expected_s"),
    [
        ([0, 0, 0, 0], 2.0, [0, 0.5, 1.0, 1.5]),
        ([0, 10, 10, 30], 1.0, [0, 10, 11, 30]),
        ([0, 0], None, [0, 0]),
    ],
)
def test_spread_keeps_a_rate_cap(times: list[float], rate: float | None, expected_s: list[float]) -> None:
    base = utc(2026, 1, 1)
    got = spread([base + timedelta(seconds=t) for t in times], rate)
    assert [(g - base).total_seconds() for g in got] == expected_s
