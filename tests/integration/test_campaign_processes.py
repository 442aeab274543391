"""Campaigns end to end: real scheduler, dispatcher and worker processes against the sandbox API.

Offsets are seconds, so each test takes a few seconds; every reminder must reach
the API exactly once, at (not before) its time, and never once it stopped being useful.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select, text

from oaksend.models.tables import Message
from oaksend.worker.campaigns.audience import AudienceSpec
from oaksend.worker.campaigns.service import Campaigns, CampaignSpec
from oaksend.worker.clock import utcnow
from oaksend.worker.campaigns.schedule import parse_schedule
from tests.support import CHATBOT, wait_until

UTC = timezone.utc
pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


@pytest.fixture
def campaigns(settings: Any, outbox: Any) -> Iterator[Campaigns]:
    service = Campaigns(settings, outbox=outbox)
    yield service
    service.redis.close()


def bookings(now: datetime, phones: list[str], in_s: float) -> list[dict[str, str]]:
    return [{"booking": f"b{i}", "phone": p, "first_name": f"P{i}", "appt": (now + timedelta(seconds=in_s)).isoformat()}
            for i, p in enumerate(phones)]


def relative(offsets: str = "4s,2s") -> CampaignSpec:
    return CampaignSpec(name="soon", chatbot=CHATBOT, template="Hi {first_name}, in a moment",
                        schedule=parse_schedule(before=f"appt:{offsets}"), tz="UTC",
                        audience=AudienceSpec(key_column="booking"), quiet_hours="off")


def rows(outbox: Any, campaign_id: int) -> list[Message]:
    with outbox.session() as s:
        return list(s.scalars(select(Message).where(Message.campaign_id == campaign_id).order_by(Message.id)))


def settled(outbox: Any, campaign_id: int) -> bool:
    return all(m.state in ("sent", "cancelled", "expired", "failed") for m in rows(outbox, campaign_id))


def sent_to(sandbox: Any, phones: list[str]) -> Counter[str]:
    return Counter(r["to_phone_number"] for r in sandbox.requests() if r.get("to_phone_number") in phones)


def test_relative_reminders_arrive_once_each_at_their_times(make_stack: Any, campaigns: Campaigns, outbox: Any,
                                                            sandbox: Any) -> None:
    make_stack(workers=1)
    phones = ["+14155550301", "+14155550302", "+14155550303"]
    now = utcnow()
    result = campaigns.create(relative(), bookings(now, phones, in_s=6))
    wait_until(lambda: settled(outbox, result.id), 30, 0.2, "every reminder to be sent")
    ms = rows(outbox, result.id)
    assert {m.state for m in ms} == {"sent"} and len(ms) == 6
    for m in ms:
        assert m.sent_at is not None and m.sent_at >= m.next_attempt_at  # never early
        assert m.sent_at - m.next_attempt_at < timedelta(seconds=3)
        assert m.sent_at < m.deadline_at  # before the appointment
    time.sleep(1.0)  # room for any (wrong) duplicate
    assert sent_to(sandbox, phones) == {p: 2 for p in phones}


def test_restart_mid_campaign_sends_each_once(make_stack: Any, campaigns: Campaigns, outbox: Any,
                                              sandbox: Any) -> None:
    stack = make_stack(workers=1)
    phones = [f"+1415555{400 + i:04d}" for i in range(4)]
    now = utcnow()
    result = campaigns.create(relative("18s,5s"), bookings(now, phones, in_s=20))
    # the first reminders (at +2 s) go out, then everything is killed before the second ones (+15 s)
    wait_until(lambda: sum(m.state == "sent" for m in rows(outbox, result.id)) == 4, 20, 0.1, "first reminders")
    stack.stop(signal.SIGKILL)
    time.sleep(1.0)
    stack.start_dispatcher("dispatcher2")
    stack.start_worker("worker2")
    stack.wait_ready()
    wait_until(lambda: settled(outbox, result.id), 30, 0.2, "the second reminders after the restart")
    assert {m.state for m in rows(outbox, result.id)} == {"sent"}
    time.sleep(1.0)
    assert sent_to(sandbox, phones) == {p: 2 for p in phones}


def test_pause_holds_and_resume_releases(make_stack: Any, campaigns: Campaigns, outbox: Any, sandbox: Any) -> None:
    make_stack(workers=1)
    phones = ["+14155550501", "+14155550502"]
    result = campaigns.create(relative("3s"), bookings(utcnow(), phones, in_s=30))  # sends at +27 s
    campaigns.pause(result.id)
    with outbox.session() as s:  # as if it were due now
        s.execute(text("UPDATE oaksend_messages SET next_attempt_at = next_attempt_at - interval '27 seconds' "
                       "WHERE campaign_id = :c"), {"c": result.id})
    time.sleep(2.5)
    assert sent_to(sandbox, phones) == {}
    assert {m.state for m in rows(outbox, result.id)} == {"pending"}
    campaigns.resume(result.id)
    wait_until(lambda: settled(outbox, result.id), 20, 0.2, "the released reminders")
    time.sleep(0.5)
    assert sent_to(sandbox, phones) == {p: 1 for p in phones}


def test_cancel_sends_nothing_more(make_stack: Any, campaigns: Campaigns, outbox: Any, sandbox: Any) -> None:
    make_stack(workers=1)
    phones = ["+14155550601", "+14155550602"]
    result = campaigns.create(relative("5s,2s"), bookings(utcnow(), phones, in_s=6))
    wait_until(lambda: sum(m.state == "sent" for m in rows(outbox, result.id)) == 2, 20, 0.1, "first reminders")
    assert campaigns.cancel(result.id) == 2
    time.sleep(6)
    assert sent_to(sandbox, phones) == {p: 1 for p in phones}
    assert sorted(m.state for m in rows(outbox, result.id)) == ["cancelled", "cancelled", "sent", "sent"]


def test_update_moves_and_cancels_reminders(make_stack: Any, campaigns: Campaigns, outbox: Any,
                                            sandbox: Any) -> None:
    make_stack(workers=1)
    phones = ["+14155550701", "+14155550702"]
    now = utcnow()
    result = campaigns.create(relative("2s"), bookings(now, phones, in_s=60))
    moved = bookings(now, phones[:1], in_s=5)  # b0 moved to much sooner; b1 removed
    out = campaigns.update(result.id, moved)
    assert (out.messages, out.cancelled) == (1, 2)
    wait_until(lambda: settled(outbox, result.id), 20, 0.2, "the moved reminder")
    time.sleep(0.5)
    assert sent_to(sandbox, phones) == {phones[0]: 1}
    states = sorted((m.to_phone, m.state) for m in rows(outbox, result.id))
    assert states == [(phones[0], "cancelled"), (phones[0], "sent"), (phones[1], "cancelled")]


def test_quiet_hours_hold_at_send_time(make_stack: Any, campaigns: Campaigns, outbox: Any, sandbox: Any) -> None:
    """A message due inside its recipient's quiet hours (delayed there by retries or throttling) waits
    for the window's end, or expires when that is past its deadline: checked by the worker itself."""
    make_stack(workers=1)
    phones = ["+14155550801", "+14155550802"]
    now = utcnow()
    result = campaigns.create(relative("1h"), bookings(now, phones, in_s=3600 + 7200))
    start, end = (now - timedelta(minutes=30)), (now + timedelta(hours=1))
    window = f"{start:%H:%M}-{end:%H:%M} UTC"
    with outbox.session() as s:
        ms = rows(outbox, result.id)
        s.execute(text("UPDATE oaksend_messages SET quiet = :q, next_attempt_at = :now WHERE campaign_id = :c"),
                  {"q": window, "now": now, "c": result.id})
        # the second one's deadline falls inside the window: it can only expire
        s.execute(text("UPDATE oaksend_messages SET deadline_at = :d WHERE id = :id"),
                  {"d": now + timedelta(minutes=30), "id": ms[1].id})
    wait_until(lambda: {m.state for m in rows(outbox, result.id)} == {"pending", "expired"}
               and all(m.last_reason for m in rows(outbox, result.id)), 20, 0.2, "the send-time check")
    waiting, expired = rows(outbox, result.id)
    assert waiting.state == "pending" and waiting.last_reason.startswith("quiet hours until")
    assert waiting.next_attempt_at == end.replace(second=0, microsecond=0)
    assert expired.state == "expired" and expired.last_reason.startswith("quiet hours")
    assert sent_to(sandbox, phones) == {}
    assert campaigns.show(result.id)["skipped"] == {"quiet_hours_at_send": 1}


