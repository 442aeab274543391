"""Pure: phonenumbers' own answers for E.164 strings, without its per-call overhead.

Checking 100,000 numbers with `phonenumbers.parse` + `number_type` takes about
3.3 s on this machine: most of it is generic work (lenient parsing of any
format, a regular expression looked up per pattern per call, ten type checks
each through three function calls). A campaign or a bulk send checks one number
per row, so that cost sets how fast they can be scheduled.

This module gives the same results, faster, for the one shape oaksend accepts
(`+` and 7-15 digits):

- `parse_e164` builds the PhoneNumber directly when phonenumbers' parse would
  only split off the country code (no national prefix to strip, which is the case
  for every number whose region has no `national_prefix_for_parsing` or whose
  digits do not start with it); anything else goes to `phonenumbers.parse`.
- `number_type` is phonenumbers' `number_type` (and `region_code_for_number`)
  step by step, with each region's patterns compiled once and kept.
- `geographical_time_zones` is its time-zone look-up, from the E.164 text the
  caller already has instead of formatting the number again.

Both follow phonenumbers 8.13-9.x line by line (phonenumberutil.parse,
_number_type_helper, _region_code_for_number_from_list,
timezone.time_zones_for_geographical_number); tests/unit/test_phone.py compares them
with phonenumbers on every region's example numbers and on hundreds of thousands of
random numbers, so a change in the library shows there.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import phonenumbers
from phonenumbers import REGION_CODE_FOR_NON_GEO_ENTITY, PhoneMetadata, PhoneNumber, PhoneNumberType
from phonenumbers.phonenumberutil import COUNTRY_CODE_TO_REGION_CODE
from phonenumbers.timezone import UNKNOWN_TIMEZONE
from phonenumbers.tzdata import TIMEZONE_DATA, TIMEZONE_LONGEST_PREFIX

UNKNOWN = PhoneNumberType.UNKNOWN
#: phonenumbers' _MAX_LENGTH_COUNTRY_CODE, _MIN_LENGTH_FOR_NSN and _MAX_LENGTH_FOR_NSN.
_MAX_CC_DIGITS = 3
_MIN_NSN = 2
_MAX_NSN = 17
_DIGITS = re.compile(r"\+[0-9]+")


class _Desc(NamedTuple):
    """A PhoneNumberDesc, ready to test: its possible lengths and its compiled pattern."""

    lengths: frozenset[int]
    pattern: re.Pattern[str] | None

    def matches(self, nsn: str) -> bool:
        # _is_number_matching_desc + _match_national_number(allow_prefix_match=False)
        if self.lengths and len(nsn) not in self.lengths:
            return False
        return self.pattern is not None and self.pattern.fullmatch(nsn) is not None


class _Region(NamedTuple):
    general: _Desc
    #: premium rate, toll free, shared cost, VoIP, personal, pager, UAN, voicemail: in phonenumbers' order
    special: tuple[tuple[int, _Desc], ...]
    fixed_line: _Desc
    mobile: _Desc
    same_mobile_and_fixed: bool
    leading_digits: re.Pattern[str] | None
    national_prefix_for_parsing: re.Pattern[str] | None


_NONE = _Desc(frozenset(), None)
_regions: dict[int, _Region | None] = {}  # id(metadata) -> compiled region


def _desc(d: object) -> _Desc:
    if d is None:
        return _NONE
    pattern = getattr(d, "national_number_pattern", None)
    return _Desc(frozenset(getattr(d, "possible_length", ()) or ()), re.compile(pattern) if pattern else None)


def _region(metadata: PhoneMetadata | None) -> _Region | None:
    if metadata is None:
        return None
    key = id(metadata)
    region = _regions.get(key)
    if region is None:
        m = metadata
        region = _Region(
            general=_desc(m.general_desc),
            special=tuple((t, _desc(d)) for t, d in (
                (PhoneNumberType.PREMIUM_RATE, m.premium_rate), (PhoneNumberType.TOLL_FREE, m.toll_free),
                (PhoneNumberType.SHARED_COST, m.shared_cost), (PhoneNumberType.VOIP, m.voip),
                (PhoneNumberType.PERSONAL_NUMBER, m.personal_number), (PhoneNumberType.PAGER, m.pager),
                (PhoneNumberType.UAN, m.uan), (PhoneNumberType.VOICEMAIL, m.voicemail)) if d is not None),
            fixed_line=_desc(m.fixed_line),
            mobile=_desc(m.mobile),
            same_mobile_and_fixed=bool(m.same_mobile_and_fixed_line_pattern),
            leading_digits=re.compile(m.leading_digits) if m.leading_digits is not None else None,
            national_prefix_for_parsing=(re.compile(m.national_prefix_for_parsing)
                                         if m.national_prefix_for_parsing else None),
        )
        _regions[key] = region
    return region


def _type_of(nsn: str, r: _Region) -> int:
    """phonenumbers' _number_type_helper."""
    if not r.general.matches(nsn):
        return UNKNOWN
    for kind, desc in r.special:
        if desc.matches(nsn):
            return kind
    if r.fixed_line.matches(nsn):
        if r.same_mobile_and_fixed or r.mobile.matches(nsn):
            return PhoneNumberType.FIXED_LINE_OR_MOBILE
        return PhoneNumberType.FIXED_LINE
    if not r.same_mobile_and_fixed and r.mobile.matches(nsn):
        return PhoneNumberType.MOBILE
    return UNKNOWN


