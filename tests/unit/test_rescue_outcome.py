"""lost_outcome(): what a message left `sending` by a dead worker becomes."""

from __future__ import annotations

import pytest

from oaksend.models.repository.dispatch import lost_outcome


@pytest.mark.parametrize(
    ("called", "failures", "lost_before", "policy", "kind", "state"),
    [
        (False, 0, 0, "retry", "uncalled", "pending"),  # certainly not called: due again, no attempt
        (False, 4, 0, "hold", "uncalled", "pending"),  # the policy is for calls that may have left
        (False, 0, 4, "retry", "uncalled", "pending"),  # a take-back is no attempt: max_attempts does not bind
        (False, 0, 9, "retry", "uncalled", "failed"),  # taken back 10 times before calling it: a poison message
        (True, 0, 0, "retry", "sending", "pending"),  # may have been sent: at-least-once
        (True, 0, 0, "hold", "sending", "unknown"),  # may have been sent: an operator decides
        (True, 4, 0, "retry", "sending", "unknown"),  # attempts exhausted
    ],
)
def test_lost_outcome(called: bool, failures: int, lost_before: int, policy: str, kind: str, state: str) -> None:
    got_kind, values = lost_outcome(called, failures, lost_before, 5, policy)
    assert (got_kind, values["state"]) == (kind, state)
    assert values.get("ready", False) == (state == "pending")
    assert "next_attempt_at" not in values  # it keeps its place in line
    if called:
        assert values["last_outcome"] == "ambiguous"


def test_exhausted_reasons_name_the_counts() -> None:
    assert lost_outcome(False, 0, 9, 5, "retry")[1]["last_reason"] == "its worker died 10 times before calling"
    assert lost_outcome(False, 0, 2, 5, "retry", lost_limit=3)[1]["state"] == "failed"
    assert lost_outcome(True, 4, 0, 5, "retry")[1]["last_reason"] == (
        "attempts exhausted (5/5); last: worker lost during the call")
