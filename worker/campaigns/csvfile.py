"""Reading an audience CSV so that it means one thing or is refused, naming its line.

A CSV is RFC 4180 text with a header row, but the files operators bring are
exported by spreadsheets and CRMs, and a stray quote is enough to make
`csv.reader` glue the next rows into one cell: one recipient would then get the
next people's names and numbers. So each record is checked for what it can
only mean by accident, and such a row is refused, not guessed:

- a cell that holds a line break (a quote that opened and closed lines apart),
  unless the caller asks for multi-line cells (`allow_multiline`); even then, a
  line inside a cell that is itself a whole row of the header's width is refused;
- a row whose cell count differs from the header's;
- a quote that is never closed, or text after a closing quote (`csv`'s strict mode).

Rows are numbered by the file's physical lines (the header is row 1; a record
that spans lines is named by its first line), so an operator finds the line in
any editor. Refused rows are yielded like the others, their values holding only
`PROBLEM` (see `problem_of`), so that every bad row of a file is listed at once.

Encoding: UTF-8, with or without a byte-order mark, and UTF-16 with one (Excel's
"Unicode Text"). Anything else is refused with a one-line hint: UTF-16 without a
mark, a workbook given instead of a CSV, a `;`- or tab-separated file, a row that
is not UTF-8 (a Latin-1 / Windows-1252 export). Only the first few KB are looked
at before reading; rows are read one at a time, so 100,000 rows take no more
memory than a handful.
"""

from __future__ import annotations

import codecs
import csv
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from oaksend.errors import ValidationError

MAX_COLUMNS = 100
#: Bytes looked at to tell the encoding (a BOM, UTF-16's NUL bytes, a workbook's signature).
SNIFF_BYTES = 4096
#: CSV fields may be long (a note column), but not unbounded.
MAX_FIELD_CHARS = 64 * 1024
csv.field_size_limit(MAX_FIELD_CHARS)
#: The key under which a refused row's values carry "column\x00why" (a name no header can have).
PROBLEM = "\x00problem"

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_SIGNATURES = ((b"PK\x03\x04", "an Excel workbook (.xlsx) or another zip file"),
               (b"\xd0\xcf\x11\xe0", "an Excel 97-2003 workbook (.xls)"))
_DELIMITERS = ((";", "semicolons (;)", ";"), ("\t", "tabs", "\\t"))
_CONVERT = ("python3 -c \"import csv,sys; csv.writer(sys.stdout).writerows(csv.reader(sys.stdin, delimiter='{}'))\""
            " < in.csv > out.csv")
_SAVE_AS = "save it as 'CSV UTF-8' (Excel: File > Save As)"
_NOT_UTF16 = "is not valid UTF-16 text: save the file as 'CSV UTF-8'"

Rows = Iterator[tuple[int, dict[str, str]]]


def read_csv(path: str | Path, *, allow_multiline: bool = False) -> tuple[list[str], Rows]:
    """Open a CSV audience: its header and an iterator of (line number, {column: text}).

    A row that cannot be read as one meaning comes as (line, {PROBLEM: ...}); `problem_of`
    tells why, and `audience.check_row` refuses it. `allow_multiline` lets quoted cells hold
    line breaks (a note column), still refusing a cell that holds a whole row.
    """
    encoding = _encoding(path)
    # Bytes that are not UTF-8 become lone surrogates, so the row that holds them can be named
    # (UTF-16 cannot escape them: a bad pair stops the reading, naming its row).
    errors = "strict" if encoding == "utf-16" else "surrogateescape"
    handle = open(path, encoding=encoding, errors=errors, newline="")  # noqa: SIM115 - _rows closes it
    try:
        reader = csv.reader(handle, strict=True)
        header = _header(reader)
    except BaseException:
        handle.close()
        raise
    return header, _rows(handle, reader, header, allow_multiline)


def problem_of(values: dict[str, str]) -> tuple[str, str] | None:
    """(column, why) when read_csv refused this row, else None."""
    marked = values.get(PROBLEM)
    if marked is None:
        return None
    column, _, why = marked.partition("\x00")
    return column, why


def _problem(column: str, why: str) -> dict[str, str]:
    return {PROBLEM: f"{column}\x00{why}"}


def _encoding(path: str | Path) -> str:
    try:
        with open(path, "rb") as f:
            head = f.read(SNIFF_BYTES)
    except OSError as exc:
        raise ValidationError("audience", f"cannot read {str(path)!r}: {exc.strerror}") from None
    for signature, what in _SIGNATURES:
        if head.startswith(signature):
            raise ValidationError("audience", f"is {what}, not a CSV file: {_SAVE_AS}")
    if head.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        raise ValidationError("audience", f"is UTF-32 text: {_SAVE_AS}")
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"  # the mark says which byte order: one reading only
    if head and head.count(0) * 4 >= len(head):
        raise ValidationError("audience", f"looks like UTF-16 text without a byte-order mark: {_SAVE_AS}")
    return "utf-8-sig"


