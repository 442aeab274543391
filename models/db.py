"""Engines for the outbox: PostgreSQL in production, SQLite for trying it out."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import ArgumentError, DBAPIError, InterfaceError, OperationalError

from oaksend.errors import ConfigError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine


def make_engine(url: str, *, schema: str | None = None, connect_timeout_s: float | None = None,
                statement_timeout_s: float | None = None, **kwargs: Any) -> Engine:
    """Create an engine with the settings each backend needs for a shared outbox.

    `schema` (PostgreSQL only) puts oaksend's tables in a schema of their own:
    every statement is compiled with a schema translate map, so the models
    and migrations stay schema-free.

    SQLite: WAL (readers do not block the writer), a long busy timeout and
    `BEGIN IMMEDIATE`, so that several worker processes queue for the write lock
    instead of failing with "database is locked" on a read-to-write upgrade.
    PostgreSQL: a pool sized for a threaded worker; `connect_timeout_s` and `statement_timeout_s`
    bound a connection attempt and each statement (the send path's engines: a database that
    stalls without an error must not hold a worker's outcomes past its call lease).
    """
    if url.startswith(("postgresql", "postgres")) and (connect_timeout_s or statement_timeout_s):
        connect_args = dict(kwargs.pop("connect_args", {}))
        if connect_timeout_s:
            connect_args["connect_timeout"] = max(1, round(connect_timeout_s))
        if statement_timeout_s:
            connect_args["options"] = f"-c statement_timeout={round(statement_timeout_s * 1000)}"
        kwargs["connect_args"] = connect_args
    try:
        return _make_engine(url, schema=schema, **kwargs)
    except (ArgumentError, ValueError) as exc:
        # One line naming the setting; never the URL's password (it may be in the message).
        raise ConfigError(f"DATABASE_URL: {_without_password(str(exc), url)}") from None


def _without_password(text: str, url: str) -> str:
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    if password:
        text = text.replace(password, "***")
    return " ".join(text.split())


def _make_engine(url: str, *, schema: str | None = None, **kwargs: Any) -> Engine:
    # Errors must not carry phone numbers or texts into logs and tracebacks.
    kwargs.setdefault("hide_parameters", True)
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite"):
        if schema:
            raise ConfigError("OAKSEND_DB_SCHEMA: is for PostgreSQL; SQLite has no schemas")
        engine = create_engine(url, connect_args={"timeout": 60}, **kwargs)
        _tune_sqlite(engine)
        return engine
    # No pre-ping: it doubles the round trips of every transaction. A connection killed
    # during an outage fails once with a disconnect error, which invalidates the pool,
    # and every caller retries (the worker's record loop, the dispatcher's pass, leases).
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    engine = create_engine(url, **kwargs)
    if schema:
        engine = engine.execution_options(schema_translate_map=translate_map(schema))
    return engine


def make_async_engine(url: str, *, schema: str | None = None, **kwargs: Any) -> AsyncEngine:
    """The async engine of the same database: psycopg 3's async connections on PostgreSQL,
    aiosqlite on SQLite (tuned like `make_engine`'s), the same schema map."""
    from sqlalchemy.ext.asyncio import create_async_engine

    kwargs.setdefault("hide_parameters", True)
    for sync_prefix, async_prefix in (("postgresql://", "postgresql+psycopg://"), ("postgres://", "postgresql+psycopg://"),
                                      ("sqlite://", "sqlite+aiosqlite://"), ("sqlite+pysqlite://", "sqlite+aiosqlite://")):
        if url.startswith(sync_prefix):
            url = async_prefix + url.removeprefix(sync_prefix)
    try:
        if url.startswith("sqlite"):
            if schema:
                raise ConfigError("OAKSEND_DB_SCHEMA: is for PostgreSQL; SQLite has no schemas")
            engine = create_async_engine(url, connect_args={"timeout": 60}, **kwargs)
            _tune_sqlite(engine.sync_engine)
            return engine
        engine = create_async_engine(url, **kwargs)
    except (ArgumentError, ValueError, ImportError) as exc:
        raise ConfigError(f"DATABASE_URL: {_without_password(str(exc), url)}") from None
    return engine.execution_options(schema_translate_map=translate_map(schema)) if schema else engine


def translate_map(schema: str | None) -> dict[str | None, str] | None:
    """The schema translate map that puts oaksend's schema-free tables into `schema`."""
    return {None: schema} if schema else None


def schema_of(bind: Any) -> str | None:
    """The schema an engine (or connection) was made for by `make_engine`, if any."""
    options = bind.get_execution_options() if hasattr(bind, "get_execution_options") else {}
    return (options.get("schema_translate_map") or {}).get(None)


def _tune_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide where transactions begin.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def is_outage(exc: BaseException) -> bool:
    """Connection-class database errors: the database is away, the write may succeed later.

    Anything else (a constraint, a value the column refuses) would fail the same way
    again: it is not retried as an outage.
    """
    if isinstance(exc, (OperationalError, InterfaceError)):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)
