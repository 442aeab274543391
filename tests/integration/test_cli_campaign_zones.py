"""`oaksend campaign create / preview / show` and zones, through the CLI on SQLite and PostgreSQL.

No night sends by construction: a number's candidate zones all hold quiet hours (South
Dakota, an Australian mobile), non-geographic numbers get their region's zones (Trinidad,
UK mobiles), naive appointment times are read in the row's zone else the campaign's (never
the phone's), there is no silent UTC default, a date without a time is refused, and a
campaign that would write nothing is refused unless --allow-empty, saying why.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from oaksend.models.db import make_engine
from oaksend.models.tables import Campaign, Message
from tests.integration.test_cli import Cli, one_line
from tests.support import CHATBOT, reset_pg


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def zcli(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Cli:
    tmp = tmp_path_factory.mktemp(f"zones-{request.param}")
    if request.param == "sqlite":
        url = f"sqlite:///{tmp / 'oaksend.db'}"
    else:
        url = request.getfixturevalue("pg_database")
        reset_pg(url)
    c = Cli(url, tmp / "oaksend.db", tmp)
    assert c("migrate").code == 0
    return c


def messages(cli: Cli, campaign_id: int) -> dict[str, tuple[datetime, str | None, str]]:
    """to_phone -> (send time in UTC, quiet value, text) of a campaign's messages, read from the database."""
    engine = make_engine(cli.database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(Message.to_phone, Message.next_attempt_at, Message.quiet, Message.body)
                                .where(Message.campaign_id == campaign_id)).all()
    finally:
        engine.dispose()
    return {r.to_phone: (r.next_attempt_at.astimezone(UTC), r.quiet, r.body) for r in rows}


def campaigns(cli: Cli) -> int:
    engine = make_engine(cli.database_url)
    try:
        with engine.connect() as conn:
            return len(conn.execute(select(Campaign.id)).all())
    finally:
        engine.dispose()


def csv(tmp: Path, name: str, header: str, rows: list[str]) -> str:
    path = tmp / name
    path.write_text(header + "\n" + "".join(r + "\n" for r in rows), encoding="utf-8")
    return str(path)


def once(path: str, *extra: str) -> list[str]:
    return ["--name", "zones", "--chatbot", CHATBOT, "--audience", path, "--template", "Hi {name}", *extra]


#: One campaign in New York, 09:00 EST on 5 January 2027 (14:00 UTC), default quiet hours 21:00-08:00.
PEOPLE = {
    "+12125550100": datetime(2027, 1, 5, 14, 0, tzinfo=UTC),  # New York: 09:00, sent then
    "+14155550100": datetime(2027, 1, 5, 16, 0, tzinfo=UTC),  # San Francisco: 06:00, waits for 08:00 PST
    "+13035550100": datetime(2027, 1, 5, 15, 0, tzinfo=UTC),  # Denver: 07:00, waits for 08:00 MST
    "+16055550123": datetime(2027, 1, 5, 15, 0, tzinfo=UTC),  # South Dakota: 08:00 CST is 07:00 MST: 08:00 MST
    "+61412345678": datetime(2027, 1, 6, 0, 0, tzinfo=UTC),  # an Australian mobile: 01:00 AEDT; Perth's 08:00
    "+18687531234": datetime(2027, 1, 5, 14, 0, tzinfo=UTC),  # a Trinidad mobile: 10:00 in Port of Spain
    "+447400123456": datetime(2027, 1, 5, 14, 0, tzinfo=UTC),  # a UK mobile: 14:00 in London
    "+80012345678": datetime(2027, 1, 5, 14, 0, tzinfo=UTC),  # international freephone: the campaign's zone
}


