"""Pure: how a recipient's stored reminders follow what the data asks for now.

Each reminder has one key per (campaign, recipient, occurrence); for a relative
campaign the occurrence names the appointment time, so an appointment moved
A -> B -> A asks for A's keys again. For every key the data asks for, `action`
decides with the row stored under that key (if any):

- none stored: ADD it;
- stored and cancelled by a sync (moved away, recipient removed): REVIVE it
  (pending again, with the new time and text); one cancelled by an operator or
  with its campaign stays cancelled;
- stored, pending, and its text, number or quiet hours differ: CHANGE them;
- anything else (sent, sending, dispatched, failed, expired, pending as asked): KEEP.
  A reminder already sent for this appointment time is never sent again.

A stored open reminder whose key the data no longer asks for is cancelled
(`is_stale`), with a reason that lets it come back later. The bulk path
(oaksend.models.repository.campaign_sync) applies the same rule in SQL.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Why a sync cancelled a reminder: its time moved away, or its recipient was removed.
RESCHEDULED = "campaign: rescheduled"
REMOVED = "campaign: recipient removed"
#: Cancellations a sync made, and so may undo when the data asks for the reminder again.
REVIVABLE = (RESCHEDULED, REMOVED)
#: Why a reminder is pending again.
REVIVED = "campaign: revived"
#: States a sync may cancel (one already `sending` may be on the wire: it finishes).
CANCELLABLE = ("pending", "dispatched")

ADD = "add"
REVIVE = "revive"
CHANGE = "change"
KEEP = "keep"
#: Asked for, but not written: the number is suppressed, or the frequency cap is reached (the skip causes).
SUPPRESSED = "suppressed"
CAPPED = "frequency_cap"


@dataclass(frozen=True)
class Stored:
    """What decides about a stored reminder: its state, why it ended, and what it would send."""

    state: str
    last_reason: str | None
    body: str
    to_phone: str
    quiet: str | None


@dataclass(frozen=True)
class Wanted:
    """What the data asks a reminder to send."""

    body: str
    to_phone: str
    quiet: str | None


def action(wanted: Wanted, stored: Stored | None) -> str:
    """ADD, REVIVE, CHANGE or KEEP for a reminder the data asks for (see the module docstring)."""
    if stored is None:
        return ADD
    if stored.state == "cancelled" and stored.last_reason in REVIVABLE:
        return REVIVE
    if stored.state == "pending" and (stored.body, stored.to_phone, stored.quiet) != (
            wanted.body, wanted.to_phone, wanted.quiet):
        return CHANGE
    return KEEP


def is_stale(state: str, occurrence: str, scope_after: str | None) -> bool:
    """Whether a stored reminder the data no longer asks for is cancelled.

    `scope_after` (cron campaigns): only occurrences after it were asked about; an earlier
    one, due or overdue, is not the update's to judge, and goes as planned.
    """
    return state in CANCELLABLE and (scope_after is None or occurrence > scope_after)


__all__ = ["ADD", "CANCELLABLE", "CAPPED", "CHANGE", "KEEP", "REMOVED", "RESCHEDULED", "REVIVABLE", "REVIVE", "REVIVED",
           "SUPPRESSED", "Stored", "Wanted", "action", "is_stale"]
