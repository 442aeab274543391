"""What came back from SendTwilioMessage -> what to do with the message.

``classify(outcome)`` is a pure function of the client's value, following DESIGN.md's
"Classification defaults":

1. A transport failure: never left -> RETRY; may have been received -> AMBIGUOUS.
2. An HTTP status other than 2xx: a Twilio code in the texts, else the status as
   below. A 2xx whose body cannot be read as an object -> AMBIGUOUS.
3. Else the body's outcome fields. ``Success`` (the call) and ``Data.Status`` (the
   send) are the provider's verdict fields; ``Code`` is documented as an HTTP status
   code. Each states success (+), failure (-) or nothing (.):

   ===========  ==================  ============================  =====================================
   field        states success      states failure                states nothing
   ===========  ==================  ============================  =====================================
   Success      true, "true"        false, "false"                missing, null, unreadable (1, "yes")
   Code         200-299             any other integer             missing, null, unreadable, 0
   Data.Status  a success word      any other value ("False",     Data missing, null, {} or no object;
                                    false, 0, "Failed")           Status missing, null or blank
   ===========  ==================  ============================  =====================================

   Success words (case and spaces ignored; JSON true and 1 too): true, 1, ok,
   success, successful, succeeded, sent.

   ===================================================  =============================================
   shape (HTTP 2xx, body an object)                     verdict
   ===================================================  =============================================
   all three +: the documented success                  SENT, whatever else (a code in a text too)
   Success - or Data.Status -, whatever else            a failure, below (Status "False" under Success
                                                        true: the call went, the send did not)
   some +, the rest . (Data missing, null or {};        SENT; the gap noted: "Data missing: success
   Status missing or null; Code missing or 0;           stated by Success and Code"
   Success missing), no Twilio code in the texts
   some +, no verdict field -, but Code - (Code 500     AMBIGUOUS "contradiction": the SMS may or may
   or 429 + Success true), or a Twilio code in a text   not have gone; the policy decides
   no +, Code - or a Twilio code                        a failure, below
   nothing stated, no Twilio code                       AMBIGUOUS "no_statement"
   ===================================================  =============================================

   A failure, in order: a Twilio code in Message or Data.Message (retry-later ->
   RETRY, a floor of minutes; 21610/30006 -> FINAL, suppress the number; other
   known codes -> FINAL); a Code (not 2xx, not 0) as an HTTP status (408/425/429/
   503 -> RETRY, Retry-After honoured; other 5xx -> AMBIGUOUS; 401/403 -> FINAL,
   pause the chatbot; other 4xx -> FINAL; no HTTP number -> FINAL if Success or
   Data.Status fails too, else AMBIGUOUS); Success false, then Data.Status -> FINAL.
   A failure beside a Data.Status success (Success false + Status "True") is noted.

``Decision.anomaly`` notes what was odd about a verdict (a field missing from a
success, a success word other than "True", a contradiction, a success overruled);
the attempt row keeps it in ``anomalies`` after the parser's notes. ``overrides`` maps a number (HTTP
status, Code or Twilio code) to another verdict; it applies to the number that
decided a failure, never to a stated success or a contradiction.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Final, TypeGuard

from oaksend.worker.newoaks.outcome import Envelope, Outcome, TransportError

__all__ = ["SUCCESS_WORDS", "TWILIO_FINAL_CODES", "TWILIO_RETRY_LATER_CODES", "TWILIO_SUPPRESS_CODES",
           "TWILIO_THROTTLE_CODES", "Decision", "Verdict", "classify"]


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
    #: what was odd about this verdict, for the attempt's ``anomalies`` ("Data missing: success stated by
    #: Success and Code", "contradiction: ..."); None when nothing was
    anomaly: str | None = None


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
_SHOWN_CHARS: Final = 40  #: longest Data.Status quoted in an anomaly
#: Data.Status values that say the send went out (lower case, spaces removed): the documented
#: "True" (JSON true), and the spellings other deployments and endpoints use.
SUCCESS_WORDS: Final = frozenset({"true", "1", "ok", "success", "successful", "succeeded", "sent"})


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


def _classify_envelope(env: Envelope, overrides: Mapping[int, Verdict], *, retry_after_s: float | None,
                       retry_later_floor_s: float) -> tuple[Decision, int | None]:
    """The default decision, and the number that decided it (for overrides)."""
    http_status = env.http_status if _is_int(env.http_status) else 0
    if not 200 <= http_status <= 299:
        twilio = _twilio_code(env, overrides)
        if twilio is not None:
            return _by_twilio(twilio, retry_after_s, retry_later_floor_s), twilio
        return _by_status(http_status, f"http_{http_status}", retry_after_s), http_status
    if env.malformed is not None:
        return Decision(Verdict.AMBIGUOUS, f"malformed: {env.malformed}", retry_after_s), None

    fields = _fields(env)
    success, code, status = fields
    twilio = _twilio_code(env, overrides)
    # A plainly stated success wins over everything else in the body: resending
    # an SMS that went out is the worst outcome there is.
    if all(f.sign > 0 for f in fields):
        return _sent(env, _word_note(status)), None
    if success.sign < 0 or status.sign < 0:
        # The provider's own verdict fields say it failed: believed, even beside a success elsewhere.
        note = f"{status.shown} but Success false: taken as a failure" if status.sign > 0 else None
        decision, number = _failure(env, fields, twilio, retry_after_s, retry_later_floor_s)
        return (replace(decision, anomaly=note) if note else decision), number
    if any(f.sign > 0 for f in fields):
        against = [code.shown] if code.sign < 0 else []
        if twilio is not None:
            against.append(f"Twilio code {twilio} in a message text")
        if against:
            note = f"contradiction: {', '.join(f.shown for f in fields if f.sign > 0)} vs {', '.join(against)}"
            return Decision(Verdict.AMBIGUOUS, "contradiction", retry_after_s, anomaly=note), None
        gaps = ", ".join(f.shown for f in fields if not f.sign)
        stated = " and ".join(f.name for f in fields if f.sign > 0)
        return _sent(env, f"{gaps}: success stated by {stated}", _word_note(status)), None
    if code.sign < 0 or twilio is not None:
        return _failure(env, fields, twilio, retry_after_s, retry_later_floor_s)
    note = f"nothing stated: {', '.join(f.shown for f in fields)}"
    return Decision(Verdict.AMBIGUOUS, "no_statement", retry_after_s, anomaly=note), None


@dataclass(frozen=True)
class _Field:
    """What one outcome field states: success (+1), failure (-1) or nothing (0)."""

    name: str  #: "Success", "Code", "Data.Status"
    sign: int
    shown: str  #: 'Code 500', 'Success true', 'Data.Status "True"'; or why it has no value: 'Data null'


def _fields(env: Envelope) -> tuple[_Field, _Field, _Field]:
    """Success, Code and Data.Status, each read as a statement."""
    if env.success is True or env.success is False:
        success = _Field("Success", 1 if env.success else -1, f"Success {'true' if env.success else 'false'}")
    else:
        success = _Field("Success", 0, _absent(env, "Success ", "Success missing"))
    code = env.code if _is_int(env.code) else None
    if code is None or code == 0:
        shown = "Code 0" if code == 0 else _absent(env, "Code ", "Code missing")
        code_field = _Field("Code", 0, shown)
    else:
        code_field = _Field("Code", 1 if 200 <= code <= 299 else -1, f"Code {_code_text(code)}")
    status = env.data_status
    if not isinstance(status, str) or not status.strip():
        why = "Data.Status empty" if isinstance(status, str) else "Data.Status missing"
        status_field = _Field("Data.Status", 0, _absent(env, "Data", why))
    else:
        word = "".join(status.split()).lower()
        status_field = _Field("Data.Status", 1 if word in SUCCESS_WORDS else -1,
                              f"Data.Status {json.dumps(_shortened(status.strip()))}")
    return success, code_field, status_field


def _absent(env: Envelope, prefix: str, default: str) -> str:
    """The envelope's own word on why a field has no value (it knows Data null from Data missing)."""
    absent = env.absent if isinstance(env.absent, tuple) else ()
    return next((a for a in absent if isinstance(a, str) and a.startswith(prefix)), default)


