"""Reminders follow the booking, on real SQLite and PostgreSQL, from the CLI and from Python.

Whatever the data says now (an appointment moved and moved back, a recipient removed and
listed again) is exactly what stays scheduled: a reminder cancelled because the data no
longer asked for it comes back when it asks again (the same row, revived, never a second
one), and a reminder already sent for an appointment time is never sent again.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from oaksend.models.tables import Message
from oaksend.worker.campaigns.audience import AudienceSpec
from oaksend.worker.campaigns.schedule import parse_schedule
from oaksend.worker.campaigns.service import Campaigns, CampaignSpec
from oaksend.worker.clock import utcnow
from tests.integration.test_cli import Cli
from tests.support import CHATBOT

UTC = timezone.utc
TZ = "America/New_York"
HEADER = ("booking", "phone", "first_name", "appt")


@pytest.fixture
def campaigns(settings: Any, outbox: Any) -> Iterator[Campaigns]:
    service = Campaigns(settings, outbox=outbox)
    yield service
    service.redis.close()


@pytest.fixture
def cli(database_url: str, tmp_path: Path) -> Cli:
    return Cli(database_url, tmp_path / "unused.db", tmp_path)


def schedule_of(kind: str, now: datetime) -> dict[str, Any]:
    """Spec fields of a relative, once or cron campaign (quiet hours off: times stay as planned)."""
    if kind == "relative":
        return {"schedule": parse_schedule(before="appt:24h,2h"), "template": "Hi {first_name}, see you {appt:%H:%M}"}
    if kind == "once":
        local = (now + timedelta(days=1)).astimezone(_zone()).replace(tzinfo=None, second=0, microsecond=0)
        return {"schedule": parse_schedule(at=local.isoformat()), "template": "Hi {first_name}, sale today"}
    return {"schedule": parse_schedule(cron="0 * * * *"), "template": "Hi {first_name}, hourly news"}


def _zone() -> Any:
    from zoneinfo import ZoneInfo

    return ZoneInfo(TZ)


def spec(kind: str, now: datetime, **overrides: Any) -> CampaignSpec:
    values: dict[str, Any] = dict(name="follow", chatbot=CHATBOT, tz=TZ, audience=AudienceSpec(key_column="booking"),
                                  quiet_hours="off", **schedule_of(kind, now))
    values.update(overrides)
    return CampaignSpec(**values)


def person(i: int, appt: datetime, name: str | None = None) -> dict[str, str]:
    return {"booking": f"b{i}", "phone": f"+1212555{i:04d}", "first_name": name or f"P{i}",
            "appt": appt.astimezone(UTC).isoformat()}


def rows_of(outbox: Any, campaign_id: int) -> list[Message]:
    with outbox.session() as s:
        return list(s.scalars(select(Message).where(Message.campaign_id == campaign_id).order_by(Message.id)))


def pending(outbox: Any, campaign_id: int, booking: str) -> dict[str, tuple[int, datetime]]:
    """One recipient's pending reminders: occurrence -> (row id, send time)."""
    return {m.meta["occurrence"]: (m.id, m.next_attempt_at) for m in rows_of(outbox, campaign_id)
            if m.meta["recipient"] == booking and m.state == "pending"}


def states(outbox: Any, campaign_id: int, booking: str) -> list[str]:
    return sorted(m.state for m in rows_of(outbox, campaign_id) if m.meta["recipient"] == booking)


def write_csv(tmp: Path, name: str, people: list[dict[str, str]]) -> str:
    path = tmp / name
    path.write_text(",".join(HEADER) + "\n" + "".join(",".join(p[h] for h in HEADER) + "\n" for p in people),
                    encoding="utf-8")
    return str(path)


def cli_update(cli: Cli, campaign_id: int, path: str, *extra: str) -> dict[str, Any]:
    result = cli("campaign", "update", str(campaign_id), "--audience", path, "--json", *extra)
    assert result.code == 0, result.err
    out: dict[str, Any] = result.json()
    return out


