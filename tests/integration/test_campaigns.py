"""The campaign service against real SQLite and PostgreSQL: all-or-nothing creation, exactly-once
materialization, update, pause/resume, cancel, and recipients changed in the application's transaction."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from oaksend.errors import InvalidTransition, NotFound, ValidationError
from oaksend.models.tables import Campaign, CampaignRecipient, Message
from oaksend.worker.campaigns.audience import AudienceError, AudienceSpec, read_csv
from oaksend.worker.campaigns.service import Campaigns, CampaignSpec
from oaksend.worker.clock import utcnow
from oaksend.worker.campaigns.schedule import parse_schedule
from tests.support import CHATBOT

UTC = timezone.utc


@pytest.fixture
def campaigns(settings: Any, outbox: Any) -> Iterator[Campaigns]:
    service = Campaigns(settings, outbox=outbox)
    yield service
    service.redis.close()


def at(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat()


def spec(**overrides: Any) -> CampaignSpec:
    values: dict[str, Any] = dict(name="reminders", chatbot=CHATBOT, template="Hi {first_name}, see you {appt:%H:%M}",
                                  schedule=parse_schedule(before="appt:24h,2h"), tz="America/New_York",
                                  audience=AudienceSpec(key_column="booking"), quiet_hours="off")
    values.update(overrides)
    return CampaignSpec(**values)


def people(now: datetime, n: int = 3, hours: float = 48) -> list[dict[str, str]]:
    return [{"booking": f"b{i}", "phone": f"+1212555{i:04d}", "first_name": f"P{i}",
             "appt": at(now + timedelta(hours=hours, minutes=i))} for i in range(n)]


def messages(outbox: Any, campaign_id: int) -> list[Message]:
    with outbox.session() as s:
        return list(s.scalars(select(Message).where(Message.campaign_id == campaign_id).order_by(Message.id)))


def count(outbox: Any, model: Any) -> int:
    with outbox.session() as s:
        return s.scalar(select(func.count()).select_from(model)) or 0


def test_create_writes_every_reminder_with_its_time_deadline_and_key(campaigns: Campaigns, outbox: Any) -> None:
    now = utcnow()
    result = campaigns.create(spec(), people(now))
    assert (result.recipients, result.messages) == (3, 6)
    rows = messages(outbox, result.id)
    assert len(rows) == 6 and {m.state for m in rows} == {"pending"}
    for m in rows:
        anchor = datetime.fromisoformat(next(p["appt"] for p in people(now) if p["phone"] == m.to_phone))
        assert m.deadline_at == anchor  # never after the appointment
        assert anchor - m.next_attempt_at in (timedelta(hours=24), timedelta(hours=2))
        assert m.idempotency_key.startswith(f"oaksend-campaign:{result.id}:")
        assert m.body.startswith("Hi P") and m.quiet is None
    c = campaigns.get(result.id)
    assert (c.state, c.recipients) == ("scheduled", 3)


def test_bad_rows_are_all_listed_and_nothing_is_written(campaigns: Campaigns, outbox: Any) -> None:
    now = utcnow()
    rows = people(now, 5)
    rows[1]["phone"] = "555-0100"
    rows[3]["appt"] = "next week"
    rows[4]["first_name"] = ""
    with pytest.raises(AudienceError) as info:
        campaigns.create(spec(), rows)
    found = [(e.row, e.column) for e in info.value.errors]
    assert found == [(2, "phone"), (4, "appt"), (5, "first_name")]
    assert str(info.value).startswith("audience: 3 bad rows: row 2, column phone: is not an E.164 number")
    assert count(outbox, Campaign) == count(outbox, CampaignRecipient) == count(outbox, Message) == 0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"template": "Hi {nickname}"}, "template: {nickname} is not a column"),
        ({"template": "Hi {first_name.__init__}"}, "template: {first_name.__init__}: a placeholder is a plain"),
        ({"schedule": parse_schedule(before="visit:2h")}, "audience: has no column 'visit'"),
        ({"tz": "Mars/Base"}, "tz: 'Mars/Base' is not an IANA"),
        ({"chatbot": "no"}, "serial_number: must be 4-64"),
        ({"rate_cap_per_s": 5000.0}, "rate_cap: 5000/s is above the chatbot's limit"),
        ({"quiet_hours": "late"}, "quiet_hours: 'late' is not HH:MM-HH:MM"),
        ({"schedule": parse_schedule(at="2020-01-01T09:00")}, "at: 2020-01-01 09:00 EST is past"),
    ],
)
def test_bad_specs_are_refused_before_anything_is_written(campaigns: Campaigns, outbox: Any,
                                                          overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match="^" + message.replace("{", "\\{").replace("}", "\\}")
                       .replace(".", "\\.")):
        campaigns.create(spec(**overrides), people(utcnow()))
    assert count(outbox, Campaign) == count(outbox, Message) == 0


def test_duplicate_keys_and_long_texts_are_bad_rows(campaigns: Campaigns, outbox: Any) -> None:
    rows = people(utcnow(), 3)
    rows[2]["booking"] = "b0"
    rows[1]["first_name"] = "x" * 1600
    with pytest.raises(AudienceError) as info:
        campaigns.create(spec(), rows)
    assert [(e.row, e.column) for e in info.value.errors] == [(2, "template"), (3, "booking")]
    assert "duplicate key (row 1 has it too)" in info.value.errors[1].why
    assert count(outbox, Message) == 0


def test_suppressed_numbers_are_skipped_and_counted(campaigns: Campaigns, outbox: Any) -> None:
    from oaksend.models.tables import SuppressedNumber

    with outbox.session() as s:
        s.add(SuppressedNumber(to_phone="+12125550001", reason="STOP", at=utcnow()))
    result = campaigns.create(spec(), people(utcnow()))
    assert result.messages == 4 and result.skipped["suppressed"] == 2
    assert campaigns.show(result.id)["skipped"] == {"suppressed": 2}
    assert "+12125550001" not in {m.to_phone for m in messages(outbox, result.id)}


def test_csv_audience_with_bom_quotes_and_zone_column(campaigns: Campaigns, outbox: Any, tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_bytes("\ufeffphone,first_name,appt,tz\n"
                     '+14155550123,"Smith, Ann",2030-06-01T10:00,\n'
                     "+12125550100,Bob,2030-06-01T10:00,Europe/London\n".encode())
    s = spec(audience=AudienceSpec(tz_column="tz"), schedule=parse_schedule(before="appt:2h"))
    result = campaigns.create(s, read_csv(path))
    times = {m.to_phone: m.next_attempt_at for m in messages(outbox, result.id)}
    # 10:00 in the row's zone (London), else the campaign's (New York), never the phone's (Los Angeles)
    assert times == {"+14155550123": datetime(2030, 6, 1, 12, tzinfo=UTC),
                     "+12125550100": datetime(2030, 6, 1, 7, tzinfo=UTC)}
    assert messages(outbox, result.id)[0].body == "Hi Smith, Ann, see you 10:00"


def test_quiet_hours_travel_with_the_message(campaigns: Campaigns, outbox: Any) -> None:
    from zoneinfo import ZoneInfo

    # 15:00 in New York three days on, whatever the time of day now: the reminder (13:00) is never quiet.
    day = (utcnow() + timedelta(days=3)).astimezone(ZoneInfo("America/New_York")).date()
    appt = datetime(day.year, day.month, day.day, 15, tzinfo=ZoneInfo("America/New_York"))
    audience = [{"booking": "b0", "phone": "+12125550000", "first_name": "P0", "appt": at(appt)}]
    result = campaigns.create(spec(quiet_hours="21:00-08:00", schedule=parse_schedule(before="appt:2h")), audience)
    (m,) = messages(outbox, result.id)
    assert m.quiet == "21:00-08:00 America/New_York"  # a 212 number: New York


def test_pause_holds_and_resume_restores_each_time(campaigns: Campaigns, outbox: Any) -> None:
    result = campaigns.create(spec(), people(utcnow()))
    before = {m.id: m.next_attempt_at for m in messages(outbox, result.id)}
    assert campaigns.pause(result.id) == 6
    held = messages(outbox, result.id)
    assert {m.state for m in held} == {"pending"} and all(m.next_attempt_at.year > 2900 for m in held)
    # None of them comes due within 30 days: the dispatcher stages nothing and sees no chatbot with due work.
    assert outbox.stage_due(utcnow() + timedelta(days=30), 100) == 0 and outbox.due_chatbots() == []
    assert campaigns.show(result.id)["next_send_at"] is None
    with pytest.raises(InvalidTransition):
        campaigns.pause(result.id)
    assert campaigns.resume(result.id) == 6
    assert {m.id: m.next_attempt_at for m in messages(outbox, result.id)} == before
    assert campaigns.get(result.id).state == "scheduled"


def test_cancel_cancels_every_unsent_one_and_a_sent_one_stays_sent(campaigns: Campaigns, outbox: Any) -> None:
    result = campaigns.create(spec(), people(utcnow()))
    first = messages(outbox, result.id)[0]
    with outbox.session() as s:
        s.execute(text("UPDATE oaksend_messages SET state = 'sent' WHERE id = :id"), {"id": first.id})
    assert campaigns.cancel(result.id) == 5
    states = {m.id: m.state for m in messages(outbox, result.id)}
    assert states.pop(first.id) == "sent" and set(states.values()) == {"cancelled"}
    with pytest.raises(InvalidTransition):
        campaigns.resume(result.id)
    with pytest.raises(NotFound):
        campaigns.cancel(result.id + 1000)


def test_update_moves_cancels_and_adds(campaigns: Campaigns, outbox: Any) -> None:
    now = utcnow()
    rows = people(now, 3)
    result = campaigns.create(spec(), rows)
    sent = next(m for m in messages(outbox, result.id) if m.to_phone == rows[0]["phone"])
    with outbox.session() as s:
        s.execute(text("UPDATE oaksend_messages SET state = 'sent' WHERE id = :id"), {"id": sent.id})
    new = [dict(r) for r in rows[:2]] + people(now, 4)[3:]
    new[0]["appt"] = at(now + timedelta(hours=72))  # b0 moved
    new[1]["first_name"] = "Renamed"  # b1: same time, new text
    # b2 removed, b3 added
    out = campaigns.update(result.id, new)
    assert (out.messages, out.cancelled, out.moved) == (4, 3, 2)
    by = {}
    for m in messages(outbox, result.id):
        by.setdefault(m.meta["recipient"], []).append(m)
    assert sorted(m.state for m in by["b0"]) == ["cancelled", "pending", "pending", "sent"]
    assert {m.body for m in by["b1"]} == {"Hi Renamed, see you " + datetime.fromisoformat(rows[1]["appt"])
                                          .astimezone(campaigns_zone()).strftime("%H:%M")}
    assert {m.state for m in by["b2"]} == {"cancelled"} and len(by["b3"]) == 2
    assert campaigns.get(result.id).recipients == 3
    # the same update again changes nothing
    again = campaigns.update(result.id, new)
    assert (again.messages, again.cancelled, again.moved) == (0, 0, 0)


def campaigns_zone() -> Any:
    from zoneinfo import ZoneInfo

    return ZoneInfo("America/New_York")


def test_recipients_change_in_the_applications_transaction(campaigns: Campaigns, outbox: Any) -> None:
    now = utcnow()
    result = campaigns.create(spec(), people(now, 1))
    booking = {"booking": "b9", "phone": "+12125550999", "first_name": "Nia", "appt": at(now + timedelta(days=3))}
    # rolled back with the application's own work: nothing
    with Session(outbox.engine) as s:
        s.begin()
        campaigns.upsert_recipient(result.id, booking, session=s)
        s.rollback()
    assert len(messages(outbox, result.id)) == 2
    with Session(outbox.engine) as s, s.begin():
        campaigns.upsert_recipient(result.id, booking, session=s)
    assert len([m for m in messages(outbox, result.id) if m.to_phone == "+12125550999"]) == 2
    # the booking moves: its unsent reminders follow
    with Session(outbox.engine) as s, s.begin():
        out = campaigns.upsert_recipient(result.id, {**booking, "appt": at(now + timedelta(days=4))}, session=s)
    assert (out.messages, out.cancelled) == (2, 2)
    # the booking is cancelled: its reminders are cancelled with it
    with Session(outbox.engine) as s, s.begin():
        assert campaigns.remove_recipient(result.id, "b9", session=s) == 2
    mine = [m for m in messages(outbox, result.id) if m.to_phone == "+12125550999"]
    assert sorted(m.state for m in mine) == ["cancelled"] * 4
    with pytest.raises(ValidationError, match="^row.phone: is not an E.164"):
        campaigns.upsert_recipient(result.id, {**booking, "phone": "12"})


def test_cron_ticks_materialize_each_occurrence_once_even_when_racing(campaigns: Campaigns, outbox: Any,
                                                                      settings: Any) -> None:
    result = campaigns.create(spec(template="Weekly hello {first_name}", schedule=parse_schedule(cron="0 9 * * *"),
                                   quiet_hours="21:00-08:00"), people(utcnow(), 3))
    now = utcnow()
    services = [Campaigns(settings) for _ in range(4)]
    try:
        threads = [threading.Thread(target=svc.tick, args=(now, timedelta(days=10))) for svc in services]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        services[0].tick(now, timedelta(days=10))  # and once more, later
    finally:
        for svc in services:
            svc.close()
    rows = messages(outbox, result.id)
    keys = [m.idempotency_key for m in rows]
    assert len(keys) == len(set(keys))
    per_person = {}
    for m in rows:
        per_person.setdefault(m.to_phone, []).append(m.next_attempt_at)
    # 09:00 New York every day for 10 days: 10 or 11 occurrences each, depending on the time of day now
    assert {len(v) for v in per_person.values()} <= {10, 11} and len(per_person) == 3
    for times in per_person.values():
        assert all(t.astimezone(campaigns_zone()).hour == 9 for t in times)
    assert campaigns.get(result.id).materialized_until == now + timedelta(days=10)


def test_tick_moves_a_finished_campaign_along(campaigns: Campaigns, outbox: Any) -> None:
    result = campaigns.create(spec(), people(utcnow(), 1))
    assert campaigns.tick() == {}
    with outbox.session() as s:
        s.execute(text("UPDATE oaksend_messages SET state = 'sent' WHERE campaign_id = :c"), {"c": result.id})
    assert campaigns.tick() == {"running": 1}
    assert campaigns.tick() == {"finished": 1}
    assert campaigns.get(result.id).state == "finished"


def test_rate_cap_spaces_the_send_times(campaigns: Campaigns, outbox: Any) -> None:
    start = utcnow() + timedelta(hours=1)
    s = spec(schedule=parse_schedule(at=start.replace(tzinfo=None).isoformat()), tz="UTC", rate_cap_per_s=0.5,
             template="Sale today, {first_name}")
    result = campaigns.create(s, people(utcnow(), 4))
    times = sorted(m.next_attempt_at for m in messages(outbox, result.id))
    assert [(t - times[0]).total_seconds() for t in times] == [0, 2, 4, 6]


def test_frequency_cap_holds_across_campaigns(campaigns: Campaigns, outbox: Any) -> None:
    now = utcnow()
    first = campaigns.create(spec(frequency_cap=2), people(now, 2))
    assert first.messages == 4  # 24 h and 2 h before: two within 24 h, at the cap
    second = campaigns.create(spec(name="again", frequency_cap=2, schedule=parse_schedule(before="appt:3h"),
                                   allow_empty=True), people(now, 2))
    assert second.messages == 0 and second.skipped["frequency_cap"] == 2
    assert campaigns.show(second.id)["skipped"] == {"frequency_cap": 2}
    uncapped = campaigns.create(spec(name="no cap", schedule=parse_schedule(before="appt:3h")), people(now, 2))
    assert uncapped.messages == 2
    with pytest.raises(ValidationError, match="^frequency_cap: must be a whole number"):
        campaigns.create(spec(frequency_cap=0), people(now, 1))


def test_campaigns_in_a_postgresql_schema_of_their_own(pg_database: str, redis_url: str) -> None:
    """OAKSEND_DB_SCHEMA: the migration (up, down, up), COPY, pause and resume all stay in the schema."""
    from sqlalchemy import create_engine

    from oaksend.migrations.runner import downgrade, upgrade
    from oaksend.worker.settings import Settings
    from tests.support import reset_pg

    reset_pg(pg_database)
    upgrade(pg_database, schema="oaksend_camp")
    downgrade(pg_database, "0002", schema="oaksend_camp")
    upgrade(pg_database, schema="oaksend_camp")
    settings = Settings(database_url=pg_database, redis_url=redis_url, db_schema="oaksend_camp",
                        _env_file=None)  # type: ignore[call-arg]
    service = Campaigns(settings)
    engine = create_engine(pg_database)
    try:
        result = service.create(spec(), people(utcnow(), 2))
        assert service.pause(result.id) == 4 and service.resume(result.id) == 4
        with engine.connect() as conn:
            assert conn.scalar(text("SELECT count(*) FROM oaksend_camp.oaksend_messages")) == 4
            assert conn.scalar(text("SELECT count(*) FROM information_schema.tables "
                                    "WHERE table_schema = 'public' AND table_name LIKE 'oaksend%'")) == 0
            conn.execute(text("DROP SCHEMA oaksend_camp CASCADE"))
            conn.commit()
    finally:
        service.close()
        engine.dispose()


def test_a_finished_campaign_takes_a_new_booking_and_runs_again(campaigns: Campaigns, outbox: Any) -> None:
    now = utcnow()
    result = campaigns.create(spec(), people(now, 1))
    with outbox.session() as s:
        s.execute(text("UPDATE oaksend_messages SET state = 'sent' WHERE campaign_id = :c"), {"c": result.id})
    campaigns.tick()
    campaigns.tick()
    assert campaigns.get(result.id).state == "finished"
    out = campaigns.upsert_recipient(result.id, {"booking": "b7", "phone": "+12125550777", "first_name": "Al",
                                                 "appt": at(now + timedelta(days=2))})
    assert out.messages == 2 and campaigns.get(result.id).state == "running"


def _due_now(outbox: Any, campaign_id: int) -> datetime:
    """Make the campaign's messages due now (as if their time had come); returns now."""
    now = utcnow()
    with outbox.session() as s:
        s.execute(text("UPDATE oaksend_messages SET next_attempt_at = :now WHERE campaign_id = :c"),
                  {"now": now - timedelta(seconds=1), "c": campaign_id})
    return now


