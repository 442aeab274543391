"""plan() and attempt_record(): a Decision -> the message's next state and its audit row."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from oaksend.models.records import INDEFINITE, AttemptRecord
from oaksend.worker.delivery.classify import Decision, Verdict, classify
from oaksend.worker.newoaks.outcome import Envelope, TransportError
from oaksend.worker.delivery.transition import RetryPolicy, attempt_record, plan

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
POLICY = RetryPolicy(max_attempts=5, backoff_base_s=2.0, backoff_cap_s=300.0, ambiguous_policy="retry")
HOLD = replace(POLICY, ambiguous_policy="hold")
FAR = NOW + timedelta(days=30)

SENT_DECISION = Decision(Verdict.SENT, "ok")
FINAL_DECISION = Decision(Verdict.FINAL, "http_400")
RETRY_DECISION = Decision(Verdict.RETRY, "http_503")
AMBIGUOUS_DECISION = Decision(Verdict.AMBIGUOUS, "read_timeout")
THROTTLED = Decision(Verdict.RETRY, "http_429", retry_after_s=30.0, throttled=True, pause_chatbot=True)
AUTH = Decision(Verdict.FINAL, "http_401", pause_chatbot=True)
STOP = Decision(Verdict.FINAL, "twilio_21610", suppress_number=True)

OK_ENVELOPE = Envelope(
    http_status=200, success=True, code=200, message="", data_status="True", data_message="test",
    session_id=123123123123, version="1.0.0", retry_after_s=None, malformed=None, body_excerpt="{...}",
)


def go(decision: Decision, *, failures: int = 0, deadline_at: datetime | None = FAR, policy: RetryPolicy = POLICY,
       seed: int = 1, session_id: int | None = None) -> Any:
    return plan(decision, failures=failures, deadline_at=deadline_at, now=NOW, policy=policy,
                rng=random.Random(seed), session_id=session_id)


# -- terminal outcomes ---------------------------------------------------------------------------
def test_sent_keeps_the_session_id() -> None:
    t = go(SENT_DECISION, session_id=123123123123)
    assert (t.state, t.sent, t.session_id, t.outcome, t.reason) == ("sent", True, 123123123123, "sent", "ok")
    assert t.failures_delta == 0 and t.next_attempt_at is None
    assert t.pause_until is None and not t.suppress_number


def test_sent_after_many_failures_is_still_sent() -> None:
    t = go(SENT_DECISION, failures=POLICY.max_attempts - 1, deadline_at=NOW, session_id=7)
    assert t.state == "sent" and t.session_id == 7


def test_final_fails_the_message_and_uses_one_attempt() -> None:
    t = go(FINAL_DECISION)
    assert (t.state, t.outcome, t.reason, t.failures_delta, t.sent) == ("failed", "final", "http_400", 1, False)
    assert t.next_attempt_at is None and t.pause_until is None


def test_stop_code_fails_and_suppresses_the_number() -> None:
    t = go(STOP)
    assert t.state == "failed" and t.suppress_number is True


@pytest.mark.parametrize("decision", [RETRY_DECISION, THROTTLED, AMBIGUOUS_DECISION])
def test_suppress_number_is_carried_whatever_the_verdict(decision: Decision) -> None:
    assert go(replace(decision, suppress_number=True)).suppress_number is True
    assert go(decision).suppress_number is False


# -- retries ------------------------------------------------------------------------------------
@pytest.mark.parametrize("failures", [0, 1, 2, 3])
@pytest.mark.parametrize("seed", range(25))
def test_retry_is_pending_within_the_backoff_window(failures: int, seed: int) -> None:
    t = go(RETRY_DECISION, failures=failures, seed=seed)
    assert t.state == "pending"
    assert t.failures_delta == 1 and t.ambiguous_delta == 0
    assert t.outcome == "retry" and t.reason == "http_503"
    window = min(POLICY.backoff_cap_s, POLICY.backoff_base_s * 2 ** failures)
    assert NOW <= t.next_attempt_at <= NOW + timedelta(seconds=window)
    assert t.next_attempt_at <= NOW + timedelta(seconds=POLICY.backoff_cap_s)
    assert t.pause_until is None


def test_retry_delays_are_spread_by_the_seeded_random_source() -> None:
    dues = {go(RETRY_DECISION, failures=3, seed=seed).next_attempt_at for seed in range(50)}
    assert len(dues) > 40  # full jitter, not one fixed delay
    assert go(RETRY_DECISION, failures=3, seed=3) == go(RETRY_DECISION, failures=3, seed=3)


def test_retry_later_code_waits_at_least_its_floor() -> None:
    decision = Decision(Verdict.RETRY, "twilio_30003", min_delay_s=300.0)
    for seed in range(20):
        t = go(decision, seed=seed)
        assert t.state == "pending"
        assert t.next_attempt_at >= NOW + timedelta(seconds=300)


def test_retry_after_wins_when_larger() -> None:
    t = go(replace(RETRY_DECISION, retry_after_s=120.0))
    assert t.next_attempt_at == NOW + timedelta(seconds=120)


def test_throttled_retry_does_not_use_the_budget_and_pauses_the_chatbot() -> None:
    t = go(THROTTLED, failures=2)
    assert t.state == "pending"
    assert t.failures_delta == 0
    assert t.pause_until == NOW + timedelta(seconds=30)
    assert t.pause_reason is not None and "http_429" in t.pause_reason
    assert t.next_attempt_at >= t.pause_until


def test_throttled_retry_at_the_last_attempt_is_not_exhausted() -> None:
    t = go(THROTTLED, failures=POLICY.max_attempts - 1)
    assert t.state == "pending" and t.failures_delta == 0


def test_throttle_without_retry_after_pauses_for_its_floor() -> None:
    decision = Decision(Verdict.RETRY, "twilio_20429", min_delay_s=300.0, throttled=True, pause_chatbot=True)
    t = go(decision)
    assert t.pause_until == NOW + timedelta(seconds=300)
    assert t.failures_delta == 0


def test_a_real_429_response_goes_through_classify_and_plan() -> None:
    decision = classify(replace(OK_ENVELOPE, http_status=429, success=None, code=None, data_status=None,
                                session_id=None, retry_after_s=45.0, malformed="not json"))
    t = go(decision)
    assert t.state == "pending" and t.failures_delta == 0
    assert t.pause_until == NOW + timedelta(seconds=45)


@pytest.mark.parametrize(
    ("failures", "max_attempts", "state"),
    [
        (0, 1, "failed"),
        (3, 5, "pending"),
        (4, 5, "failed"),
        (9, 5, "failed"),  # a counter already past the budget
    ],
)
def test_exhaustion_at_max_attempts(failures: int, max_attempts: int, state: str) -> None:
    t = go(RETRY_DECISION, failures=failures, policy=replace(POLICY, max_attempts=max_attempts))
    assert t.state == state
    assert t.failures_delta == 1
    if state == "failed":
        assert "attempts exhausted" in t.reason
        assert "http_503" in t.reason  # the last reason is kept
        assert t.next_attempt_at is None


# -- ambiguous ----------------------------------------------------------------------------------
def test_ambiguous_under_retry_is_retried_and_counted_as_ambiguous() -> None:
    t = go(AMBIGUOUS_DECISION)
    assert t.state == "pending"
    assert t.outcome == "ambiguous"
    assert t.failures_delta == 1 and t.ambiguous_delta == 1
    assert NOW <= t.next_attempt_at <= NOW + timedelta(seconds=POLICY.backoff_base_s)


def test_ambiguous_under_hold_is_unknown_and_waits_for_an_operator() -> None:
    t = go(AMBIGUOUS_DECISION, policy=HOLD)
    assert t.state == "unknown"
    assert t.ambiguous_delta == 1 and t.failures_delta == 1
    assert t.next_attempt_at is None and not t.sent


def test_hold_policy_does_not_change_plain_retries() -> None:
    assert go(RETRY_DECISION, policy=HOLD).state == "pending"


def test_ambiguous_under_retry_exhausts_to_unknown() -> None:
    # The last call may have delivered the SMS: the honest end state is unknown, not failed.
    t = go(AMBIGUOUS_DECISION, failures=POLICY.max_attempts - 1)
    assert t.state == "unknown" and "attempts exhausted" in t.reason and t.ambiguous_delta == 1


# -- deadlines ----------------------------------------------------------------------------------
def test_deadline_before_the_next_attempt_expires_now() -> None:
    decision = Decision(Verdict.RETRY, "twilio_30003", min_delay_s=300.0)
    t = go(decision, deadline_at=NOW + timedelta(seconds=60))
    assert t.state == "expired"
    assert t.outcome == "expired"
    assert "deadline" in t.reason and "twilio_30003" in t.reason
    assert t.failures_delta == 1 and t.next_attempt_at is None


def test_deadline_after_the_next_attempt_keeps_it_pending() -> None:
    t = go(RETRY_DECISION, deadline_at=NOW + timedelta(seconds=POLICY.backoff_base_s + 1))
    assert t.state == "pending"


def test_throttle_pause_past_the_deadline_expires() -> None:
    t = go(THROTTLED, deadline_at=NOW + timedelta(seconds=10))
    assert t.state == "expired" and t.failures_delta == 0


def test_no_deadline_never_expires() -> None:
    t = go(Decision(Verdict.RETRY, "twilio_30450", min_delay_s=900.0), deadline_at=None)
    assert t.state == "pending" and t.next_attempt_at == NOW + timedelta(seconds=900)


# -- pauses -------------------------------------------------------------------------------------
@pytest.mark.parametrize("reason", ["http_401", "http_403", "code_401", "code_403"])
def test_auth_failure_pauses_the_chatbot_indefinitely_naming_the_key(reason: str) -> None:
    t = go(replace(AUTH, reason=reason))
    assert t.state == "failed"
    assert t.pause_until == NOW + INDEFINITE
    assert t.pause_reason is not None
    assert "NEWOAKS_API_KEY" in t.pause_reason and reason in t.pause_reason
    assert "\n" not in t.pause_reason


def test_a_real_401_response_pauses_through_classify() -> None:
    decision = classify(replace(OK_ENVELOPE, http_status=401, success=None, code=None, data_status=None,
                                session_id=None, malformed="empty body"))
    t = go(decision)
    assert t.state == "failed" and t.pause_until == NOW + INDEFINITE
    assert "NEWOAKS_API_KEY" in (t.pause_reason or "")


def test_redirect_pause_points_at_the_base_url() -> None:
    t = go(Decision(Verdict.FINAL, "http_301", pause_chatbot=True))
    assert t.pause_until == NOW + INDEFINITE
    assert "NEWOAKS_BASE_URL" in (t.pause_reason or "")


# -- attempt_record ------------------------------------------------------------------------------
def test_attempt_record_of_an_envelope_keeps_every_field() -> None:
    decision = classify(OK_ENVELOPE)
    rec = attempt_record(OK_ENVELOPE, decision, number=2, started_at=NOW, latency_ms=12.5, worker="w1")
    assert rec == AttemptRecord(
        number=2, started_at=NOW, latency_ms=12.5, classification="sent", reason="ok", http_status=200,
        success=True, code=200, message="", data_status="True", data_message="test",
        session_id=123123123123, error=None, worker="w1",
    )


def test_attempt_record_of_a_malformed_body_says_so() -> None:
    bad = replace(OK_ENVELOPE, success=None, code=None, data_status=None, session_id=None, malformed="not json",
                  body_excerpt="<html>oops</html>")
    rec = attempt_record(bad, classify(bad), number=1, started_at=NOW, latency_ms=3.0, worker="w")
    assert rec.classification == "ambiguous"
    assert rec.http_status == 200
    assert rec.error is not None and "not json" in rec.error and "<html>oops</html>" in rec.error


def test_attempt_record_of_a_transport_error() -> None:
    err = TransportError(kind="connect", sent=False, detail="connection refused")
    rec = attempt_record(err, classify(err), number=1, started_at=NOW, latency_ms=1.0, worker="w")
    assert rec.classification == "retry" and rec.reason == "connect"
    assert rec.error == "connect: connection refused"
    assert rec.http_status is None and rec.session_id is None and rec.success is None


def test_attempt_record_error_is_bounded() -> None:
    err = TransportError(kind="read_timeout", sent=True, detail="x" * 5000)
    rec = attempt_record(err, classify(err), number=1, started_at=NOW, latency_ms=None, worker=None)  # type: ignore[arg-type]
    assert rec.classification == "ambiguous"
    assert rec.error is not None and len(rec.error) <= 2000