def in_app_transaction(outbox: Any, work: Any) -> Any:
    """Run `work(session)` in a Session of the application's own (committed at the end)."""
    with Session(outbox.engine) as s, s.begin():
        return work(s)


# -- an appointment moved, and moved back -------------------------------------------------
def test_moved_and_moved_back_from_python(campaigns: Campaigns, outbox: Any) -> None:
    now = utcnow()
    a, b = now + timedelta(days=3), now + timedelta(days=4)
    cid = campaigns.create(spec("relative", now), [person(0, a), person(1, a)]).id
    first = pending(outbox, cid, "b0")
    assert len(first) == 2
    moved = in_app_transaction(outbox, lambda s: campaigns.upsert_recipient(cid, person(0, b), session=s))
    assert (moved.messages, moved.revived, moved.cancelled) == (2, 0, 2)
    assert {at for _, at in pending(outbox, cid, "b0").values()} == {b - timedelta(hours=24), b - timedelta(hours=2)}
    back = in_app_transaction(outbox, lambda s: campaigns.upsert_recipient(cid, person(0, a), session=s))
    assert (back.messages, back.revived, back.cancelled) == (2, 2, 2)
    assert pending(outbox, cid, "b0") == first  # the very rows of the first plan, at their times
    assert states(outbox, cid, "b0") == ["cancelled", "cancelled", "pending", "pending"]
    # once more, the same data: nothing to do
    again = in_app_transaction(outbox, lambda s: campaigns.upsert_recipient(cid, person(0, a), session=s))
    assert (again.messages, again.revived, again.cancelled, again.moved) == (0, 0, 0, 0)
    assert len(pending(outbox, cid, "b1")) == 2 and len(rows_of(outbox, cid)) == 6


def test_moved_and_moved_back_from_the_cli(campaigns: Campaigns, outbox: Any, cli: Cli, tmp_path: Path) -> None:
    now = utcnow()
    a, b = now + timedelta(days=3), now + timedelta(days=4)
    people = [person(0, a), person(1, a), person(2, a)]
    cid = campaigns.create(spec("relative", now), people).id
    first = {p["booking"]: pending(outbox, cid, p["booking"]) for p in people}
    # the case: two bookings moved, then the original file again
    moved = cli_update(cli, cid, write_csv(tmp_path, "moved.csv", [person(0, b), person(1, b), people[2]]))
    assert (moved["added"], moved["revived"], moved["cancelled"], moved["changed"]) == (4, 0, 4, 0)
    assert moved["recipients"] == {"added": 0, "changed": 2, "removed": 0}
    back = cli_update(cli, cid, write_csv(tmp_path, "back.csv", people))
    assert (back["added"], back["revived"], back["cancelled"]) == (4, 4, 4)
    assert {p["booking"]: pending(outbox, cid, p["booking"]) for p in people} == first
    assert len(rows_of(outbox, cid)) == 10  # 6 first, 4 for B: nothing written twice


# -- a recipient removed, and listed again -------------------------------------------------
@pytest.mark.parametrize("kind", ["relative", "once", "cron"])
def test_removed_and_added_again_from_python(campaigns: Campaigns, outbox: Any, kind: str) -> None:
    now = utcnow()
    appt = now + timedelta(days=3)
    cid = campaigns.create(spec(kind, now), [person(0, appt), person(1, appt)]).id
    first = pending(outbox, cid, "b0")
    assert first and pending(outbox, cid, "b1")
    removed = in_app_transaction(outbox, lambda s: campaigns.remove_recipient(cid, "b0", session=s))
    assert removed == len(first) and pending(outbox, cid, "b0") == {}
    back = in_app_transaction(outbox, lambda s: campaigns.upsert_recipient(cid, person(0, appt), session=s))
    assert (back.messages, back.revived) == (len(first), len(first))
    assert pending(outbox, cid, "b0") == first
    assert len(rows_of(outbox, cid)) == 2 * len(first)
    assert campaigns.get(cid).recipients == 2


