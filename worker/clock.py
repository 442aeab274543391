"""The one place that reads the wall clock; everything else is handed `now`.

`utcnow` is this host's clock. `DatabaseClock` is the database's: the times a worker or
the dispatcher writes for another host to compare (claims, call marks, leases, retry
times, attempts' start) come from it, so a host whose clock is a minute off neither looks
dead nor makes its retries wait a minute longer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

log = logging.getLogger(__name__)

#: How often a DatabaseClock measures its offset again.
SYNC_EVERY_S = 30.0
#: After a failed measurement (the database away), try again this soon; the old offset holds meanwhile.
RETRY_SYNC_S = 2.0


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class DatabaseClock:
    """Now on the database's clock: this host's clock plus an offset measured against the database.

    `read_database_now` returns the database's time (PostgreSQL: `clock_timestamp()`), or None
    when the database is on this host (SQLite): the offset is then zero. The offset is measured
    again every SYNC_EVERY_S, halfway through the round trip, so that reading the clock costs
    nothing on the send path.
    """

    def __init__(self, read_database_now: Callable[[], datetime | None], *, every_s: float = SYNC_EVERY_S,
                 wall: Callable[[], datetime] = utcnow, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._read = read_database_now
        self._every_s = every_s
        self._wall = wall
        self._monotonic = monotonic
        self._offset = timedelta(0)
        self._next = float("-inf")
        self._lock = threading.Lock()

    @property
    def offset(self) -> timedelta:
        """The database's clock minus this host's, as last measured."""
        return self._offset

    def __call__(self) -> datetime:
        if self._monotonic() >= self._next:
            self.sync()
        return self._wall() + self._offset

    def sync(self) -> None:
        """Measure the offset now (one query); on failure keep the last one and try again soon."""
        if not self._lock.acquire(blocking=False):
            return  # another thread is measuring: the current offset serves meanwhile
        try:
            before = self._wall()
            try:
                theirs = self._read()
            except Exception as exc:  # noqa: BLE001 - the database away: keep the offset, the writes will fail anyway
                log.debug("database clock: could not read it (%s)", type(exc).__name__)
                self._next = self._monotonic() + RETRY_SYNC_S
                return
            after = self._wall()
            offset = timedelta(0) if theirs is None else theirs - (before + (after - before) / 2)
            if abs(offset - self._offset) > timedelta(seconds=1):
                log.info("database clock: this host is %.3fs %s the database's", abs(offset.total_seconds()),
                         "behind" if offset > timedelta(0) else "ahead of")
            self._offset = offset
            self._next = self._monotonic() + self._every_s
        finally:
            self._lock.release()
