"""Retention: delete (or anonymize) terminal messages older than a cutoff, in short batches, audited.

Only terminal messages (sent, failed, unknown, expired, cancelled) created
before the cutoff are touched; open ones never are. Deleting removes their
attempts and per-message operator actions with them; `anonymize` blanks every
column that can hold a number, a text or a name (models.repository.retention
lists them) and keeps the rows. Either way, the recipients of campaigns that
finished or were cancelled before the cutoff are deleted (phone, key, every
audience column), and older free text (audit notes, reasons of pauses long
over) is cleared. Each batch is its own short transaction (row locks on at
most `batch` rows, skipped when another transaction holds them), so sending
goes on during a purge. The operator audit rows and suppressed numbers (the
STOP list) are kept.

`OAKSEND_RETENTION_DAYS` makes every dispatcher process run it every
`OAKSEND_PURGE_INTERVAL_S`; a Redis lock lets only one of them do so per interval.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

log = logging.getLogger(__name__)

#: Messages per transaction.
BATCH = 500
#: Pause between batches, so a large purge leaves room for the send path.
PAUSE_S = 0.05

_AGE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(value: str) -> timedelta:
    """Pure: '90d', '12h', '2w', '30m', '45s' -> timedelta; ValueError naming the format otherwise."""
    match = _AGE_RE.match(value or "")
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"{value!r} is not an age (use a positive number and a unit: 90d, 12h, 2w, 30m)")
    return timedelta(seconds=float(match.group(1)) * _UNIT_S[match.group(2)])


@dataclass(frozen=True)
class Purged:
    """What one purge changed."""

    messages: int  #: messages deleted (or anonymized)
    recipients: int  #: campaign recipients deleted
    texts: int  #: audit notes and pause reasons cleared


def _batches(step: Callable[[], int], batch: int, pause_s: float,
             progress: Callable[[int], None] | None = None) -> int:
    """Run `step` (one batch, returns rows changed) until a batch comes back short; the total."""
    total = 0
    while True:
        n = step()
        total += n
        if progress is not None and n:
            progress(total)
        if n < batch:
            return total
        if pause_s:
            time.sleep(pause_s)


def purge(outbox: Any, cutoff: datetime, *, anonymize: bool, clock: Callable[[], datetime], actor: str | None,
          command: str, batch: int = BATCH, pause_s: float = PAUSE_S,
          progress: Callable[[int], None] | None = None) -> Purged:
    """Purge in batches until nothing is left (messages, then ended campaigns' recipients, then old
    free text). Audited before it acts: the intent first (committed), the messages changed after
    each batch, the totals at the end; an interrupted purge leaves its intent, still 'started'."""
    selection = {"created_before": cutoff.isoformat(), "states": "terminal",
                 "action": "anonymize" if anonymize else "delete"}
    audit_id = outbox.begin_audit(command, selection, actor or "retention", clock())
    done = 0

    def counted(total: int) -> None:
        nonlocal done
        done = total
        outbox.progress_audit(audit_id, total)
        if progress is not None:
            progress(total)

    try:
        messages = _batches(lambda: outbox.purge_batch(cutoff, anonymize, batch, clock()), batch, pause_s, counted)
        recipients = _batches(lambda: outbox.purge_recipients_batch(cutoff, batch), batch, pause_s)
        texts = outbox.purge_free_text(cutoff)
    except BaseException as exc:
        with contextlib.suppress(Exception):  # the database is away: the intent stays 'started'
            outbox.finish_audit(audit_id, "failed", done, {"error": type(exc).__name__}, clock())
        raise
    outbox.finish_audit(audit_id, "done", messages, {"campaign_recipients": recipients, "texts_cleared": texts},
                        clock())
    return Purged(messages, recipients, texts)


class PeriodicPurge:
    """A daemon thread in the dispatcher process that applies the retention setting."""

    def __init__(self, settings: Any, outbox: Any, redis_client: Any, stop: threading.Event,
                 clock: Callable[[], datetime]) -> None:
        self.settings, self.outbox, self.redis, self.stop, self.clock = settings, outbox, redis_client, stop, clock
        self.thread = threading.Thread(target=self._run, name="oaksend-retention", daemon=True)

    def start(self) -> PeriodicPurge:
        self.thread.start()
        return self

    def run_once(self) -> int | None:
        """Purge if no other process did within the interval: the messages changed; None when another
        holds the turn."""
        interval_ms = int(self.settings.purge_interval_s * 1000)
        if not self.redis.set(self.settings.keys.purge_lock, "1", nx=True, px=interval_ms):
            return None
        days = self.settings.retention_days
        cutoff = self.clock() - timedelta(days=days)
        done = purge(self.outbox, cutoff, anonymize=self.settings.retention_anonymize, clock=self.clock,
                     actor="retention", command=f"purge --older-than {days:g}d (OAKSEND_RETENTION_DAYS)")
        if done.messages or done.recipients:
            log.info("retention: %s %d messages created before %s; deleted %d recipients of ended campaigns",
                     "anonymized" if self.settings.retention_anonymize else "deleted", done.messages,
                     cutoff.isoformat(), done.recipients)
        return done.messages

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self.run_once()
            except Exception as exc:  # noqa: BLE001 - an outage waits for the next turn
                log.warning("retention: purge failed (%s); next try in %.0fs", type(exc).__name__,
                            self.settings.purge_interval_s)
            self.stop.wait(min(self.settings.purge_interval_s, 60.0))
