"""Pure: how the dispatcher shares the broker among chatbots.

How many more messages a chatbot may have in the broker (its rate over the
lookahead, plus its burst, less what is in flight), the order batches are
published in (one per chatbot in turn), and how long to sleep while the broker
is full. Numbers in, numbers out: no clock, no I/O.
"""

from __future__ import annotations

import math
from itertools import zip_longest

__all__ = ["DRAIN_SHARE", "allowance", "capped_wait", "interleave"]

#: While the broker is full, sleep for this share of the time workers need to drain it.
DRAIN_SHARE = 0.25


def allowance(rate_per_s: float, burst: int, inflight: int, *, lookahead_s: float, max_per_pass: int,
              ahead_s: float = 0.0) -> int:
    """Pure: how many more messages of a chatbot may enter the broker now.

    GCRA admits `rate * (H - ahead) + burst` requests within a horizon H when
    `ahead` seconds of slots are already reserved; messages dispatched but not
    yet at the limiter (`inflight`) will take some of those.
    """
    budget = math.ceil(rate_per_s * max(0.0, lookahead_s - ahead_s)) + burst
    return max(0, min(max_per_pass, budget - inflight))


def interleave(batches_by_chatbot: list[list[list[int]]]) -> list[int]:
    """Pure: the order to publish batches: one of each chatbot in turn (indices into a flat list)."""
    order: list[int] = []
    offsets = []
    total = 0
    for batches in batches_by_chatbot:
        offsets.append(total)
        total += len(batches)
    for round_ in zip_longest(*[range(len(b)) for b in batches_by_chatbot]):
        for chatbot, index in enumerate(round_):
            if index is not None:
                order.append(offsets[chatbot] + index)
    return order


def capped_wait(inflight: int, drain_per_s: float, *, longest_s: float, shortest_s: float = 0.01) -> float:
    """Pure: how long to sleep while the broker is full (no busy loop, no idle workers).

    The workers need `inflight / drain_per_s` seconds for what is queued; sleeping
    a quarter of that leaves them three quarters in reserve. With no estimate yet,
    the longest wait.
    """
    if drain_per_s <= 0 or inflight <= 0:
        return longest_s
    return max(shortest_s, min(longest_s, DRAIN_SHARE * inflight / drain_per_s))
