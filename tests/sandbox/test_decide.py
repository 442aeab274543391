"""Fault decisions and script tokens (pure)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from oaksend.sandbox.config import Config
from oaksend.sandbox.exceptions import ConfigError
from oaksend.sandbox.faults import OK, Outcome, Scripts, burst_retry_after, decide, parse_token, resolve


@pytest.mark.parametrize(
    ("token", "kind", "label"),
    [
        ("ok", "ok", "ok"),
        ("200", "ok", "ok"),
        ("503", "http", "503"),
        ("401", "http", "401"),
        ("code:500", "code", "code:500"),
        ("status-false", "status-false", "status-false"),
        ("twilio:21610", "twilio", "twilio:21610"),
        ("hang", "hang", "hang"),
        ("hang:0.5", "hang", "hang"),
        ("reset", "reset", "reset"),
        ("malformed", "malformed", "malformed"),
        ("malformed:html", "malformed", "malformed:html"),
        (" Malformed:Truncated ", "malformed", "malformed:truncated"),
    ],
)
def test_tokens(token: str, kind: str, label: str) -> None:
    outcome = parse_token(token)
    assert (outcome.kind, outcome.label) == (kind, label)


@pytest.mark.parametrize("token", ["", "teapot", "302", "600", "code:", "code:x", "twilio:x", "hang:-1", "hang:nan", "malformed:x"])
def test_bad_tokens(token: str) -> None:
    with pytest.raises(ConfigError):
        parse_token(token)


def test_resolve_fills_from_config() -> None:
    config = Config(twilio_code=(30022,), hang_s=4.0, retry_after=9, status_false_code=30006)
    rng = random.Random(0)
    assert resolve(parse_token("twilio"), config, rng).label == "twilio:30022"
    assert resolve(parse_token("hang"), config, rng).hang_s == 4.0
    assert resolve(parse_token("429"), config, rng).retry_after == 9
    assert resolve(parse_token("status-false"), config, rng).twilio_code == 30006
    assert resolve(parse_token("malformed"), config, rng).variant is not None
    assert resolve(parse_token("429"), Config(retry_after=-1), rng).retry_after is None


def test_no_faults_makes_no_draw() -> None:
    rng = random.Random(5)
    state = rng.getstate()
    assert decide(Config(), rng, 0.0) is OK
    assert rng.getstate() == state


def test_probabilities_are_exclusive_bands() -> None:
    config = Config(p_503=0.3, p_reset=0.2, p_twilio_error=0.1, twilio_code=(21610, 30022))
    rng = random.Random(11)
    counts = Counter(decide(config, rng, 0.0).kind for _ in range(20000))
    assert counts["http"] / 20000 == pytest.approx(0.3, abs=0.02)
    assert counts["reset"] / 20000 == pytest.approx(0.2, abs=0.02)
    assert counts["twilio"] / 20000 == pytest.approx(0.1, abs=0.02)
    assert counts["ok"] / 20000 == pytest.approx(0.4, abs=0.02)


@pytest.mark.parametrize(
    ("elapsed_s", "expected"),
    [(0.0, None), (5.0, None), (10.0, 3), (11.5, 2), (12.9, 1), (13.0, None), (20.5, 3), (29.0, None)],
)
def test_burst_schedule(elapsed_s: float, expected: int | None) -> None:
    assert burst_retry_after(Config(burst_429_every=10, burst_429_for=3), elapsed_s) == expected


def test_burst_wins_over_probabilities() -> None:
    outcome = decide(Config(burst_429_every=1, burst_429_for=1, p_503=1), random.Random(0), 1.2)
    assert (outcome.status, outcome.label) == (429, "burst-429")


def test_scripts_pop_phone_before_serial_then_run_dry() -> None:
    scripts = Scripts()
    scripts.add("SerialNumber", "SN", ["503"])
    scripts.add("ToPhoneNumber", "+1555", ["reset", "ok"])
    popped = [scripts.pop("+1555", "SN") for _ in range(4)]
    assert [o.label if o else None for o in popped] == ["reset", "ok", "503", None]
    assert scripts.pending() == []


def test_issues_session() -> None:
    assert [parse_token(t).issues_session for t in ("ok", "status-false", "malformed", "503", "reset")] == [
        True, True, True, False, False,
    ]
    assert not Outcome("http", 429, label="limit").issues_session
