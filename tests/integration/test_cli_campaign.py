"""`oaksend campaign ...` as a subprocess: ids, --json, bad rows listed on one line, nothing half-created."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from datetime import timedelta
from pathlib import Path

import pytest

from oaksend.worker.clock import utcnow
from tests.integration.test_cli import Cli, one_line
from tests.support import CHATBOT


@pytest.fixture(scope="module")
def ccli(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Cli:
    tmp = tmp_path_factory.mktemp("campaign-cli")
    db = tmp / "oaksend.db"
    c = Cli(f"sqlite:///{db}", db, tmp)
    assert c("migrate").code == 0
    return c


def count(cli: Cli, table: str) -> int:
    with closing(sqlite3.connect(cli.db_path)) as conn:
        return int(conn.execute(f"SELECT count(*) FROM oaksend_{table}").fetchone()[0])


def audience(tmp: Path, rows: list[str], name: str = "a.csv") -> str:
    path = tmp / name
    path.write_text("\ufeffphone,first_name,appointment_at\n" + "".join(r + "\n" for r in rows), encoding="utf-8")
    return str(path)


def base_args(path: str, *extra: str) -> list[str]:
    return ["--name", "flu", "--chatbot", CHATBOT, "--audience", path, "--template",
            "Hi {first_name}, your visit is {appointment_at:%a %H:%M}", "--before", "appointment_at:24h,2h",
            "--tz", "America/New_York", "--quiet-hours", "off", *extra]


def later(days: int) -> str:
    return (utcnow() + timedelta(days=days)).replace(tzinfo=None).strftime("%Y-%m-%dT%H:%M")


def test_create_show_pause_resume_cancel(ccli: Cli) -> None:
    path = audience(ccli.cwd, [f"+12125550100,Ann,{later(3)}", f'+12125550101,"Bo, Jr.",{later(4)}'])
    before = count(ccli, "messages")
    created = ccli("campaign", "create", *base_args(path), "--json")
    assert created.code == 0, created.err
    data = created.json()
    assert (data["recipients"], data["messages"]) == (2, 4)
    cid = str(data["id"])
    assert count(ccli, "messages") == before + 4
    plain = ccli("campaign", "create", *base_args(path))
    assert plain.code == 0 and plain.out.strip().isdigit()

    shown = ccli("campaign", "show", cid, "--json").json()
    assert shown["messages"] == {"pending": 4} and shown["state"] == "scheduled" and shown["next_send_at"]
    assert shown["schedule"] == {"kind": "relative", "column": "appointment_at", "offsets_s": [86400.0, 7200.0]}
    table = ccli("campaign", "show", cid)
    assert table.code == 0 and "PENDING" not in table.out and "pending  4" in table.out

    assert ccli("campaign", "pause", cid, "--json").json() == {"id": int(cid), "action": "pause", "held": 4}
    again = ccli("campaign", "pause", cid)
    assert again.code == 1 and "is paused" in one_line(again.err)
    assert ccli("campaign", "resume", cid, "--json").json()["released"] == 4
    refused = ccli("campaign", "cancel", cid)  # a cancel always asks: no terminal, no --yes
    assert refused.code == 2 and "--yes" in one_line(refused.err)
    assert ccli("campaign", "cancel", cid, "--yes", "--json").json()["cancelled"] == 4
    listed = ccli("campaign", "list", "--json").json()
    assert {c["id"]: c["state"] for c in listed}[int(cid)] == "cancelled"
    missing = ccli("campaign", "show", "999999")
    assert missing.code == 3 and one_line(missing.err) == "oaksend: campaign 999999 not found"


def test_bad_rows_are_listed_and_nothing_is_written(ccli: Cli) -> None:
    path = audience(ccli.cwd, [f"+12125550100,Ann,{later(3)}", f"2125550101,Bob,{later(3)}",
                               "+12125550102,Cy,someday", f"+12125550103,,{later(3)}"], "bad.csv")
    before = (count(ccli, "campaigns"), count(ccli, "messages"))
    result = ccli("campaign", "create", *base_args(path), "--json")
    assert result.code == 2
    line = one_line(result.err)
    assert line.startswith("oaksend: audience: 3 bad rows: row 3, column phone: is not an E.164 number")
    assert "row 4, column appointment_at: 'someday' is not a datetime" in line
    assert "row 5, column first_name: is empty" in line
    assert [(e["row"], e["column"]) for e in result.json()["errors"]] == [(3, "phone"), (4, "appointment_at"),
                                                                            (5, "first_name")]
    assert (count(ccli, "campaigns"), count(ccli, "messages")) == before


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--cron", "0 9 * * MON"], "argument --cron: not allowed with argument --before"),
        (["--tz", "Nowhere"], "oaksend: tz: 'Nowhere' is not an IANA time zone"),
        (["--deadline", "soon"], "oaksend: deadline: 'soon' is not a duration"),
        (["--template", "{first_name.__class__.__mro__}"], "oaksend: template: {first_name.__class__.__mro__}: a placeholder"),
    ],
)
def test_bad_arguments_are_one_line(ccli: Cli, extra: list[str], message: str) -> None:
    path = audience(ccli.cwd, [f"+12125550100,Ann,{later(3)}"], "one.csv")
    result = ccli("campaign", "create", *base_args(path), *extra)
    assert result.code == 2
    assert message in result.err.splitlines()[-1]


def test_preview_writes_nothing_and_shows_local_and_utc(ccli: Cli) -> None:
    path = audience(ccli.cwd, ["+14155550100,Ann,2030-06-01T10:00"], "preview.csv")
    before = count(ccli, "messages")
    result = ccli("campaign", "preview", *base_args(path), "--json")
    assert result.code == 0, result.err
    first, second = result.json()["preview"]
    # a 415 number in a New York campaign: the appointment is read in the campaign's zone (not the phone's)
    assert first["send_at_local"] == "2030-05-31T10:00:00-04:00" and first["send_at_utc"] == "2030-05-31T14:00:00+00:00"
    assert second["send_at_local"] == "2030-06-01T08:00:00-04:00" and first["quiet_zones"] == ["America/Los_Angeles"]
    assert first["text"] == "Hi Ann, your visit is Sat 10:00"
    assert (first["segments"], first["encoding"]) == (1, "GSM-7")
    people = ccli("campaign", "preview", *base_args(path))
    assert "+1415****100" in people.out and "+14155550100" not in people.out
    assert count(ccli, "messages") == before
    cid = ccli("campaign", "create", *base_args(path), "--json").json()["id"]
    stored = ccli("campaign", "preview", str(cid), "--json", "--limit", "1").json()
    assert stored["preview"] == [first]


def test_update_from_a_new_file(ccli: Cli) -> None:
    path = audience(ccli.cwd, [f"+12125550100,Ann,{later(3)}", f"+12125550101,Bob,{later(3)}"], "u1.csv")
    cid = str(ccli("campaign", "create", *base_args(path), "--json").json()["id"])
    moved = audience(ccli.cwd, [f"+12125550100,Ann,{later(5)}"], "u2.csv")
    result = ccli("campaign", "update", cid, "--audience", moved, "--json")
    assert result.code == 0, result.err
    assert result.json() == {"id": int(cid), "dry_run": False, "added": 2, "revived": 0, "cancelled": 4, "changed": 0,
                             "skipped": {}, "recipients": {"added": 0, "changed": 1, "removed": 1}}
    assert ccli("campaign", "show", cid, "--json").json()["messages"] == {"pending": 2, "cancelled": 4}


def test_a_draft_is_created_held_and_started(ccli: Cli) -> None:
    path = audience(ccli.cwd, [f"+12125550120,Cy,{later(3)}"], name="draft.csv")
    cid = str(ccli("campaign", "create", *base_args(path), "--draft", "--json").json()["id"])
    shown = ccli("campaign", "show", cid, "--json").json()
    assert shown["state"] == "draft" and shown["next_send_at"] is None and shown["messages"] == {"pending": 2}
    assert ccli("campaign", "start", cid, "--json").json() == {"id": int(cid), "action": "start", "released": 2}
    assert ccli("campaign", "show", cid, "--json").json()["next_send_at"]
    again = ccli("campaign", "start", cid)
    assert again.code == 1 and one_line(again.err).endswith("only a draft can be started")
