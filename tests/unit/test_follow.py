"""models.follow: the rule by which a recipient's stored reminders follow what the data asks for."""

from __future__ import annotations

import pytest

from oaksend.models.follow import (
    ADD,
    CHANGE,
    KEEP,
    REMOVED,
    RESCHEDULED,
    REVIVE,
    Stored,
    Wanted,
    action,
    is_stale,
)

WANT = Wanted("Hi Ann", "+12125550100", "21:00-08:00 America/New_York")


def stored(state: str, reason: str | None = None, **changes: str) -> Stored:
    values = {"body": WANT.body, "to_phone": WANT.to_phone, "quiet": WANT.quiet, **changes}
    return Stored(state, reason, values["body"], values["to_phone"], values["quiet"])


@pytest.mark.parametrize(("have", "expected"), [
    (None, ADD),
    (stored("pending"), KEEP),
    (stored("pending", body="Hi Bo"), CHANGE),
    (stored("pending", to_phone="+12125550101"), CHANGE),
    (stored("pending", quiet="off"), CHANGE),
    (stored("cancelled", RESCHEDULED), REVIVE),  # moved away, and back
    (stored("cancelled", REMOVED), REVIVE),  # removed, and listed again
    (stored("cancelled", RESCHEDULED, body="Hi Bo"), REVIVE),  # revived with the new text
    (stored("cancelled", "operator cancel"), KEEP),  # someone's decision: not the data's to undo
    (stored("cancelled", "campaign cancelled"), KEEP),
    (stored("sent"), KEEP),  # sent for this appointment time: never again
    (stored("sent", body="Hi Bo"), KEEP),
    (stored("sending", body="Hi Bo"), KEEP),  # on the wire
    (stored("dispatched", body="Hi Bo"), KEEP),
    (stored("failed"), KEEP),
    (stored("expired"), KEEP),
    (stored("unknown"), KEEP),
])
def test_action(have: Stored | None, expected: str) -> None:
    assert action(WANT, have) == expected


@pytest.mark.parametrize(("state", "occurrence", "scope_after", "stale"), [
    ("pending", "20261203T090000Z", None, True),
    ("dispatched", "20261203T090000Z", None, True),
    ("sending", "20261203T090000Z", None, False),
    ("sent", "20261203T090000Z", None, False),
    ("cancelled", "20261203T090000Z", None, False),
    ("pending", "20261203T090000Z", "20261203T085959Z", True),  # cron: within what was asked about
    ("pending", "20261203T090000Z", "20261203T090000Z", False),  # due already: goes as planned
    ("pending", "20261203T080000Z", "20261203T085959Z", False),
])
def test_is_stale(state: str, occurrence: str, scope_after: str | None, stale: bool) -> None:
    assert is_stale(state, occurrence, scope_after) is stale
