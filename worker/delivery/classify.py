"""What came back from SendTwilioMessage -> what to do with the message.

``classify(outcome)`` is a pure function of the client's value. The rules are
DESIGN.md's "Classification defaults", checked in this order:

1. A transport failure: never left -> RETRY; may have been received -> AMBIGUOUS.
2. A stated success (HTTP 2xx, Success true, Code 2xx as read by the lenient
   envelope parser, Data.Status "True" in any case and spacing or JSON true)
   -> SENT, whatever else is odd (SessionID kept as text, extra fields, texts
   holding numbers): a send that happened must never be retried.
3. Otherwise, a 2xx whose body cannot be read as an object -> AMBIGUOUS.
4. A Twilio code in the envelope's Message or Data.Message: retry-later codes
   -> RETRY with a floor of minutes; 21610/30006 -> FINAL and suppress the
   number; the other known final codes -> FINAL.
5. The status: the HTTP status, or for a 2xx the envelope's Code (the API
   reuses HTTP numbers for business errors):
   408/425/429/503 -> RETRY (Retry-After honoured); other 5xx -> AMBIGUOUS;
   401/403 -> FINAL and pause the chatbot; other 4xx -> FINAL.
6. Code 2xx but Success false or Data.Status not "True" -> FINAL; a Code,
   Success or Data.Status that is missing or unreadable -> AMBIGUOUS.

``overrides`` maps a number (an HTTP status, an envelope Code or a Twilio code)
to the verdict it should get instead; it applies to the number that decided.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Final, TypeGuard

from oaksend.worker.newoaks.outcome import Envelope, Outcome, TransportError

__all__ = [
    "TWILIO_FINAL_CODES",
    "TWILIO_RETRY_LATER_CODES",
    "TWILIO_SUPPRESS_CODES",
    "TWILIO_THROTTLE_CODES",
    "Decision",
    "Verdict",
    "classify",
]


class Verdict(StrEnum):
    """What to do with the message after this attempt."""

    SENT = "sent"  #: done; keep the SessionID
    RETRY = "retry"  #: safe to send again later
    FINAL = "final"  #: will not succeed by retrying
    AMBIGUOUS = "ambiguous"  #: may have been sent; the ambiguity policy decides


@dataclass(frozen=True)
class Decision:
    """The verdict on one attempt, with what the caller needs to apply it."""

    verdict: Verdict
    reason: str  #: short and stable: "ok", "http_503", "code_500", "twilio_21610", "read_timeout"...
    retry_after_s: float | None = None  #: server-requested delay, already capped
    min_delay_s: float | None = None  #: floor for retry-later Twilio codes (minutes, not seconds)
    throttled: bool = False  #: a rate-limit signal: does not use the message's retry budget
    pause_chatbot: bool = False  #: pause every message of this chatbot (auth: until fixed; 429: for the delay)
    suppress_number: bool = False  #: never text this number again (STOP, landline)


#: Twilio codes that clear with time: queue full, carrier hiccups, rate limits.
TWILIO_RETRY_LATER_CODES: Final = frozenset(
    {20429, 21611, 30001, 30003, 30008, 30022, 30450, 14107}
)
#: Retry-later codes that say "too fast": a chatbot-wide slowdown, not a fault.
TWILIO_THROTTLE_CODES: Final = frozenset({20429, 30022})
#: Codes after which the number must not be texted again (STOP, landline).
TWILIO_SUPPRESS_CODES: Final = frozenset({21610, 30006})
#: Twilio codes that no retry will fix.
TWILIO_FINAL_CODES: Final = frozenset(
    {21211, 21408, 21610, 21614, 21617, 30002, 30004, 30005, 30006, 30007, 30034}
)

_RETRY_STATUSES: Final = frozenset({408, 425, 429, 503})
_AUTH_STATUSES: Final = frozenset({401, 403})
# Pumping protection (30450) holds a number for 15 to 30 minutes: retrying
# after the generic floor would only spend attempts.
_PUMPING_FLOOR_S: Final = 900.0
_TWILIO_CODE = re.compile(r"\b\d{5}\b", re.ASCII)


def classify(
    outcome: Outcome,
    *,
    overrides: Mapping[int, Verdict] | None = None,
    retry_after_cap_s: float = 3600.0,
    retry_later_floor_s: float = 300.0,
) -> Decision:
    """Decide what an attempt's outcome means for the message; never raises.

    Args:
        outcome: what ``NewOaksClient.send`` returned.
        overrides: verdicts by number, replacing the default for the HTTP
            status, envelope Code or Twilio code that decided.
        retry_after_cap_s: the longest server-requested delay honoured.
        retry_later_floor_s: the least delay after a retry-later Twilio code.
    """
    if isinstance(outcome, TransportError):
        reason = outcome.kind if isinstance(outcome.kind, str) and outcome.kind else "other"
        # Only a certain "never left" is safe to resend; anything else may duplicate.
        if outcome.sent is False:
            return Decision(Verdict.RETRY, reason)
        return Decision(Verdict.AMBIGUOUS, reason)
    if not isinstance(outcome, Envelope):
        return Decision(Verdict.AMBIGUOUS, "unknown_outcome")

    decision, number = _classify_envelope(
        outcome,
        overrides or {},
        retry_after_s=_capped(outcome.retry_after_s, retry_after_cap_s),
        retry_later_floor_s=retry_later_floor_s,
    )
    if number is not None and overrides and number in overrides:
        return _overridden(decision, Verdict(overrides[number]))
    return decision


def _classify_envelope(
    env: Envelope,
    overrides: Mapping[int, Verdict],
    *,
    retry_after_s: float | None,
    retry_later_floor_s: float,
) -> tuple[Decision, int | None]:
    """The default decision, and the number that decided it (for overrides)."""
    http_status = env.http_status if _is_int(env.http_status) else 0
    if not 200 <= http_status <= 299:
        twilio = _twilio_code(env, overrides)
        if twilio is not None:
            return _by_twilio(twilio, retry_after_s, retry_later_floor_s), twilio
        return _by_status(http_status, f"http_{http_status}", retry_after_s), http_status

    # A plainly stated success wins over everything else in the body: resending
    # an SMS that went out is the worst outcome there is.
    if _states_success(env):
        if _is_int(env.session_id):
            reason = "ok"
        elif env.session_id_text is not None:
            reason = "ok_session_id_text"
        else:
            reason = "ok_no_session_id"
        return Decision(Verdict.SENT, reason), None
    if env.malformed is not None:
        return Decision(Verdict.AMBIGUOUS, f"malformed: {env.malformed}", retry_after_s), None

    twilio = _twilio_code(env, overrides)
    if twilio is not None:
        return _by_twilio(twilio, retry_after_s, retry_later_floor_s), twilio
    code = env.code if _is_int(env.code) else None
    if code is None:
        # No readable Code: a failure or a success, nobody can tell.
        return Decision(Verdict.AMBIGUOUS, "code_missing", retry_after_s), None
    if not 200 <= code <= 299:
        if 100 <= code <= 599:
            return _by_status(code, f"code_{code}", retry_after_s), code
        # Not an HTTP number: the provider's own failure says "not sent" when
        # Success is false; otherwise nobody knows.
        if env.success is False:
            return Decision(Verdict.FINAL, _code_reason(code)), code
        return Decision(Verdict.AMBIGUOUS, _code_reason(code), retry_after_s), code
    if env.success is None:
        return Decision(Verdict.AMBIGUOUS, "success_missing", retry_after_s), code
    if env.success is not True:
        return Decision(Verdict.FINAL, "success_false"), code
    if env.data_status is None:
        # Success with no status at all: the send may well have happened.
        return Decision(Verdict.AMBIGUOUS, "status_missing", retry_after_s), code
    return Decision(Verdict.FINAL, "status_false"), code


def _states_success(env: Envelope) -> bool:
    """HTTP 2xx, Success true, Code 2xx and Data.Status "true" in any case and spacing.

    Only a body read whole states anything (``malformed`` None: a JSON object).
    """
    return (
        env.malformed is None
        and _is_int(env.http_status)
        and 200 <= env.http_status <= 299
        and env.success is True
        and _is_int(env.code)
        and 200 <= env.code <= 299
        and isinstance(env.data_status, str)
        and "".join(env.data_status.split()).lower() == "true"
    )


def _code_reason(code: int) -> str:
    text = str(code)
    return f"code_{text if len(text) <= 20 else text[:17] + '...'}"


def _by_status(status: int, reason: str, retry_after_s: float | None) -> Decision:
    """Classify an HTTP status (or a Code standing in for one)."""
    if status in _RETRY_STATUSES:
        # A 429 is refused before processing, so it is safe to retry, and it
        # speaks for the whole chatbot: its other messages would be refused too.
        rate_limited = status == 429
        return Decision(
            Verdict.RETRY,
            reason,
            retry_after_s=retry_after_s,
            throttled=rate_limited,
            pause_chatbot=rate_limited,
        )
    if status in _AUTH_STATUSES:
        return Decision(Verdict.FINAL, reason, pause_chatbot=True)
    if 500 <= status <= 599:
        return Decision(Verdict.AMBIGUOUS, reason, retry_after_s=retry_after_s)
    if 400 <= status <= 499:
        return Decision(Verdict.FINAL, reason)
    if 300 <= status <= 399:
        # Redirects are not followed: the base URL is wrong for every message
        # of this chatbot, so stop them all until an operator fixes it.
        return Decision(Verdict.FINAL, reason, pause_chatbot=True)
    # 1xx, 6xx and beyond: no documented meaning, so no safe guess.
    return Decision(Verdict.AMBIGUOUS, reason, retry_after_s=retry_after_s)


def _by_twilio(code: int, retry_after_s: float | None, retry_later_floor_s: float) -> Decision:
    """Classify a Twilio error code found in the envelope's texts."""
    reason = f"twilio_{code}"
    if code in TWILIO_RETRY_LATER_CODES:
        floor_s = retry_later_floor_s
        if code == 30450:
            floor_s = max(floor_s, _PUMPING_FLOOR_S)
        throttle = code in TWILIO_THROTTLE_CODES
        return Decision(
            Verdict.RETRY,
            reason,
            retry_after_s=retry_after_s,
            min_delay_s=floor_s,
            throttled=throttle,
            pause_chatbot=throttle,
        )
    if code in TWILIO_SUPPRESS_CODES:
        return Decision(Verdict.FINAL, reason, suppress_number=True)
    # A known final code, or a code only the overrides know (they decide).
    return Decision(Verdict.FINAL, reason)