def test_a_pause_takes_back_what_a_worker_claimed_but_has_not_called(campaigns: Campaigns, outbox: Any) -> None:
    """Between its claim and its calling mark, a worker's messages are still not on their way:
    the pause takes them back, the worker's mark finds them no longer its own, no request leaves."""
    result = campaigns.create(spec(), people(utcnow(), 2))
    now = _due_now(outbox, result.id)
    assert outbox.stage_due(now, 100) == 4
    token, ids = outbox.lease_due(CHATBOT, now, 10, now + timedelta(seconds=30))
    claimed, _ = outbox.claim_group(ids[:2], token, now, now + timedelta(seconds=30), "w1")
    assert len(claimed) == 2  # two claimed (sending, not marked); two still only dispatched
    assert campaigns.pause(result.id) == 4
    assert outbox.mark_calling([w.id for w in claimed], token, now) == ([], [])
    assert outbox.claim_group(ids[2:], token, now, now + timedelta(seconds=30), "w1") == ([], 0)
    held = messages(outbox, result.id)
    assert {(m.state, m.lease_token, m.claimed_by) for m in held} == {("pending", None, None)}
    assert all(m.next_attempt_at.year > 2900 for m in held) and outbox.stage_due(now + timedelta(days=30), 100) == 0
    assert campaigns.resume(result.id) == 4 and outbox.stage_due(utcnow(), 100) == 4