@pytest.mark.parametrize("kind", ["relative", "once", "cron"])
def test_removed_and_added_again_from_the_cli(campaigns: Campaigns, outbox: Any, cli: Cli, tmp_path: Path,
                                              kind: str) -> None:
    now = utcnow()
    appt = now + timedelta(days=3)
    people = [person(0, appt), person(1, appt)]
    cid = campaigns.create(spec(kind, now), people).id
    first = pending(outbox, cid, "b0")
    gone = cli_update(cli, cid, write_csv(tmp_path, "gone.csv", people[1:]))
    assert (gone["cancelled"], gone["recipients"]["removed"]) == (len(first), 1)
    assert pending(outbox, cid, "b0") == {} and campaigns.get(cid).recipients == 1
    back = cli_update(cli, cid, write_csv(tmp_path, "back.csv", people))
    assert (back["added"], back["revived"], back["recipients"]["added"]) == (len(first), len(first), 1)
    assert pending(outbox, cid, "b0") == first and campaigns.get(cid).recipients == 2
    assert len(rows_of(outbox, cid)) == 2 * len(first)


def test_a_name_changed_and_changed_back_rewrites_the_unsent_text(campaigns: Campaigns, outbox: Any, cli: Cli,
                                                                  tmp_path: Path) -> None:
    now = utcnow()
    people = [person(0, now + timedelta(days=3))]
    cid = campaigns.create(spec("once", now), people).id
    renamed = cli_update(cli, cid, write_csv(tmp_path, "renamed.csv", [{**people[0], "first_name": "Ann"}]))
    assert (renamed["added"], renamed["changed"], renamed["cancelled"]) == (0, 1, 0)
    assert [m.body for m in rows_of(outbox, cid)] == ["Hi Ann, sale today"]
    in_app_transaction(outbox, lambda s: campaigns.upsert_recipient(cid, people[0], session=s))
    assert [(m.body, m.state) for m in rows_of(outbox, cid)] == [("Hi P0, sale today", "pending")]


# -- sent stays sent -----------------------------------------------------------------------
def mark_sent(outbox: Any, message_id: int) -> None:
    with outbox.session() as s:
        s.execute(update(Message).where(Message.id == message_id).values(state="sent", sent_at=utcnow()))


@pytest.mark.parametrize("via", ["python", "cli"])
def test_a_sent_reminder_is_not_sent_again_when_the_time_moves_away_and_back(
        campaigns: Campaigns, outbox: Any, cli: Cli, tmp_path: Path, via: str) -> None:
    now = utcnow()
    a, b = now + timedelta(days=3), now + timedelta(days=4)
    cid = campaigns.create(spec("relative", now), [person(0, a)]).id
    first = pending(outbox, cid, "b0")
    day_before = min(first, key=lambda k: first[k][1])
    mark_sent(outbox, first[day_before][0])

    def move(to: datetime, name: str) -> None:
        if via == "cli":
            cli_update(cli, cid, write_csv(tmp_path, name, [person(0, to)]))
        else:
            in_app_transaction(outbox, lambda s: campaigns.upsert_recipient(cid, person(0, to), session=s))

    move(b, "b.csv")
    assert len(pending(outbox, cid, "b0")) == 2  # B's two: B is another appointment time
    move(a, "a.csv")
    now_pending = pending(outbox, cid, "b0")
    assert set(now_pending) == set(first) - {day_before}  # A's 2 h reminder only
    same_key = [m for m in rows_of(outbox, cid) if m.meta["occurrence"] == day_before]
    assert [m.state for m in same_key] == ["sent"]
    # removed and listed again: still sent, nothing new for it
    in_app_transaction(outbox, lambda s: campaigns.remove_recipient(cid, "b0", session=s))
    move(a, "a-again.csv")
    assert set(pending(outbox, cid, "b0")) == set(first) - {day_before}
    assert [m.state for m in rows_of(outbox, cid) if m.meta["occurrence"] == day_before] == ["sent"]


