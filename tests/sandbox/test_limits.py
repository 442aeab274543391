"""Server-side per-chatbot limits: 429 with Retry-After, and the counts that judge a client."""

from __future__ import annotations

import time

import httpx
import pytest

from oaksend.sandbox.config import Limit
from oaksend.sandbox.limits import ChatbotCounts, Gcra
from tests.sandbox.helpers import configure, records, send


def test_over_the_limit_is_429_and_a_violation(client: httpx.Client) -> None:
    configure(client, limits={"SN-L": "2:1"})
    answers = [send(client, serial="SN-L") for _ in range(5)]
    free = send(client, serial="SN-FREE")

    assert [a.status_code for a in answers] == [200, 429, 429, 429, 429]
    assert answers[1].headers["Retry-After"] == "1"
    assert free.status_code == 200
    assert [r["fault"] for r in records(client)][:5] == ["ok", "limit", "limit", "limit", "limit"]
    chatbot = client.get("/_sandbox/stats").json()["chatbots"]["SN-L"]
    assert chatbot["limit"] == {"rate_per_s": 2.0, "burst": 1}
    assert (chatbot["received"], chatbot["violations"], chatbot["max_1s"]) == (5, 4, 5)
    assert chatbot["by_status"] == {"200": 1, "429": 4}


def test_a_client_within_its_limit_has_no_violation(client: httpx.Client) -> None:
    configure(client, default_limit="20:2")
    for _ in range(6):
        assert send(client).status_code == 200
        time.sleep(0.06)
    chatbot = client.get("/_sandbox/stats").json()["chatbots"]["SN-TEST"]
    assert chatbot["violations"] == 0 and chatbot["limit"] == {"rate_per_s": 20.0, "burst": 2}
    assert 0 < chatbot["mean_rate_per_s"] <= 20


def test_configured_chatbots_appear_before_traffic(client: httpx.Client) -> None:
    configure(client, limits="SN-A=5:1,SN-B=0.5")
    chatbots = client.get("/_sandbox/stats").json()["chatbots"]
    assert chatbots["SN-B"]["limit"] == {"rate_per_s": 0.5, "burst": 1}
    assert chatbots["SN-A"]["received"] == 0


def test_burst_passes_at_once_then_the_rate_holds() -> None:
    bucket = Gcra(Limit(rate_per_s=10, burst=3))
    assert [bucket.admit(0.0) for _ in range(4)] == [0.0, 0.0, 0.0, pytest.approx(0.1)]
    assert bucket.admit(0.1) == 0.0  # one interval later, one more
    assert bucket.admit(0.1) == pytest.approx(0.1)


def test_steady_client_at_exactly_the_rate_conforms() -> None:
    bucket = Gcra(Limit(rate_per_s=5, burst=1))
    assert all(bucket.admit(i * 0.2) == 0.0 for i in range(50))
    assert bucket.admit(49 * 0.2 + 0.1) > 0


def test_slack_forgives_jitter_only() -> None:
    bucket = Gcra(Limit(rate_per_s=1, burst=1))
    assert bucket.admit(0.0) == 0.0
    assert bucket.admit(0.995, slack_s=0.01) == 0.0
    assert bucket.admit(1.5, slack_s=0.01) > 0


def test_peak_window_is_half_open() -> None:
    counts = ChatbotCounts()
    for i in range(11):  # 5/s for two seconds: 0.0, 0.2, ... 2.0
        counts.observe(i * 0.2)
    assert counts.max_in_window == 5
    counts.observe(2.01)
    assert counts.max_in_window == 6
