"""`oaksend campaign create/preview/update` with audience files that do not mean one thing: refused, one line,
naming the line, nothing written; every bad row with --json."""

from __future__ import annotations

import shutil
import sqlite3
from contextlib import closing
from datetime import timedelta
from pathlib import Path

import pytest

from oaksend.worker.clock import utcnow
from tests.integration.test_cli import Cli, one_line
from tests.support import CHATBOT

CORPUS = Path(__file__).resolve().parents[1] / "data" / "audiences"


@pytest.fixture(scope="module")
def acli(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Cli:
    tmp = tmp_path_factory.mktemp("audience-cli")
    db = tmp / "oaksend.db"
    c = Cli(f"sqlite:///{db}", db, tmp)
    assert c("migrate").code == 0
    return c


def written(cli: Cli) -> tuple[int, int, int]:
    """(campaigns, recipients, messages) stored."""
    with closing(sqlite3.connect(cli.db_path)) as conn:
        return tuple(int(conn.execute(f"SELECT count(*) FROM oaksend_{t}").fetchone()[0])  # type: ignore[return-value]
                     for t in ("campaigns", "campaign_recipients", "messages"))


def args(path: Path | str, *extra: str) -> list[str]:
    return ["--name", "visits", "--chatbot", CHATBOT, "--audience", str(path), "--template", "Hi {first_name}",
            "--at", (utcnow() + timedelta(days=3)).strftime("%Y-%m-%dT12:00"), "--tz", "America/New_York",
            "--quiet-hours", "off", *extra]


def test_a_stray_quote_is_refused_naming_the_line_and_nothing_is_written(acli: Cli) -> None:
    path = shutil.copy(CORPUS / "stray_quote.csv", acli.cwd)
    before = written(acli)
    result = acli("campaign", "create", *args(path))
    assert result.code == 2 and result.out == ""
    assert one_line(result.err) == (
        "oaksend: audience: 1 bad row: row 2: a quoted cell runs over lines 2-5 (a stray quote?); line breaks"
        " inside a cell are read only with --allow-multiline")
    assert written(acli) == before

    multiline = acli("campaign", "create", *args(path, "--allow-multiline"), "--json")
    assert multiline.code == 2
    assert multiline.json()["errors"] == [{"row": 2, "column": "", "why": (
        "line 3, inside a quoted cell that opens on line 2, is a whole row of 3 cells (a stray quote?)")}]
    assert written(acli) == before

    preview = acli("campaign", "preview", *args(path))
    assert preview.code == 2 and "row 2: a quoted cell runs over lines 2-5" in one_line(preview.err)
    assert "Bob" not in preview.out


def test_allow_multiline_reads_a_note_with_a_line_break(acli: Cli) -> None:
    path = shutil.copy(CORPUS / "multiline_note.csv", acli.cwd)
    refused = acli("campaign", "create", *args(path))
    assert refused.code == 2 and "row 2: a quoted cell runs over lines 2-3" in one_line(refused.err)
    before = written(acli)
    created = acli("campaign", "create", *args(path, "--allow-multiline"), "--json")
    assert created.code == 0, created.err
    assert (created.json()["recipients"], created.json()["messages"]) == (2, 2)
    assert written(acli) == (before[0] + 1, before[1] + 2, before[2] + 2)
    cid = str(created.json()["id"])
    update = acli("campaign", "update", cid, "--audience", str(path))
    assert update.code == 2 and "lines 2-3" in one_line(update.err)
    assert acli("campaign", "update", cid, "--audience", str(path), "--allow-multiline").code == 0


def test_every_bad_row_is_in_json_and_the_text_says_so(acli: Cli) -> None:
    path = acli.cwd / "many.csv"
    good = [f"+1212555{i:04d},Ann" for i in range(50)]
    bad = [f"1212555{i:04d},Bob" for i in range(150)]  # a spreadsheet dropped the +
    path.write_text("phone,first_name\n" + "\n".join(good + bad + ["+12125559999,Cy,extra"]) + "\n", encoding="utf-8")
    before = written(acli)
    result = acli("campaign", "create", *args(path), "--json")
    assert result.code == 2
    data = result.json()
    assert data["bad_rows"] == 151 and len(data["errors"]) == 151
    assert [e["row"] for e in data["errors"]] == list(range(52, 203))
    assert data["errors"][-1] == {"row": 202, "column": "", "why": "has 3 cells, the header has 2"}
    text = acli("campaign", "create", *args(path))
    line = one_line(text.err)
    assert line.startswith("oaksend: audience: 151 bad rows: row 52, column phone: is not an E.164 number: it has"
                           " no +")
    assert line.endswith("(and 146 more; --json lists them all)")
    assert written(acli) == before


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("semicolons.csv", "oaksend: audience: row 1: the file seems to be separated by semicolons (;), not commas"),
        ("utf16_no_bom.csv", "oaksend: audience: looks like UTF-16 text without a byte-order mark"),
        ("latin1.csv", "oaksend: audience: 2 bad rows: row 2, column first_name: is not UTF-8 text (byte 0xEB, 'ë'"
                       " in Windows-1252 / Latin-1): save the file as 'CSV UTF-8'"),
    ],
)
def test_hints_are_one_line(acli: Cli, name: str, message: str) -> None:
    path = shutil.copy(CORPUS / name, acli.cwd)
    before = written(acli)
    result = acli("campaign", "create", *args(path))
    assert result.code == 2
    assert one_line(result.err).startswith(message)
    assert written(acli) == before