def test_one_campaign_many_places_no_night_sends(zcli: Cli) -> None:
    path = csv(zcli.cwd, "people.csv", "phone,name", [f"{p},P{i}" for i, p in enumerate(PEOPLE)])
    result = zcli("campaign", "create", *once(path, "--at", "2027-01-05T09:00", "--tz", "America/New_York",
                                              "--deadline", "24h"), "--json")
    assert result.code == 0, result.err
    data = result.json()
    assert (data["recipients"], data["messages"], data["tz"], data["tz_source"]) == (8, 8, "America/New_York", "--tz")
    assert data["campaign_zone"] == {"number_has_no_zone": 1} and data["skipped"] == {}
    got = messages(zcli, data["id"])
    assert {phone: at for phone, (at, _, _) in got.items()} == PEOPLE
    assert got["+16055550123"][1] == "21:00-08:00 America/Denver America/North_Dakota/Center"
    assert got["+61412345678"][1] == "21:00-08:00 @AU"
    assert got["+18687531234"][1] == "21:00-08:00 America/Port_of_Spain"
    assert got["+80012345678"][1] == "21:00-08:00 America/New_York"

    shown = zcli("campaign", "show", str(data["id"]), "--json").json()
    assert shown["campaign_zone"] == {"number_has_no_zone": 1}
    text = zcli("campaign", "show", str(data["id"]))
    assert "number_has_no_zone" in text.out and "campaign_zone:" not in text.out

    plain = zcli("campaign", "create", *once(path, "--at", "2027-01-05T09:00", "--tz", "America/New_York",
                                             "--deadline", "24h"))
    assert plain.code == 0 and plain.out.strip().isdigit()  # stdout: the id alone; the counts on stderr
    assert "zone: America/New_York (--tz); 8 recipient(s), 8 message(s)" in plain.err
    assert "quiet hours in the campaign's zone (America/New_York): 1 recipient(s): 1 number has no zone" in plain.err


def test_naive_appointment_times_are_read_in_the_rows_zone_else_the_campaigns(zcli: Cli) -> None:
    path = csv(zcli.cwd, "visits.csv", "phone,name,at,tz", [
        "+14155550101,Ann,2027-01-05T14:00,",  # no zone: New York's 14:00 (not San Francisco's)
        "+14155550102,Bob,2027-01-05T14:00,America/Los_Angeles",  # the row's zone
        "+14155550103,Cy,2027-01-05T14:00-06:00,",  # an offset in the cell wins
    ])
    args = ["--name", "visits", "--chatbot", CHATBOT, "--audience", path, "--template", "{name}: {at:%H:%M}",
            "--before", "at:2h", "--tz", "America/New_York", "--tz-column", "tz", "--json"]
    result = zcli("campaign", "create", *args)
    assert result.code == 0, result.err
    got = messages(zcli, result.json()["id"])
    assert got["+14155550101"][0] == datetime(2027, 1, 5, 17, 0, tzinfo=UTC)  # 12:00 EST
    assert got["+14155550101"][2] == "Ann: 14:00"
    assert got["+14155550101"][1] == "21:00-08:00 America/Los_Angeles"  # the phone's zone: quiet hours only
    assert got["+14155550102"][0] == datetime(2027, 1, 5, 20, 0, tzinfo=UTC)  # 12:00 PST
    assert got["+14155550102"][2] == "Bob: 14:00"
    assert got["+14155550103"][0] == datetime(2027, 1, 5, 18, 0, tzinfo=UTC)  # 14:00-06:00 is 20:00 UTC, less 2 h


def test_the_zone_is_required_or_configured_and_shown(zcli: Cli) -> None:
    path = csv(zcli.cwd, "tz.csv", "phone,name", ["+12125550100,Ann"])
    before = campaigns(zcli)
    missing = zcli("campaign", "create", *once(path, "--at", "2027-01-05T12:00"))
    assert missing.code == 2
    assert one_line(missing.err).startswith("oaksend: tz: is required: give --tz ZONE")
    assert "OAKSEND_CAMPAIGN_TIMEZONE" in one_line(missing.err)
    assert campaigns(zcli) == before
    configured = zcli("campaign", "create", *once(path, "--at", "2027-01-05T12:00"), "--json",
                      OAKSEND_CAMPAIGN_TIMEZONE="America/Chicago")
    assert configured.code == 0, configured.err
    assert (configured.json()["tz"], configured.json()["tz_source"]) == ("America/Chicago", "OAKSEND_CAMPAIGN_TIMEZONE")
    bad = zcli("campaign", "preview", *once(path, "--at", "2027-01-05T12:00"), OAKSEND_CAMPAIGN_TIMEZONE="Moon/Base")
    assert bad.code == 2 and "OAKSEND_CAMPAIGN_TIMEZONE: 'Moon/Base' is not an IANA time zone" in one_line(bad.err)


