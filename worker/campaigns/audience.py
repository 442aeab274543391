"""A campaign's audience: recipients read from CSV (streamed) or given from Python as dicts.

CSV: `read_csv` (oaksend.worker.campaigns.csvfile): a file either means one
thing or is refused, naming its line. Each recipient has a key (a column;
default the phone), a phone, an optional time-zone column, and any other
columns, which templates may use. A phone has one spelling, canonical E.164
(the producer's `check_phone`): `+44 (0)7911 123456` and `+4407911123456` are
read as `+447911123456`; what a spreadsheet did to a number (`1.21256E+10`,
`12125550130.0`, a dropped `+`) is refused with a hint, since its meaning is lost.

Problems are `RowError` values (row number as the file's line number, the header
being row 1; the column; why), collected so an operator sees them all at once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import phonenumbers

from oaksend.errors import ValidationError
from oaksend.worker.campaigns.csvfile import MAX_COLUMNS, problem_of, read_csv
from oaksend.worker.logs import mask_phone
from oaksend.worker.message import phone as fast_phone
from oaksend.worker.message.quiet import RecipientZones, recipient_zones
from oaksend.worker.message.validation import E164_RE, check_phone

MAX_KEY_CHARS = 150
MAX_CELL_CHARS = 2000
#: What spreadsheets make of a phone number typed without care; each is refused with its hint.
_SCIENTIFIC = re.compile(r"[0-9](?:[.,][0-9]+)?[eE]\+?[0-9]+")
_DOT_ZERO = re.compile(r"\+?[0-9]+[.,]0+")
_NO_PLUS = re.compile(r"[0-9]{7,15}")
#: A number written with its + and spaces, dashes, dots or brackets (`+44 (0)7911 123-456`).
_FORMATTED = re.compile(r"\+[0-9][0-9 ().-]*[0-9]")
_AS_TEXT = "format the column as Text in the spreadsheet and type the numbers with their +"


@dataclass(frozen=True)
class AudienceSpec:
    """Which columns mean what."""

    phone_column: str = "phone"
    key_column: str | None = None  # default: the phone column
    tz_column: str | None = None

    @property
    def key(self) -> str:
        return self.key_column or self.phone_column


@dataclass(frozen=True)
class RowError:
    """One problem in one row: shown as 'row 7, column phone: not a valid phone number'."""

    row: int
    column: str
    why: str

    def __str__(self) -> str:
        return f"row {self.row}, column {self.column}: {self.why}" if self.column else f"row {self.row}: {self.why}"


@dataclass(frozen=True)
class Recipient:
    """A checked recipient: key, phone, zone (its row's, else the campaign's), and every column's text.

    `zones` holds where quiet hours apply (the number's candidate zones), when known."""

    key: str
    phone: str
    zone: ZoneInfo
    values: dict[str, str]
    zones: RecipientZones | None = None


class AudienceError(ValidationError):
    """The audience has bad rows; `errors` lists them (the message shows the first few)."""

    #: Bad rows the one-line message names.
    SHOWN = 5

    def __init__(self, errors: list[RowError], total: int, see_all: str = "") -> None:
        self.errors = errors
        self.total = total
        shown = "; ".join(str(e) for e in errors[:self.SHOWN])
        more = f" (and {total - self.SHOWN} more{'; ' + see_all if see_all else ''})" if total > self.SHOWN else ""
        super().__init__("audience", f"{total} bad row{'s' if total != 1 else ''}: {shown}{more}")


def from_dicts(rows: Iterable[dict[str, Any]]) -> tuple[list[str], Iterator[tuple[int, dict[str, str]]]]:
    """An audience given from Python: a list of dicts (row numbers count from 1)."""
    rows = list(rows)
    header: list[str] = []
    for row in rows:
        if not isinstance(row, dict):
            raise ValidationError("audience", "must be a list of dicts")
        for name in row:
            if not isinstance(name, str):
                raise ValidationError("audience", "column names must be strings")
            if name not in header:
                header.append(name)

    def gen() -> Iterator[tuple[int, dict[str, str]]]:
        for i, row in enumerate(rows, start=1):
            yield i, {k: "" if row.get(k) is None else _text(row.get(k)) for k in header}

    return header, gen()


def _text(value: Any) -> str:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def check_columns(header: list[str], spec: AudienceSpec, needed: Iterable[str]) -> None:
    """Every column the campaign needs is in the header (else one error naming it)."""
    for what, column in (("phone column", spec.phone_column), ("key column", spec.key),
                         ("tz column", spec.tz_column)):
        if column and column not in header:
            raise ValidationError("audience", f"has no {what} {column!r} (columns: {', '.join(header)})")
    for column in needed:
        if column not in header:
            raise ValidationError("audience", f"has no column {column!r} (columns: {', '.join(header)})")


def check_row(row_no: int, values: dict[str, str], spec: AudienceSpec, campaign_tz: ZoneInfo) -> Recipient:
    """One row -> Recipient, or raise RowProblem with the first problem."""
    problem = problem_of(values)
    if problem is not None:
        raise RowProblem(RowError(row_no, *problem))
    joined = "".join(values.values())
    if len(joined) > MAX_CELL_CHARS or "\x00" in joined:  # the whole row first: one check, not one per cell
        for column, text in values.items():
            if len(text) > MAX_CELL_CHARS:
                raise RowProblem(RowError(row_no, column, f"is longer than {MAX_CELL_CHARS} characters"))
            if "\x00" in text:
                raise RowProblem(RowError(row_no, column, "contains a NUL character"))
    try:
        # One number, one spelling: keys, STOP and caps compare the canonical E.164.
        phone, parsed, kind = read_phone(values.get(spec.phone_column, "").strip())
    except ValidationError as exc:
        raise RowProblem(RowError(row_no, spec.phone_column, exc.message)) from None
    key = phone if spec.key == spec.phone_column else values.get(spec.key, "").strip()
    if not key:
        raise RowProblem(RowError(row_no, spec.key, "is empty (every recipient needs a key)"))
    if len(key) > MAX_KEY_CHARS:
        raise RowProblem(RowError(row_no, spec.key, f"is longer than {MAX_KEY_CHARS} characters"))
    try:
        zones = recipient_zones(values.get(spec.tz_column) if spec.tz_column else None, phone, campaign_tz,
                                spec.tz_column or "tz", parsed=parsed, kind=kind)
    except ValidationError as exc:
        raise RowProblem(RowError(row_no, spec.tz_column or "tz", exc.message)) from None
    clean = dict(values)
    clean[spec.phone_column] = phone
    return Recipient(key, phone, zones.home, clean, zones)


def read_phone(text: str) -> tuple[str, phonenumbers.PhoneNumber, int]:
    """(canonical E.164, parsed, number type) of a phone cell; ValidationError with a hint if it is not one."""
    if not E164_RE.fullmatch(text):
        text = _unformatted(text)
    try:
        parsed, kind = fast_phone.parse_and_type(text)
    except phonenumbers.NumberParseException:
        raise ValidationError("to", "is not a phone number") from None
    if kind == phonenumbers.PhoneNumberType.UNKNOWN:
        # number_type is UNKNOWN exactly when is_valid_number is False (both match the region's patterns).
        raise ValidationError("to", "is not a valid phone number for its country code")
    if fast_phone.e164(parsed, text) != text:
        # Another spelling of a number (a trunk zero: +4407911...): the producer's rules say which is the one.
        text = check_phone(text)
        parsed, kind = fast_phone.parse_and_type(text)
    return text, parsed, kind


def _unformatted(text: str) -> str:
    """A cell that is not `+` and digits: the number it surely means, or the reason it means none."""
    if _FORMATTED.fullmatch(text):
        return "+" + "".join(c for c in text if c.isdigit())
    if _SCIENTIFIC.fullmatch(text):
        raise ValidationError("to", "is a number in scientific notation (like 1.21256E+10), as a spreadsheet shows a "
                                    f"long number: its last digits are lost; {_AS_TEXT}")
    if _DOT_ZERO.fullmatch(text):
        raise ValidationError("to", f"ends in '.0', as a spreadsheet writes a number: {_AS_TEXT}")
    if _NO_PLUS.fullmatch(text):
        hint = ""
        try:
            if fast_phone.is_valid(fast_phone.parse_e164("+" + text)):
                hint = f"; did you mean {mask_phone('+' + text)}?"
        except phonenumbers.NumberParseException:
            pass
        raise ValidationError("to", "is not an E.164 number: it has no + (a spreadsheet drops it from numbers: "
                                    f"{_AS_TEXT}){hint}")
    return check_phone(text)  # refuses, with the producer's message and hint


class RowProblem(Exception):
    """Internal: carries one RowError out of check_row."""

    def __init__(self, error: RowError) -> None:
        super().__init__(str(error))
        self.error = error


__all__ = ["MAX_COLUMNS", "AudienceError", "AudienceSpec", "Recipient", "RowError", "RowProblem", "check_columns",
           "check_row", "from_dicts", "read_csv", "read_phone"]
