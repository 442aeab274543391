"""How the CLI shows messages, attempts and tables: for people, and as JSON for scripts.

Text for people goes through `printable`: a message text, a name or an API
answer is data, and its control characters must not drive the terminal
(ESC[2J clears it, an OSC sequence retitles the window). JSON escapes them itself.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

#: C0 controls (ESC, BEL, CR, newline...), DEL, C1 controls (CSI as one character), line/paragraph
#: separators and the bidi overrides that reorder what the terminal shows.
_UNPRINTABLE_RE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(value: Any) -> str:
    """`value` as text safe to print to a terminal: control characters shown as escapes (`\\x1b`, `\\n`)."""
    text = "" if value is None else str(value)
    return _UNPRINTABLE_RE.sub(lambda m: m.group(0).encode("unicode_escape").decode("ascii"), text)


def iso(value: datetime | None) -> str | None:
    """ISO 8601, or None."""
    return value.isoformat() if value is not None else None


def print_json(value: Any) -> None:
    """Indented JSON on stdout, for scripts (`--json`)."""
    print(json.dumps(value, indent=2, default=str))


def table(rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    """An aligned plain-text table with upper-case headers, for people."""
    if not rows:
        print("(none)")
        return
    cells = [[printable(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def message_dict(m: Any) -> dict[str, Any]:
    """A MessageStatus (oaksend.worker.status) as JSON-ready values, without its history."""
    return {
        "id": m.id,
        "chatbot": m.chatbot,
        "to": m.to,
        "text": m.text,
        "segments": m.segments,
        "state": m.state,
        "priority": m.priority,
        "attempts": m.attempts,
        "failures": m.failures,
        "ambiguous": m.ambiguous,
        "next_attempt_at": iso(m.next_attempt_at),
        "deadline_at": iso(m.deadline_at),
        "idempotency_key": m.idempotency_key,
        "last_outcome": m.last_outcome,
        "last_reason": m.last_reason,
        "session_id": m.session_id,
        "session_id_text": m.session_id_text,
        "metadata": m.metadata,
        "created_at": iso(m.created_at),
        "updated_at": iso(m.updated_at),
        "sent_at": iso(m.sent_at),
    }


def attempt_dict(a: Any) -> dict[str, Any]:
    """An AttemptStatus as JSON-ready values."""
    return {
        "number": a.number,
        "started_at": iso(a.started_at),
        "latency_ms": round(a.latency_ms, 1) if a.latency_ms is not None else None,
        "http_status": a.http_status,
        "success": a.success,
        "code": a.code,
        "message": a.message,
        "data_status": a.data_status,
        "data_message": a.data_message,
        "session_id": a.session_id,
        "session_id_text": a.session_id_text,
        "anomalies": a.anomalies,
        "classification": a.classification,
        "reason": a.reason,
        "error": a.error,
        "worker": a.worker,
    }
