"""Which workers stopped beating, and which of them still have unstarted tasks to take back."""

from __future__ import annotations

from oaksend.worker.delivery.dispatcher import newly_gone
from oaksend.worker.delivery.heartbeat import stopped_beating


def test_stopped_beating_is_between_the_ttl_and_the_horizon() -> None:
    scores = {"live": 99.5, "just": 97.0, "gone": 90.0, "long-gone": 50.0}
    assert stopped_beating(scores, 100.0, 3.0, 33.0) == {"just": 97.0, "gone": 90.0}
    assert stopped_beating(scores, 100.0, 3.0, 5.0) == {"just": 97.0}
    assert stopped_beating({}, 100.0, 3.0, 33.0) == {}


def test_a_stopped_worker_is_gone_once_per_stop() -> None:
    stopped = {"a:1": 97.0}
    assert newly_gone([], stopped, {}) == ["a:1"]
    assert newly_gone([], stopped, {"a:1": 97.0}) == []  # handled at this last beat already
    assert newly_gone([], {"a:1": 140.0}, {"a:1": 97.0}) == ["a:1"]  # it beat again, and stopped again


def test_a_dead_owner_is_gone_whatever_was_handled() -> None:
    # Judged dead while holding messages (e.g. absent from the set since Redis lost it).
    assert newly_gone(["b:2"], {"a:1": 97.0}, {"a:1": 97.0}) == ["b:2"]
    assert newly_gone(["a:1"], {"a:1": 97.0}, {}) == ["a:1"]
