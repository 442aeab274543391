"""The summary each fault run prints: accepted, sent, failed, expired, unknown, duplicates, lost, drain time."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

#: Sandbox outcomes after which the SMS counts as delivered (a SessionID was issued).
DELIVERED_FAULTS = {"ok", "malformed", "status-false"}

SUMMARIES: list[str] = []


@dataclass
class FaultSummary:
    name: str
    accepted: int
    states: Counter[str]
    api_requests: int
    attempts: int
    duplicates_at_api: int
    ambiguous_retried: int
    drain_s: float

    @property
    def lost(self) -> int:
        """Accepted messages not in a terminal state after the drain."""
        terminal = ("sent", "failed", "expired", "unknown", "cancelled")
        return self.accepted - sum(self.states.get(s, 0) for s in terminal)

    def line(self) -> str:
        s = self.states
        return (
            f"{self.name}: accepted={self.accepted} sent={s.get('sent', 0)} failed={s.get('failed', 0)} "
            f"expired={s.get('expired', 0)} unknown={s.get('unknown', 0)} api_requests={self.api_requests} "
            f"attempt_rows={self.attempts} duplicates_at_api={self.duplicates_at_api} "
            f"ambiguous_then_retried={self.ambiguous_retried} lost={self.lost} drain_s={self.drain_s:.1f}"
        )


def delivered(record: dict[str, Any]) -> bool:
    fault = str(record.get("fault", ""))
    return record.get("session_id") is not None or fault.split(":")[0] in DELIVERED_FAULTS


def summarize(name: str, rows: list[Any], outbox: Any, sandbox_records: list[dict[str, Any]],
              drain_s: float) -> FaultSummary:
    """Join the outbox (messages, attempts) with what the API recorded."""
    by_phone: dict[str, list[dict[str, Any]]] = {}
    for rec in sorted(sandbox_records, key=lambda r: r["seq"]):
        by_phone.setdefault(rec["to_phone_number"], []).append(rec)
    duplicates = ambiguous_retried = attempts = 0
    for row in rows:
        history = outbox.history(row.id)[0]
        attempts += len(history)
        deliveries = sum(1 for rec in by_phone.get(row.to_phone, []) if delivered(rec))
        duplicates += max(0, deliveries - 1)
        for a, nxt in zip(history, history[1:]):
            if a.classification == "ambiguous" and nxt is not None:
                ambiguous_retried += 1
    summary = FaultSummary(name, len(rows), Counter(r.state for r in rows), len(sandbox_records), attempts,
                           duplicates, ambiguous_retried, drain_s)
    SUMMARIES.append(summary.line())
    return summary
