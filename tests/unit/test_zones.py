"""A number's candidate zones, and quiet hours held in every one of them (pure: no database, no clock).

The cases the issue saw go wrong: South Dakota (605: Central and Mountain) at 03:00 CST,
an Australian mobile at 02:00 AEDT, a Trinidad mobile given country code 1's 42 zones.
The properties run over every zone set the phone data can give and a year of instants.
"""

from __future__ import annotations

import random
import time as clock
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import phonenumbers
import pytest

from oaksend.worker.message import phone as fast_phone
from oaksend.worker.message.quiet import (
    QuietHours,
    at_send,
    compact,
    from_compact,
    next_allowed,
    next_allowed_in_all,
    recipient_zones,
)
from oaksend.worker.message.zones import MAX_TOKEN_CHARS, NO_ZONE, region_zone_names, resolve

NIGHT = QuietHours(time(21), time(8))
NY = ZoneInfo("America/New_York")
CHICAGO = ZoneInfo("America/Chicago")
SYDNEY = ZoneInfo("Australia/Sydney")


def keys(zones: tuple[ZoneInfo, ...]) -> list[str]:
    return [z.key for z in zones]


@pytest.mark.parametrize(
    ("phone", "expected"),
    [
        ("+16055550123", {"America/Denver", "America/North_Dakota/Center"}),  # South Dakota: two zones
        ("+18687531234", {"America/Port_of_Spain"}),  # a Trinidad mobile: its region, not country code 1's 42
        ("+353851234567", {"Europe/Dublin"}),  # an Irish mobile: Ireland, not the UK's zones
        ("+14155550123", {"America/Los_Angeles"}),
        ("+12125550100", {"America/New_York"}),
        ("+13035550100", {"America/Denver"}),
        ("+64211234567", {"Pacific/Auckland", "Pacific/Chatham"}),
    ],
)
def test_candidate_zones(phone: str, expected: set[str]) -> None:
    zones = recipient_zones(None, phone, NY)
    assert set(keys(zones.quiet)) == expected and zones.home == NY and zones.fallback == ""


def test_an_australian_mobile_has_australias_zones() -> None:
    zones = recipient_zones(None, "+61412345678", NY)
    assert set(keys(zones.quiet)) == set(region_zone_names("AU"))
    assert {"Australia/Perth", "Australia/Sydney", "Australia/Lord_Howe"} <= set(keys(zones.quiet))
    assert zones.token == "@AU"  # too long to spell out in a message row


def test_a_uk_mobile_is_in_london_time() -> None:
    zones = recipient_zones(None, "+447400123456", NY)
    offsets = {z.utcoffset(datetime(2027, 1, 5)) for z in zones.quiet}
    assert offsets == {timedelta(0)} and "Europe/London" in keys(zones.quiet)


def test_a_number_without_a_zone_falls_back_to_the_campaigns_and_says_why() -> None:
    zones = recipient_zones(None, "+80012345678", CHICAGO)  # international freephone: no place at all
    assert zones.quiet == (CHICAGO,) and zones.fallback == NO_ZONE


def test_the_rows_zone_wins_for_both() -> None:
    zones = recipient_zones("Europe/Paris", "+61412345678", NY)
    assert zones.home.key == "Europe/Paris" and keys(zones.quiet) == ["Europe/Paris"]


def utc(tz: ZoneInfo, *args: int) -> datetime:
    return datetime(*args, tzinfo=tz).astimezone(UTC)


@pytest.mark.parametrize(
    ("phone", "now", "local_zone", "expected_local"),
    [
        # 03:00 CST in South Dakota's east is 02:00 MST in its west: both wait for 08:00 MST
        ("+16055550123", utc(CHICAGO, 2027, 1, 5, 3, 0), "America/Denver", (2027, 1, 5, 8, 0)),
        # 08:00 CST is still 07:00 MST: not yet
        ("+16055550123", utc(CHICAGO, 2027, 1, 5, 8, 0), "America/Denver", (2027, 1, 5, 8, 0)),
        # 20:30 MST is 21:30 CST: too late in the east, so the next morning
        ("+16055550123", utc(ZoneInfo("America/Denver"), 2027, 1, 5, 20, 30), "America/Denver", (2027, 1, 6, 8, 0)),
        # 02:00 AEDT: Perth's 08:00 (11:00 AEDT) is the first hour all of Australia allows
        ("+61412345678", utc(SYDNEY, 2027, 1, 5, 2, 0), "Australia/Sydney", (2027, 1, 5, 11, 0)),
        # Trinidad: one zone, its own hours
        ("+18687531234", utc(ZoneInfo("America/Port_of_Spain"), 2027, 1, 5, 6, 0), "America/Port_of_Spain",
         (2027, 1, 5, 8, 0)),
    ],
)
def test_a_send_waits_for_every_candidate_zone(phone: str, now: datetime, local_zone: str,
                                               expected_local: tuple[int, ...]) -> None:
    zones = recipient_zones(None, phone, NY)
    allowed = next_allowed_in_all(now, NIGHT, zones.quiet)
    assert allowed == utc(ZoneInfo(local_zone), *expected_local)
    check = at_send(compact(NIGHT, zones.token), None, now)
    assert check.at == allowed or (check.action == "send" and allowed == now)