def test_two_schedulers_materialize_each_occurrence_once(make_stack: Any, campaigns: Campaigns, outbox: Any) -> None:
    stack = make_stack(workers=0, dispatcher=False)
    spec = CampaignSpec(name="daily", chatbot=CHATBOT, template="Daily note for {first_name}",
                        schedule=parse_schedule(cron="*/30 * * * *"), tz="America/New_York",
                        audience=AudienceSpec(key_column="booking"), quiet_hours="21:00-08:00")
    result = campaigns.create(spec, bookings(utcnow(), ["+14155550901", "+12125550902", "+13125550903"], 0))
    first = len(rows(outbox, result.id))
    # both tick at once (as if Redis lost the scheduler lock), materializing two more days
    for name in ("scheduler1", "scheduler2"):
        stack._start(name, ["scheduler", "--tick-s", "0.2", "--horizon-s", str(2 * 86400), "--no-lock"])
    wait_until(lambda: stack.log_of("scheduler1").count("tick:") + stack.log_of("scheduler2").count("tick:") >= 1
               and campaigns.get(result.id).materialized_until > utcnow() + timedelta(days=1), 30, 0.2,
               "the schedulers to materialize")
    time.sleep(1.5)
    stack.stop()
    ms = rows(outbox, result.id)
    keys = Counter((m.to_phone, m.meta["occurrence"]) for m in ms)
    assert max(keys.values()) == 1
    assert len(ms) > first
    # outside 21:00-08:00 in each recipient's own zone (a quiet occurrence waits for 08:00 or is skipped)
    zones = {"+1415": "America/Los_Angeles", "+1212": "America/New_York", "+1312": "America/Chicago"}
    for m in ms:
        local = m.next_attempt_at.astimezone(ZoneInfo(zones[m.to_phone[:5]]))
        assert 8 <= local.hour < 21 and local.minute in (0, 30)
    assert campaigns.show(result.id)["skipped"]["quiet_hours"] > 0


def test_one_scheduler_active_the_other_stands_by(make_stack: Any) -> None:
    stack = make_stack(workers=0, dispatcher=False)
    for name in ("scheduler1", "scheduler2"):
        stack._start(name, ["scheduler", "--tick-s", "0.2"])
    wait_until(lambda: "is now active" in stack.log_of("scheduler1") + stack.log_of("scheduler2"), 20, 0.2,
               "a scheduler to become active")
    time.sleep(1.0)
    logs = stack.log_of("scheduler1") + stack.log_of("scheduler2")
    assert logs.count("is now active") == 1