def test_a_sent_one_off_stays_sent_when_its_recipient_is_removed_and_listed_again(
        campaigns: Campaigns, outbox: Any, cli: Cli, tmp_path: Path) -> None:
    now = utcnow()
    people = [person(0, now), person(1, now)]
    cid = campaigns.create(spec("once", now), people).id
    mark_sent(outbox, rows_of(outbox, cid)[0].id)
    cli_update(cli, cid, write_csv(tmp_path, "one.csv", people[1:]))
    back = cli_update(cli, cid, write_csv(tmp_path, "both.csv", people))
    assert (back["added"], back["revived"]) == (0, 0)
    assert states(outbox, cid, "b0") == ["sent"]


# -- dry run, partial, a held campaign, the frequency cap -------------------------------------
def snapshot(outbox: Any) -> list[tuple[Any, ...]]:
    with outbox.session() as s:
        messages = [tuple(r) for r in s.execute(text(
            "SELECT id, state, body, next_attempt_at, last_reason FROM oaksend_messages ORDER BY id"))]
        recipients = [tuple(r) for r in s.execute(text(
            "SELECT campaign_id, key, phone FROM oaksend_campaign_recipients ORDER BY id"))]
    return messages + recipients


def test_dry_run_writes_nothing_and_says_what_would_change(campaigns: Campaigns, outbox: Any, cli: Cli,
                                                          tmp_path: Path) -> None:
    now = utcnow()
    a, b = now + timedelta(days=3), now + timedelta(days=4)
    people = [person(0, a), person(1, a), person(2, a)]
    cid = campaigns.create(spec("relative", now), people).id
    cli_update(cli, cid, write_csv(tmp_path, "b.csv", [person(0, b), people[1], people[2]]))
    before = snapshot(outbox)
    new = [person(0, a), {**people[1], "first_name": "Renamed"}, person(3, a)]  # b0 back, b1 renamed, b2 gone
    path = write_csv(tmp_path, "new.csv", new)
    dry = cli_update(cli, cid, path, "--dry-run")
    assert snapshot(outbox) == before
    assert dry == {"id": cid, "dry_run": True, "added": 4, "revived": 2, "cancelled": 4, "changed": 2,
                   "skipped": {}, "recipients": {"added": 1, "changed": 2, "removed": 1}}
    plain = cli("campaign", "update", str(cid), "--audience", path, "--dry-run")
    assert plain.code == 0 and "dry run" in plain.out and "4 reminder(s) added (2 of them revived)" in plain.out
    done = cli_update(cli, cid, path)
    assert {**done, "dry_run": True} == dry  # the dry run told the truth


def test_partial_leaves_absent_recipients_alone(campaigns: Campaigns, outbox: Any, cli: Cli, tmp_path: Path) -> None:
    now = utcnow()
    a, b = now + timedelta(days=3), now + timedelta(days=4)
    people = [person(0, a), person(1, a), person(2, a)]
    cid = campaigns.create(spec("relative", now), people).id
    others = {p["booking"]: pending(outbox, cid, p["booking"]) for p in people[1:]}
    out = cli_update(cli, cid, write_csv(tmp_path, "one.csv", [person(0, b), person(5, b)]), "--partial")
    assert (out["added"], out["cancelled"], out["recipients"]) == (4, 2, {"added": 1, "changed": 1, "removed": 0})
    assert {p["booking"]: pending(outbox, cid, p["booking"]) for p in people[1:]} == others
    assert campaigns.get(cid).recipients == 4


def test_a_paused_campaign_stays_held_through_an_update(campaigns: Campaigns, outbox: Any, cli: Cli,
                                                        tmp_path: Path) -> None:
    now = utcnow()
    a, b = now + timedelta(days=3), now + timedelta(days=4)
    cid = campaigns.create(spec("relative", now), [person(0, a)]).id
    first = pending(outbox, cid, "b0")
    campaigns.pause(cid)
    cli_update(cli, cid, write_csv(tmp_path, "b.csv", [person(0, b)]))
    cli_update(cli, cid, write_csv(tmp_path, "a.csv", [person(0, a)]))
    assert all(at.year > 3000 for _, at in pending(outbox, cid, "b0").values())  # revived, and still held
    campaigns.resume(cid)
    assert pending(outbox, cid, "b0") == first


