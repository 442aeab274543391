"""Which outcome a valid send request gets: pure decisions, no I/O, no clock.

An :class:`Outcome` is named by a token (``"503"``, ``"code:500"``,
``"twilio:21610"``, ``"malformed:html"``, ...). The same vocabulary is used by
scripted responses and by the ``fault`` field of each record, so a test can
script exactly what it later reads back.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, replace

from oaksend.sandbox.config import PROBABILITY_FIELDS, Config
from oaksend.sandbox.exceptions import ConfigError

MALFORMED_VARIANTS = ("truncated", "html", "array", "wrong-types", "missing-fields", "huge", "empty")
#: HTTP 200 bodies that state success plainly but differ from the documented shape elsewhere
#: (see responses.odd_success); a careful client counts each as sent, once.
ODD_SUCCESS_VARIANTS = (
    "status-bool", "status-spaced", "no-message", "message-null", "message-number", "session-float",
    "session-exp", "session-string", "session-negative", "session-huge", "session-word", "code-string",
    "code-float", "extra-fields", "no-version", "all",
)
#: HTTP 200 bodies where one of Success, Code and Data.Status is missing, null or empty (the other
#: two say success), or Data.Status is another success word: still a stated success, sent once.
LOOSE_SUCCESS_VARIANTS = (
    "no-data", "data-null", "data-empty", "no-status", "status-null", "no-code", "code-zero", "no-success",
    "status-success", "status-one", "status-ok",
)

#: the keys a script can match on, in the order they are tried
SCRIPT_KEYS = ("ToPhoneNumber", "SerialNumber")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the sandbox does with one request that passed validation.

    ``None`` in an optional field means "not chosen yet": :func:`resolve` fills
    it from the configuration and the random source.
    """

    #: ok | http | code | status-false | twilio | hang | reset | malformed | odd-success
    kind: str
    #: HTTP status for "http"; envelope Code (under HTTP 200) for "code"
    status: int = 200
    twilio_code: int | None = None
    variant: str | None = None  #: one of MALFORMED_VARIANTS (or ODD_/LOOSE_SUCCESS_VARIANTS)
    retry_after: int | None = None  #: seconds, for a 429
    hang_s: float | None = None
    #: recorded as the request's ``fault``; a token for everything a script can ask for
    label: str = "ok"

    @property
    def issues_session(self) -> bool:
        """True when the fake provider "processed" the send and hands out a SessionID."""
        return self.kind in ("ok", "status-false", "malformed", "odd-success")


OK = Outcome("ok")


def parse_token(token: str) -> Outcome:
    """An outcome from a script token; raises :class:`ConfigError` for an unknown one."""
    text = str(token).strip().lower()
    head, _, arg = text.partition(":")
    try:
        if text in ("ok", "200"):
            return OK
        if text.isdigit() and 400 <= int(text) <= 599:
            return Outcome("http", int(text), label=text)
        if head == "code" and arg:
            return Outcome("code", int(arg), label=f"code:{int(arg)}")
        if head == "status-false":
            return Outcome("status-false", twilio_code=int(arg) if arg else None, label="status-false")
        if head == "twilio":
            code = int(arg) if arg else None
            return Outcome("twilio", twilio_code=code, label=f"twilio:{code}" if arg else "twilio")
        if head == "hang" and (not arg or 0 <= float(arg) < math.inf):
            return Outcome("hang", hang_s=float(arg) if arg else None, label="hang")
        if text == "reset":
            return Outcome("reset", label="reset")
        if head == "malformed" and (not arg or arg in MALFORMED_VARIANTS):
            return Outcome("malformed", variant=arg or None, label=text)
        if head == "success" and (arg in ODD_SUCCESS_VARIANTS or arg in LOOSE_SUCCESS_VARIANTS):
            return Outcome("odd-success", variant=arg, label=text)
    except ValueError:
        pass
    raise ConfigError(
        f"unknown outcome {token!r}: use ok, an HTTP status 400-599, code:<n>, status-false[:<twilio code>], "
        f"twilio[:<code>], hang[:<s>], reset, malformed[:{'|'.join(MALFORMED_VARIANTS)}], "
        f"success:{'|'.join(ODD_SUCCESS_VARIANTS + LOOSE_SUCCESS_VARIANTS)}"
    )


