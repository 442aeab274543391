"""Priorities through validation and rendering; the dispatcher's wait while the broker is full."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest

from oaksend.errors import ValidationError
from oaksend.models.records import NORMAL, PRIORITIES, priority_name
from oaksend.worker.delivery.fairness import capped_wait
from oaksend.worker.message.validation import SendRequest, validate

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
SN = "3254a9d0424c4806b9ea3d0763a1b2c3"


def test_the_contract_names_and_order() -> None:
    assert PRIORITIES == ("high", "normal", "bulk") and PRIORITIES[NORMAL] == "normal"


@pytest.mark.parametrize(("given", "stored"), [("high", 0), ("normal", 1), ("bulk", 2)])
def test_priority_is_stored_as_its_rank(given: str, stored: int) -> None:
    row = validate(SendRequest(SN, "+14155550123", "hi", priority=given), now=NOW, default_deadline_s=60)
    assert row.priority == stored
    assert priority_name(row.priority) == given


def test_normal_is_the_default() -> None:
    assert validate(SendRequest(SN, "+14155550123", "hi"), now=NOW, default_deadline_s=60).priority == NORMAL


@pytest.mark.parametrize("bad", ["HIGH", "urgent", "", " normal", 0, 1, None, 1.5, ["bulk"]])
def test_other_values_are_refused_naming_the_field(bad: Any) -> None:
    with pytest.raises(ValidationError) as info:
        validate(SendRequest(SN, "+14155550123", "hi", priority=bad), now=NOW, default_deadline_s=60)
    assert info.value.field == "priority"
    assert str(info.value).startswith("priority: ") and "high, normal, bulk" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("inflight", "drain_per_s", "longest_s", "expected"),
    [
        (1000, 0.0, 0.25, 0.25),  # nothing learnt yet: the longest wait, never a 50 ms loop
        (0, 500.0, 0.25, 0.25),
        (1000, 500.0, 1.0, 0.5),  # a quarter of the 2 s the workers need
        (1000, 500.0, 0.25, 0.25),  # at most the longest
        (1000, 4000.0, 0.25, 0.0625),
        (10, 100_000.0, 0.25, 0.01),  # at least the shortest
    ],
)
def test_capped_wait(inflight: int, drain_per_s: float, longest_s: float, expected: float) -> None:
    assert capped_wait(inflight, drain_per_s, longest_s=longest_s) == pytest.approx(expected)