def test_an_update_keeps_to_the_frequency_cap(campaigns: Campaigns, outbox: Any, cli: Cli, tmp_path: Path) -> None:
    now = utcnow()
    a = now + timedelta(days=3)
    cid = campaigns.create(spec("relative", now, frequency_cap=1), [person(0, a)]).id
    assert len(pending(outbox, cid, "b0")) == 1  # 24 h and 2 h before are within 24 h: one of them
    out = cli_update(cli, cid, write_csv(tmp_path, "two.csv", [person(0, a), person(1, a)]))
    assert (out["added"], out["skipped"]) == (1, {"frequency_cap": 2})  # b0's 2 h one again, and b1's
    assert len(pending(outbox, cid, "b1")) == 1


# -- OAKSEND_DB_SCHEMA ---------------------------------------------------------------------
def test_recipients_change_in_the_applications_transaction_within_the_schema(
        pg_database: str, redis_url: str, tmp_path: Path) -> None:
    """upsert_recipient / remove_recipient with the application's Session (whose engine knows no schema),
    and a bulk update, all read and write the schema's tables; the public ones, there too, stay untouched."""
    from sqlalchemy import create_engine

    from oaksend.migrations.runner import upgrade
    from oaksend.worker.settings import Settings
    from tests.support import reset_pg

    reset_pg(pg_database)
    app = create_engine(pg_database)
    with app.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS oaksend_follow CASCADE"))
    upgrade(pg_database)  # an older install's public tables: a campaign 1 there must not be read
    upgrade(pg_database, schema="oaksend_follow")
    settings = Settings(database_url=pg_database, redis_url=redis_url, db_schema="oaksend_follow",
                        _env_file=None)  # type: ignore[call-arg]
    service = Campaigns(settings)
    now = utcnow()
    a, b = now + timedelta(days=3), now + timedelta(days=4)
    try:
        public = Campaigns(Settings(database_url=pg_database, redis_url=redis_url,
                                    _env_file=None))  # type: ignore[call-arg]
        public_id = public.create(spec("relative", now, name="public"), [person(7, a)]).id
        public.close()
        cid = service.create(spec("relative", now), [person(0, a)]).id
        assert cid == public_id  # the same id in both: reading the wrong table would show
        with Session(app) as s, s.begin():
            moved = service.upsert_recipient(cid, person(0, b), session=s)
        with Session(app) as s, s.begin():
            back = service.upsert_recipient(cid, person(0, a), session=s)
            added = service.upsert_recipient(cid, person(1, a), session=s)
        with Session(app) as s, s.begin():
            removed = service.remove_recipient(cid, "b1", session=s)
        assert (moved.messages, back.revived, added.messages, removed) == (2, 2, 2, 2)
        updated = service.update(cid, [person(0, b)])
        assert (updated.messages, updated.cancelled) == (2, 2)
        with app.connect() as conn:
            count = "SELECT state, count(*) FROM {}.oaksend_messages WHERE campaign_id = :c GROUP BY state"
            mine = dict(conn.execute(text(count.format("oaksend_follow")), {"c": cid}).all())
            theirs = dict(conn.execute(text(count.format("public")), {"c": cid}).all())
            keys = conn.scalars(text("SELECT key FROM oaksend_follow.oaksend_campaign_recipients")).all()
        assert mine == {"pending": 2, "cancelled": 4} and theirs == {"pending": 2} and keys == ["b0"]
    finally:
        service.close()
        with app.begin() as conn:
            conn.execute(text("DROP SCHEMA IF EXISTS oaksend_follow CASCADE"))
        app.dispose()
