"""The record of every request received on the send path, and counts over it.

Records hold the full phone numbers and texts because tests and benchmarks
compare them with what they sent; they never hold the API key, only whether
the request carried the right one.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Record:
    seq: int  #: 1, 2, ... since start or the last reset
    received_at: float  #: unix time the request was read
    serial_number: str | None
    to_phone_number: str | None
    message: str | None
    auth_ok: bool
    fault: str  #: an outcome token, or "invalid", "limit", "burst-429"
    status: int | str  #: HTTP status answered, or "hang" / "reset"
    session_id: int | None  #: the SessionID handed out, if any
    scripted: bool  #: the outcome came from a script
    delay_ms: float  #: added latency (or hang time) before the answer
    #: the client's X-Request-ID header (oaksend sends its own id for each request), if it sent one
    request_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        out = {
            "seq": self.seq,
            "received_at": self.received_at,
            "serial_number": self.serial_number,
            "to_phone_number": self.to_phone_number,
            "message": self.message,
            "auth_ok": self.auth_ok,
            "fault": self.fault,
            "status": self.status,
            "session_id": self.session_id,
            "scripted": self.scripted,
            "delay_ms": self.delay_ms,
        }
        if self.request_id is not None:  # only a request that carried one: older readers see no new key
            out["request_id"] = self.request_id
        return out


class Recorder:
    """Appends records and keeps the counters ``/_sandbox/stats`` reports."""

    def __init__(self) -> None:
        self._records: list[Record] = []
        self.by_status: Counter[str] = Counter()
        self.by_fault: Counter[str] = Counter()
        self.by_chatbot_status: dict[str, Counter[str]] = {}
        self.sessions_issued = 0

    def __len__(self) -> int:
        return len(self._records)

    @property
    def next_seq(self) -> int:
        return len(self._records) + 1

    def add(self, record: Record) -> None:
        self._records.append(record)
        status = str(record.status)
        self.by_status[status] += 1
        self.by_fault[record.fault] += 1
        if record.session_id is not None:
            self.sessions_issued += 1
        if record.serial_number is not None:
            counter = self.by_chatbot_status.get(record.serial_number)
            if counter is None:
                counter = self.by_chatbot_status[record.serial_number] = Counter()
            counter[status] += 1

    def since(self, seq: int = 0) -> list[dict[str, Any]]:
        """Records with a sequence number above ``seq``, oldest first."""
        # seq n sits at index n - 1: the list is only ever appended to or cleared.
        return [r.to_json() for r in self._records[max(seq, 0):]]

    def write_jsonl(self, path: str) -> int:
        """Writes every record as one JSON line; returns how many."""
        with open(path, "w", encoding="utf-8") as out:
            for record in self._records:
                out.write(json.dumps(record.to_json(), ensure_ascii=False))
                out.write("\n")
        return len(self._records)

    def clear(self) -> None:
        self._records.clear()
        self.by_status.clear()
        self.by_fault.clear()
        self.by_chatbot_status.clear()
        self.sessions_issued = 0