def test_a_call_on_the_wire_at_the_pause_is_not_retried_until_the_resume(campaigns: Campaigns, outbox: Any) -> None:
    """A message marked calling may be on the wire, so the pause leaves it; when its call fails and
    a retry is recorded, the retry waits for the resume."""
    result = campaigns.create(spec(), people(utcnow(), 1))
    now = _due_now(outbox, result.id)
    outbox.stage_due(now, 100)
    token, ids = outbox.lease_due(CHATBOT, now, 10, now + timedelta(seconds=30))
    outbox.claim_group(ids, token, now, now + timedelta(seconds=30), "w1")
    marked, _ = outbox.mark_calling(ids[:1], token, now)
    assert marked == ids[:1]
    assert campaigns.pause(result.id) == 1  # the other one; the one on the wire stays "sending"
    with outbox.session() as s:  # its call failed: a retry one second later, as record_group writes it
        s.execute(text("UPDATE oaksend_messages SET state = 'pending', ready = false, lease_token = NULL, "
                       "calling_at = NULL, next_attempt_at = :at WHERE id = :id"), {"at": now, "id": marked[0]})
    assert outbox.stage_due(utcnow() + timedelta(seconds=5), 100) == 0  # paused: not staged
    campaigns.resume(result.id)
    assert outbox.stage_due(utcnow() + timedelta(seconds=5), 100) == 2


