"""Alembic environment: runs migrations against DATABASE_URL (or the URL handed in)."""

from __future__ import annotations

import logging.config
from typing import Any

from alembic import context
from sqlalchemy import DateTime

from models.db import make_engine
from models.tables import Base, UTCDateTime

config = context.config
if config.config_file_name is not None and not config.attributes.get("skip_logging"):
    logging.config.fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> str:
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    if url:
        return str(url)
    from worker.settings import load_settings

    return load_settings().database_url


def _render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    # Migrations spell the portable column type, not our Python-side decorator.
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _compare_type(ctx: Any, inspected: Any, metadata_column: Any, inspected_type: Any, metadata_type: Any) -> bool | None:
    if isinstance(metadata_type, UTCDateTime):
        return not isinstance(inspected_type, DateTime)
    return None


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=Base.metadata, literal_binds=True,
                      render_item=_render_item, compare_type=_compare_type)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connectable = config.attributes.get("connection")
    if connectable is not None:
        _run(connectable)
        return
    engine = make_engine(_url())
    try:
        with engine.connect() as connection:
            _run(connection)
    finally:
        engine.dispose()


def _run(connection: Any) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_item=_render_item,
        compare_type=_compare_type,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
