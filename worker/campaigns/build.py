"""Building a new campaign's rows from its audience, on every core.

`Builder` turns a batch of audience rows into recipient rows and message rows
(pure: time, plan and suppressed numbers are handed in). Checking a number and
rendering a text cost some 30 microseconds a row; 100,000 rows are seconds of
one core. `build_all` therefore runs the builder in a pool of forked processes
(one per core) while this process hands out batches and writes what comes back
in order, and the database stores each batch while the next is built.

Workers return rows already in PostgreSQL's COPY text format (`copy_line`), so
what crosses between processes is a few strings per batch, not objects. Without
fork (or for a small audience, or SQLite, or a frequency cap, which must look at
the database between batches) everything runs in this process, as dict rows.

What `build_all` yields is in audience order, so errors, duplicate keys and the
counts come out the same whichever way it ran.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from oaksend.errors import ValidationError
from oaksend.worker.campaigns.audience import AudienceSpec, Recipient, RowError, RowProblem, check_row
from oaksend.worker.campaigns.plan import (
    BULK,
    FALLBACK,
    MESSAGE_COLUMNS,
    CampaignPlan,
    Planned,
    idempotency_key,
    message_row,
)
from oaksend.worker.campaigns.spec import BAD_ROWS
from oaksend.worker.message.segments import count_segments

#: Audience rows per batch handed to a worker (and per COPY).
BATCH = 2000
#: Bad rows kept to show: every one (the CLI's --json lists them all); a bound only against a runaway
#: file (about 200 bytes each). All are counted.
MAX_ERRORS_KEPT = 1_000_000
RECIPIENT_COLUMNS = ("campaign_id", "key", "phone", "tz", "data")

Rows = list[tuple[int, dict[str, str]]]


@dataclass
class Built:
    """One batch's outcome: good rows' keys (for the duplicate check), rows to write, bad rows, skips."""

    keys: list[tuple[int, str]] = field(default_factory=list)
    recipients: list[Any] = field(default_factory=list)  # dicts, or COPY lines
    messages: list[Any] = field(default_factory=list)  # dicts, or COPY lines
    errors: list[RowError] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)

    def error(self, error: RowError) -> None:
        self.counts[BAD_ROWS] += 1
        if len(self.errors) < MAX_ERRORS_KEPT:
            self.errors.append(error)


@dataclass(frozen=True)
class Builder:
    """Pure: audience rows -> a new campaign's rows."""

    plan: CampaignPlan
    spec: AudienceSpec
    campaign_id: int
    chatbot: str
    now: datetime
    window: tuple[datetime, datetime] | None
    suppressed: frozenset[str]
    copy_text: bool = False

    def __call__(self, rows: Rows) -> Built:
        out = Built()
        plan, now, window = self.plan, self.now, self.window
        quiet_of: dict[str, str | None] = {}
        for row_no, values in rows:
            try:
                recipient = check_row(row_no, values, self.spec, plan.tz)
                planned, skipped = planned_for(plan, recipient, now, window, row_no)
            except RowProblem as exc:
                out.error(exc.error)
                continue
            out.keys.append((row_no, recipient.key))
            if out.errors:
                continue  # nothing will be written: only look for more bad rows
            if skipped:
                out.counts.update(skipped)
            zones = plan.zones_of(recipient)
            if zones.fallback:
                out.counts[FALLBACK + zones.fallback] += 1
            if self.copy_text:
                out.recipients.append(self._recipient_line(recipient))
            else:
                out.recipients.append({"campaign_id": self.campaign_id, "key": recipient.key,
                                       "phone": recipient.phone, "tz": recipient.zone.key, "data": recipient.values})
            if recipient.phone in self.suppressed:
                out.counts["suppressed"] += len(planned)
                continue
            token = zones.token
            quiet = quiet_of[token] if token in quiet_of else quiet_of.setdefault(token, plan.quiet_compact(recipient))
            for p in planned:
                if self.copy_text:
                    out.messages.append(self._message_line(recipient, p, quiet))
                else:
                    out.messages.append(message_row(self.campaign_id, self.chatbot, recipient, p, quiet, now,
                                                    key_secret=plan.key_secret))
        if out.errors:
            out.recipients, out.messages = [], []
        return out

    def _recipient_line(self, r: Recipient) -> str:
        """copy_line of the recipient row (RECIPIENT_COLUMNS), written out (tests compare the two)."""
        return (f"{self.campaign_id}\t{_escape(r.key)}\t{_escape(r.phone)}\t{_escape(r.zone.key)}\t"
                f"{_escape(_json(r.values))}\n")

    def _message_line(self, recipient: Recipient, p: Planned, quiet: str | None) -> str:
        """copy_line(message_row(...).values()), written out: a third of the time (tests compare the two)."""
        cid = self.campaign_id
        key = idempotency_key(cid, recipient.key, p.occurrence, self.plan.key_secret)
        meta = f'{{"campaign": {cid}, "recipient": {_json(recipient.key)}, "occurrence": {_json(p.occurrence)}}}'
        now = _timestamptz(self.now)
        return (f"{_escape(self.chatbot)}\t{_escape(recipient.phone)}\t{_escape(p.body)}\t{count_segments(p.body)}"
                f"\tpending\t0\t0\t0\t{_timestamptz(p.send_at)}\t{_timestamptz(p.deadline_at)}\t{_escape(key)}"
                f"\t{_escape(meta)}\t{cid}\t{BULK}\t{_escape(quiet) if quiet is not None else NULL}\t{now}\t{now}\n")


