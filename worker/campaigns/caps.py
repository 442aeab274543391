"""The frequency caps, applied to a campaign's new messages before they are written.

Two caps, both over every campaign's messages to the number (what is stored, and
the rows of this batch too):
- the campaign's own `frequency_cap`: at most N campaign messages per number within 24 h;
- the deployment's `OAKSEND_FREQUENCY_CAP` ("N per PERIOD", oaksend.worker.message.cap):
  per chatbot and number, for every campaign whether it sets a cap or not. The
  sender checks it again just before a message leaves.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from sqlalchemy.orm import Session

from oaksend.worker.campaigns.plan import CAP_WINDOW, apply_frequency_cap
from oaksend.worker.message.cap import keep_within_cap, parse_cap

Rows = list[dict[str, Any]]


def capped(outbox: Any, s: Session, rows: Rows, cap: int | None, setting: str | None, counts: Counter[str]) -> Rows:
    """The rows both caps let through (all of them when neither is set); the others are counted."""
    return campaign_cap(outbox, s, global_cap(outbox, s, rows, setting, counts), cap, counts)


def campaign_cap(outbox: Any, s: Session, rows: Rows, cap: int | None, counts: Counter[str]) -> Rows:
    """A campaign's own cap: at most `cap` campaign messages per number within 24 h."""
    if not cap or not rows:
        return rows
    lo = min(r["next_attempt_at"] for r in rows) - CAP_WINDOW
    hi = max(r["next_attempt_at"] for r in rows) + CAP_WINDOW
    existing = outbox.campaign_times(s, [r["to_phone"] for r in rows], lo, hi)
    kept, skipped = apply_frequency_cap(rows, existing, cap)
    counts["frequency_cap"] += skipped
    return kept


def global_cap(outbox: Any, s: Session, rows: Rows, setting: str | None, counts: Counter[str]) -> Rows:
    """The deployment's cap, per chatbot and number over every campaign (all rows when it is off)."""
    cap = parse_cap(setting)
    if cap is None or not rows:
        return rows
    lo = min(r["next_attempt_at"] for r in rows) - cap.period
    hi = max(r["next_attempt_at"] for r in rows) + cap.period
    existing = outbox.cap_times(s, [(r["serial_number"], r["to_phone"]) for r in rows], lo, hi)
    kept, skipped = keep_within_cap(rows, existing, cap)
    counts["frequency_cap"] += skipped
    return kept


__all__ = ["campaign_cap", "capped", "global_cap"]