def _header(reader: Any) -> list[str]:
    try:
        first = next(reader, None)
    except csv.Error as exc:
        raise ValidationError("audience", f"row 1: {_csv_error(exc)}") from None
    except UnicodeDecodeError:
        raise ValidationError("audience", f"row 1: {_NOT_UTF16}") from None
    if not first or not any(c.strip() for c in first):
        raise ValidationError("audience", "has no header row")
    bad = _undecodable("".join(first))
    if bad:
        raise ValidationError("audience", f"row 1: {bad}")
    if reader.line_num > 1:
        raise ValidationError("audience", f"row 1: a column name holds a line break (lines 1-{reader.line_num};"
                                          " a stray quote?)")
    for delimiter, name, escaped in _DELIMITERS:
        if any(delimiter in c for c in first):
            raise ValidationError("audience", f"row 1: the file seems to be separated by {name}, not commas;"
                                              f" convert it, e.g. {_CONVERT.format(escaped)}")
    header = [c.strip() for c in first]
    if len(header) > MAX_COLUMNS:
        raise ValidationError("audience", f"has more than {MAX_COLUMNS} columns")
    for i, name in enumerate(header):
        if not name:
            raise ValidationError("audience", f"row 1: column {i + 1} has no name")
        if name in header[:i]:
            raise ValidationError("audience", f"row 1: column {name!r} appears twice")
    return header


def _rows(handle: Any, reader: Any, header: list[str], allow_multiline: bool) -> Rows:
    width = len(header)
    line = reader.line_num
    try:
        while True:
            start = line + 1
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                line = reader.line_num
                yield start, _problem("", _csv_error(exc) + _span(start, line))
                continue
            except UnicodeDecodeError:
                raise ValidationError("audience", f"row {start}: {_NOT_UTF16}") from None
            line = reader.line_num
            text = "".join(cells)
            if not text.strip():
                continue  # a blank line (or only separators and spaces)
            bad = _undecodable(text)
            if bad:
                yield start, _problem(_undecodable_column(header, cells), bad)
            elif line > start and not allow_multiline:
                yield start, _problem("", f"a quoted cell runs over lines {start}-{line} (a stray quote?);"
                                          " line breaks inside a cell are read only with --allow-multiline")
            elif line > start and (whole := _whole_row_inside(cells, width, start)):
                yield start, _problem("", whole)
            elif len(cells) != width:
                yield start, _problem("", f"has {_cells(len(cells))}, the header has {width}{_span(start, line)}")
            else:
                yield start, dict(zip(header, cells, strict=True))
    finally:
        handle.close()


def _span(start: int, end: int) -> str:
    return f" (lines {start}-{end})" if end > start else ""


def _cells(n: int) -> str:
    return f"{n} cell{'s' if n != 1 else ''}"


def _csv_error(exc: csv.Error) -> str:
    text = str(exc)
    if "unexpected end of data" in text:
        return "a quote opened in this row is never closed (a stray quote?)"
    if "expected after" in text:
        return 'text follows a closing quote (a stray quote? a quote inside a quoted cell is written "")'
    if "field larger than field limit" in text:
        return f"a cell is longer than {MAX_FIELD_CHARS} characters (a stray quote?)"
    return text


def _whole_row_inside(cells: list[str], width: int, start: int) -> str | None:
    """A line inside a multi-line cell that reads as a whole row: rows swallowed by a stray quote."""
    line = start
    for cell in cells:
        parts = _LINE_BREAK.split(cell)
        for offset, part in enumerate(parts):
            if offset and _cell_count(part) == width:
                return (f"line {line + offset}, inside a quoted cell that opens on line {start}, is a whole row"
                        f" of {_cells(width)} (a stray quote?)")
        line += len(parts) - 1
    return None


def _cell_count(line: str) -> int:
    try:
        return len(next(csv.reader([line], strict=True), []))
    except csv.Error:
        return -1


def _undecodable(text: str) -> str | None:
    """Why the text is not UTF-8 (it holds surrogate-escaped bytes), else None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        byte = ord(text[exc.start]) - 0xDC00
        if not 0x80 <= byte <= 0xFF:  # a lone surrogate, not an escaped byte
            return "is not UTF-8 text"
        legacy = bytes([byte]).decode("cp1252", errors="replace")
        return (f"is not UTF-8 text (byte 0x{byte:02X}, {legacy!r} in Windows-1252 / Latin-1):"
                " save the file as 'CSV UTF-8'")
    return None


def _undecodable_column(header: list[str], cells: list[str]) -> str:
    for name, cell in zip(header, cells, strict=False):
        if _undecodable(cell):
            return name
    return ""


__all__ = ["MAX_COLUMNS", "PROBLEM", "problem_of", "read_csv"]
