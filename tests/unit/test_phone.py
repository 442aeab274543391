"""oaksend.worker.message.phone gives phonenumbers' own answers: compared number by number.

The fast path is only worth having if it is exact. Every region's example numbers
of every type, variations of them (digits changed, one digit more or less,
leading zeros, a national prefix after the country code) and random digit strings
go through both; parse results (or the error raised), number types, regions,
validity, E.164 text and time zones must be equal.
"""

from __future__ import annotations

import random

import phonenumbers
import pytest
from phonenumbers import PhoneNumberType
from phonenumbers import timezone as phone_timezones
from phonenumbers.phonenumberutil import COUNTRY_CODE_TO_REGION_CODE

from oaksend.worker.message import phone

TYPES = [t for t in vars(PhoneNumberType).values() if isinstance(t, int)]


def _examples() -> list[str]:
    out: set[str] = set()
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for kind in TYPES:
            n = phonenumbers.example_number_for_type(region, kind)
            if n is not None:
                out.add(phonenumbers.format_number(n, phonenumbers.PhoneNumberFormat.E164))
    for cc in sorted(phonenumbers.COUNTRY_CODES_FOR_NON_GEO_REGIONS):
        for kind in TYPES:
            n = phonenumbers.example_number_for_non_geo_entity(cc)
            if n is not None:
                out.add(phonenumbers.format_number(n, phonenumbers.PhoneNumberFormat.E164))
    return sorted(out)


EXAMPLES = _examples()


def _variations(rng: random.Random) -> list[str]:
    out: list[str] = []
    for e164 in EXAMPLES:
        digits = e164[1:]
        for _ in range(6):
            chars = list(digits)
            for _ in range(rng.randint(1, 3)):
                i = rng.randrange(1, len(chars))
                chars[i] = rng.choice("0123456789")
            out.append("+" + "".join(chars))
        out.append(e164 + rng.choice("0123456789"))
        out.append(e164[:-1])
    for cc in COUNTRY_CODE_TO_REGION_CODE:
        for prefix in ("0", "00", "1", "8", "9", "06"):  # national prefixes, trunk codes, leading zeros
            for length in (6, 8, 10, 12):
                out.append(f"+{cc}{prefix}" + "".join(rng.choice("0123456789") for _ in range(length)))
    return out


def _random(rng: random.Random, n: int) -> list[str]:
    return ["+" + rng.choice("123456789") + "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 16)))
            for _ in range(n)]


def _same(text: str) -> None:
    try:
        expected = phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException as exc:
        with pytest.raises(phonenumbers.NumberParseException) as got:
            phone.parse_e164(text)
        assert got.value.error_type == exc.error_type, text
        return
    parsed = phone.parse_e164(text)
    assert parsed == expected, text
    assert phone.parse_and_type(text) == (expected, phonenumbers.number_type(expected)), text
    assert phone.number_type(parsed) == phonenumbers.number_type(expected), text
    assert phone.region_code(parsed) == phonenumbers.region_code_for_number(expected), text
    assert phone.is_valid(parsed) == phonenumbers.is_valid_number(expected), text
    assert phone.e164(parsed, text) == phonenumbers.format_number(expected, phonenumbers.PhoneNumberFormat.E164), text
    if phonenumbers.is_valid_number(expected):
        assert phone.geographical_time_zones(phone.e164(parsed, text)) == tuple(
            phone_timezones.time_zones_for_geographical_number(expected)), text


def test_every_example_number_of_every_region_and_type() -> None:
    assert len(EXAMPLES) > 1000
    for text in EXAMPLES:
        _same(text)
        assert phone.is_valid(phone.parse_e164(text)), text


def test_variations_of_the_examples_and_national_prefixes() -> None:
    for text in _variations(random.Random(20261127)):
        _same(text)


def test_random_digit_strings() -> None:
    for text in _random(random.Random(7), 30_000):
        _same(text)


@pytest.mark.parametrize("text", ["+14155550123", "+442071838750", "+390236618300", "+61491570156", "+8613800138000",
                                  "+800 1234 5678", "+1", "+0123456789", "12345678", "+1 (415) 555-0123", "+9991234567"])
def test_known_shapes_and_other_formats_go_to_phonenumbers(text: str) -> None:
    _same(text)


def test_an_italian_leading_zero_is_kept() -> None:
    parsed = phone.parse_e164("+390236618300")
    assert parsed.italian_leading_zero and phonenumbers.format_number(
        parsed, phonenumbers.PhoneNumberFormat.E164) == "+390236618300"
