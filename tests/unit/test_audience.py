"""CSV audiences (BOM, quoting, empty cells, bad rows, 100,000 rows in bounded memory) and per-recipient plans."""

from __future__ import annotations

import tracemalloc
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from oaksend.errors import ValidationError
from oaksend.worker.campaigns.audience import AudienceSpec, Recipient, RowProblem, check_row, from_dicts, read_csv
from oaksend.worker.campaigns.csvfile import PROBLEM, problem_of
from oaksend.worker.campaigns.plan import CampaignPlan, idempotency_key, recipient_prefix
from oaksend.worker.message.quiet import parse_window
from oaksend.worker.campaigns.schedule import Cron, Once, Relative
from oaksend.worker.campaigns.template import parse

NY = ZoneInfo("America/New_York")
UTC = timezone.utc


def write(tmp_path: Path, text: str | bytes, name: str = "a.csv") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", newline="")
    return path


def rows_of(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    header, rows = read_csv(path)
    return header, list(rows)


@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"])
def test_bom_or_not_the_header_is_the_same(tmp_path: Path, bom: bytes) -> None:
    path = write(tmp_path, bom + "phone,first_name\r\n+14155550123,Zoë\r\n".encode())
    header, rows = rows_of(path)
    assert header == ["phone", "first_name"]
    assert rows == [(2, {"phone": "+14155550123", "first_name": "Zoë"})]


def test_quoted_commas_newlines_empty_cells_and_blank_lines(tmp_path: Path) -> None:
    path = write(tmp_path, 'phone,name,note\n+14155550123,"Smith, Ann","two\nlines"\n\n+14155550124,,\n+14155550125\n')
    _, rows = read_csv(path, allow_multiline=True)
    read = [(line, problem_of(values) or values) for line, values in rows]
    assert read == [
        (2, {"phone": "+14155550123", "name": "Smith, Ann", "note": "two\nlines"}),
        # rows are named by their physical line: the quoted newline makes row 2 end on line 3
        (5, {"phone": "+14155550124", "name": "", "note": ""}),
        (6, ("", "has 1 cell, the header has 3")),  # a missing cell is refused, never read as empty
    ]
    _, rows = read_csv(path)  # line breaks in cells only when asked for
    assert next((line, problem_of(values)) for line, values in rows) == (2, (
        "", "a quoted cell runs over lines 2-3 (a stray quote?); line breaks inside a cell are read only with"
            " --allow-multiline"))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "audience: has no header row"),
        (b"phone,name,phone\n", "audience: row 1: column 'phone' appears twice"),
        (b"phone,,name\n", "audience: row 1: column 2 has no name"),
        (b"ph\xffone\n", "audience: row 1: is not UTF-8 text"),
    ],
)
def test_bad_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = write(tmp_path, content)
    with pytest.raises(ValidationError, match="^" + message):
        rows_of(path)


def test_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="^audience: cannot read .*nope.csv"):
        read_csv(tmp_path / "nope.csv")


SPEC = AudienceSpec(phone_column="phone", key_column="booking", tz_column="tz")


@pytest.mark.parametrize(
    ("values", "column", "why"),
    [
        ({"phone": "4155550123", "booking": "b1", "tz": ""}, "phone", "is not an E.164 number"),
        ({"phone": "+1415555012", "booking": "b1", "tz": ""}, "phone", "is not a valid phone number"),
        ({"phone": "+14155550123", "booking": "", "tz": ""}, "booking", "is empty"),
        ({"phone": "+14155550123", "booking": "b1", "tz": "Nowhere/Land"}, "tz", "is not an IANA time zone"),
        ({"phone": "+14155550123", PROBLEM: "\x00has 4 cells, the header has 3"}, "", "has 4 cells"),
    ],
)
def test_check_row_names_row_and_column(values: dict[str, str], column: str, why: str) -> None:
    with pytest.raises(RowProblem) as info:
        check_row(7, values, SPEC, NY)
    assert (info.value.error.row, info.value.error.column) == (7, column)
    assert why in info.value.error.why


