"""check_phone: one number, one spelling (canonical E.164), decided as phonenumbers decides it.

A trunk zero typed after the country code (`+4407911123456`, what `+44 (0)7911 123456`
becomes with its punctuation removed) is the same number as `+447911123456`, and is
returned as that; a number valid only with its leading zero (Italy) keeps it.
"""

from __future__ import annotations

import random
import time

import phonenumbers
import pytest
from phonenumbers.phonenumberutil import COUNTRY_CODE_TO_REGION_CODE

from oaksend.errors import ValidationError
from oaksend.worker.message.validation import canonical_phone, check_phone

SAME_NUMBER = [
    # (typed, canonical)
    ("+4407911123456", "+447911123456"),  # UK mobile, trunk zero after +44
    ("+447911123456", "+447911123456"),
    ("+610412345678", "+61412345678"),  # Australia
    ("+49030123456", "+4930123456"),  # Germany, Berlin
    ("+330612345678", "+33612345678"),  # France
    ("+64021234567", "+6421234567"),  # New Zealand
    ("+35057123456", "+35057123456"),  # Gibraltar: no trunk prefix to take
    ("+390612345678", "+390612345678"),  # Italy: the zero is part of the number
    ("+14155550123", "+14155550123"),
]


@pytest.mark.parametrize(("typed", "canonical"), SAME_NUMBER)
def test_a_number_is_returned_in_its_one_spelling(typed: str, canonical: str) -> None:
    assert phonenumbers.is_valid_number(phonenumbers.parse(canonical, None))
    assert check_phone(typed) == canonical
    assert check_phone(canonical) == canonical  # the canonical spelling is its own
    assert canonical_phone(typed) == canonical


@pytest.mark.parametrize(("typed", "why"), [
    ("+44 (0)7911 123456", "not an E.164 number"),  # punctuation: refused, with the masked hint
    ("+440", "not an E.164 number"),
    ("+4407911", "not a valid phone number"),
    ("+999123456", "not a phone number"),
    ("", "required"),
])
def test_invalid_numbers_are_refused_naming_the_field(typed: str, why: str) -> None:
    with pytest.raises(ValidationError) as info:
        check_phone(typed, field="row.mobile")
    assert info.value.field == "row.mobile" and why in info.value.message and "\n" not in str(info.value)
    assert canonical_phone(typed) is None


def test_the_punctuated_spelling_hints_at_the_canonical_number_masked() -> None:
    with pytest.raises(ValidationError, match=r"did you mean \+4479\*+456\?"):
        check_phone("+44 (0)7911 123456")


def _typed_numbers(rng: random.Random) -> list[str]:
    out: list[str] = []
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        n = phonenumbers.example_number_for_type(region, phonenumbers.PhoneNumberType.MOBILE)
        if n is None:
            continue
        e164 = phonenumbers.format_number(n, phonenumbers.PhoneNumberFormat.E164)
        cc = str(n.country_code)
        out += [e164, f"+{cc}0{e164[1 + len(cc):]}", f"+{cc}00{e164[1 + len(cc):]}"]
    for cc in COUNTRY_CODE_TO_REGION_CODE:
        for _ in range(5):
            out.append(f"+{cc}0" + "".join(rng.choice("0123456789") for _ in range(rng.randint(6, 10))))
    return out


def test_agrees_with_phonenumbers_and_is_idempotent_on_every_region() -> None:
    """Whatever it accepts is what phonenumbers parses as valid, formatted E.164; that text maps to itself."""
    accepted = 0
    for typed in _typed_numbers(random.Random(18)):
        try:
            got = check_phone(typed)
        except ValidationError:
            try:
                parsed = phonenumbers.parse(typed, None)
            except phonenumbers.NumberParseException:
                continue
            assert not phonenumbers.is_valid_number(parsed), typed
            continue
        accepted += 1
        parsed = phonenumbers.parse(typed, None)
        assert phonenumbers.is_valid_number(parsed), typed
        assert got == phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164), typed
        assert check_phone(got) == got, typed
    assert accepted > 400


def test_the_canonical_check_stays_fast() -> None:
    """Producer.send's budget is 5 ms at p99; the number's share must stay in microseconds."""
    numbers = ["+14155550123", "+447911123456", "+4407911123456"] * 2000
    start = time.perf_counter()
    for n in numbers:
        check_phone(n)
    per_call_us = (time.perf_counter() - start) / len(numbers) * 1e6
    assert per_call_us < 200, per_call_us