def _word_note(status: _Field) -> str | None:
    """A success word other than the documented "True" is worth a note."""
    if status.sign > 0 and status.shown.lower() != 'data.status "true"':
        return f"{status.shown} read as success"
    return None


def _sent(env: Envelope, *notes: str | None) -> Decision:
    if _is_int(env.session_id):
        reason = "ok"
    elif env.session_id_text is not None:
        reason = "ok_session_id_text"
    else:
        reason = "ok_no_session_id"
    return Decision(Verdict.SENT, reason, anomaly="; ".join(n for n in notes if n) or None)


def _failure(env: Envelope, fields: tuple[_Field, _Field, _Field], twilio: int | None,
             retry_after_s: float | None, retry_later_floor_s: float) -> tuple[Decision, int | None]:
    """Success or Data.Status says failure, or only a failing Code or a Twilio code speaks: which failure."""
    if twilio is not None:
        return _by_twilio(twilio, retry_after_s, retry_later_floor_s), twilio
    code = env.code if _is_int(env.code) else None
    success, code_field, status = fields
    if code is not None and code_field.sign < 0:
        if 100 <= code <= 599:
            return _by_status(code, f"code_{code}", retry_after_s), code
        # Not an HTTP number: the provider's own failure says "not sent" when
        # Success or Data.Status says so too; otherwise nobody knows.
        if success.sign < 0 or status.sign < 0:
            return Decision(Verdict.FINAL, _code_reason(code)), code
        return Decision(Verdict.AMBIGUOUS, _code_reason(code), retry_after_s), code
    if success.sign < 0:
        return Decision(Verdict.FINAL, "success_false"), code
    return Decision(Verdict.FINAL, "status_false"), code


def _shortened(text: str) -> str:
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def _code_reason(code: int) -> str:
    return f"code_{_code_text(code)}"


def _code_text(code: int) -> str:
    text = str(code)
    return text if len(text) <= 20 else text[:17] + "..."


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
        return Decision(Verdict.SENT, decision.reason, anomaly=decision.anomaly)
    if verdict is Verdict.FINAL:
        # Nothing will be retried: delays and throttling are moot.
        return Decision(
            Verdict.FINAL,
            decision.reason,
            pause_chatbot=decision.pause_chatbot and decision.verdict is Verdict.FINAL,
            suppress_number=decision.suppress_number,
            anomaly=decision.anomaly,
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
