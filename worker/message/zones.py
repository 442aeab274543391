"""Pure: the time zones a phone number may be in (its candidate zones), and their short names.

phonenumbers answers a geographic number (a landline, or a US/Canadian number of
either kind) from the longest prefix it knows: `+1605` is Denver or
North Dakota's Center, `+1415` Los Angeles. For every other number (the mobiles
of most countries, toll-free, VoIP) it answers with the calling code's zones:
forty-two for country code 1, so a Trinidad mobile would be "anywhere from Guam
to Newfoundland". Here such a number gets the zones of its REGION instead (the
tz database's zone.tab, as shipped by the `tzdata` package): a Trinidad mobile is
America/Port_of_Spain, an Australian mobile Australia's twelve zones, an Irish
one Europe/Dublin.

A message row carries its zone set in at most 68 characters (the `quiet` column
is 80 wide, with the window): the names themselves when they fit, else a token
that names where they come from (`@AU`: a region's zones; `+61`: phonenumbers'
zones for that prefix). `resolve` turns either back into zones.

zone.tab is read once, from the tzdata package's files (as `zoneinfo` reads its
zones): static data, so every answer here is a function of its inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources
from zoneinfo import ZoneInfo

import phonenumbers
from phonenumbers import PhoneNumber
from phonenumbers.phonenumberutil import COUNTRY_CODE_TO_REGION_CODE
from phonenumbers.timezone import UNKNOWN_TIMEZONE
from phonenumbers.tzdata import TIMEZONE_DATA, TIMEZONE_LONGEST_PREFIX

from oaksend.worker.message import phone as fast_phone

#: What a zone set may take of a message row's `quiet` column ("HH:MM-HH:MM " takes the other 12).
MAX_TOKEN_CHARS = 68
#: Why a number's zones are not known (the recipient then falls back to the campaign's zone).
NO_ZONE = "number_has_no_zone"
UNKNOWN_ZONE_NAME = "zone_not_in_tz_database"


@dataclass(frozen=True)
class NumberZones:
    """A number's candidate zones (empty: none known, see `why`) and their short name for a message row."""

    zones: tuple[ZoneInfo, ...]
    token: str
    why: str = ""


def number_zones(number: PhoneNumber, kind: int, e164_text: str) -> NumberZones:
    """The candidate zones of a valid number of type `kind` (phonenumbers.number_type)."""
    cc = number.country_code or 0
    if phonenumbers.is_number_type_geographical(kind, cc):
        found = _geographic(e164_text)
        if found is not None:
            return found
    region = _only_region(cc) or fast_phone.region_code(number)
    if region and region_zone_names(region):
        return _of_region(region)
    return _of_prefix(str(cc))


def _geographic(e164_text: str) -> NumberZones | None:
    """phonenumbers' answer for the longest known prefix of the number (None: it knows none)."""
    for length in range(min(TIMEZONE_LONGEST_PREFIX, len(e164_text) - 1), 0, -1):
        prefix = e164_text[1:1 + length]
        if prefix in TIMEZONE_DATA:
            return _of_prefix(prefix) if TIMEZONE_DATA[prefix] != (UNKNOWN_TIMEZONE,) else None
    return None


@lru_cache(maxsize=4096)
def _of_prefix(prefix: str) -> NumberZones:
    names = TIMEZONE_DATA.get(prefix, (UNKNOWN_TIMEZONE,))
    token = " ".join(names)
    return _named(names, token if len(token) <= MAX_TOKEN_CHARS else f"+{prefix}")


@lru_cache(maxsize=512)
def _of_region(region: str) -> NumberZones:
    names = region_zone_names(region)
    token = " ".join(names)
    return _named(names, token if len(token) <= MAX_TOKEN_CHARS else f"@{region}")


def _named(names: tuple[str, ...], token: str) -> NumberZones:
    names = tuple(n for n in names if n != UNKNOWN_TIMEZONE)
    if not names:
        return NumberZones((), "", NO_ZONE)
    zones = tuple(z for z in map(zone_named, names) if z is not None)
    if not zones:
        return NumberZones((), "", UNKNOWN_ZONE_NAME)
    if len(zones) < len(names) and not token.startswith(("@", "+")):
        token = " ".join(z.key for z in zones)  # only the zones this system knows (they fit: fewer names)
    return NumberZones(zones, token)


@cache
def _only_region(cc: int) -> str | None:
    """The one region of a calling code that has only one (no classifying needed)."""
    regions = COUNTRY_CODE_TO_REGION_CODE.get(cc, ())
    return regions[0] if len(regions) == 1 else None


@cache
def _zone_tab() -> dict[str, tuple[str, ...]]:
    """Region (ISO 3166 code) -> its zones, in zone.tab's order; empty when tzdata is not installed."""
    try:
        text = resources.files("tzdata").joinpath("zoneinfo", "zone.tab").read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError, OSError):  # pragma: no cover - tzdata is a dependency
        return {}
    table: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            fields = line.split("\t")
            if len(fields) >= 3:
                table.setdefault(fields[0], []).append(fields[2])
    return {region: tuple(names) for region, names in table.items()}


def region_zone_names(region: str) -> tuple[str, ...]:
    """The zones the tz database lists for a region (() for an unknown one, e.g. '001')."""
    return _zone_tab().get(region.upper(), ())


@lru_cache(maxsize=4096)
def resolve(token: str) -> tuple[ZoneInfo, ...]:
    """A message row's zone set back into zones: names, '@AU' (a region's) or '+61' (a prefix's).

    Raises ValueError naming what is not known (a row written with data this system lacks)."""
    zones: list[ZoneInfo] = []
    for part in token.split():
        if part.startswith("@"):
            names = region_zone_names(part[1:])
        elif part.startswith("+"):
            names = tuple(n for n in TIMEZONE_DATA.get(part[1:], ()) if n != UNKNOWN_TIMEZONE)
        else:
            names = (part,)
        found = [z for z in map(zone_named, names) if z is not None]
        if not found:
            raise ValueError(f"{part!r} names no time zone known here")
        zones += found
    if not zones:
        raise ValueError("no time zone given")
    return tuple(dict.fromkeys(zones))


@lru_cache(maxsize=1024)
def zone_named(name: str) -> ZoneInfo | None:
    """The zone of that name, or None when this system's time-zone data lacks it."""
    try:
        return ZoneInfo(name)
    except (ValueError, KeyError, OSError):
        return None


__all__ = ["MAX_TOKEN_CHARS", "NO_ZONE", "UNKNOWN_ZONE_NAME", "NumberZones", "number_zones", "region_zone_names",
           "resolve", "zone_named"]
