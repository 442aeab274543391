"""Retention leaves nothing personal behind: every table is seeded with a marker number, text and name,
purged (deleted or anonymized), then every column of every table is dumped as text and searched.

Only the STOP list (oaksend_suppressed_numbers) may still hold the number: kept on purpose. Also here:
keys are stored as keyed hashes (dedupe unchanged), an anonymized message can never be sent again,
`campaign delete`, and migration 0013 hashing the keys written before it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import MetaData, create_engine, select, text, update

from oaksend.errors import IdempotencyConflict
from oaksend.models.keyhash import stored_key
from oaksend.models.tables import Campaign, Message
from oaksend.worker.campaigns.audience import AudienceSpec
from oaksend.worker.campaigns.plan import idempotency_key
from oaksend.worker.campaigns.schedule import parse_schedule
from oaksend.worker.campaigns.service import Campaigns, CampaignSpec
from oaksend.worker.clock import utcnow
from oaksend.worker.ops.purge import purge
from tests.support import CHATBOT, REDIS_URL, ROOT

PHONE = "+14155550199"  # an application's message; later on the STOP list
CAMPAIGN_PHONE = "+14155550311"  # a campaign's recipient (its key, too: the audience has no key column)
TEXT = "BODYMARKER7"
NAME = "Quixworth"
EMAIL = "zelda.quixworth@example.org"
#: What must not survive, searched in every cell (digits only: any spelling of the numbers).
MARKERS = ("4155550199", "4155550311", TEXT, NAME, EMAIL)
#: (table, column, marker) found on purpose: the STOP list.
KEPT = {("oaksend_suppressed_numbers", "to_phone", "4155550199")}
OLD = timedelta(days=100)


def dump_hits(url: str) -> set[tuple[str, str, str]]:
    """(table, column, marker) for every marker found in any cell of any table, read as text."""
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        meta = MetaData()
        meta.reflect(engine)
        hits = set()
        with engine.connect() as conn:
            for table in meta.sorted_tables:
                for row in conn.execute(select(table)):
                    for column, value in zip(table.columns.keys(), row, strict=True):
                        cell = json.dumps(value, default=str) if isinstance(value, dict | list) else str(value)
                        hits |= {(table.name, column, m) for m in MARKERS if m.lower() in cell.lower()}
        return hits
    finally:
        engine.dispose()


def seed(outbox: Any, producer: Any, settings: Any) -> dict[str, int]:
    """Every table gets the markers: a failed message with its API texts, notes, audit, pause, STOP row,
    and a cancelled campaign whose recipient has a name and an email column."""
    old = utcnow() - OLD
    mid = producer.send(CHATBOT, PHONE, f"Hello {NAME}, text second {TEXT}", idempotency_key=PHONE,
                        metadata={"patient": NAME, "email": EMAIL})
    api_text = f"The 'To' number {PHONE} is not a valid phone number ... text second {TEXT}"
    with outbox.session() as s:
        s.execute(update(Message).where(Message.id == mid).values(
            state="failed", last_outcome="final", last_reason=api_text, created_at=old))
        s.execute(text("INSERT INTO oaksend_attempts (message_id, number, started_at, http_status, code, message, "
                       "data_message, classification, reason, error, anomalies) VALUES (:id, 1, :at, 400, 400, :m, "
                       ":dm, 'final', 'http_400', :e, :an)"),
                  {"id": mid, "at": old, "m": api_text, "dm": f"text second {TEXT}", "e": f"rejected {PHONE}",
                   "an": f"Message clamped: {NAME}"})
        s.execute(text("INSERT INTO oaksend_operator_actions (message_id, action, from_state, actor, at, note) "
                       "VALUES (:id, 'resolve failed', 'unknown', 'ops', :at, :note)"),
                  {"id": mid, "at": old, "note": f"called {NAME} on {PHONE}"})
    audit_id = outbox.record_audit("resolve --failed", {"ids": [mid]}, 1, "ops", old,
                                   note=f"{NAME} said {PHONE} is wrong")
    with outbox.session() as s:  # a status webhook event whose reason quotes the API, and its delivery
        event_id = s.execute(text(
            "INSERT INTO oaksend_webhook_events (message_id, serial_number, event, payload, created_at) "
            "VALUES (:id, :sn, 'failed', :p, :at) RETURNING id"),
            {"id": mid, "sn": CHATBOT, "at": old,
             "p": json.dumps({"data": {"id": mid, "reason": f"The 'To' number {PHONE} is not valid"}})}).scalar()
        s.execute(text("INSERT INTO oaksend_webhook_deliveries (event_id, endpoint_id, message_id, state, attempts, "
                       "next_attempt_at, last_error, created_at) VALUES (:e, 1, :id, 'failed', 3, :at, :err, :at)"),
                  {"e": event_id, "id": mid, "at": old, "err": f"receiver said {NAME}"})
    with outbox.session() as s:  # a failed command's error, quoting a value
        s.execute(text("UPDATE oaksend_operator_audit SET result = :r WHERE id = :id"),
                  {"r": json.dumps({"error": f"refused {PHONE} for {NAME}"}), "id": audit_id})
    outbox.pause(CHATBOT, old + timedelta(hours=1), f"paused: {NAME} complained", old)
    with outbox.session() as s:
        s.execute(text("INSERT INTO oaksend_suppressed_numbers (to_phone, reason, at) VALUES (:p, 'stop', :at)"),
                  {"p": PHONE, "at": old})

    service = Campaigns(settings, outbox=outbox)
    try:
        appt = (utcnow() + timedelta(days=3)).isoformat()
        result = service.create(CampaignSpec(
            name="reminders", chatbot=CHATBOT, template="Hi {first_name}, see you {appt:%H:%M}",
            schedule=parse_schedule(before="appt:24h"), tz="America/New_York", audience=AudienceSpec(),
            quiet_hours="off"), [{"phone": CAMPAIGN_PHONE, "first_name": NAME, "email": EMAIL, "appt": appt}])
        service.cancel(result.id)
    finally:
        service.redis.close()
    with outbox.session() as s:
        s.execute(update(Message).where(Message.campaign_id == result.id).values(created_at=old))
        s.execute(update(Campaign).where(Campaign.id == result.id).values(updated_at=old))
    return {"message": mid, "campaign": result.id}


@pytest.mark.parametrize("anonymize", [False, True], ids=["delete", "anonymize"])
def test_a_purge_leaves_no_marker_anywhere_but_the_stop_list(settings: Any, outbox: Any, producer: Any,
                                                             database_url: str, anonymize: bool) -> None:
    ids = seed(outbox, producer, settings)
    before = dump_hits(database_url)
    # The seed reaches every place a marker can hide (else the search below proves nothing).
    assert {(t, c) for t, c, _ in before} >= {
        ("oaksend_messages", "to_phone"), ("oaksend_messages", "body"), ("oaksend_messages", "metadata"),
        ("oaksend_messages", "last_reason"), ("oaksend_attempts", "message"), ("oaksend_attempts", "data_message"),
        ("oaksend_attempts", "error"), ("oaksend_attempts", "anomalies"), ("oaksend_operator_actions", "note"),
        ("oaksend_operator_audit", "note"), ("oaksend_chatbots", "pause_reason"),
        ("oaksend_campaign_recipients", "phone"), ("oaksend_campaign_recipients", "key"),
        ("oaksend_campaign_recipients", "data"), ("oaksend_suppressed_numbers", "to_phone")}
    assert not any(c == "idempotency_key" for _, c, _ in before)  # keys are hashed from the start

    done = purge(outbox, utcnow() - timedelta(days=1), anonymize=anonymize, clock=utcnow, actor="test",
                 command="purge --older-than 1d", pause_s=0)

    assert (done.messages, done.recipients) == (2, 1) and done.texts >= 2
    assert dump_hits(database_url) == KEPT
    if anonymize:
        row = outbox.get(ids["message"])
        assert (row.state, row.to_phone, row.body, row.idempotency_key) == (
            "failed", "", "", stored_key(PHONE, None))  # the row, its outcome and its hashed key stay
        attempts, _ = outbox.history(ids["message"])
        assert [(a.http_status, a.code, a.reason) for a in attempts] == [(400, 400, "http_400")]
    else:
        assert outbox.get(ids["message"]) is None
    assert outbox.campaign(ids["campaign"]) is not None  # the campaign's own row stays (no recipient data)


def test_an_anonymized_message_is_never_sent_again(settings: Any, outbox: Any, producer: Any) -> None:
    mid = producer.send(CHATBOT, CAMPAIGN_PHONE, "hello")
    now = utcnow()
    with outbox.session() as s:
        s.execute(update(Message).where(Message.id == mid).values(state="failed", created_at=now - OLD))
    assert purge(outbox, now - timedelta(days=1), anonymize=True, clock=utcnow, actor="t", command="purge",
                 pause_s=0).messages == 1
    refused = outbox.operator_retry([mid], now, "ops", None, renew_deadline_at=now + timedelta(hours=1))
    assert refused == {mid: "is anonymized (no number or text left); it can never be sent again"}
    assert outbox.get(mid).state == "failed"
    # Whatever puts it back on the send path, the last check before the call fails it: no request.
    token = str(uuid.uuid4())
    with outbox.session() as s:
        s.execute(update(Message).where(Message.id == mid).values(state="sending", lease_token=token,
                                                                  lease_until=now + timedelta(minutes=1)))
    assert outbox.mark_calling([mid], token, now) == ([], [mid])
    row = outbox.get(mid)
    assert (row.state, row.last_reason) == ("failed", "anonymized: no number or text left to send")


def test_keys_are_stored_as_keyed_hashes_and_dedupe_as_before(settings: Any, outbox: Any) -> None:
    from oaksend.worker.enqueue import Producer

    secret = "s3cret-for-keys"
    keyed = Producer(settings.model_copy(update={"key_hash_secret": SecretStr(secret)}), outbox=outbox)
    try:
        first = keyed.send(CHATBOT, PHONE, "hello", idempotency_key=PHONE)
        assert keyed.send(CHATBOT, PHONE, "hello", idempotency_key=PHONE) == first
        with pytest.raises(IdempotencyConflict):
            keyed.send(CHATBOT, PHONE, "other text", idempotency_key=PHONE)
        other_chatbot = keyed.send("0" * 32, PHONE, "hello", idempotency_key=PHONE)  # per chatbot, as before
        assert other_chatbot != first
    finally:
        keyed.redis.close()
    stored = outbox.get(first).idempotency_key
    assert stored == stored_key(PHONE, "s3cret-for-keys") != stored_key(PHONE, None)
    assert "4155550199" not in stored


def cli(db: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OAKSEND_", "NEWOAKS_"))}
    env.update(DATABASE_URL=db, REDIS_URL=REDIS_URL)
    return subprocess.run([sys.executable, "-m", "oaksend.worker.cli", *args], env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_campaign_delete_removes_the_campaign_its_recipients_and_unsent_messages(
        settings: Any, outbox: Any, database_url: str) -> None:
    service = Campaigns(settings, outbox=outbox)
    try:
        appt = (utcnow() + timedelta(days=3)).isoformat()
        audience = [{"phone": f"+1415555{i:04d}", "first_name": NAME, "appt": appt} for i in range(300, 303)]
        result = service.create(CampaignSpec(
            name="reminders", chatbot=CHATBOT, template="Hi {first_name}", schedule=parse_schedule(before="appt:24h"),
            tz="America/New_York", audience=AudienceSpec(), quiet_hours="off"), audience)
    finally:
        service.redis.close()
    with outbox.session() as s:  # one already sent: history, it stays
        sent = s.scalar(select(Message.id).where(Message.campaign_id == result.id).limit(1))
        s.execute(update(Message).where(Message.id == sent).values(state="sent"))

    refused = cli(database_url, "campaign", "delete", str(result.id))
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "--yes" in refused.stderr
    assert outbox.campaign(result.id) is not None

    done = cli(database_url, "campaign", "delete", str(result.id), "--yes", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"id": result.id, "action": "delete", "recipients": 3, "messages": 2}
    assert outbox.campaign(result.id) is None
    with outbox.session() as s:
        assert list(s.scalars(select(Message.id).where(Message.campaign_id == result.id))) == [sent]
        assert s.scalar(text("SELECT count(*) FROM oaksend_campaign_recipients")) == 0
    assert ("oaksend_campaign_recipients", "data", NAME) not in dump_hits(database_url)
    assert any(a.command == "campaign delete" for a in outbox.audit_log())
    assert cli(database_url, "campaign", "delete", str(result.id), "--yes").returncode == 3


def test_migration_0013_hashes_the_keys_written_before_it(tmp_path: Any) -> None:
    from oaksend.migrations.runner import upgrade

    url = f"sqlite:///{tmp_path}/keys.db"
    upgrade(url, "0012")
    engine = create_engine(url)
    now: datetime = utcnow()
    legacy_campaign_key = f"oaksend-campaign:7:{len(CAMPAIGN_PHONE)}:{CAMPAIGN_PHONE}:2026-12-03T10:00"
    anonymized_reason = f"final: The 'To' number {PHONE} is not valid"
    with engine.begin() as conn:
        for key, campaign, phone, reason in ((PHONE, None, PHONE, None),
                                             (legacy_campaign_key, 7, CAMPAIGN_PHONE, None),
                                             (None, None, PHONE, None), ("spent", None, "", anonymized_reason)):
            conn.execute(text(
                "INSERT INTO oaksend_messages (serial_number, to_phone, body, segments, state, attempts, failures, "
                "ambiguous, next_attempt_at, idempotency_key, created_at, updated_at, campaign_id, last_reason) "
                "VALUES (:sn, :to, 'hi', 1, 'pending', 0, 0, 0, :at, :key, :at, :at, :c, :r)"),
                {"sn": CHATBOT, "to": phone, "at": now.replace(tzinfo=None), "key": key, "c": campaign,
                 "r": reason})
    upgrade(url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT idempotency_key, last_reason FROM oaksend_messages ORDER BY id")).all()
    engine.dispose()
    assert [k for k, _ in rows] == [stored_key(PHONE, None),
                                    idempotency_key(7, CAMPAIGN_PHONE, "2026-12-03T10:00", None),
                                    None, stored_key("spent", None)]
    assert rows[3][1] is None  # what an earlier anonymize left behind is cleared