def _metadata(country_code: int, region_code: str | None) -> PhoneMetadata | None:
    if region_code == REGION_CODE_FOR_NON_GEO_ENTITY:
        return PhoneMetadata.metadata_for_nongeo_region(country_code, None)
    if region_code is None:
        return None
    return PhoneMetadata.metadata_for_region(region_code, None)


_calling: dict[int, tuple[tuple[str, _Region | None], ...]] = {}  # country code -> its regions, compiled


def _regions_of(country_code: int) -> tuple[tuple[str, _Region | None], ...]:
    regions = _calling.get(country_code)
    if regions is None:
        codes = COUNTRY_CODE_TO_REGION_CODE.get(country_code, ())
        if len(codes) == 1:
            regions = ((codes[0], _region(_metadata(country_code, codes[0]))),)
        else:
            regions = tuple((code, _region(PhoneMetadata.metadata_for_region(code.upper(), None))) for code in codes)
        _calling[country_code] = regions
    return regions


def _classify(country_code: int | None, nsn: str) -> tuple[str | None, int]:
    """(phonenumbers.region_code_for_number, phonenumbers.number_type) of a number."""
    # PhoneNumber.country_code is None only on a number built empty: no region, like phonenumbers says.
    regions = _regions_of(country_code) if country_code is not None else ()
    if not regions:
        return None, UNKNOWN
    if len(regions) == 1:
        code, r = regions[0]
        return code, UNKNOWN if r is None else _type_of(nsn, r)
    # _region_code_for_number_from_list; number_type then types the number with the region found
    for code, r in regions:
        if r is None:
            continue
        if r.leading_digits is not None:
            if r.leading_digits.match(nsn):
                return code, _type_of(nsn, r)
        else:
            kind = _type_of(nsn, r)
            if kind != UNKNOWN:
                return code, kind
    return None, UNKNOWN


def region_code(number: PhoneNumber) -> str | None:
    """phonenumbers.region_code_for_number."""
    return _classify(number.country_code, phonenumbers.national_significant_number(number))[0]


def number_type(number: PhoneNumber) -> int:
    """phonenumbers.number_type: a PhoneNumberType, UNKNOWN exactly when the number is not valid."""
    return _classify(number.country_code, phonenumbers.national_significant_number(number))[1]


def parse_e164(text: str) -> PhoneNumber:
    """phonenumbers.parse(text, None) for `+` and digits; raises phonenumbers.NumberParseException like it."""
    return _parse(text)[0]


def parse_and_type(text: str) -> tuple[PhoneNumber, int]:
    """(parse_e164(text), number_type of it), sharing the work."""
    number, nsn = _parse(text)
    return number, _classify(number.country_code, nsn)[1]


#: Country calling codes by their digits ("1", "44", "380"): _extract_country_code's look-up, without int().
_CODES = {str(cc): cc for cc in COUNTRY_CODE_TO_REGION_CODE}


def _parse(text: str) -> tuple[PhoneNumber, str]:
    """The number and its national significant number (digits)."""
    if len(text) > 18 or not _DIGITS.fullmatch(text):
        number = phonenumbers.parse(text, None)
        return number, phonenumbers.national_significant_number(number)
    digits = text[1:]
    # _extract_country_code
    country_code, nsn = 0, digits
    if digits[0] != "0":
        for i in range(1, min(len(digits), _MAX_CC_DIGITS) + 1):
            code = _CODES.get(digits[:i])
            if code is not None:
                country_code, nsn = code, digits[i:]
                break
    if country_code == 0 or not _MIN_NSN <= len(nsn) <= _MAX_NSN:
        phonenumbers.parse(text, None)  # raises, with phonenumbers' own error
        raise AssertionError(text)  # pragma: no cover - phonenumbers accepted what it never does
    r = _regions_of(country_code)[0][1]  # the main region's metadata, as parse takes it
    if r is None or (r.national_prefix_for_parsing is not None and r.national_prefix_for_parsing.match(nsn)):
        number = phonenumbers.parse(text, None)  # a national prefix might be stripped: phonenumbers decides
        return number, phonenumbers.national_significant_number(number)
    number = PhoneNumber(country_code=country_code, national_number=int(nsn))
    # _set_italian_leading_zeros_for_phone_number
    if len(nsn) > 1 and nsn[0] == "0":
        number.italian_leading_zero = True
        zeros = 1
        while zeros < len(nsn) - 1 and nsn[zeros] == "0":
            zeros += 1
        if zeros != 1:
            number.number_of_leading_zeros = zeros
    return number, nsn


def is_valid(number: PhoneNumber) -> bool:
    """phonenumbers.is_valid_number."""
    return number_type(number) != UNKNOWN


def e164(number: PhoneNumber, text: str) -> str:
    """format_number(number, E164), given the text it was parsed from: that text when it already is it."""
    if not number.italian_leading_zero and text == f"+{number.country_code}{number.national_number}":
        return text
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def geographical_time_zones(e164_text: str) -> tuple[str, ...]:
    """phonenumbers.timezone.time_zones_for_geographical_number, from the number's E.164 text
    (the longest prefix of its digits in phonenumbers' time-zone data)."""
    for length in range(min(TIMEZONE_LONGEST_PREFIX, len(e164_text) - 1), 0, -1):
        zones = TIMEZONE_DATA.get(e164_text[1:1 + length])
        if zones is not None:
            return zones
    return (UNKNOWN_TIMEZONE,)


__all__ = ["e164", "geographical_time_zones", "is_valid", "number_type", "parse_and_type", "parse_e164",
           "region_code"]
