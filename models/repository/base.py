"""What every part of the repository shares: the engine, sessions, the schema map."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, CursorResult, Engine, Result, Table, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from oaksend.models.db import schema_of, translate_map
from oaksend.models.tables import Chatbot

_chatbots = Chatbot.__table__


class Repository:
    """The outbox repository's common part, handed its engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        #: For statements run on a caller's Session (transactional outbox), whose engine is theirs.
        self.schema = schema_of(engine)
        self._foreign_options = {"schema_translate_map": translate_map(self.schema)} if self.schema else {}

    # Here, not in OperatorRepository: the send path pauses a chatbot too (SendRepository.record_group).
    @staticmethod
    def _pause(s: Session | Connection, serial_number: str, until: datetime, reason: str | None,
               now: datetime) -> None:
        """Pause a chatbot until `until` unless it is already paused longer: one upsert, so two groups
        that meet the same chatbot's first 429 at once never collide on its row."""
        stmt = dialect_insert(s, _chatbots).values(serial_number=serial_number, paused_until=until,
                                                  pause_reason=reason, updated_at=now)
        s.execute(stmt.on_conflict_do_update(
            index_elements=[_chatbots.c.serial_number],
            set_={"paused_until": stmt.excluded.paused_until, "pause_reason": stmt.excluded.pause_reason,
                  "updated_at": stmt.excluded.updated_at},
            where=_chatbots.c.paused_until.is_(None) | (_chatbots.c.paused_until < stmt.excluded.paused_until),
        ))

    def database_now(self) -> datetime | None:
        """The database's clock (PostgreSQL's `clock_timestamp()`), or None for SQLite, a file on this host."""
        if self.engine.dialect.name != "postgresql":
            return None
        with self.engine.connect() as conn:
            value = conn.scalar(text("SELECT clock_timestamp()"))
        return value if isinstance(value, datetime) else None

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


def dialect_insert(bind: Session | Connection, table: Table) -> Any:
    """An INSERT with the dialect's ON CONFLICT clauses (PostgreSQL and SQLite have the same ones)."""
    dialect = (bind.get_bind() if isinstance(bind, Session) else bind).dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"oaksend needs PostgreSQL or SQLite, not {dialect}")  # pragma: no cover


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]

