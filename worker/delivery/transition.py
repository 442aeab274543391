"""Pure: what happens to a message after an attempt, and what its audit row says.

`plan()` turns a classification `Decision` into the message's next state
(sent / pending with backoff / failed / unknown / expired); `attempt_record()`
turns what came back into an append-only attempt row. Time and randomness are
passed in.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypedDict

from oaksend.models.fit import fit_attempt
from oaksend.models.records import INDEFINITE, AttemptRecord, Transition
from oaksend.worker.delivery.backoff import compute_backoff, deadline_allows
from oaksend.worker.delivery.classify import Decision, Verdict
from oaksend.worker.newoaks.outcome import Outcome, TransportError


@dataclass(frozen=True)
class RetryPolicy:
    """The knobs of `plan`, taken from Settings."""

    max_attempts: int
    backoff_base_s: float
    backoff_cap_s: float
    ambiguous_policy: str  # "retry" | "hold"


class _Common(TypedDict):
    """The Transition fields every outcome of `plan` sets the same way."""

    reason: str
    outcome: str
    pause_until: datetime | None
    pause_reason: str | None
    suppress_number: bool


class _Budget(TypedDict):
    """What a retried or exhausted attempt takes from the retry budget."""

    failures_delta: int
    ambiguous_delta: int


def plan(decision: Decision, *, failures: int, deadline_at: datetime | None, now: datetime,
         policy: RetryPolicy, rng: random.Random, session_id: int | None = None) -> Transition:
    """The message's next state after an attempt classified as `decision`.

    `failures` is the count already used from the retry budget before this attempt.
    Throttling (429 and rate codes) does not use the budget; everything else that
    is retried does. A retry that could only happen after the deadline expires now.
    """
    verdict = decision.verdict
    pause_until, pause_reason = _pause(decision, now)
    common: _Common = {
        "reason": decision.reason,
        "outcome": str(verdict),
        "pause_until": pause_until,
        "pause_reason": pause_reason,
        "suppress_number": decision.suppress_number,
    }
    if verdict is Verdict.SENT:
        return Transition(state="sent", session_id=session_id, sent=True, **common)
    if verdict is Verdict.FINAL:
        return Transition(state="failed", failures_delta=1, **common)
    ambiguous = verdict is Verdict.AMBIGUOUS
    if ambiguous and policy.ambiguous_policy == "hold":
        return Transition(state="unknown", failures_delta=1, ambiguous_delta=1, **common)

    counts = not decision.throttled
    used = failures + (1 if counts else 0)
    extra: _Budget = {"failures_delta": 1 if counts else 0, "ambiguous_delta": 1 if ambiguous else 0}
    if used >= policy.max_attempts:
        common["reason"] = f"attempts exhausted ({used}/{policy.max_attempts}); last: {decision.reason}"
        # After an ambiguous last attempt the SMS may have gone out: say so, not "failed".
        return Transition(state="unknown" if ambiguous else "failed", **extra, **common)
    delay_s = compute_backoff(
        max(used, 1),
        rng,
        base_s=policy.backoff_base_s,
        cap_s=policy.backoff_cap_s,
        floor_s=decision.min_delay_s,
        retry_after_s=decision.retry_after_s,
    )
    due = now + timedelta(seconds=delay_s)
    if pause_until is not None and pause_until > due:
        due = pause_until
    if not deadline_allows(now, (due - now).total_seconds(), deadline_at):
        common["reason"] = f"deadline passes before the next attempt; last: {decision.reason}"
        return Transition(state="expired", **extra, **common | {"outcome": "expired"})
    return Transition(state="pending", next_attempt_at=due, **extra, **common)


def _pause(decision: Decision, now: datetime) -> tuple[datetime | None, str | None]:
    if not decision.pause_chatbot:
        return None, None
    if decision.verdict is Verdict.FINAL:
        # 401/403: every other send of this chatbot would fail the same way.
        hint = ("check NEWOAKS_API_KEY and the chatbot's permissions" if decision.reason in ("http_401", "http_403",
                "code_401", "code_403") else "check NEWOAKS_BASE_URL / NEWOAKS_REGION")
        return now + INDEFINITE, f"{decision.reason}: {hint}, then `oaksend chatbot resume`"
    seconds = decision.retry_after_s or decision.min_delay_s or 1.0
    return now + timedelta(seconds=seconds), f"{decision.reason}: rate limited by the API"


def attempt_record(outcome: Outcome, decision: Decision, *, number: int, started_at: datetime,
                   latency_ms: float, worker: str, request_id: str | None = None) -> AttemptRecord:
    """The audit row of one call: every envelope field, the classification, the error, our request id.

    Every value is made to fit its column (`models.fit`): what the API answered is
    data, and writing it must never fail.
    """
    if isinstance(outcome, TransportError):
        return fit_attempt(AttemptRecord(
            number=number,
            started_at=started_at,
            latency_ms=latency_ms,
            classification=str(decision.verdict),
            reason=decision.reason,
            error=f"{outcome.kind}: {outcome.detail}"[:2000],
            worker=worker,
            request_id=request_id,
        ))
    error = None
    if outcome.malformed:
        error = f"malformed response ({outcome.malformed}): {outcome.body_excerpt}"[:2000]
    return fit_attempt(AttemptRecord(
        number=number,
        started_at=started_at,
        latency_ms=latency_ms,
        classification=str(decision.verdict),
        reason=decision.reason,
        http_status=outcome.http_status,
        success=outcome.success,
        code=outcome.code,
        message=outcome.message,
        data_status=outcome.data_status,
        data_message=outcome.data_message,
        session_id=outcome.session_id,
        error=error,
        worker=worker,
        session_id_text=outcome.session_id_text,
        # What the parser found odd, then what the verdict had to make of it ("Data missing: success stated ...").
        anomalies="; ".join([*outcome.anomalies, *([decision.anomaly] if decision.anomaly else [])]) or None,
        request_id=request_id,
    ))
