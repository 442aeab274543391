"""compute_backoff / deadline_allows: bounds, cap, floor, Retry-After, overflow."""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta, timezone

import pytest

from oaksend.worker.delivery.backoff import compute_backoff, deadline_allows

SAMPLES = 300
NOW = datetime(2025, 1, 1, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("failures", "base_s", "cap_s", "window_s"),
    [
        (1, 2.0, 300.0, 2.0),
        (2, 2.0, 300.0, 4.0),
        (3, 2.0, 300.0, 8.0),
        (8, 2.0, 300.0, 256.0),
        (9, 2.0, 300.0, 300.0),  # 512 capped
        (50, 2.0, 300.0, 300.0),
        (1075, 2.0, 300.0, 300.0),  # 2.0**1074 would overflow a float
        (10**9, 2.0, 300.0, 300.0),
        (10**30, 1e-300, 1e300, 1e300),
        (3, 10.0, 5.0, 5.0),  # cap below base
    ],
)
def test_delay_stays_within_the_full_jitter_window(
    failures: int, base_s: float, cap_s: float, window_s: float
) -> None:
    rng = random.Random(1234)
    delays = [compute_backoff(failures, rng, base_s=base_s, cap_s=cap_s) for _ in range(SAMPLES)]
    assert all(0.0 <= d <= window_s for d in delays)
    # Full jitter uses the whole window, not just its top.
    assert min(delays) < window_s * 0.1
    assert max(delays) > window_s * 0.9


def test_seeded_rng_gives_the_same_delays() -> None:
    first = [compute_backoff(n, random.Random(7), base_s=1.0, cap_s=60.0) for n in range(1, 10)]
    second = [compute_backoff(n, random.Random(7), base_s=1.0, cap_s=60.0) for n in range(1, 10)]
    assert first == second


@pytest.mark.parametrize("failures", [0, -1, -(10**9)])
def test_no_failures_means_no_jitter(failures: int) -> None:
    assert compute_backoff(failures, random.Random(1), base_s=2.0, cap_s=300.0) == 0.0


def test_zero_cap_means_no_jitter() -> None:
    assert compute_backoff(5, random.Random(1), base_s=2.0, cap_s=0.0) == 0.0


@pytest.mark.parametrize(
    ("floor_s", "retry_after_s", "at_least_s"),
    [
        (300.0, None, 300.0),  # floor above the whole window
        (None, 120.0, 120.0),  # Retry-After above the whole window
        (300.0, 900.0, 900.0),  # Retry-After wins when larger
        (900.0, 300.0, 900.0),  # the floor wins when larger
        (0.0, 0.0, 0.0),
    ],
)
def test_floor_and_retry_after_are_lower_bounds(
    floor_s: float | None, retry_after_s: float | None, at_least_s: float
) -> None:
    rng = random.Random(99)
    for _ in range(SAMPLES):
        delay = compute_backoff(
            3, rng, base_s=1.0, cap_s=8.0, floor_s=floor_s, retry_after_s=retry_after_s
        )
        assert delay >= at_least_s
        assert delay <= max(8.0, at_least_s)


def test_jitter_wins_over_a_smaller_retry_after() -> None:
    rng = random.Random(5)
    delays = [
        compute_backoff(10, rng, base_s=1.0, cap_s=600.0, retry_after_s=1.0) for _ in range(SAMPLES)
    ]
    assert all(1.0 <= d <= 600.0 for d in delays)
    assert max(delays) > 500.0


@pytest.mark.parametrize("junk", [math.nan, math.inf, -math.inf, -5.0])
def test_junk_floor_or_retry_after_is_ignored(junk: float) -> None:
    for field in ("floor_s", "retry_after_s"):
        delay = compute_backoff(1, random.Random(3), base_s=1.0, cap_s=10.0, **{field: junk})
        assert 0.0 <= delay <= 1.0


@pytest.mark.parametrize(
    ("base_s", "cap_s"),
    [(0.0, 10.0), (-1.0, 10.0), (math.nan, 10.0), (math.inf, 10.0), (1.0, -1.0), (1.0, math.inf)],
)
def test_bad_settings_are_refused(base_s: float, cap_s: float) -> None:
    with pytest.raises(ValueError):
        compute_backoff(1, random.Random(0), base_s=base_s, cap_s=cap_s)


@pytest.mark.parametrize(
    ("delay_s", "deadline", "allowed"),
    [
        (10.0, None, True),
        (math.inf, None, True),
        (10.0, NOW + timedelta(seconds=60), True),
        (59.999, NOW + timedelta(seconds=60), True),
        (60.0, NOW + timedelta(seconds=60), False),  # at the deadline is too late
        (61.0, NOW + timedelta(seconds=60), False),
        (0.0, NOW, False),
        (0.0, NOW - timedelta(hours=1), False),
        (1e300, NOW + timedelta(days=3650), False),  # no datetime overflow
        (math.inf, NOW + timedelta(days=1), False),
        (math.nan, NOW + timedelta(days=1), False),
        (-5.0, NOW, True),
    ],
)
def test_deadline_allows(delay_s: float, deadline: datetime | None, allowed: bool) -> None:
    assert deadline_allows(NOW, delay_s, deadline) is allowed