def test_a_ready_message_of_a_paused_campaign_is_not_dispatched(campaigns: Campaigns, outbox: Any) -> None:
    """A rescued call's retry comes back ready; if its campaign is paused, the dispatcher leaves it."""
    result = campaigns.create(spec(), people(utcnow(), 1))
    now = _due_now(outbox, result.id)
    campaigns.pause(result.id)
    with outbox.session() as s:  # as the rescue writes a retry: pending, ready, due now
        s.execute(text("UPDATE oaksend_messages SET ready = true, next_attempt_at = :at WHERE campaign_id = :c"),
                  {"at": now, "c": result.id})
    assert outbox.due_chatbots() == [CHATBOT]
    assert outbox.lease_due(CHATBOT, utcnow(), 10, utcnow() + timedelta(seconds=30))[1] == []
    assert outbox.due_chatbots() == []  # back to waiting, not listed pass after pass
    campaigns.resume(result.id)
    assert outbox.stage_due(utcnow(), 100) == 2


def test_a_draft_holds_everything_until_it_is_started(campaigns: Campaigns, outbox: Any) -> None:
    now = utcnow()
    result = campaigns.create(spec(draft=True), people(now, 2))
    c = campaigns.get(result.id)
    assert c.state == "draft" and result.messages == 4
    assert all(m.next_attempt_at.year > 2900 for m in messages(outbox, result.id))
    assert outbox.stage_due(now + timedelta(days=30), 100) == 0 and campaigns.show(result.id)["next_send_at"] is None
    campaigns.upsert_recipient(result.id, {"booking": "new", "phone": "+12125559999", "first_name": "N",
                                           "appt": at(now + timedelta(hours=30))})
    assert all(m.next_attempt_at.year > 2900 for m in messages(outbox, result.id))  # added while a draft: held too
    assert campaigns.tick(now).get("messages", 0) == 0 and campaigns.get(result.id).state == "draft"
    assert campaigns.start(result.id) == 6
    assert campaigns.get(result.id).state == "scheduled"
    times = [m.next_attempt_at for m in messages(outbox, result.id)]
    assert all(t.replace(tzinfo=UTC) < now + timedelta(days=3) for t in times)
    with pytest.raises(InvalidTransition):
        campaigns.start(result.id)
