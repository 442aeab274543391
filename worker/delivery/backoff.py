"""How long to wait before the next attempt: full-jitter exponential backoff.

Full jitter (``uniform(0, min(cap, base * 2**(n-1)))``) spreads the retries
of many messages that failed together, so they do not hit the API again in
one wave (see AWS's "Exponential Backoff and Jitter"). Two lower bounds sit on
top of it: a floor for errors that only clear after minutes (Twilio's
retry-later codes) and the server's own Retry-After, which wins when larger.

Pure: the random source and the current time are passed in.
"""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta

__all__ = ["compute_backoff", "deadline_allows"]


def compute_backoff(
    failures: int,
    rng: random.Random,
    *,
    base_s: float,
    cap_s: float,
    floor_s: float | None = None,
    retry_after_s: float | None = None,
) -> float:
    """Return the delay in seconds before the next attempt.

    Args:
        failures: failed attempts so far that count toward backoff (1 after
            the first failure). Below 1 the jitter window is empty.
        rng: the random source; pass a seeded ``random.Random`` in tests.
        base_s: the window after the first failure; doubles with each one.
        cap_s: the largest window, however many failures.
        floor_s: the least delay (for retry-later codes), if any.
        retry_after_s: the server's Retry-After, if any; wins when larger.

    A ``floor_s`` or ``retry_after_s`` that is negative, NaN or infinite is
    ignored: a broken header must not stall or hot-loop a message.

    Raises:
        ValueError: ``base_s`` is not positive or ``cap_s`` is negative (or
            either is not finite). These are settings, checked at start.
    """
    if not (math.isfinite(base_s) and base_s > 0):
        raise ValueError(f"base_s must be a positive number of seconds, got {base_s!r}")
    if not (math.isfinite(cap_s) and cap_s >= 0):
        raise ValueError(f"cap_s must be a non-negative number of seconds, got {cap_s!r}")
    delay_s = rng.uniform(0.0, _window_s(failures, base_s, cap_s))
    for bound_s in (floor_s, retry_after_s):
        if bound_s is not None and math.isfinite(bound_s) and bound_s > delay_s:
            delay_s = bound_s
    return delay_s


def _window_s(failures: int, base_s: float, cap_s: float) -> float:
    """The full-jitter window ``min(cap, base * 2**(failures - 1))``."""
    if failures < 1 or cap_s == 0:
        return 0.0
    exponent = failures - 1
    # Compare exponents rather than compute base * 2**exponent: a huge failure
    # count (a message retried for weeks, a corrupted counter) would overflow.
    if exponent >= math.log2(cap_s) - math.log2(base_s):
        return cap_s
    return math.ldexp(base_s, exponent)


def deadline_allows(now: datetime, delay_s: float, deadline: datetime | None) -> bool:
    """Return True if an attempt ``delay_s`` seconds after ``now`` is before ``deadline``.

    No deadline always allows. ``now`` and ``deadline`` must both be aware
    (or both naive). A NaN delay never allows; an infinite one allows only
    without a deadline.
    """
    if deadline is None:
        return True
    # Compare in seconds: now + timedelta(huge delay) would overflow datetime.
    remaining_s = (deadline - now) / timedelta(seconds=1)
    return delay_s < remaining_s
