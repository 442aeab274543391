"""Messy real-world audience files (tests/data/audiences/): each is read exactly as meant or refused with its hint.

A CSV either means one thing or is refused, naming its line: the stray quote that once merged
three people into one SMS, spreadsheet exports (BOM, CRLF, semicolons, tabs, UTF-16, Latin-1,
numbers in scientific notation), trunk zeros, and the numbers of twenty countries.
"""

from __future__ import annotations

from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from oaksend.errors import ValidationError
from oaksend.worker.campaigns.audience import AudienceSpec, RowProblem, check_row, read_csv

DATA = Path(__file__).resolve().parents[1] / "data" / "audiences"
NY = ZoneInfo("America/New_York")
SPEC = AudienceSpec()


def read(name: str, *, allow_multiline: bool = False) -> tuple[list[tuple[int, str, dict[str, str]]], list[str]]:
    """(good rows as (line, phone, values), bad rows as their one-line errors), in file order."""
    _, rows = read_csv(DATA / name, allow_multiline=allow_multiline)
    good: list[tuple[int, str, dict[str, str]]] = []
    bad: list[str] = []
    for line, values in rows:
        try:
            recipient = check_row(line, values, SPEC, NY)
        except RowProblem as exc:
            bad.append(str(exc.error))
            continue
        assert recipient.key == recipient.phone  # keyed by the canonical number
        good.append((line, recipient.phone, recipient.values))
    return good, bad


def names(good: list[tuple[int, str, dict[str, str]]]) -> list[tuple[int, str, str]]:
    return [(line, phone, values["first_name"]) for line, phone, values in good]


# -- a stray quote never merges people -------------------------------------------------------------
def test_the_reported_stray_quote_is_refused_naming_its_line() -> None:
    good, bad = read("stray_quote.csv")
    assert bad == ["row 2: a quoted cell runs over lines 2-5 (a stray quote?); line breaks inside a cell are read"
                   " only with --allow-multiline"]
    assert names(good) == [(6, "+12125550134", "Ed")]  # the next line is still named by its own line


def test_the_stray_quote_is_refused_even_when_multiline_cells_are_allowed() -> None:
    good, bad = read("stray_quote.csv", allow_multiline=True)
    assert bad == ["row 2: line 3, inside a quoted cell that opens on line 2, is a whole row of 3 cells"
                   " (a stray quote?)"]
    assert names(good) == [(6, "+12125550134", "Ed")]


def test_a_quote_never_closed_is_refused() -> None:
    good, bad = read("unclosed_quote.csv")
    assert bad == ["row 3: a quote opened in this row is never closed (a stray quote?) (lines 3-4)"]
    assert names(good) == [(2, "+12125550140", "Ann")]


def test_text_after_a_closing_quote_is_refused() -> None:
    good, bad = read("quote_after_text.csv")
    assert bad == ['row 2: text follows a closing quote (a stray quote? a quote inside a quoted cell is written "")']
    assert names(good) == [(3, "+12125550151", "Bob")]


def test_every_row_of_another_width_is_refused_with_its_line() -> None:
    good, bad = read("field_counts.csv")
    assert bad == ["row 2: has 2 cells, the header has 3", "row 3: has 4 cells, the header has 3",
                   "row 4: has 4 cells, the header has 3"]  # `, "Cy, Jr."`: a space before the quote
    assert names(good) == [(5, "+12125550163", "Di")]


def test_line_breaks_in_a_cell_only_when_asked_for() -> None:
    good, bad = read("multiline_note.csv")
    assert bad == ["row 2: a quoted cell runs over lines 2-3 (a stray quote?); line breaks inside a cell are read"
                   " only with --allow-multiline"]
    assert [line for line, _, _ in good] == [4]
    good, bad = read("multiline_note.csv", allow_multiline=True)
    assert bad == []
    assert [(line, values["note"]) for line, _, values in good] == [(2, "Bring your card.\nThank you"), (4, "")]


# -- spreadsheet exports that mean one thing are read exactly ------------------------------------
def test_excel_csv_utf8_with_bom_crlf_quotes_and_blank_trailing_lines() -> None:
    good, bad = read("bom_crlf_blank.csv")
    assert bad == []
    assert good == [
        (2, "+12125550170", {"phone": "+12125550170", "first_name": "Smith, Ann", "note": 'She said "hi"'}),
        (3, "+12125550171", {"phone": "+12125550171", "first_name": "Zoë", "note": ""}),
        (4, "+12125550172", {"phone": "+12125550172", "first_name": "O\u2019Brien", "note": "café"}),
    ]


def test_old_mac_line_endings() -> None:
    good, bad = read("mac_cr.csv")
    assert bad == [] and names(good) == [(2, "+12125550175", "Ann"), (3, "+12125550176", "Bob")]


