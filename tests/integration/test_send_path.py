"""The whole path, with real worker and dispatcher processes against the sandbox API.

Each test scripts the sandbox's answers for its own phone number, so what the
API did is known, then checks the outbox rows and attempts that oaksend wrote.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from tests.support import CHATBOT, wait_until
from oaksend.worker.clock import utcnow

TERMINAL = {"sent", "failed", "unknown", "expired", "cancelled"}


def wait_terminal(outbox: Any, message_id: int, timeout_s: float = 20) -> Any:
    def done() -> Any:
        m = outbox.get(message_id)
        return m if m is not None and m.state in TERMINAL else None

    return wait_until(done, timeout_s, what=f"message {message_id} to reach a terminal state")


def attempts_of(outbox: Any, message_id: int) -> list[Any]:
    return outbox.history(message_id)[0]


def test_success_stores_the_session_id(make_stack: Any, producer: Any, outbox: Any, sandbox: Any) -> None:
    make_stack()
    mid = producer.send(CHATBOT, "+14155550100", "Your appointment is tomorrow at 10:00")
    m = wait_terminal(outbox, mid)
    assert m.state == "sent"
    assert m.session_id is not None and m.session_id >= 123123123123  # 64-bit, as documented
    attempts = attempts_of(outbox, mid)
    assert len(attempts) == 1
    a = attempts[0]
    assert (a.http_status, a.success, a.code, a.data_status, a.classification) == (200, True, 200, "True", "sent")
    assert a.session_id == m.session_id and a.latency_ms is not None and a.worker
    seen = sandbox.requests_to("+14155550100")
    assert [(r["serial_number"], r["message"]) for r in seen] == [(CHATBOT, "Your appointment is tomorrow at 10:00")]


def test_503_twice_then_success_is_three_attempts_and_sent(make_stack: Any, producer: Any, outbox: Any,
                                                           sandbox: Any) -> None:
    make_stack()
    sandbox.script("+14155550101", ["503", "503"])
    mid = producer.send(CHATBOT, "+14155550101", "retry me")
    m = wait_terminal(outbox, mid)
    attempts = attempts_of(outbox, mid)
    assert m.state == "sent" and m.attempts == 3
    assert [a.http_status for a in attempts] == [503, 503, 200]
    assert [a.classification for a in attempts] == ["retry", "retry", "sent"]
    assert len(sandbox.requests_to("+14155550101")) == 3


def test_400_is_final_after_one_attempt(make_stack: Any, producer: Any, outbox: Any, sandbox: Any) -> None:
    make_stack()
    sandbox.script("+14155550102", ["400", "ok", "ok"])
    mid = producer.send(CHATBOT, "+14155550102", "bad request")
    m = wait_terminal(outbox, mid)
    assert m.state == "failed" and m.attempts == 1 and m.session_id is None
    assert [a.classification for a in attempts_of(outbox, mid)] == ["final"]
    import time

    time.sleep(1.0)  # long enough for any (wrong) retry to have happened
    assert len(sandbox.requests_to("+14155550102")) == 1


def test_code_500_under_http_200_is_ambiguous_and_retried(make_stack: Any, producer: Any, outbox: Any,
                                                          sandbox: Any) -> None:
    make_stack()  # ambiguous policy: retry (the default)
    sandbox.script("+14155550103", ["code:500"])
    mid = producer.send(CHATBOT, "+14155550103", "code 500")
    m = wait_terminal(outbox, mid)
    first, second = attempts_of(outbox, mid)
    assert (first.http_status, first.code, first.success, first.classification) == (200, 500, False, "ambiguous")
    assert second.classification == "sent"
    assert m.state == "sent" and m.ambiguous == 1


@pytest.mark.parametrize("policy", ["retry", "hold"])
def test_read_timeout_follows_the_ambiguous_policy(policy: str, make_stack: Any, producer: Any, outbox: Any,
                                                   sandbox: Any) -> None:
    sandbox.configure(hang_s=3)
    make_stack(OAKSEND_AMBIGUOUS_POLICY=policy, OAKSEND_READ_TIMEOUT_S="0.5")
    sandbox.script("+14155550104", ["hang"])
    mid = producer.send(CHATBOT, "+14155550104", "timeout")
    m = wait_terminal(outbox, mid)
    attempts = attempts_of(outbox, mid)
    assert attempts[0].classification == "ambiguous" and attempts[0].reason == "read_timeout"
    assert attempts[0].http_status is None and "read_timeout" in (attempts[0].error or "")
    assert m.ambiguous == 1
    if policy == "retry":
        assert m.state == "sent" and len(attempts) == 2
        assert len(sandbox.requests_to("+14155550104")) == 2  # the duplicate is counted in m.ambiguous
    else:
        assert m.state == "unknown" and len(attempts) == 1
        assert len(sandbox.requests_to("+14155550104")) == 1


def test_attempts_exhausted_gives_failed(make_stack: Any, producer: Any, outbox: Any, sandbox: Any) -> None:
    make_stack(OAKSEND_MAX_ATTEMPTS=3)
    sandbox.script("+14155550105", ["503"] * 5)
    mid = producer.send(CHATBOT, "+14155550105", "never")
    m = wait_terminal(outbox, mid)
    assert m.state == "failed" and m.attempts == 3
    assert "attempts exhausted" in (m.last_reason or "")
    assert len(sandbox.requests_to("+14155550105")) == 3


def test_deadline_passed_is_expired_without_a_call(make_stack: Any, producer: Any, outbox: Any,
                                                   sandbox: Any) -> None:
    make_stack()
    now = utcnow()
    # The chatbot is paused (as after a 429), so the message waits past its deadline.
    outbox.pause(CHATBOT, now + timedelta(seconds=30), "test pause", now)
    mid = producer.send(CHATBOT, "+14155550106", "too late", deadline=now + timedelta(seconds=1))
    m = wait_terminal(outbox, mid, timeout_s=10)
    assert m.state == "expired" and m.attempts == 0
    assert attempts_of(outbox, mid) == []
    assert sandbox.requests_to("+14155550106") == []


def test_scheduled_send_waits_for_its_time(make_stack: Any, producer: Any, outbox: Any, sandbox: Any) -> None:
    make_stack()
    at = utcnow() + timedelta(seconds=1.5)
    mid = producer.send(CHATBOT, "+14155550107", "later", send_at=at)
    m = wait_terminal(outbox, mid)
    assert m.state == "sent"
    (request,) = sandbox.requests_to("+14155550107")
    assert request["received_at"] >= at.timestamp() - 0.05


def test_final_twilio_stop_code_suppresses_the_number(make_stack: Any, producer: Any, outbox: Any,
                                                      sandbox: Any) -> None:
    from oaksend.errors import ValidationError

    make_stack()
    sandbox.script("+14155550108", ["twilio:21610"])
    mid = producer.send(CHATBOT, "+14155550108", "stop")
    m = wait_terminal(outbox, mid)
    assert m.state == "failed" and "21610" in (m.last_reason or "")
    with pytest.raises(ValidationError, match="^to: .*suppressed"):
        producer.send(CHATBOT, "+14155550108", "again")


def test_auth_failure_pauses_the_chatbot_with_a_reason(make_stack: Any, producer: Any, outbox: Any,
                                                       sandbox: Any) -> None:
    make_stack()
    sandbox.script("+14155550109", ["401"])
    mid = producer.send(CHATBOT, "+14155550109", "auth")
    m = wait_terminal(outbox, mid)
    assert m.state == "failed"
    bot = outbox.chatbots([CHATBOT])[CHATBOT]
    assert bot.paused_until is not None and bot.paused_until > utcnow() + timedelta(days=1)
    assert "http_401" in (bot.pause_reason or "") and "NEWOAKS_API_KEY" in bot.pause_reason
    # Every other message of the chatbot now waits instead of failing on the same error.
    other = producer.send(CHATBOT, "+14155550110", "waits")
    import time

    time.sleep(1.0)
    assert outbox.get(other).state == "pending"
    assert sandbox.requests_to("+14155550110") == []
