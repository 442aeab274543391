"""allowance() and interleave(): the dispatcher's budget per chatbot and its fair publishing order."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oaksend.worker.delivery.fairness import allowance, interleave


@pytest.mark.parametrize(
    ("rate_per_s", "burst", "inflight", "lookahead_s", "max_per_pass", "expected"),
    [
        (1.0, 1, 0, 2.0, 500, 3),  # the default US long code: 2 s of rate + the burst
        (1.0, 1, 2, 2.0, 500, 1),
        (1.0, 1, 3, 2.0, 500, 0),
        (1.0, 1, 50, 2.0, 500, 0),  # never negative
        (0.5, 1, 0, 2.0, 500, 2),
        (0.1, 1, 0, 2.0, 500, 2),  # a fraction of a message still rounds up to one
        (10.0, 5, 0, 2.0, 500, 25),
        (10.0, 5, 7, 2.0, 500, 18),
        (1000.0, 100, 0, 2.0, 500, 500),  # capped per pass
        (1000.0, 100, 1900, 2.0, 500, 200),
        (1000.0, 100, 2100, 2.0, 500, 0),
        (3.0, 2, 0, 1.0, 4, 4),
        (3.0, 1, 0, 0.5, 500, 3),  # ceil(1.5) + 1
    ],
)
def test_allowance(rate_per_s: float, burst: int, inflight: int, lookahead_s: float, max_per_pass: int,
                   expected: int) -> None:
    assert allowance(rate_per_s, burst, inflight, lookahead_s=lookahead_s, max_per_pass=max_per_pass) == expected


@pytest.mark.parametrize(
    ("rate_per_s", "burst", "inflight", "ahead_s", "expected"),
    [
        (10.0, 5, 0, 0.0, 15),  # horizon 1 s: 10 + burst
        (10.0, 5, 0, 0.5, 10),  # half a second of slots already reserved by workers
        (10.0, 5, 4, 0.5, 6),
        (10.0, 5, 0, 1.0, 5),  # the whole horizon reserved: only the burst
        (10.0, 5, 0, 30.0, 5),  # reserved far past the horizon: never negative time
        (10.0, 5, 9, 30.0, 0),
    ],
)
def test_allowance_subtracts_slots_already_reserved(rate_per_s: float, burst: int, inflight: int, ahead_s: float,
                                                    expected: int) -> None:
    assert allowance(rate_per_s, burst, inflight, lookahead_s=1.0, max_per_pass=500, ahead_s=ahead_s) == expected


@given(
    rate=st.floats(min_value=0.01, max_value=10_000, allow_nan=False),
    burst=st.integers(min_value=1, max_value=1000),
    inflight=st.integers(min_value=0, max_value=100_000),
    lookahead=st.floats(min_value=0.1, max_value=10),
    cap=st.integers(min_value=1, max_value=1000),
)
def test_allowance_is_bounded_and_shrinks_with_inflight(rate: float, burst: int, inflight: int, lookahead: float,
                                                        cap: int) -> None:
    n = allowance(rate, burst, inflight, lookahead_s=lookahead, max_per_pass=cap)
    assert 0 <= n <= cap
    # Work in the broker never exceeds the lookahead budget (rounded up to whole messages).
    assert n == 0 or inflight + n <= rate * lookahead + burst + 1
    assert allowance(rate, burst, inflight + 1, lookahead_s=lookahead, max_per_pass=cap) <= n


@pytest.mark.parametrize(
    ("batches_by_chatbot", "order"),
    [
        ([], []),
        ([[]], []),
        ([[[1]]], [0]),
        ([[[1], [2], [3]]], [0, 1, 2]),
        # a: 0 1 2, b: 3, c: 4 5 -> one of each in turn
        ([[[1], [2], [3]], [[4]], [[5], [6]]], [0, 3, 4, 1, 5, 2]),
        ([[[1], [2]], [], [[3], [4]]], [0, 2, 1, 3]),
        ([[[1]], [[2]], [[3]]], [0, 1, 2]),
        # a huge backlog first does not delay the others' first batches
        ([[[i] for i in range(5)], [[9]]], [0, 5, 1, 2, 3, 4]),
    ],
)
def test_interleave_round_robin(batches_by_chatbot: list[list[list[int]]], order: list[int]) -> None:
    assert interleave(batches_by_chatbot) == order


@given(st.lists(st.integers(min_value=0, max_value=8), max_size=8))
def test_interleave_is_a_fair_permutation(sizes: list[int]) -> None:
    batches = [[[c * 100 + i] for i in range(n)] for c, n in enumerate(sizes)]
    flat = [b for bs in batches for b in bs]
    owner = [c for c, n in enumerate(sizes) for _ in range(n)]
    order = interleave(batches)
    assert sorted(order) == list(range(len(flat)))
    # each chatbot's batches keep their own order
    for c in range(len(sizes)):
        mine = [flat[i][0] for i in order if owner[i] == c]
        assert mine == sorted(mine)
    # in every prefix, two chatbots that still had work differ by at most one batch
    served = [0] * len(sizes)
    for i in order:
        served[owner[i]] += 1
        for a in range(len(sizes)):
            for b in range(len(sizes)):
                if served[a] < sizes[a]:
                    assert served[b] - served[a] <= 1


@pytest.mark.parametrize("rate", [0.5, 1.0, 1.5, 3.0, 5.0, 7.3, 20.0, 50.0, 333.3, 500.0, 1000.0, 100_000.0])
def test_late_and_jittered_requests_still_hold_rate_plus_burst_in_any_second(rate: float) -> None:
    """Slots reserved a whole interval apart (GCRA with a burst of 1: a burst at the first slot,
    then one each interval); each request leaves up to the allowed lateness after its slot and
    arrives up to as much again later: any 1 s of arrivals holds the slots of a (1 + 2 * late) s
    span, at most ceil((1 + 2 * late) * rate), within rate + burst."""
    import math

    from oaksend.worker.delivery.ratelimit import Limit, lateness

    for burst in range(1, 13):
        reserve, late_s = lateness(Limit(rate, burst, 7.0))
        assert reserve == Limit(rate, 1, 7.0) and late_s > 0
        span = 1.0 + 2 * late_s
        assert math.ceil(span * rate - 1e-9) + reserve.burst - 1 <= math.floor(rate + burst + 1e-9)
        # the tolerance is really given: half of burst - 1 intervals to leaving late
        assert late_s >= (burst - 1) / rate / 2
        # and the burst is used: one interval more of tolerance would break the bound
        assert math.ceil((span + 1 / rate) * rate - 1e-9) > math.floor(rate + burst + 1e-9) or burst == 1


def test_lateness_is_held_only_where_the_limit_binds() -> None:
    """A group binds when a request would have waited even with the whole burst: a backlog
    at 500/s, or any wait at a burst of 1; not a group of an "unlimited" chatbot whose slots
    are microseconds apart, nor an idle chatbot's requests within its burst."""
    import math

    from oaksend.worker.delivery.ratelimit import Limit, binds

    assert binds(Limit(500, 10), [i * 0.002 for i in range(50)])
    # an idle chatbot's first ten: within the burst's 18 ms (waits rounded up to whole ms)
    assert not binds(Limit(500, 10), [math.ceil(i * 2.0) / 1000 for i in range(10)])
    assert not binds(Limit(333.3, 10), [math.ceil(i * 1000 / 333.3) / 1000 for i in range(10)])
    assert binds(Limit(500, 10), [0.0, 0.02])
    assert binds(Limit(5, 1), [0.0, 0.2])
    assert binds(Limit(5, 1), [0.002])
    assert not binds(Limit(5, 1), [0.0])
    assert not binds(Limit(100_000, 1000), [0.0] + [0.001] * 49)  # waits come back in whole ms
    assert not binds(Limit(5, 1), [])