def planned_for(plan: CampaignPlan, recipient: Recipient, now: datetime, window: tuple[datetime, datetime] | None,
                row_no: int) -> tuple[list[Planned], Counter[str]]:
    """plan.occurrences for one audience row; what is wrong is a RowProblem naming the row and column."""
    try:
        return plan.occurrences(recipient, now, window=window, row=row_no)
    except ValidationError as exc:
        raise RowProblem(RowError(row_no, exc.field.rsplit("column ", 1)[-1], exc.message)) from None


def build_all(builder: Builder, rows: Iterable[tuple[int, dict[str, str]]], *, parallel: bool,
              processes: int = 0) -> Iterator[Built]:
    """Each batch of `rows`, built, in order: in a pool of forked processes when `parallel`
    (`processes` of them; 0: one per core)."""
    batches = _batches(rows)
    processes = processes or _workers()
    if not parallel or processes < 2 or "fork" not in multiprocessing.get_all_start_methods():
        for batch in batches:
            yield builder(batch)
        return
    first = next(batches, None)
    if first is None:
        return
    if len(first) < BATCH:  # the whole audience is one small batch
        yield builder(first)
        return
    ctx = multiprocessing.get_context("fork")
    global _builder
    _builder = builder  # inherited by the forked workers: nothing is pickled but rows and results
    try:
        with ctx.Pool(processes=processes, initializer=_detach) as pool:
            def all_batches() -> Iterator[Rows]:
                yield first
                yield from batches

            yield from pool.imap(_build, all_batches())
    finally:
        _builder = None


def copy_line(values: Iterable[Any]) -> str:
    """One row in PostgreSQL's COPY text format (tab-separated, backslash escapes, \\N for NULL)."""
    return "\t".join([_CELL.get(type(v), _other)(v) for v in values]) + "\n"


NULL = "\\N"
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_json = json.JSONEncoder().encode  # json.dumps' defaults, without its per-call argument handling


def _escape(text: str) -> str:
    return text.translate(_ESCAPES) if ("\\" in text or "\t" in text or "\n" in text or "\r" in text) else text


def _timestamptz(value: datetime) -> str:
    text = _TIMESTAMPS.get(value)  # send times repeat (appointment slots), created_at is every row's
    if text is None:
        if value.tzinfo is None:
            raise ValueError("a naive datetime cannot be written as timestamptz")
        if len(_TIMESTAMPS) >= 65536:
            _TIMESTAMPS.clear()
        text = _TIMESTAMPS[value] = value.isoformat()
    return text


#: Instants already written out: a dict lookup is 30 ns, isoformat 1.3 us. Equal instants in other
#: zones share one text, which PostgreSQL reads as the same instant.
_TIMESTAMPS: dict[datetime, str] = {}


def _other(value: Any) -> str:
    if isinstance(value, datetime):
        return _timestamptz(value)
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, (int, float)):
        return repr(value)
    return _escape(_json(value))  # dicts and lists: JSON


_CELL: dict[type, Any] = {
    str: _escape, int: repr, type(None): lambda _: NULL, datetime: _timestamptz, bool: lambda v: "t" if v else "f",
    dict: lambda v: _escape(_json(v)), list: lambda v: _escape(_json(v)),
}


def _batches(rows: Iterable[tuple[int, dict[str, str]]]) -> Iterator[Rows]:
    batch: Rows = []
    for row in rows:
        batch.append(row)
        if len(batch) >= BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


_builder: Builder | None = None


def _detach() -> None:
    """In a forked worker, which only builds rows: Ctrl-C is the parent's to handle (it stops the pool).

    The worker never touches the parent's database connection and leaves through os._exit,
    so nothing of it is closed or finalized from here."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _build(rows: Rows) -> Built:
    assert _builder is not None
    return _builder(rows)


__all__ = ["BATCH", "MAX_ERRORS_KEPT", "MESSAGE_COLUMNS", "RECIPIENT_COLUMNS", "Builder", "Built", "build_all",
           "copy_line", "planned_for"]