def resolve(outcome: Outcome, config: Config, rng: random.Random) -> Outcome:
    """Fills what a token left open (variant, Twilio code, Retry-After, hang time)."""
    if outcome.kind == "malformed" and outcome.variant is None:
        variant = rng.choice(MALFORMED_VARIANTS)
        return replace(outcome, variant=variant, label=f"malformed:{variant}")
    if outcome.kind == "twilio" and outcome.twilio_code is None:
        code = rng.choice(config.twilio_code)
        return replace(outcome, twilio_code=code, label=f"twilio:{code}")
    if outcome.kind == "status-false" and outcome.twilio_code is None:
        return replace(outcome, twilio_code=config.status_false_code)
    if outcome.kind == "hang" and outcome.hang_s is None:
        return replace(outcome, hang_s=config.hang_s)
    if outcome.kind == "http" and outcome.status == 429 and outcome.retry_after is None:
        return replace(outcome, retry_after=config.retry_after if config.retry_after >= 0 else None)
    return outcome


#: what each random fault is, before resolution
_RANDOM_OUTCOMES = {
    "p_429": parse_token("429"),
    "p_500": parse_token("500"),
    "p_502": parse_token("502"),
    "p_503": parse_token("503"),
    "p_504": parse_token("504"),
    "p_code_500": parse_token("code:500"),
    "p_status_false": parse_token("status-false"),
    "p_twilio_error": parse_token("twilio"),
    "p_hang": parse_token("hang"),
    "p_reset": parse_token("reset"),
    "p_malformed": parse_token("malformed"),
}


def burst_retry_after(config: Config, elapsed_s: float) -> int | None:
    """Seconds left in the current 429 burst, or None outside a burst.

    Bursts start at every multiple of ``burst_429_every`` after the origin (not at
    the origin itself: a fresh sandbox starts healthy) and last ``burst_429_for``.
    """
    every, length = config.burst_429_every, config.burst_429_for
    if every <= 0 or length <= 0:
        return None
    n = math.floor(elapsed_s / every)
    into = elapsed_s - n * every
    if n < 1 or into >= length:
        return None
    return max(1, math.ceil(length - into))


def decide(config: Config, rng: random.Random, burst_elapsed_s: float) -> Outcome:
    """The random outcome of one valid request.

    The probabilities are exclusive bands of a single uniform draw, laid out in
    ``PROBABILITY_FIELDS`` order, so ``p_503=0.3`` yields 30 % of 503s whatever
    the other settings are. No draw is made when every probability is zero, so
    the seeded sequence only moves when faults are on.
    """
    burst = burst_retry_after(config, burst_elapsed_s)
    if burst is not None:
        return Outcome("http", 429, retry_after=burst, label="burst-429")
    draw: float | None = None
    edge = 0.0
    for name in PROBABILITY_FIELDS:
        p = getattr(config, name)
        if p <= 0.0:
            continue
        if draw is None:
            draw = rng.random()
        edge += p
        if draw < edge:
            return resolve(_RANDOM_OUTCOMES[name], config, rng)
    return OK


class Scripts:
    """Queues of scripted outcomes, keyed by ToPhoneNumber or SerialNumber.

    A queued outcome is consumed by the next valid request that matches it; a
    phone number script is tried before a chatbot script.
    """

    def __init__(self) -> None:
        self._queues: dict[tuple[str, str], deque[Outcome]] = {}

    def add(self, key_field: str, key: str, tokens: Iterable[str]) -> int:
        """Appends outcomes for ``key``; returns how many are now queued for it."""
        if key_field not in SCRIPT_KEYS:
            raise ConfigError(f"a script is keyed by one of {', '.join(SCRIPT_KEYS)}")
        outcomes = [parse_token(token) for token in tokens]  # all or nothing
        queue = self._queues.setdefault((key_field, key), deque())
        queue.extend(outcomes)
        return len(queue)

    def pop(self, phone: str, serial: str) -> Outcome | None:
        if not self._queues:  # the common case, kept cheap
            return None
        for key in (("ToPhoneNumber", phone), ("SerialNumber", serial)):
            queue = self._queues.get(key)
            if queue:
                outcome = queue.popleft()
                if not queue:
                    del self._queues[key]
                return outcome
        return None

    def pending(self) -> list[dict[str, object]]:
        return [
            {key_field: key, "responses": [o.label for o in queue]}
            for (key_field, key), queue in self._queues.items()
        ]

    def clear(self) -> None:
        self._queues.clear()
