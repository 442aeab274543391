"""Cron schedules across daylight-saving changes, and catch-up after downtime: pure, tables of cases.

The rules (worker/campaigns/schedule.py, docs/campaigns.md):
- a wall time a spring-forward day skips fires once, as far past the gap as it was into it;
- a wall time a fall-back day repeats fires once (its first occurrence), unless the cron's hour
  field is a wildcard: then it runs by the wall clock all day and the repeated hour fires again;
- a cron message is moot once the next occurrence is due: its deadline stops there, and a
  window of missed occurrences writes the latest only.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from oaksend.errors import ValidationError
from oaksend.worker.campaigns.audience import Recipient
from oaksend.worker.campaigns.plan import CampaignPlan
from oaksend.worker.campaigns.schedule import (
    Cron,
    cron_next,
    cron_occurrences,
    cron_times,
    cron_upcoming,
    finish_at,
    late_at_rate,
    local_to_utc,
    parse_duration,
    parse_schedule,
    relative_times,
    spread_deadlines,
)
from oaksend.worker.campaigns.template import parse
from oaksend.worker.message.quiet import parse_window

UTC = UTC
NY = ZoneInfo("America/New_York")
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")  # DST moves the clock by 30 minutes


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def local_day(day: datetime, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """(start, end] in UTC of one local calendar day (start excluded: shift back a second)."""
    start = local_to_utc(day, tz)
    end = local_to_utc(day + timedelta(days=1), tz)
    return start - timedelta(seconds=1), end - timedelta(seconds=1)


@pytest.mark.parametrize(
    ("expr", "tz", "day", "count"),
    [
        # hourly on a 25-hour day: every real hour, the repeated 01:00 twice
        ("0 * * * *", NY, datetime(2026, 11, 1), 25),
        # hourly on a 23-hour day: the skipped 02:00 is 03:00's instant, counted once
        ("0 * * * *", NY, datetime(2026, 3, 8), 23),
        ("0 * * * *", NY, datetime(2026, 11, 2), 24),
        ("*/30 * * * *", NY, datetime(2026, 11, 1), 50),
        ("*/30 * * * *", NY, datetime(2026, 3, 8), 46),
        # a step in the hour field is a wildcard too: 00, 02, ... 22 (01:00 is not one of them)
        ("0 */2 * * *", NY, datetime(2026, 11, 1), 12),
        ("0 1-23/2 * * *", NY, datetime(2026, 11, 1), 12),  # a range: named hours, 01:00 once
        # a named hour fires once on either day
        ("30 1 * * *", NY, datetime(2026, 11, 1), 1),
        ("30 2 * * *", NY, datetime(2026, 3, 8), 1),
        # Lord Howe repeats 01:30-02:00: an hourly :45 cron fires 01:45 twice, :00 never twice
        ("45 * * * *", LORD_HOWE, datetime(2026, 4, 5), 25),
        ("0 * * * *", LORD_HOWE, datetime(2026, 4, 5), 24),
    ],
)
def test_occurrences_per_local_day(expr: str, tz: ZoneInfo, day: datetime, count: int) -> None:
    times = cron_times(expr, tz, *local_day(day, tz))
    assert len(times) == count
    assert times == sorted(set(times))  # each instant once, in order


def test_the_repeated_hour_fires_in_both_offsets_for_a_wildcard_hour_only() -> None:
    after, until = utc(2026, 11, 1, 4, 30), utc(2026, 11, 1, 7, 30)
    hourly = cron_times("30 * * * *", NY, after, until)
    # 00:30 EDT, 01:30 EDT, 01:30 EST, 02:30 EST
    assert hourly == [utc(2026, 11, 1, 4, 30) + timedelta(hours=h) for h in (1, 2, 3)]
    assert [t.astimezone(NY).strftime("%H:%M %Z") for t in hourly] == ["01:30 EDT", "01:30 EST", "02:30 EST"]
    assert cron_times("30 1 * * *", NY, after, until) == [utc(2026, 11, 1, 5, 30)]  # EDT only


def test_a_skipped_wall_time_fires_once_past_the_gap() -> None:
    times = cron_times("30 2 * * *", NY, utc(2026, 3, 8), utc(2026, 3, 9))
    assert [t.astimezone(NY).strftime("%H:%M %Z") for t in times] == ["03:30 EDT"]


def test_next_and_upcoming_reach_rare_crons() -> None:
    assert cron_next("0 9 29 2 *", NY, utc(2026, 1, 1)) == utc(2028, 2, 29, 14)
    weekly = cron_upcoming("0 9 * * MON", NY, utc(2026, 12, 2), 3)
    assert [t.astimezone(NY).strftime("%a %d %H:%M") for t in weekly] == ["Mon 07 09:00", "Mon 14 09:00",
                                                                           "Mon 21 09:00"]
    assert cron_next("0 9 30 2 *", NY, utc(2026, 1, 1)) is None  # 30 February never comes
    with pytest.raises(ValidationError, match=r"^cron: '0 9 30 2 \*' never fires"):
        parse_schedule(cron="0 9 30 2 *")


def test_each_occurrence_knows_the_next_one() -> None:
    occ = cron_occurrences("0 * * * *", NY, utc(2026, 12, 1, 10), utc(2026, 12, 1, 12))
    assert occ == ((utc(2026, 12, 1, 11), utc(2026, 12, 1, 12)), (utc(2026, 12, 1, 12), utc(2026, 12, 1, 13)))


def test_one_day_offsets_are_24_hours() -> None:
    # 1d before 10:00 on the day of spring-forward is 09:00 on the wall: a fixed 24 hours
    anchor = local_to_utc(datetime(2026, 3, 8, 10), NY)
    (_, at), = relative_times(anchor, (parse_duration("1d", "before"),))
    assert anchor - at == timedelta(hours=24)
    assert at.astimezone(NY).strftime("%H:%M") == "09:00"


def cron_plan(expr: str, missed: str = "send", deadline: timedelta | None = None) -> CampaignPlan:
    return CampaignPlan("c", parse("Hello {first_name}", ["phone", "first_name"]), Cron(expr), NY,
                        parse_window("off"), deadline, missed)


ANN = Recipient("+12125550100", "+12125550100", NY, {"phone": "+12125550100", "first_name": "Ann"})


def test_catch_up_after_downtime_writes_the_latest_missed_occurrence_only() -> None:
    now = utc(2026, 12, 1, 22, 30)  # 10.5 h after the last tick at 12:00
    planned, skipped = cron_plan("0 * * * *").occurrences(ANN, now, window=(utc(2026, 12, 1, 12), now))
    assert [(p.occurrence, p.send_at, p.deadline_at) for p in planned] == [
        ("20261201T220000Z", now, utc(2026, 12, 1, 23))]  # sent now; moot once 23:00 is due
    assert skipped == {"missed": 9}  # 13:00 ... 21:00


def test_missed_skip_writes_nothing_late_but_keeps_deadlines() -> None:
    now = utc(2026, 12, 1, 22, 30)
    planned, skipped = cron_plan("0 * * * *", missed="skip").occurrences(ANN, now, window=(utc(2026, 12, 1, 12),
                                                                                            now + timedelta(hours=2)))
    assert [(p.send_at, p.deadline_at) for p in planned] == [(utc(2026, 12, 1, 23), utc(2026, 12, 2)),
                                                              (utc(2026, 12, 2), utc(2026, 12, 2, 1))]
    assert skipped == {"missed": 10}


def test_a_daily_cron_keeps_its_own_deadline() -> None:
    planned, _ = cron_plan("0 9 * * *", deadline=timedelta(hours=2)).occurrences(
        ANN, utc(2026, 12, 1), window=(utc(2026, 12, 1), utc(2026, 12, 2)))
    assert [p.deadline_at - p.send_at for p in planned] == [timedelta(hours=2)]


def test_a_rate_cap_moves_deadlines_with_send_times_but_never_past_the_appointment() -> None:
    t0 = utc(2026, 12, 1, 9)
    rows = [(t0, t0 + timedelta(minutes=5), None)] * 3 + [(t0, t0 + timedelta(seconds=90), t0 + timedelta(minutes=1))]
    got = spread_deadlines(rows, 1 / 60)  # one a minute
    assert [((at - t0).total_seconds() / 60, (dl - t0).total_seconds() / 60) for at, dl in got if dl] == [
        (0, 5), (1, 6), (2, 7), (3, 1)]  # the last is a reminder: its appointment stops it


def test_messages_certain_to_expire_at_the_chatbots_rate() -> None:
    t0 = utc(2026, 12, 1, 9)
    rows = [(t0, t0 + timedelta(seconds=10))] * 20
    assert late_at_rate(rows, 1.0, t0) == 10  # 0..9 s make it, 10..19 s do not
    assert late_at_rate(rows, 100.0, t0) == 0
    assert finish_at([t0] * 20, 1.0, t0) == t0 + timedelta(seconds=19)
    assert finish_at([t0, t0 + timedelta(days=2)], 1.0, t0) == t0 + timedelta(days=2)  # relative: spread out


@pytest.mark.parametrize("expr", ["*/20 * * * *", "30 * * * *", "30 1 * * *", "0 2 * * *", "45 * * * *"])
@pytest.mark.parametrize(("tz", "day"), [(NY, utc(2026, 11, 1)), (NY, utc(2026, 3, 8)),
                                         (LORD_HOWE, utc(2026, 4, 4, 12)), (LORD_HOWE, utc(2026, 10, 3, 12))])
def test_next_agrees_with_the_walk_around_every_change(expr: str, tz: ZoneInfo, day: datetime) -> None:
    for minutes in range(0, 24 * 60, 37):
        after = day + timedelta(minutes=minutes)
        assert cron_next(expr, tz, after) == cron_times(expr, tz, after, after + timedelta(days=2))[0]