def test_zones_that_share_an_offset_answer_as_one_zone() -> None:
    uk = (ZoneInfo("Europe/London"), ZoneInfo("Europe/Guernsey"), ZoneInfo("Europe/Jersey"))
    start = datetime(2027, 1, 1, tzinfo=UTC)
    for hour in range(0, 365 * 24, 5):
        now = start + timedelta(hours=hour, minutes=hour % 60)
        assert next_allowed_in_all(now, NIGHT, uk) == next_allowed(now, NIGHT, uk[0])


def test_zones_that_never_share_an_allowed_hour_give_none() -> None:
    apart = (ZoneInfo("Europe/London"), ZoneInfo("Pacific/Auckland"))  # 13 hours apart in January
    assert next_allowed_in_all(datetime(2027, 1, 5, tzinfo=UTC), QuietHours(time(20), time(9)), apart) is None
    assert at_send("20:00-09:00 Europe/London Pacific/Auckland", None,
                   datetime(2027, 1, 5, tzinfo=UTC)).action == "expire"
    # in July they are 12 hours apart: 08:00-09:00 London is 20:00-21:00 Auckland, and 20:00 is quiet there
    assert next_allowed_in_all(datetime(2027, 7, 5, tzinfo=UTC), QuietHours(time(20), time(9)), apart) is None
    assert next_allowed_in_all(datetime(2027, 7, 5, tzinfo=UTC), QuietHours(time(21), time(8)), apart) == \
        datetime(2027, 7, 5, 7, tzinfo=UTC)  # 08:00 London, 19:00 Auckland


def _all_zone_sets() -> list[tuple[ZoneInfo, ...]]:
    """Every distinct zone set phonenumbers' prefixes and the tz database's regions give."""
    from phonenumbers.tzdata import TIMEZONE_DATA

    tokens = {" ".join(v) for v in TIMEZONE_DATA.values() if "Etc/Unknown" not in v}
    sets = {resolve(t) for t in tokens if len(t) <= MAX_TOKEN_CHARS}
    sets |= {resolve(f"@{r}") for r in ("AU", "US", "CA", "RU", "BR", "MX", "ID", "KZ", "NZ", "ES", "PT", "CL")}
    return sorted(sets, key=lambda s: [z.key for z in s])


def test_property_every_zone_set_over_a_year() -> None:
    """For every zone set, at random instants of a year: the answer is allowed in EVERY zone, is not
    earlier than now, and nothing earlier (probed each 15 minutes) was allowed in all of them."""
    rng = random.Random(18)
    sets = _all_zone_sets()
    assert len(sets) > 100
    windows = [NIGHT, QuietHours(time(22, 30), time(7, 15)), QuietHours(time(12), time(13))]
    start = datetime(2027, 1, 1, tzinfo=UTC)
    for zones in sets:
        for _ in range(6):
            now = start + timedelta(minutes=rng.randrange(365 * 24 * 60))
            window = rng.choice(windows)
            allowed = next_allowed_in_all(now, window, zones)
            if allowed is None:
                continue
            assert allowed >= now
            for tz in zones:
                assert not window.contains(allowed.astimezone(tz).time().replace(tzinfo=None)), (zones, now)
            probe = now
            while probe < allowed - timedelta(minutes=15):
                assert any(window.contains(probe.astimezone(tz).time().replace(tzinfo=None)) for tz in zones)
                probe += timedelta(minutes=15)


@pytest.mark.parametrize("value", [
    "21:00-08:00 America/New_York", "21:00-08:00 America/Denver America/North_Dakota/Center",
    "21:00-08:00 @AU", "21:00-08:00 +61",
])
def test_every_row_form_reads_back(value: str) -> None:
    window, zones = from_compact(value)
    assert window == NIGHT and zones and len(value) <= 80


def test_every_regions_token_fits_the_row() -> None:
    for region in phonenumbers.SUPPORTED_REGIONS:
        if region_zone_names(region):
            zones = recipient_zones(None, _example(region), NY) if _example(region) else None
            if zones is not None:
                assert len(compact(NIGHT, zones.token) or "") <= 80, region


def _example(region: str) -> str | None:
    number = phonenumbers.example_number_for_type(region, phonenumbers.PhoneNumberType.MOBILE)
    return None if number is None else phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def test_zones_are_fast() -> None:
    """100,000 recipients' zones in well under a second (a campaign plans 100,000 in <= 5 s)."""
    rng = random.Random(7)
    prefixes = ["+1605", "+1415", "+1212", "+1868", "+6141", "+4474", "+3538", "+3461", "+7912"]
    phones = []
    while len(phones) < 20000:
        text = rng.choice(prefixes) + "".join(rng.choice("0123456789") for _ in range(7))
        try:
            number, kind = fast_phone.parse_and_type(text)
        except phonenumbers.NumberParseException:
            continue
        if kind != phonenumbers.PhoneNumberType.UNKNOWN:
            phones.append((text, number, kind))
    began = clock.perf_counter()
    for _ in range(5):
        for text, number, kind in phones:
            recipient_zones(None, text, NY, parsed=number, kind=kind)
    elapsed = clock.perf_counter() - began
    assert elapsed < 3.0, f"{elapsed:.2f} s for 100,000 numbers"
