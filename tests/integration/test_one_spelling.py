"""One number, one spelling: the producer, campaigns and the STOP list all compare canonical E.164.

`+4407911123456` (a trunk zero typed after +44: what `+44 (0)7911 123456` becomes
without its punctuation) is `+447911123456`: a STOP answered under one spelling
blocks every other, and an idempotency key dedupes across spellings.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from oaksend.errors import IdempotencyConflict, ValidationError
from oaksend.models.tables import CampaignRecipient, Message
from oaksend.worker.campaigns.audience import AudienceError, AudienceSpec
from oaksend.worker.campaigns.service import Campaigns
from oaksend.worker.clock import utcnow
from oaksend.worker.message.validation import SendRequest
from tests.integration.test_frequency_cap import campaign_messages, once, rows
from tests.support import CHATBOT, wait_until

CANONICAL = "+447911123456"
TRUNK = "+4407911123456"
TERMINAL = {"sent", "failed", "unknown", "expired", "cancelled"}


@pytest.fixture
def campaigns(settings: Any, outbox: Any) -> Iterator[Campaigns]:
    service = Campaigns(settings, outbox=outbox)
    yield service
    service.redis.close()


def test_the_producer_stores_the_canonical_spelling(producer: Any, outbox: Any) -> None:
    mid = producer.send(CHATBOT, TRUNK, "hello")
    assert outbox.get(mid).to_phone == CANONICAL
    ids = producer.send_many([SendRequest(CHATBOT, "+610412345678", "a"), SendRequest(CHATBOT, "+61412345678", "b")])
    assert [outbox.get(i).to_phone for i in ids] == ["+61412345678", "+61412345678"]


def test_idempotency_keys_dedupe_across_spellings(producer: Any, outbox: Any) -> None:
    first = producer.send(CHATBOT, TRUNK, "Your code", idempotency_key="appt-1")
    assert producer.send(CHATBOT, CANONICAL, "Your code", idempotency_key="appt-1") == first
    # In one batch too: two spellings of one number under one key are one message.
    a, b = producer.send_many([SendRequest(CHATBOT, "+330612345678", "x", "appt-2"),
                               SendRequest(CHATBOT, "+33612345678", "x", "appt-2")])
    assert a == b
    # A different number under the key is still a conflict.
    with pytest.raises(IdempotencyConflict):
        producer.send(CHATBOT, "+447911123457", "Your code", idempotency_key="appt-1")
    with outbox.session() as s:
        assert len(list(s.scalars(select(Message.id).where(Message.to_phone == CANONICAL)))) == 1


def test_a_campaign_stores_and_keys_the_canonical_spelling(campaigns: Campaigns, outbox: Any) -> None:
    at = utcnow() + timedelta(hours=2)
    result = campaigns.create(once(at), rows(TRUNK, "+14155550123"))
    assert [m.to_phone for m in campaign_messages(outbox, result.id)] == [CANONICAL, "+14155550123"]
    with outbox.session() as s:
        assert sorted(s.scalars(select(CampaignRecipient.phone).where(CampaignRecipient.campaign_id == result.id))
                      ) == ["+14155550123", CANONICAL]
    # Keyed by the phone: two spellings of one number are one recipient, so the second row is a duplicate.
    with pytest.raises(AudienceError, match="duplicate key"):
        campaigns.create(once(at, audience=AudienceSpec()), rows(CANONICAL, TRUNK))
    # Changing a recipient's number to another spelling of it changes nothing that is sent.
    changed = campaigns.upsert_recipient(result.id, {"booking": "b0", "phone": CANONICAL, "first_name": "P0"})
    assert (changed.messages, changed.cancelled, changed.moved) == (0, 0, 0)


def wait_terminal(outbox: Any, message_id: int, timeout_s: float = 20) -> Any:
    def done() -> Any:
        m = outbox.get(message_id)
        return m if m is not None and m.state in TERMINAL else None

    return wait_until(done, timeout_s, what=f"message {message_id} to finish")


def test_stop_under_one_spelling_blocks_every_other(make_stack: Any, producer: Any, outbox: Any, sandbox: Any,
                                                    campaigns: Campaigns) -> None:
    make_stack()
    later = utcnow() + timedelta(hours=2)
    before = campaigns.create(once(later), rows(CANONICAL, "+14155550123"))  # pending when the STOP comes
    sandbox.script(CANONICAL, ["twilio:21610"])
    mid = producer.send(CHATBOT, TRUNK, "hello")
    m = wait_terminal(outbox, mid)
    assert m.state == "failed" and "21610" in (m.last_reason or "")
    assert len(sandbox.requests_to(CANONICAL)) == 1  # the API was given the canonical number
    # The STOP list holds one spelling; every spelling is refused.
    for spelling in (CANONICAL, TRUNK):
        with pytest.raises(ValidationError, match=r"^to: .*suppressed"):
            producer.send(CHATBOT, spelling, "again")
    with pytest.raises(ValidationError, match=r"^requests\[1\]\.to: .*suppressed|^to: .*suppressed"):
        producer.send_many([SendRequest(CHATBOT, "+14155550199", "ok"), SendRequest(CHATBOT, TRUNK, "again")])
    # The campaign's pending reminder to that number stopped with it; the other one did not.
    states = {x.to_phone: x.state for x in campaign_messages(outbox, before.id)}
    assert states == {CANONICAL: "failed", "+14155550123": "pending"}
    # A new campaign typed with the trunk zero skips the number as suppressed.
    after = campaigns.create(once(later), rows(TRUNK, "+14155550124"))
    assert after.messages == 1 and after.skipped["suppressed"] == 1
    assert [x.to_phone for x in campaign_messages(outbox, after.id)] == ["+14155550124"]
