"""Building a new campaign's rows: the fast COPY lines equal the reference rows, and a pool of
forked processes builds exactly what one process does (rows, order, errors, counts)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from oaksend.worker.campaigns.audience import AudienceSpec, Recipient
from oaksend.worker.campaigns.build import BATCH, Builder, build_all, copy_line
from oaksend.worker.campaigns.plan import MESSAGE_COLUMNS, CampaignPlan, Planned, message_row
from oaksend.worker.message.quiet import parse_window
from oaksend.worker.campaigns.schedule import parse_schedule, zone
from oaksend.worker.campaigns.template import parse as parse_template

UTC = timezone.utc
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
CHATBOT = "c0ffee00c5e6f708192a3b4c5d6e7f80"
HEADER = ["booking", "phone", "first_name", "appt", "tz"]


def plan(template: str = "Hi {first_name}, see you {appt:%a %H:%M}") -> CampaignPlan:
    return CampaignPlan("reminders", parse_template(template, HEADER), parse_schedule(before="appt:24h,2h"),
                        zone("America/New_York"), parse_window("21:00-08:00"), None)


def builder(copy_text: bool, suppressed: frozenset[str] = frozenset()) -> Builder:
    return Builder(plan(), AudienceSpec(key_column="booking", tz_column="tz"), 7, CHATBOT, NOW, None, suppressed,
                   copy_text=copy_text)


def audience(n: int) -> list[tuple[int, dict[str, str]]]:
    """n rows: zones from the row and from the number, some bad phones, dates and names, odd characters."""
    rows = []
    for i in range(n):
        appt = NOW + timedelta(days=2, minutes=7 * i)
        row = {"booking": f"b{i}\tx\\" if i % 97 == 0 else f"b{i}", "phone": f"+1415{2000000 + i:07d}",
               "first_name": "Zoë \\n\ttab" if i % 11 == 0 else f"P{i}", "appt": appt.strftime("%Y-%m-%dT%H:%M"),
               "tz": "Europe/London" if i % 5 == 0 else ""}
        if i % 1013 == 17:
            row["phone"] = "+1415"  # not a number
        if i % 1499 == 3:
            row["appt"] = "soon"
        rows.append((i + 2, row))
    return rows


@pytest.mark.parametrize("key, first_name, quiet", [
    ("b1", "Pat", "21:00-08:00 America/New_York"),
    ("tab\there, back\\slash\nnewline\r", "Zoë 🙂 {x}", None),
    ('quote " and é', "Ω", "21:00-08:00 Europe/London"),
])
def test_the_fast_message_line_is_the_reference_row(key: str, first_name: str, quiet: str | None) -> None:
    recipient = Recipient(key, "+14155550123", ZoneInfo("America/New_York"),
                          {"booking": key, "phone": "+14155550123", "first_name": first_name, "appt": "2026-12-01T10:00"})
    planned = Planned("-7200s@20261201T150000Z", datetime(2026, 12, 1, 13, tzinfo=UTC),
                      datetime(2026, 12, 1, 15, tzinfo=UTC), f"Hi {first_name}\t\\ " + "x" * 170)
    row = message_row(7, CHATBOT, recipient, planned, quiet, NOW, key_secret=None)
    assert tuple(row) == MESSAGE_COLUMNS
    assert builder(True)._message_line(recipient, planned, quiet) == copy_line(row.values())
    reference = {"campaign_id": 7, "key": key, "phone": recipient.phone, "tz": recipient.zone.key, "data": recipient.values}
    assert builder(True)._recipient_line(recipient) == copy_line(reference.values())


def test_copy_line_escapes_and_nulls() -> None:
    line = copy_line(["a\tb\\c\nd\re", None, 3, True, {"k": "v\t"}, datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)])
    assert line == 'a\\tb\\\\c\\nd\\re\t\\N\t3\tt\t{"k": "v\\\\t"}\t2026-01-02T03:04:05+00:00\n'
    with pytest.raises(ValueError):
        copy_line([datetime(2026, 1, 2)])


@pytest.mark.parametrize("bad_rows", [True, False])
def test_a_pool_builds_exactly_what_one_process_builds(bad_rows: bool) -> None:
    rows = audience(3 * BATCH + 123)
    if not bad_rows:
        rows = [(n, r) for n, r in rows if r["phone"] != "+1415" and r["appt"] != "soon"]
    suppressed = frozenset({"+14152000004", "+14152000100"})
    one = list(build_all(builder(True, suppressed), iter(rows), parallel=False))
    pool = list(build_all(builder(True, suppressed), iter(rows), parallel=True, processes=3))
    assert len(one) == len(pool) == 4
    for a, b in zip(one, pool):
        assert (a.keys, a.recipients, a.messages, a.errors, a.counts) == (b.keys, b.recipients, b.messages, b.errors,
                                                                          b.counts)
    if bad_rows:
        assert sum(len(b.errors) for b in pool) == 12 and not any(b.messages for b in pool[:2])
    else:
        skipped = sum(b.counts.total() for b in pool)
        assert pool[0].counts["suppressed"] >= 2 and sum(len(b.messages) for b in pool) + skipped == 2 * len(rows)


def test_copy_lines_carry_what_the_dict_rows_carry() -> None:
    rows = audience(500)
    text = [m for b in build_all(builder(True), iter(rows), parallel=False) for m in b.messages]
    dicts = [m for b in build_all(builder(False), iter(rows), parallel=False) for m in b.messages]
    assert text == [copy_line(m.values()) for m in dicts]
