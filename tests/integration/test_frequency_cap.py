"""The frequency cap is global: per chatbot and number, from settings, over every campaign,
and checked again when a message is about to be sent."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from functools import partial
from typing import Any

import pytest
from sqlalchemy import select

from oaksend.models.tables import Message
from oaksend.worker.campaigns.audience import AudienceSpec
from oaksend.worker.campaigns.schedule import parse_schedule
from oaksend.worker.campaigns.service import Campaigns, CampaignSpec
from oaksend.worker.clock import utcnow
from oaksend.worker.message.cap import cap_reason, over_cap_at_send, parse_cap
from oaksend.worker.settings import Settings
from tests.support import CHATBOT, wait_until

OTHER_BOT = "9f0e8d7c6b5a49382716a5b4c3d2e1f0"
NUMBER = "+447911123456"
TRUNK = "+4407911123456"  # the same number, typed with a trunk zero
REASON = "frequency cap: 1 per 24h per chatbot and number reached"


def service(database_url: str, redis_url: str, outbox: Any, cap: str | None) -> Campaigns:
    settings = Settings(database_url=database_url, redis_url=redis_url, frequency_cap=cap,
                        _env_file=None)  # type: ignore[call-arg]
    return Campaigns(settings, outbox=outbox)


@pytest.fixture
def capped(database_url: str, redis_url: str, outbox: Any) -> Iterator[Campaigns]:
    c = service(database_url, redis_url, outbox, "1 per 24h")
    yield c
    c.redis.close()


def once(at: datetime, chatbot: str = CHATBOT, **overrides: Any) -> CampaignSpec:
    values: dict[str, Any] = dict(name="reminders", chatbot=chatbot, template="Hi {first_name}",
                                  schedule=parse_schedule(at=at.astimezone(timezone.utc).replace(tzinfo=None)
                                                          .isoformat(timespec="seconds")),
                                  tz="UTC", audience=AudienceSpec(key_column="booking"), quiet_hours="off")
    values.update(overrides)
    return CampaignSpec(**values)


def rows(*phones: str) -> list[dict[str, str]]:
    return [{"booking": f"b{i}", "phone": p, "first_name": f"P{i}"} for i, p in enumerate(phones)]


def campaign_messages(outbox: Any, campaign_id: int) -> list[Message]:
    with outbox.session() as s:
        return list(s.scalars(select(Message).where(Message.campaign_id == campaign_id).order_by(Message.id)))


def test_the_setting_is_checked_and_documented_in_one_line() -> None:
    from oaksend.errors import ConfigError
    from oaksend.worker.settings import load_settings

    assert load_settings(frequency_cap="2 PER 1d").frequency_cap == "2 per 24h"
    assert load_settings(frequency_cap="off").frequency_cap is None
    with pytest.raises(ConfigError, match="OAKSEND_FREQUENCY_CAP") as info:
        load_settings(frequency_cap="twice a day")
    assert "\n" not in str(info.value)


def test_two_campaigns_on_one_chatbot_and_number_share_one_cap(capped: Campaigns, outbox: Any) -> None:
    now = utcnow()
    first = capped.create(once(now + timedelta(hours=2)), rows(NUMBER, "+14155550123"))
    assert first.messages == 2
    # Another campaign, without a cap of its own, 3 h later: the number (typed otherwise) is capped.
    second = capped.create(once(now + timedelta(hours=5)), rows(TRUNK, "+14155550124"))
    assert second.messages == 1 and second.skipped["frequency_cap"] == 1
    assert [m.to_phone for m in campaign_messages(outbox, second.id)] == ["+14155550124"]
    # Another chatbot has its own allowance; a day and more later, the number may be texted again.
    other = capped.create(once(now + timedelta(hours=5), chatbot=OTHER_BOT), rows(NUMBER))
    assert other.messages == 1
    later = capped.create(once(now + timedelta(hours=27)), rows(NUMBER))
    assert later.messages == 1
    # A recipient added to a campaign later is capped the same way.
    added = capped.upsert_recipient(second.id, {"booking": "b9", "phone": NUMBER, "first_name": "P9"})
    assert added.messages == 0 and added.skipped["frequency_cap"] == 1


def test_without_the_setting_campaigns_do_not_cap_each_other(database_url: str, redis_url: str,
                                                             outbox: Any) -> None:
    uncapped = service(database_url, redis_url, outbox, None)
    try:
        now = utcnow()
        uncapped.create(once(now + timedelta(hours=2)), rows(NUMBER))
        assert uncapped.create(once(now + timedelta(hours=5)), rows(TRUNK)).messages == 1
    finally:
        uncapped.redis.close()


def _due_together(capped: Campaigns, outbox: Any, at: datetime) -> tuple[int, int]:
    """Two campaigns' messages to one number, due at one time: the first was a draft while the second
    was written (its messages held far ahead, out of the cap's sight), then started."""
    held = capped.create(once(at, draft=True), rows(NUMBER))
    live = capped.create(once(at), rows(TRUNK))
    assert live.messages == 1  # the draft's message is not due within the period: nothing to cap
    capped.start(held.id)
    (a,) = campaign_messages(outbox, held.id)
    (b,) = campaign_messages(outbox, live.id)
    assert abs(a.next_attempt_at - b.next_attempt_at) < timedelta(seconds=1)
    return a.id, b.id


def test_the_cap_is_checked_again_when_sending(capped: Campaigns, outbox: Any, producer: Any) -> None:
    """The send path's check, on the repository: one of two messages claimed together goes; a message
    claimed after one was sent within the period is cancelled too, with its reason."""
    cap = parse_cap("1 per 24h")
    assert cap is not None
    decide = partial(over_cap_at_send, cap=cap)
    now = utcnow()
    a, b = _due_together(capped, outbox, now - timedelta(seconds=5))
    outbox.stage_due(utcnow(), 100)
    token, ids = outbox.lease_due(CHATBOT, utcnow(), 10, utcnow() + timedelta(seconds=30))
    assert sorted(ids) == [a, b]
    outbox.claim_group(ids, token, utcnow(), utcnow() + timedelta(seconds=30), "host:1")
    over = outbox.stop_over_cap(ids, token, utcnow(), cap.period, decide, cap_reason(cap))
    assert len(over) == 1
    cancelled = outbox.get(over[0])
    assert (cancelled.state, cancelled.last_reason) == ("cancelled", REASON)
    (kept,) = [i for i in ids if i not in over]
    marked, _ = outbox.mark_calling([kept], token, utcnow())
    assert marked == [kept] and outbox.mark_calling(over, token, utcnow()) == ([], [])
    # A message that is not from a campaign (a confirmation, a code) is neither capped nor counted.
    mid = producer.send(CHATBOT, TRUNK, "Your code is 1234")
    token2, ids2 = outbox.lease_due(CHATBOT, utcnow(), 10, utcnow() + timedelta(seconds=30))
    assert ids2 == [mid]
    outbox.claim_group(ids2, token2, utcnow(), utcnow() + timedelta(seconds=30), "host:1")
    assert outbox.stop_over_cap(ids2, token2, utcnow(), cap.period, decide, cap_reason(cap)) == []
    assert outbox.get(mid).state == "sending"


def test_two_campaigns_due_together_send_once(make_stack: Any, capped: Campaigns, outbox: Any,
                                              sandbox: Any) -> None:
    """Real dispatcher and worker with OAKSEND_FREQUENCY_CAP: one SMS reaches the API, the other ends cancelled."""
    make_stack(OAKSEND_FREQUENCY_CAP="1 per 24h")
    a, b = _due_together(capped, outbox, utcnow() + timedelta(seconds=2))
    capped.redis.lpush(capped.settings.keys.wake, "1")

    def finished() -> Any:
        states = [outbox.get(i) for i in (a, b)]
        return states if all(m.state not in ("pending", "dispatched", "sending") for m in states) else None

    done = wait_until(finished, 30, what="both campaign messages to finish")
    assert sorted(m.state for m in done) == ["cancelled", "sent"]
    assert [m.last_reason for m in done if m.state == "cancelled"] == [REASON]
    assert len(sandbox.requests_to(NUMBER)) == 1
