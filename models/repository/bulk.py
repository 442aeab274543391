"""Bulk loading in a transaction, with the database's work overlapping the caller's.

A campaign of 100,000 recipients is two COPYs of 100,000 rows. PostgreSQL takes
about 2.5 s of its own to store them (heap, nine indexes, WAL, foreign-key
checks), and the command about as long again to build them. Done one after the
other, that is the sum; `BulkWriter` makes it closer to the larger of the two:
a thread of its own owns the transaction's connection and runs the writes in
the order they were given (each batch one COPY), while the caller builds the
next batch. Its queue is bounded, so memory is too.

Anything that must read inside the same transaction in between (the frequency
cap's look-ups) goes through `call`, in order with the writes.

Not PostgreSQL (SQLite): each batch is a plain INSERT on the caller's thread.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

from sqlalchemy import Table
from sqlalchemy.orm import Session

T = TypeVar("T")
#: Batches waiting for the writer at most: the caller blocks when the database falls this far behind.
MAX_PENDING = 4
_STOP = object()


class BulkWriter:
    """Write batches of rows (dicts keyed by column) in `session`'s transaction, in order.

    Use as a context manager: leaving it waits for every write and re-raises the
    first error; after an error nothing more is written (the caller rolls back).
    """

    def __init__(self, session: Session, schema: str | None = None, max_pending: int = MAX_PENDING) -> None:
        self.session = session
        self.schema = schema
        self._pg = session.get_bind().dialect.name == "postgresql"
        self._error: BaseException | None = None
        self._abandoned = False
        self._thread: threading.Thread | None = None
        if self._pg:
            self._raw: Any = session.connection().connection.driver_connection  # psycopg's, never None while open
            self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_pending)
            self._thread = threading.Thread(target=self._run, name="oaksend-bulk-writer", daemon=True)
            self._thread.start()

    # -- the caller's side ----------------------------------------------------------------
    def copy(self, table: Table, rows: Sequence[dict[str, Any]], json_columns: tuple[str, ...] = ()) -> None:
        """Append rows to `table` (COPY on PostgreSQL). All rows have the same keys."""
        if not rows:
            return
        if not self._pg:
            self.session.execute(table.insert(), list(rows))
            return
        self._put(("copy", table, rows, json_columns))

    def copy_lines(self, table: Table, columns: Sequence[str], lines: Sequence[str]) -> None:
        """Append rows already in COPY text format (one line each, in `columns` order). PostgreSQL only."""
        if not lines:
            return
        if not self._pg:
            raise NotImplementedError("COPY text rows need PostgreSQL; give dict rows to copy()")
        self._put(("lines", table, columns, lines))

    def call(self, fn: Callable[[Session], T]) -> T:
        """Run fn(session) in order with the writes (after every batch given so far); its result."""
        if not self._pg:
            return fn(self.session)
        done: Future[T] = Future()
        self._put(("call", fn, done))
        return done.result()

    def close(self) -> None:
        """Wait for every write; raise the first error."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None
        if self._error is not None:
            raise self._error

    def __enter__(self) -> BulkWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc is None:
            self.close()
            return
        self._abandoned = True  # what is still queued is not written
        # Already failing: the caller's error wins; the transaction is rolled back by the caller.
        with contextlib.suppress(BaseException):
            self.close()

    def _put(self, item: tuple[Any, ...]) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(item)

    # -- the writer thread ----------------------------------------------------------------
    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if self._error is not None or self._abandoned:
                if item[0] == "call":
                    item[2].set_exception(self._error or RuntimeError("the bulk writer was abandoned"))
                continue  # drain: nothing more is written after an error
            try:
                if item[0] == "copy":
                    self._copy(*item[1:])
                elif item[0] == "lines":
                    self._copy_lines(*item[1:])
                else:
                    item[2].set_result(item[1](self.session))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                self._error = exc
                if item[0] == "call":
                    item[2].set_exception(exc)

    def _statement(self, table: Table, columns: Sequence[str]) -> Any:
        from psycopg import sql

        name = sql.Identifier(self.schema, table.name) if self.schema else sql.Identifier(table.name)
        return sql.SQL("COPY {} ({}) FROM STDIN").format(name, sql.SQL(", ").join(map(sql.Identifier, columns)))

    def _copy_lines(self, table: Table, columns: Sequence[str], lines: Sequence[str]) -> None:
        with self._raw.cursor() as cursor, cursor.copy(self._statement(table, columns)) as copy:
            copy.write("".join(lines))

    def _copy(self, table: Table, rows: Sequence[dict[str, Any]], json_columns: tuple[str, ...]) -> None:
        columns = list(rows[0])
        statement = self._statement(table, columns)
        dumps = json.dumps
        at = [i for i, c in enumerate(columns) if c in json_columns]
        with self._raw.cursor() as cursor, cursor.copy(statement) as copy:
            write = copy.write_row
            for row in rows:
                values = list(row.values())
                for i in at:
                    if values[i] is not None:
                        values[i] = dumps(values[i])
                write(values)


__all__ = ["BulkWriter"]
