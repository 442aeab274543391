"""What every part of the repository shares: the engine, sessions, the schema map."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, Engine, Result
from sqlalchemy.orm import Session, sessionmaker

from oaksend.models.db import schema_of, translate_map
from oaksend.models.tables import Chatbot


class Repository:
    """The outbox repository's common part, handed its engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        #: For statements run on a caller's Session (transactional outbox), whose engine is theirs.
        self.schema = schema_of(engine)
        self._foreign_options = {"schema_translate_map": translate_map(self.schema)} if self.schema else {}

    # Here, not in OperatorRepository: the send path pauses a chatbot too (SendRepository.record).
    def _pause(self, s: Session, serial_number: str, until: datetime, reason: str | None, now: datetime) -> None:
        row = s.get(Chatbot, serial_number, with_for_update=True)
        if row is None:
            s.add(Chatbot(serial_number=serial_number, paused_until=until, pause_reason=reason, updated_at=now))
        elif row.paused_until is None or row.paused_until < until:
            row.paused_until, row.pause_reason, row.updated_at = until, reason, now

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed on success, rolled back on error."""
        with self._sessions.begin() as session:
            yield session


def rowcount(result: Result[Any]) -> int:
    """The rows an INSERT, UPDATE or DELETE run through a Session matched.

    The result is a CursorResult, which has the count; Session.execute types every result as a plain Result.
    """
    return cast("CursorResult[Any]", result).rowcount


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]