def _twilio_code(env: Envelope, overrides: Mapping[int, Verdict]) -> int | None:
    """The first known (or overridden) 5-digit code in Message, then Data.Message."""
    for text in (env.message, env.data_message):
        if not isinstance(text, str):
            continue
        for match in _TWILIO_CODE.finditer(text):
            number = int(match.group())
            if (
                number in TWILIO_RETRY_LATER_CODES
                or number in TWILIO_FINAL_CODES
                or number in overrides
            ):
                return number
    return None


def _overridden(decision: Decision, verdict: Verdict) -> Decision:
    """Replace the verdict, keeping only the flags that still make sense.

    A pause on a FINAL decision is read as "until an operator resumes" (auth,
    wrong URL), a pause on a retry as "for the delay" (rate limits); so each
    keeps the pause only when it meant the same thing before.
    """
    if verdict is Verdict.SENT:
        return Decision(Verdict.SENT, decision.reason)
    if verdict is Verdict.FINAL:
        # Nothing will be retried: delays and throttling are moot.
        return Decision(
            Verdict.FINAL,
            decision.reason,
            pause_chatbot=decision.pause_chatbot and decision.verdict is Verdict.FINAL,
            suppress_number=decision.suppress_number,
        )
    # RETRY or AMBIGUOUS: the number will be texted again, so never suppress it.
    return replace(
        decision,
        verdict=verdict,
        pause_chatbot=decision.pause_chatbot and decision.throttled,
        suppress_number=False,
    )


def _capped(retry_after_s: float | None, cap_s: float) -> float | None:
    """A usable Retry-After in seconds, at most ``cap_s``; None if absent or junk."""
    if isinstance(retry_after_s, bool) or not isinstance(retry_after_s, int | float):
        return None
    if math.isnan(retry_after_s) or retry_after_s < 0:
        return None
    return float(min(retry_after_s, cap_s))


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)
