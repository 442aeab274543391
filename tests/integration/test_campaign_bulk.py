"""A large campaign is written by the fast path (rows built in forked processes, COPY text lines,
the database storing one batch while the next is built): what it stores must be, column by column,
what the reference rows say, and a bad row anywhere still leaves nothing behind."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import func, select

from oaksend.models.tables import Campaign, CampaignRecipient, Message
from oaksend.worker.campaigns.audience import AudienceError, AudienceSpec
from oaksend.worker.campaigns.build import BATCH, Builder, build_all
from oaksend.worker.campaigns.service import Campaigns, CampaignSpec
from oaksend.worker.campaigns.schedule import parse_schedule
from tests.support import CHATBOT

UTC = timezone.utc
NOW = datetime.now(UTC).replace(microsecond=123456)
N = 2 * BATCH + 77  # three batches: the pool is used on PostgreSQL


@pytest.fixture
def campaigns(settings: Any, outbox: Any) -> Iterator[Campaigns]:
    service = Campaigns(settings, outbox=outbox, clock=lambda: NOW)
    yield service
    service.redis.close()


def spec() -> CampaignSpec:
    return CampaignSpec(name="big", chatbot=CHATBOT, template="Hi {first_name}\\ see you {appt:%a %H:%M} {note}",
                        schedule=parse_schedule(before="appt:24h,2h"), tz="America/New_York",
                        audience=AudienceSpec(key_column="booking", tz_column="tz"))


def audience() -> list[dict[str, str]]:
    rows = []
    for i in range(N):
        appt = NOW + timedelta(days=3, minutes=11 * i)
        rows.append({"booking": f"b{i}" if i % 301 else f"b{i}\ttab\\back\nline", "phone": f"+1415{3000000 + i:07d}",
                     "first_name": "Zoë 🙂" if i % 7 == 0 else f"P{i}", "appt": appt.isoformat(),
                     "tz": "Europe/London" if i % 3 == 0 else "", "note": 'say "hi"\r\n{x}' if i % 13 == 0 else "-"})
    return rows


def test_what_a_large_create_stores_is_the_reference_rows(campaigns: Campaigns, outbox: Any) -> None:
    result = campaigns.create(spec(), audience())
    assert result.recipients == N and result.messages + sum(result.skipped.values()) == 2 * N
    # The reference: the same rows built in this process as plain dicts (no COPY text, no pool).
    from oaksend.worker.campaigns.audience import from_dicts

    header, rows = from_dicts(audience())
    plan = campaigns._plan(spec(), header)
    reference = [b for b in build_all(Builder(plan, spec().audience, result.id, CHATBOT, NOW, None, frozenset()),
                                      rows, parallel=False)]
    want_messages = {m["idempotency_key"]: m for b in reference for m in b.messages}
    want_recipients = {r["key"]: r for b in reference for r in b.recipients}
    with outbox.session() as s:
        stored = list(s.scalars(select(Message).where(Message.campaign_id == result.id)))
        recipients = list(s.scalars(select(CampaignRecipient).where(CampaignRecipient.campaign_id == result.id)))
    assert len(stored) == len(want_messages) == result.messages
    for m in stored:
        want = want_messages[m.idempotency_key]
        got = {c: getattr(m, "meta" if c == "metadata" else c) for c in want}
        for c in ("next_attempt_at", "deadline_at", "created_at", "updated_at"):
            got[c] = got[c].replace(tzinfo=UTC) if got[c].tzinfo is None else got[c]
        assert got == want
    assert len(recipients) == N
    for r in recipients:
        want = want_recipients[r.key]
        assert (r.campaign_id, r.phone, r.tz, r.data) == (want["campaign_id"], want["phone"], want["tz"], want["data"])


def test_a_bad_row_in_a_late_batch_leaves_nothing_and_duplicates_across_batches_are_found(
        campaigns: Campaigns, outbox: Any) -> None:
    rows = audience()
    rows[N - 5]["phone"] = "+1415"
    rows[BATCH + 10]["booking"] = rows[3]["booking"]
    with pytest.raises(AudienceError) as info:
        campaigns.create(spec(), rows)
    assert [(e.row, e.column) for e in info.value.errors] == [(BATCH + 11, "booking"), (N - 4, "phone")]
    assert "duplicate key (row 4 has it too)" in info.value.errors[0].why
    with outbox.session() as s:
        for model in (Campaign, CampaignRecipient, Message):
            assert s.scalar(select(func.count()).select_from(model)) == 0