def test_check_row_zone_from_row_else_campaign_quiet_hours_from_number() -> None:
    spec = AudienceSpec(tz_column="tz")
    paris = check_row(2, {"phone": "+14155550123", "tz": "Europe/Paris"}, spec, NY)
    assert paris.zone.key == "Europe/Paris" and paris.zones is not None and paris.zones.quiet == (paris.zone,)
    # No zone in the row: appointments are read in the campaign's zone, quiet hours held where the number is.
    la = check_row(2, {"phone": "+14155550123", "tz": ""}, spec, NY)
    assert la.zone.key == "America/New_York" and la.zones is not None
    assert [z.key for z in la.zones.quiet] == ["America/Los_Angeles"]
    russia = check_row(2, {"phone": "+79123456789", "tz": ""}, spec, NY).zones
    assert russia is not None and len(russia.quiet) > 10 and russia.token == "@RU" and not russia.fallback
    assert check_row(2, {"phone": "+14155550123", "tz": ""}, spec, NY).key == "+14155550123"


def test_from_dicts_keeps_datetimes_as_iso() -> None:
    header, rows = from_dicts([{"phone": "+14155550123", "at": datetime(2026, 12, 1, 10, 30)}, {"phone": "+1", "x": None}])
    assert header == ["phone", "at", "x"]
    assert list(rows) == [(1, {"phone": "+14155550123", "at": "2026-12-01T10:30:00", "x": ""}),
                          (2, {"phone": "+1", "at": "", "x": ""})]


def test_100000_rows_stream_in_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("phone,first_name,appointment_at\n")
        for i in range(100_000):
            f.write(f"+1415555{i % 10000:04d},Name {i},2026-12-01T10:30\n")
    assert path.stat().st_size > 4_000_000
    tracemalloc.start()
    try:
        header, rows = read_csv(path)
        n = sum(1 for _ in rows)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == 100_000
    assert peak < 2_000_000, f"reading 100,000 rows peaked at {peak} bytes"


# -- per-recipient plans ------------------------------------------------------------------------
def plan(schedule: object, quiet: str = "21:00-08:00", deadline: timedelta | None = None, missed: str = "send",
         text: str = "Hi {first_name}, {appointment_at:%H:%M}") -> CampaignPlan:
    return CampaignPlan("c", parse(text, ["phone", "first_name", "appointment_at"]), schedule,  # type: ignore[arg-type]
                        NY, parse_window(quiet), deadline, missed)


def ann(appointment: str = "2026-12-02T10:00") -> Recipient:
    return Recipient("+12125550100", "+12125550100", NY,
                     {"phone": "+12125550100", "first_name": "Ann", "appointment_at": appointment})


NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
REL = Relative("appointment_at", (timedelta(hours=24), timedelta(hours=2)))


def test_relative_reminders_never_after_the_appointment() -> None:
    planned, skipped = plan(REL).occurrences(ann(), NOW)
    assert [(p.send_at, p.deadline_at) for p in planned] == [
        (datetime(2026, 12, 1, 15, tzinfo=UTC), datetime(2026, 12, 2, 15, tzinfo=UTC)),
        (datetime(2026, 12, 2, 13, tzinfo=UTC), datetime(2026, 12, 2, 15, tzinfo=UTC)),
    ]
    assert planned[0].body == "Hi Ann, 10:00" and not skipped


def test_quiet_hours_move_a_reminder_or_skip_it_when_too_late() -> None:
    # 07:00 appointment: the 2 h reminder (05:00) would wait until 08:00, after it: skipped.
    planned, skipped = plan(REL).occurrences(ann("2026-12-02T07:00"), NOW)
    assert [p.send_at.astimezone(NY).hour for p in planned] == [7 + 1]  # 24 h before (07:00) -> 08:00
    assert skipped == {"quiet_hours": 1}
    planned, skipped = plan(REL, quiet="off").occurrences(ann("2026-12-02T07:00"), NOW)
    assert len(planned) == 2 and not skipped


