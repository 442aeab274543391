"""A campaign's audience: recipients read from CSV (streamed) or given from Python as dicts.

CSV: UTF-8 with or without a byte-order mark, a header row, RFC 4180 quoting
(commas and newlines inside quotes), empty cells allowed. Rows are read one at
a time, so 100,000 rows take no more memory than a handful. Each recipient has
a key (a column; default the phone), an E.164 phone, an optional time-zone
column, and any other columns, which templates may use.

Problems are `RowError` values (row number as a spreadsheet shows it, the header
being row 1; the column; why), collected so an operator sees them all at once.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import phonenumbers

from oaksend.errors import ValidationError
from oaksend.worker.message import phone as fast_phone
from oaksend.worker.message.quiet import recipient_zone

MAX_KEY_CHARS = 150
MAX_COLUMNS = 100
MAX_CELL_CHARS = 2000
#: CSV fields may be long (a note column), but not unbounded.
csv.field_size_limit(64 * 1024)
#: Where a row's surplus cell count is kept (a name no header can have).
_EXTRA = "\x00extra"


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
    """A checked recipient: key, phone, zone, and every column's text."""

    key: str
    phone: str
    zone: ZoneInfo
    values: dict[str, str]


class AudienceError(ValidationError):
    """The audience has bad rows; `errors` lists them (the message shows the first few)."""

    def __init__(self, errors: list[RowError], total: int) -> None:
        self.errors = errors
        self.total = total
        shown = "; ".join(str(e) for e in errors[:5])
        more = f" (and {total - 5} more)" if total > 5 else ""
        super().__init__("audience", f"{total} bad row{'s' if total != 1 else ''}: {shown}{more}")


def read_csv(path: str | Path) -> tuple[list[str], Iterator[tuple[int, dict[str, str]]]]:
    """Open a CSV audience: its header and an iterator of (row number, {column: text})."""
    try:
        # Undecodable bytes become lone surrogates, so the row that holds them can be named.
        handle = open(path, encoding="utf-8-sig", errors="surrogateescape", newline="")  # noqa: SIM115 - _rows closes it
    except OSError as exc:
        raise ValidationError("audience", f"cannot read {str(path)!r}: {exc.strerror}") from None
    try:
        header = _header(handle)
    except BaseException:
        handle.close()
        raise
    return header, _rows(handle, header)


def _header(handle: io.TextIOBase) -> list[str]:
    try:
        first = next(csv.reader(handle), None)
    except csv.Error as exc:
        raise ValidationError("audience", f"row 1: {exc}") from None
    if not first or not any(c.strip() for c in first):
        raise ValidationError("audience", "has no header row")
    if not _is_utf8("".join(first)):
        raise ValidationError("audience", "row 1: is not UTF-8 text")
    header = [c.strip() for c in first]
    if len(header) > MAX_COLUMNS:
        raise ValidationError("audience", f"has more than {MAX_COLUMNS} columns")
    for i, name in enumerate(header):
        if not name:
            raise ValidationError("audience", f"row 1: column {i + 1} has no name")
        if name in header[:i]:
            raise ValidationError("audience", f"row 1: column {name!r} appears twice")
    return header


def _rows(handle: Any, header: list[str]) -> Iterator[tuple[int, dict[str, str]]]:
    reader = csv.reader(handle)
    row_no = 1
    try:
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise ValidationError("audience", f"row {row_no + 1}: {exc}") from None
            row_no += 1
            text = "".join(cells)
            if not _is_utf8(text):
                raise ValidationError("audience", f"row {row_no}: is not UTF-8 text")
            if not text.strip():
                continue  # a blank line (or only separators and spaces)
            if len(cells) == len(header):
                values = dict(zip(header, cells, strict=True))
            else:
                values = {name: (cells[i] if i < len(cells) else "") for i, name in enumerate(header)}
                if len(cells) > len(header):
                    values[_EXTRA] = str(len(cells) - len(header))
            yield row_no, values
    finally:
        handle.close()


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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
    if _EXTRA in values:
        raise RowProblem(RowError(row_no, "", f"has {values[_EXTRA]} more cells than the header"))
    joined = "".join(values.values())
    if len(joined) > MAX_CELL_CHARS or "\x00" in joined:  # the whole row first: one check, not one per cell
        for column, text in values.items():
            if len(text) > MAX_CELL_CHARS:
                raise RowProblem(RowError(row_no, column, f"is longer than {MAX_CELL_CHARS} characters"))
            if "\x00" in text:
                raise RowProblem(RowError(row_no, column, "contains a NUL character"))
    phone = values.get(spec.phone_column, "").strip()
    try:
        parsed, kind = _parse_phone(phone)
    except ValidationError as exc:
        raise RowProblem(RowError(row_no, spec.phone_column, exc.message)) from None
    key = values.get(spec.key, "").strip()
    if not key:
        raise RowProblem(RowError(row_no, spec.key, "is empty (every recipient needs a key)"))
    if len(key) > MAX_KEY_CHARS:
        raise RowProblem(RowError(row_no, spec.key, f"is longer than {MAX_KEY_CHARS} characters"))
    try:
        tz = recipient_zone(values.get(spec.tz_column) if spec.tz_column else None, phone, campaign_tz,
                            spec.tz_column or "tz", parsed=parsed, kind=kind)
    except ValidationError as exc:
        raise RowProblem(RowError(row_no, spec.tz_column or "tz", exc.message)) from None
    clean = dict(values)
    clean[spec.phone_column] = phone
    return Recipient(key, phone, tz, clean)


def _parse_phone(phone: str) -> tuple[phonenumbers.PhoneNumber, int]:
    """The producer's phone rules (oaksend.worker.message.validation), parsing the number once for the zone too."""
    from oaksend.worker.message.validation import E164_RE, check_phone

    if not E164_RE.fullmatch(phone):
        check_phone(phone)  # raises with the producer's message and hint
    try:
        parsed, kind = fast_phone.parse_and_type(phone)
    except phonenumbers.NumberParseException:
        raise ValidationError("to", "is not a phone number") from None
    if kind == phonenumbers.PhoneNumberType.UNKNOWN:
        # number_type is UNKNOWN exactly when is_valid_number is False (both match the region's patterns).
        raise ValidationError("to", "is not a valid phone number for its country code")
    return parsed, kind


class RowProblem(Exception):
    """Internal: carries one RowError out of check_row."""

    def __init__(self, error: RowError) -> None:
        super().__init__(str(error))
        self.error = error


__all__ = ["AudienceError", "AudienceSpec", "Recipient", "RowError", "RowProblem", "check_columns", "check_row",
           "from_dicts", "read_csv"]
