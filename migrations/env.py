"""Alembic environment: runs oaksend's migrations against DATABASE_URL (or the URL handed in).

oaksend lives in the application's database: its version table is
`oaksend_alembic_version` (never the application's `alembic_version`), and with
OAKSEND_DB_SCHEMA every table goes into that PostgreSQL schema.
"""

from __future__ import annotations

import logging.config
from importlib import import_module
from typing import Any

from alembic import context
from sqlalchemy.schema import CreateSchema

from oaksend.migrations.hooks import compare_type, include_object, render_item
from oaksend.models.db import make_engine, schema_of
from oaksend.models.tables import VERSION_TABLE, Base

# The HTTP API's tables live in their own module, on the same Base: load them so they are compared too.
import_module("oaksend.models.api_tables")

config = context.config
if config.config_file_name is not None and not config.attributes.get("skip_logging"):
    logging.config.fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> str:
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    if url:
        return str(url)
    from oaksend.worker.settings import load_settings

    return load_settings().database_url


def _schema() -> str | None:
    if "schema" in config.attributes:
        return config.attributes["schema"]
    from oaksend.worker.settings import load_settings

    return load_settings().db_schema if not config.attributes.get("url") else None


def _options(schema: str | None) -> dict[str, Any]:
    return {
        "target_metadata": Base.metadata,
        "render_item": render_item,
        "compare_type": compare_type,
        "include_object": include_object,
        "version_table": VERSION_TABLE,
        "version_table_schema": schema,
    }


def run_migrations_offline() -> None:
    context.configure(url=_url(), literal_binds=True, **_options(_schema()))
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connectable = config.attributes.get("connection")
    if connectable is not None:
        _run(connectable, schema_of(connectable))
        return
    schema = _schema()
    engine = make_engine(_url(), schema=schema)
    try:
        with engine.connect() as connection:
            if connection.dialect.name == "sqlite":
                # Batch migrations rebuild a SQLite table (copy, drop, rename). With foreign keys
                # enforced, dropping oaksend_messages would cascade-delete every attempt and
                # operator action: enforcement is off for this connection, which is disposed after.
                # On the DBAPI connection, before any transaction begins (the PRAGMA is a no-op inside one).
                driver: Any = connection.connection.driver_connection  # sqlite3's, never None while open
                driver.execute("PRAGMA foreign_keys=OFF")
            if schema:
                connection.execute(CreateSchema(schema, if_not_exists=True))
                connection.commit()
            _run(connection, schema)
    finally:
        engine.dispose()


def _run(connection: Any, schema: str | None) -> None:
    context.configure(
        connection=connection,
        render_as_batch=connection.dialect.name == "sqlite",
        **_options(schema),
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
