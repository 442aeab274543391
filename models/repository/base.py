"""What every part of the repository shares: the engine, sessions, the schema map."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from oaksend.models.db import schema_of, translate_map


class Repository:
    """The outbox repository's common part, handed its engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        #: For statements run on a caller's Session (transactional outbox), whose engine is theirs.
        self.schema = schema_of(engine)
        self._foreign_options = {"schema_translate_map": translate_map(self.schema)} if self.schema else {}

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed on success, rolled back on error."""
        with self._sessions.begin() as session:
            yield session


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]