def test_a_date_without_a_time_is_refused(zcli: Cli) -> None:
    path = csv(zcli.cwd, "date.csv", "phone,name", ["+12125550100,Ann"])
    before = campaigns(zcli)
    result = zcli("campaign", "create", *once(path, "--at", "2027-01-05", "--tz", "America/New_York"))
    assert result.code == 2
    assert one_line(result.err) == ("oaksend: at: '2027-01-05' is a date without a time; give the local time too "
                                    "(e.g. 2027-01-05T09:00)")
    assert campaigns(zcli) == before


def test_an_empty_campaign_is_refused_unless_allowed_and_preview_says_why(zcli: Cli) -> None:
    # 07:00 in New York, a reminder 1 h before: 03:00 in San Francisco, quiet until after the visit
    path = csv(zcli.cwd, "night.csv", "phone,name,at", ["+14155550100,Ann,2027-01-05T07:00"])
    args = ["--name", "night", "--chatbot", CHATBOT, "--audience", path, "--template", "Hi {name}",
            "--before", "at:1h", "--tz", "America/New_York"]
    before = campaigns(zcli)
    refused = zcli("campaign", "create", *args)
    assert refused.code == 2
    assert one_line(refused.err) == ("oaksend: campaign: would write 0 messages: 1 recipient(s), every message "
                                     "skipped (1 quiet hours) (--allow-empty to create it anyway)")
    assert campaigns(zcli) == before

    preview = zcli("campaign", "preview", *args)
    assert preview.code == 0, preview.err
    assert "(no messages)" in preview.out
    assert "no messages: 1 recipient(s), every message skipped (1 quiet hours)" in preview.out
    report = zcli("campaign", "preview", *args, "--json").json()
    assert (report["preview"], report["messages"], report["skipped"]) == ([], 0, {"quiet_hours": 1})
    assert report["why_empty"] == "1 recipient(s), every message skipped (1 quiet hours)"

    allowed = zcli("campaign", "create", *args, "--allow-empty", "--json")
    assert allowed.code == 0, allowed.err
    assert (allowed.json()["messages"], allowed.json()["skipped"]) == (0, {"quiet_hours": 1})
    assert campaigns(zcli) == before + 1


def test_segments_are_totalled_and_max_segments_skips_the_long_ones(zcli: Cli) -> None:
    """A name with a curly apostrophe turns its text into UCS-2 (70 characters a segment): preview
    says so; --max-segments skips and counts such a recipient, and the campaign keeps the limit."""
    long_note = "Please bring your insurance card and arrive ten minutes early for paperwork."
    path = csv(zcli.cwd, "segments.csv", "phone,name,note",
               ["+12125550171,Ann," + long_note, "+12125550172,O\u2019Brien," + long_note])
    args = ["--name", "segments", "--chatbot", CHATBOT, "--audience", path, "--template", "Hi {name}. {note}",
            "--at", "2027-01-05T10:00", "--tz", "America/New_York"]
    report = zcli("campaign", "preview", *args, "--json").json()
    assert report["messages"] == 2
    assert report["segments"] == {"total": 3, "ucs2_messages": 1, "longest": 2}
    text = zcli("campaign", "preview", *args)
    assert "segments: 3 in all" in text.out and "1 message(s) in UCS-2" in text.out

    created = zcli("campaign", "create", *args, "--max-segments", "1", "--json")
    assert created.code == 0, created.err
    assert (created.json()["messages"], created.json()["skipped"]) == (1, {"too_many_segments": 1})
    shown = zcli("campaign", "show", str(created.json()["id"]), "--json").json()
    assert shown["max_segments"] == 1
    assert list(messages(zcli, created.json()["id"])) == ["+12125550171"]
    refused = zcli("campaign", "create", *args, "--max-segments", "0")
    assert refused.code == 2 and "max_segments" in one_line(refused.err)