def test_utf16_with_a_byte_order_mark_is_read() -> None:
    good, bad = read("utf16_bom.csv")
    assert bad == [] and names(good) == [(2, "+12125550190", "Zoë"), (3, "+447400123456", "Ann")]


def test_trunk_zeros_and_punctuation_read_as_the_one_spelling() -> None:
    good, bad = read("trunk_zeros.csv")
    assert bad == []
    assert [(phone, values["expected"]) for _, phone, values in good] == [
        (values["expected"], values["expected"]) for _, _, values in good]
    assert [phone for _, phone, _ in good] == ["+447911123456", "+447911123457", "+33612345678", "+4915123456789",
                                               "+61412345678", "+12125550199"]
    assert good[0][2]["phone"] == "+447911123456"  # what templates ({phone}) and the stored row see


def test_numbers_of_twenty_countries() -> None:
    good, bad = read("twenty_countries.csv")
    assert bad == []
    assert len({values["country"] for _, _, values in good}) == 20
    assert [(values["country"], phone) for _, phone, values in good] == [
        (values["country"], values["expected"]) for _, _, values in good]
    assert [line for line, _, _ in good] == list(range(2, 22))


# -- files that do not mean one thing are refused, with a hint ------------------------------------
def test_latin1_rows_are_refused_with_the_character_and_the_fix() -> None:
    good, bad = read("latin1.csv")
    assert bad == [
        "row 2, column first_name: is not UTF-8 text (byte 0xEB, 'ë' in Windows-1252 / Latin-1): save the file as"
        " 'CSV UTF-8'",
        "row 4, column first_name: is not UTF-8 text (byte 0xE9, 'é' in Windows-1252 / Latin-1): save the file as"
        " 'CSV UTF-8'"]
    assert names(good) == [(3, "+12125550181", "Ann")]


def test_a_windows_1252_curly_apostrophe_is_named() -> None:
    good, bad = read("cp1252.csv")
    assert bad == ["row 2, column first_name: is not UTF-8 text (byte 0x92, '\u2019' in Windows-1252 / Latin-1): save"
                   " the file as 'CSV UTF-8'"]
    assert names(good) == [(3, "+12125550186", "Bob")]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("semicolons.csv", "audience: row 1: the file seems to be separated by semicolons (;), not commas; convert"
                           " it, e.g. python3 -c \"import csv,sys; csv.writer(sys.stdout).writerows(csv.reader("
                           "sys.stdin, delimiter=';'))\" < in.csv > out.csv"),
        ("tabs.tsv", "audience: row 1: the file seems to be separated by tabs, not commas; convert it, e.g. python3"
                     " -c \"import csv,sys; csv.writer(sys.stdout).writerows(csv.reader(sys.stdin,"
                     " delimiter='\\t'))\" < in.csv > out.csv"),
        ("excel_unicode_text.txt", "audience: row 1: the file seems to be separated by tabs, not commas"),
        ("utf16_no_bom.csv", "audience: looks like UTF-16 text without a byte-order mark: save it as 'CSV UTF-8'"
                             " (Excel: File > Save As)"),
        ("workbook.xlsx", "audience: is an Excel workbook (.xlsx) or another zip file, not a CSV file: save it as"
                          " 'CSV UTF-8' (Excel: File > Save As)"),
    ],
)
def test_whole_files_refused_with_a_hint(name: str, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        read(name)
    assert str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value)


def test_numbers_a_spreadsheet_rewrote_are_refused_with_the_fix() -> None:
    good, bad = read("excel_numbers.csv")
    text = "format the column as Text in the spreadsheet and type the numbers with their +"
    assert bad == [
        "row 2, column phone: is a number in scientific notation (like 1.21256E+10), as a spreadsheet shows a long"
        f" number: its last digits are lost; {text}",
        f"row 3, column phone: ends in '.0', as a spreadsheet writes a number: {text}",
        f"row 4, column phone: is not an E.164 number: it has no + (a spreadsheet drops it from numbers: {text});"
        " did you mean +1212****131?",
    ]
    assert names(good) == [(5, "+12125550132", "Di")]


def test_the_corpus_is_all_tested() -> None:
    tested = {"stray_quote.csv", "unclosed_quote.csv", "quote_after_text.csv", "field_counts.csv",
              "multiline_note.csv", "bom_crlf_blank.csv", "mac_cr.csv", "utf16_bom.csv", "trunk_zeros.csv",
              "twenty_countries.csv", "latin1.csv", "cp1252.csv", "semicolons.csv", "tabs.tsv",
              "excel_unicode_text.txt", "utf16_no_bom.csv", "workbook.xlsx", "excel_numbers.csv"}
    assert {p.name for p in DATA.iterdir() if not p.name.startswith(".") and p.suffix != ".md"} == tested
