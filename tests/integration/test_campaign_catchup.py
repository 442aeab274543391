"""Catch-up, rate-capped deadlines and a scheduler that one bad campaign cannot stop, on SQLite and
PostgreSQL, with the scheduler's own tick (and its loop, in a thread) and the dispatcher's expiry.

Time is handed in (a clock the test moves), so 10.5 hours of downtime take no time.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, text

from oaksend.models.tables import Message
from oaksend.worker.campaigns.audience import AudienceSpec
from oaksend.worker.campaigns.schedule import parse_schedule
from oaksend.worker.campaigns.scheduler import Scheduler
from oaksend.worker.campaigns.service import Campaigns, CampaignSpec
from tests.support import CHATBOT

UTC = UTC
T0 = datetime(2030, 1, 7, 0, 20, tzinfo=UTC)  # a Monday


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def campaigns(settings: Any, outbox: Any, clock: Clock) -> Iterator[Campaigns]:
    service = Campaigns(settings.model_copy(update={"default_rate_per_s": 1.0}), outbox=outbox, clock=clock)
    yield service
    service.redis.close()


def hourly(**overrides: Any) -> CampaignSpec:
    values: dict[str, Any] = dict(name="hourly", chatbot=CHATBOT, template="Hourly note for {first_name}",
                                  schedule=parse_schedule(cron="0 * * * *"), tz="UTC", quiet_hours="off",
                                  audience=AudienceSpec(key_column="booking"))
    values.update(overrides)
    return CampaignSpec(**values)


def people(n: int, at: datetime | None = None) -> list[dict[str, str]]:
    rows = [{"booking": f"b{i}", "phone": f"+1212555{i:04d}", "first_name": f"P{i}"} for i in range(n)]
    if at is not None:
        for r in rows:
            r["appt"] = at.isoformat()
    return rows


def rows_of(outbox: Any, campaign_id: int) -> list[Message]:
    with outbox.session() as s:
        return list(s.scalars(select(Message).where(Message.campaign_id == campaign_id).order_by(Message.id)))


def due_per_recipient(outbox: Any, campaign_id: int, now: datetime) -> Counter[str]:
    """What the dispatcher would send now: it first expires what is past its deadline."""
    outbox.expire_overdue(now)
    return Counter(m.to_phone for m in rows_of(outbox, campaign_id)
                   if m.state == "pending" and m.next_attempt_at <= now)


def test_scheduler_downtime_sends_the_latest_missed_occurrence_only(campaigns: Campaigns, outbox: Any,
                                                                    clock: Clock) -> None:
    result = campaigns.create(hourly(), people(3))
    assert result.messages == 3 * 6  # 01:00 ... 06:00 materialized ahead
    clock.now = T0 + timedelta(hours=10, minutes=30)  # the scheduler (and the dispatcher) down 10.5 h
    stats = campaigns.tick()
    assert stats["messages"] == 3 * 7  # 10:00 (now) and 11:00 ... 16:00
    assert due_per_recipient(outbox, result.id, clock.now) == {f"+1212555{i:04d}": 1 for i in range(3)}
    due = [m for m in rows_of(outbox, result.id) if m.state == "pending" and m.next_attempt_at <= clock.now]
    assert {m.meta["occurrence"] for m in due} == {"20300107T100000Z"}
    assert {m.deadline_at for m in due} == {datetime(2030, 1, 7, 11, tzinfo=UTC)}  # moot once 11:00 is due
    # the six materialized before the outage expired unsent; 07:00, 08:00, 09:00 were never written
    assert Counter(m.state for m in rows_of(outbox, result.id))["expired"] == 3 * 6
    assert campaigns.show(result.id)["skipped"]["missed"] == 3 * 3
    # and nothing more until an occurrence comes within the horizon (the expired ones made it running)
    assert campaigns.tick() == {"running": 1} and campaigns.tick() == {}


def test_a_pause_sends_the_latest_occurrence_only_on_resume(campaigns: Campaigns, outbox: Any,
                                                            clock: Clock) -> None:
    result = campaigns.create(hourly(), people(2))
    campaigns.pause(result.id)
    clock.now = T0 + timedelta(hours=10, minutes=30)
    assert campaigns.tick().get("messages", 0) == 0  # paused: nothing materialized
    campaigns.resume(result.id)
    campaigns.tick()
    assert due_per_recipient(outbox, result.id, clock.now) == {"+12125550000": 1, "+12125550001": 1}


def test_a_rate_cap_moves_deadlines_with_the_send_times(campaigns: Campaigns, outbox: Any, clock: Clock) -> None:
    at = (T0 + timedelta(hours=1)).replace(tzinfo=None).isoformat()
    for missed in ("send", "skip"):
        result = campaigns.create(hourly(name=missed, schedule=parse_schedule(at=at), deadline="5m",
                                         rate_cap_per_s=0.05, missed=missed), people(20))
        ms = sorted(rows_of(outbox, result.id), key=lambda m: m.next_attempt_at)
        assert [(m.next_attempt_at - ms[0].next_attempt_at).total_seconds() for m in ms] == [20.0 * i
                                                                                             for i in range(20)]
        assert {m.deadline_at - m.next_attempt_at for m in ms} == {timedelta(minutes=5)}
        assert result.expiring == 0 and not result.skipped


def test_a_rate_cap_never_moves_a_reminder_past_its_appointment(campaigns: Campaigns, outbox: Any) -> None:
    appt = T0 + timedelta(hours=2)
    result = campaigns.create(hourly(schedule=parse_schedule(before="appt:90s"), template="See you {first_name}",
                                     rate_cap_per_s=0.02), people(4, appt))  # one per 50 s
    ms = sorted(rows_of(outbox, result.id), key=lambda m: m.next_attempt_at)
    assert {m.deadline_at for m in ms} == {appt}
    assert result.expiring == 2  # at 0 s and 50 s they make it; at 100 s and 150 s the appointment is past


def test_create_counts_messages_certain_to_expire_at_the_chatbots_limit(campaigns: Campaigns) -> None:
    at = (T0 + timedelta(hours=1)).replace(tzinfo=None).isoformat()
    result = campaigns.create(hourly(schedule=parse_schedule(at=at), deadline="10s"), people(25))
    assert (result.messages, result.expiring) == (25, 15)  # 1/s: 10 go out in 10 s


def test_a_tick_reads_a_cron_campaign_only_when_an_occurrence_is_near(campaigns: Campaigns, outbox: Any,
                                                                      clock: Clock) -> None:
    result = campaigns.create(hourly(schedule=parse_schedule(cron="0 9 * * MON")), people(2))
    campaigns.tick()
    c = campaigns.get(result.id)
    assert c.next_fire_at == datetime(2030, 1, 7, 9, tzinfo=UTC) and not rows_of(outbox, result.id)
    # the preview shows the next occurrences however far; show has the next send
    assert [r["send_at_utc"][:16] for r in campaigns.preview_id(result.id, limit=3)] == [
        "2030-01-07T09:00", "2030-01-14T09:00", "2030-01-21T09:00"]
    assert campaigns.show(result.id)["next_send_at"] == "2030-01-07T09:00:00+00:00"
    with outbox.session() as s:  # were the tick to read it, it would fail
        s.execute(text("UPDATE oaksend_campaigns SET template = '{' WHERE id = :c"), {"c": result.id})
    assert campaigns.tick() == {}
    with outbox.session() as s:
        s.execute(text("UPDATE oaksend_campaigns SET template = 'Hi {first_name}' WHERE id = :c"), {"c": result.id})
    clock.now = T0 + timedelta(hours=3, minutes=1)  # 09:00 is within the 6 h horizon now
    assert campaigns.tick()["messages"] == 2
    assert campaigns.get(result.id).next_fire_at == datetime(2030, 1, 14, 9, tzinfo=UTC)
    show = campaigns.show(result.id)
    assert show["next_send_at"] == "2030-01-07T09:00:00+00:00"
    assert show["eta"] == "2030-01-07T09:00:01+00:00"  # two messages at 1/s


def break_campaign(outbox: Any, campaign_id: int, column: str, value: str) -> None:
    with outbox.session() as s:
        s.execute(text(f"UPDATE oaksend_campaigns SET {column} = :v WHERE id = :c"), {"v": value, "c": campaign_id})


def test_one_bad_campaign_is_marked_and_never_stops_the_others(campaigns: Campaigns, outbox: Any,
                                                                clock: Clock) -> None:
    bad_zone = campaigns.create(hourly(name="zone"), people(2)).id
    bad_template = campaigns.create(hourly(name="template"), people(2)).id
    good = campaigns.create(hourly(name="good"), people(2)).id
    bad_recipient = campaigns.create(hourly(name="recipient"), people(3)).id
    break_campaign(outbox, bad_zone, "tz", "Mars/Olympus")
    break_campaign(outbox, bad_template, "template", "Hi {first_name")
    with outbox.session() as s:
        s.execute(text("UPDATE oaksend_campaign_recipients SET tz = 'America' WHERE campaign_id = :c AND key = 'b1'"),
                  {"c": bad_recipient})
    clock.now = T0 + timedelta(hours=1)
    stats = campaigns.tick()
    assert stats["errors"] == 2 and stats["messages"] == 2 + 2
    assert "Mars/Olympus" in campaigns.get(bad_zone).last_error
    assert "template" in campaigns.get(bad_template).last_error
    assert campaigns.get(bad_recipient).last_error.startswith("1 recipient(s) not materialized; first: recipient b1")
    assert campaigns.get(good).last_error is None
    assert len(rows_of(outbox, good)) == 2 * 7
    # fixed, the campaign is ticked again and its mark cleared
    break_campaign(outbox, bad_zone, "tz", "UTC")
    clock.now = T0 + timedelta(hours=2)
    assert campaigns.tick().get("errors") == 1
    assert campaigns.get(bad_zone).last_error is None and len(rows_of(outbox, bad_zone)) > 2 * 6


def test_the_scheduler_loop_outlives_a_bad_campaign(campaigns: Campaigns, outbox: Any) -> None:
    bad = campaigns.create(hourly(name="bad"), people(1)).id
    break_campaign(outbox, bad, "tz", "Mars/Olympus")
    good = campaigns.create(hourly(name="good", schedule=parse_schedule(cron="*/10 * * * *")), people(1)).id
    scheduler = Scheduler(campaigns, campaigns.redis, tick_s=0.05, use_lock=False)
    stop = threading.Event()
    thread = threading.Thread(target=scheduler.run_forever, args=(stop,))
    thread.start()
    try:
        before = len(rows_of(outbox, good))
        deadline = time.monotonic() + 20
        while len(rows_of(outbox, good)) == before and time.monotonic() < deadline:
            campaigns.clock.now += timedelta(minutes=10)  # type: ignore[attr-defined]
            time.sleep(0.1)
        assert thread.is_alive() and len(rows_of(outbox, good)) > before
    finally:
        stop.set()
        thread.join(10)
    assert campaigns.get(bad).last_error is not None
