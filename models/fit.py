"""Pure: make an attempt's values fit their columns, so that writing the audit row never fails.

Whatever the API answered is data, never an outage: a ``Code`` beyond 32 bits,
a ``SessionID`` beyond 64, a ``Data.Status`` longer than its column, texts with
NUL characters (PostgreSQL refuses them) or lone surrogates (not UTF-8). Each
value that does not fit is clamped or moved to text, and what was done is
appended to ``anomalies``, on every backend alike (SQLite would store what
PostgreSQL refuses, so the rule is ours, not the database's).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Final

from oaksend.models.records import ATTEMPT_STRING_LENGTHS, AttemptRecord

__all__ = ["INT32_MAX", "INT32_MIN", "INT64_MAX", "INT64_MIN", "TEXT_MAX_CHARS", "clean_text", "fit_attempt",
           "fits_int64"]

INT32_MIN: Final = -(2**31)
INT32_MAX: Final = 2**31 - 1
INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1
#: Longest text kept in an unbounded (Text) column of an attempt; the body excerpt holds the rest.
TEXT_MAX_CHARS: Final = 2000

#: The attempt's string columns and their lengths (the table's, from the same numbers).
STRING_LIMITS: Final = {
    name: ATTEMPT_STRING_LENGTHS.get(name, TEXT_MAX_CHARS)
    for name in ("message", "data_status", "data_message", "classification", "reason", "error", "worker",
                 "session_id_text", "anomalies")
}
_LABELS: Final = {"message": "Message", "data_status": "Data.Status", "data_message": "Data.Message",
                  "http_status": "HTTP status", "code": "Code", "number": "number"}


def clean_text(value: Any) -> str:
    """A string any database stores: NUL shown as \\x00, lone surrogates as \\udXXX escapes."""
    text = value if type(value) is str else str(value)
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _clamp(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    # "...[+N]" says how many characters were cut; N's width depends on N, so settle it twice.
    keep = limit
    for _ in range(2):
        marker = f"...[+{len(text) - keep}]"
        keep = limit - len(marker)
    if keep <= 0:
        return text[:limit]
    return text[:keep] + f"...[+{len(text) - keep}]"


def fits_int64(value: Any) -> bool:
    """True for an int (not a bool) that a BIGINT column holds."""
    return isinstance(value, int) and not isinstance(value, bool) and INT64_MIN <= value <= INT64_MAX


def fit_attempt(record: AttemptRecord) -> AttemptRecord:
    """The record with every value fitting its column; unchanged (the same object) when all fit."""
    changes: dict[str, Any] = {}
    notes: list[str] = []

    for name in ("number", "http_status", "code"):
        value = getattr(record, name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            changes[name] = None
            notes.append(f"{_LABELS[name]} {_clamp(clean_text(value), 40)} is not an integer")
        elif not INT32_MIN <= value <= INT32_MAX:
            if name == "number":  # the attempt's own counter: keep the row, at the column's edge
                changes[name] = INT32_MAX if value > 0 else INT32_MIN
            else:
                changes[name] = None
            notes.append(f"{_LABELS[name]} {_clamp(str(value), 60)} does not fit 32 bits")

    session_id = record.session_id
    if session_id is not None and not fits_int64(session_id):
        changes["session_id"] = None
        if record.session_id_text is None:
            changes["session_id_text"] = str(session_id)
        notes.append("Data.SessionID does not fit 64 bits; kept as text")

    if record.success is not None and not isinstance(record.success, bool):
        changes["success"] = None
        notes.append(f"Success {_clamp(clean_text(record.success), 40)} is not a boolean")

    latency = record.latency_ms
    if latency is not None and (isinstance(latency, bool) or not isinstance(latency, int | float)
                                or not math.isfinite(latency)):
        changes["latency_ms"] = None

    for name, limit in STRING_LIMITS.items():
        value = changes.get(name, getattr(record, name))
        if value is None or name == "anomalies":
            continue
        text = clean_text(value)
        if len(text) > limit:
            if name in _LABELS:
                notes.append(f"{_LABELS[name]} clamped from {len(text)} characters")
            text = _clamp(text, limit)
        if text is not value:
            changes[name] = text

    if notes or record.anomalies is not None:
        # What this function did is kept whole; the response's own list gives way if need be.
        limit = STRING_LIMITS["anomalies"]
        added = "; ".join(notes)
        room = limit - len(added) - 2 if added else limit
        given = _clamp(clean_text(record.anomalies), max(0, room)) if record.anomalies else ""
        fitted = _clamp("; ".join(filter(None, [given, added])), limit)
        if fitted != record.anomalies:
            changes["anomalies"] = fitted
    return replace(record, **changes) if changes else record
