"""The frequency cap's pure decisions: parsing, the sliding window, the send-time count."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from oaksend.errors import ValidationError
from oaksend.worker.message.cap import FrequencyCap, fits, keep_within_cap, over_cap_at_send, parse_cap

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc)
H = timedelta(hours=1)


@pytest.mark.parametrize(("text", "cap"), [
    ("2 per 24h", FrequencyCap(2, 24 * H)),
    ("1/7d", FrequencyCap(1, timedelta(days=7))),
    (" 3 PER 90m ", FrequencyCap(3, timedelta(minutes=90))),
    ("1 per 1w", FrequencyCap(1, timedelta(weeks=1))),
    ("off", None), ("", None), (None, None),
])
def test_parse(text: str | None, cap: FrequencyCap | None) -> None:
    assert parse_cap(text) == cap
    if cap is not None:
        assert parse_cap(str(cap)) == cap  # what settings keep reads back the same


@pytest.mark.parametrize("text", ["2", "2 per", "per 24h", "0 per 24h", "2 per 0h", "2 per 24", "two per day",
                                  "2 per 24y"])
def test_parse_refuses_naming_the_field(text: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_cap(text, "OAKSEND_FREQUENCY_CAP")
    assert info.value.field == "OAKSEND_FREQUENCY_CAP" and "\n" not in str(info.value)


def test_fits_is_a_sliding_window() -> None:
    cap = FrequencyCap(2, 24 * H)
    times = [T0, T0 + 20 * H]
    assert not fits(times, T0 + 10 * H, cap)  # three within 20 h
    assert not fits(times, T0 + 23 * H, cap)  # T0, +20 h, +23 h: three within 23 h
    assert fits(times, T0 + 30 * H, cap)  # +20 h, +30 h: two; T0 is 30 h before
    assert not fits(times, T0 - 3 * H, cap)
    assert fits(times, T0 - 5 * H, cap)  # -5 h, T0 and +20 h span 25 h: no 24 h holds three
    assert fits([], T0, FrequencyCap(1, H)) and not fits([T0 + 59 * timedelta(minutes=1)], T0, FrequencyCap(1, H))
    assert fits([T0 + H], T0, FrequencyCap(1, H))  # exactly one period apart


def test_keep_within_cap_counts_per_chatbot_and_number_and_within_the_batch() -> None:
    cap = FrequencyCap(1, 24 * H)
    rows = [
        {"serial_number": "bot-a", "to_phone": "+447911123456", "next_attempt_at": T0 + 2 * H},
        {"serial_number": "bot-a", "to_phone": "+447911123456", "next_attempt_at": T0 + 30 * H},
        {"serial_number": "bot-a", "to_phone": "+447911123456", "next_attempt_at": T0 + 40 * H},  # 10 h after
        {"serial_number": "bot-b", "to_phone": "+447911123456", "next_attempt_at": T0 + 2 * H},  # another chatbot
        {"serial_number": "bot-a", "to_phone": "+14155550123", "next_attempt_at": T0 + 2 * H},
    ]
    existing = {("bot-a", "+14155550123"): [T0 - 3 * H]}  # another campaign's, 5 h before
    kept, skipped = keep_within_cap(rows, existing, cap)
    assert skipped == 2
    assert [(r["serial_number"], r["to_phone"], r["next_attempt_at"] - T0) for r in kept] == [
        ("bot-a", "+447911123456", 2 * H), ("bot-b", "+447911123456", 2 * H), ("bot-a", "+447911123456", 30 * H)]


def test_over_cap_at_send_lets_the_most_urgent_through() -> None:
    cap = FrequencyCap(2, 24 * H)
    candidates = [(1, "+447911123456"), (2, "+447911123456"), (3, "+447911123456"), (4, "+14155550123")]
    assert over_cap_at_send(candidates, {}, cap) == [3]
    assert over_cap_at_send(candidates, {"+447911123456": 1}, cap) == [2, 3]
    assert over_cap_at_send(candidates, {"+447911123456": 2, "+14155550123": 2}, cap) == [1, 2, 3, 4]