def test_a_past_anchor_is_skipped_and_a_late_reminder_goes_now() -> None:
    planned, skipped = plan(REL).occurrences(ann("2026-12-01T06:00"), NOW)
    assert planned == [] and skipped == {"deadline": 2}
    planned, skipped = plan(REL, quiet="off").occurrences(ann("2026-12-01T10:00"), NOW)  # 15:00Z appointment
    assert [p.send_at for p in planned] == [NOW, datetime(2026, 12, 1, 13, tzinfo=UTC)] and not skipped


def test_missed_policy() -> None:
    once = Once(datetime(2026, 12, 1, 6, 0))  # 11:00Z, an hour before NOW
    planned, _ = plan(once, quiet="off").occurrences(ann(), NOW)
    assert [p.send_at for p in planned] == [NOW]
    planned, skipped = plan(once, quiet="off", missed="skip").occurrences(ann(), NOW)
    assert planned == [] and skipped == {"missed": 1}


def test_cron_occurrences_only_within_the_window() -> None:
    p = plan(Cron("0 9 * * *"), quiet="off")
    assert p.occurrences(ann(), NOW)[0] == []
    planned, _ = p.occurrences(ann(), NOW, window=(NOW, NOW + timedelta(days=3)))
    assert [x.send_at for x in planned] == [datetime(2026, 12, d, 14, tzinfo=UTC) for d in (1, 2, 3)]
    assert len({x.occurrence for x in planned}) == 3


def test_text_over_1600_characters_after_rendering_is_refused() -> None:
    long_name = "x" * 1600
    r = Recipient("k", "+12125550100", NY, {"phone": "+12125550100", "first_name": long_name,
                                            "appointment_at": "2026-12-02T10:00"})
    with pytest.raises(ValidationError, match="^row 9, column template: renders to 1610 characters"):
        plan(REL).occurrences(r, NOW, row=9)


def test_idempotency_keys_keep_similar_recipient_keys_apart() -> None:
    assert not idempotency_key(1, "a:b", "x", None).startswith(recipient_prefix(1, "a", None))
    assert idempotency_key(1, "a", "x", None).startswith(recipient_prefix(1, "a", None))
    assert idempotency_key(1, "a", "x", None) != idempotency_key(11, "a", "x", None)


def test_campaign_keys_hold_only_a_keyed_digest_of_the_recipient() -> None:
    key = idempotency_key(2, "+14155550311", "2026-12-03T10:00", None)
    assert "4155550311" not in key and key.startswith("oaksend-campaign:2:")
    assert idempotency_key(2, "+14155550311", "2026-12-03T10:00", None) == key  # deterministic: dedupe holds
    assert idempotency_key(2, "+14155550311", "2026-12-03T10:00", "s3cret") != key


def test_frequency_cap_counts_every_campaign_and_this_batch() -> None:
    from oaksend.worker.campaigns.plan import apply_frequency_cap

    t0 = datetime(2026, 12, 1, 15, tzinfo=UTC)

    def row(phone: str, hours: float) -> dict[str, object]:
        return {"to_phone": phone, "next_attempt_at": t0 + timedelta(hours=hours)}

    existing = {"+1": [t0 - timedelta(hours=20)]}  # another campaign's message 20 h earlier
    rows = [row("+1", 0), row("+1", 1), row("+1", 30), row("+2", 0), row("+2", 23.9), row("+2", 12), row("+2", 36)]
    kept, skipped = apply_frequency_cap(rows, existing, 2)
    assert [(r["to_phone"], (r["next_attempt_at"] - t0).total_seconds() / 3600) for r in kept] == [
        ("+1", 0), ("+2", 0), ("+2", 12), ("+1", 30), ("+2", 36)]
    # +1 at 1 h: -20 h and 0 h are within 24 h; +2 at 23.9 h: 0 h and 12 h are. At 36 h only 12 h is.
    assert skipped == 2


def test_missed_skip_keeps_the_deadline() -> None:
    # --missed skip decides what is written after downtime; it never shortens a written message's
    # deadline behind the operator's back (a rate cap spacing them out would expire them).
    for missed in ("skip", "send"):
        planned, _ = plan(REL, quiet="off", missed=missed).occurrences(ann(), NOW)
        assert [p.deadline_at - p.send_at for p in planned] == [timedelta(hours=24), timedelta(hours=2)]
