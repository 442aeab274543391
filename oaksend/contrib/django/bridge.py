"""Django's connection as the outbox's: a SQLAlchemy engine that borrows it and never ends its transaction.

SQLAlchemy runs the outbox's statements on the very DB-API connection Django holds for
this thread (`connections[alias].connection`), inside a savepoint of Django's transaction.
The engine's dialect is told never to commit, roll back or close that connection: Django
owns it, and `atomic()` decides. The dispatcher is woken by `transaction.on_commit`.
"""

from __future__ import annotations

import threading
from typing import Any

from django.conf import settings as django_settings
from django.db import connections, transaction
from sqlalchemy import create_engine
from sqlalchemy.engine import URL, Engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from oaksend.errors import ConfigError
from oaksend.models.db import translate_map
from oaksend.worker.enqueue import Producer, wake
from oaksend.worker.message.validation import SendRequest
from oaksend.worker.settings import Settings, load_settings

_DIALECTS = {"postgresql": "postgresql+psycopg", "sqlite": "sqlite"}
_lock = threading.Lock()
_bridges: dict[str, Bridge] = {}


def database_url(using: str = "default") -> str:
    """The SQLAlchemy URL of Django's database `using` (PostgreSQL with psycopg 3, or SQLite)."""
    conn = connections[using]
    db = conn.settings_dict
    driver = _DIALECTS.get(conn.vendor)
    if driver is None:
        raise ConfigError(f"DATABASES[{using!r}]: oaksend supports PostgreSQL and SQLite, not {conn.vendor}")
    if conn.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    url = URL.create(driver, username=db.get("USER") or None, password=db.get("PASSWORD") or None,
                     host=db.get("HOST") or None, port=int(db["PORT"]) if db.get("PORT") else None,
                     database=db.get("NAME") or None)
    return url.render_as_string(hide_password=False)


def settings_for(using: str = "default") -> Settings:
    """oaksend's settings: `settings.OAKSEND` over the environment, on Django's database `using`."""
    return load_settings(**_overrides(using))


def environment_for(using: str = "default") -> dict[str, str]:
    """The same settings as environment variables, for oaksend processes started from `manage.py`."""
    return {name: str(value) for name, value in _overrides(using).items()}


def _overrides(using: str) -> dict[str, Any]:
    given = dict(getattr(django_settings, "OAKSEND", {}) or {})
    given.setdefault("DATABASE_URL", database_url(using))
    return given


class Bridge:
    """A Producer whose writes go through Django's connection `using` (see the module's docstring)."""

    def __init__(self, using: str) -> None:
        self.using = using
        self.settings = settings_for(using)
        self.producer = Producer(self.settings)
        self.engine = _borrowing_engine(using, self.settings.db_schema)

    def send(self, serial_number: str, to: str, text: str, **options: Any) -> int:
        return self._in_django(lambda s: self.producer.send(serial_number, to, text, session=s, **options))

    def send_many(self, requests: list[SendRequest]) -> list[int]:
        return self._in_django(lambda s: self.producer.send_many(requests, session=s))

    def _in_django(self, write: Any) -> Any:
        connections[self.using].ensure_connection()
        with transaction.atomic(using=self.using), self.engine.connect() as conn, Session(bind=conn) as session:
            # atomic(): a transaction if none is open, else a savepoint of the caller's.
            result = write(session)
            session.flush()
        transaction.on_commit(lambda: wake(self.producer.redis, self.settings.keys), using=self.using)
        return result


def bridge(using: str = "default") -> Bridge:
    with _lock:
        found = _bridges.get(using)
        if found is None:
            found = _bridges[using] = Bridge(using)
        return found


def _borrowing_engine(using: str, schema: str | None) -> Engine:
    vendor = connections[using].vendor
    engine = create_engine(f"{_DIALECTS[vendor]}://", creator=lambda: connections[using].connection,
                           poolclass=NullPool, pool_reset_on_return=None, hide_parameters=True)
    # Django owns the connection and its transaction: never commit, roll back or close it here.
    for name in ("do_commit", "do_rollback", "do_close"):
        setattr(engine.dialect, name, _leave_it)
    if schema:
        engine = engine.execution_options(schema_translate_map=translate_map(schema))
    return engine


def _leave_it(_dbapi_connection: Any) -> None:
    """Django's transaction and connection are Django's."""
