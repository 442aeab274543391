"""Apply Alembic migrations programmatically: what `oaksend migrate` runs.

oaksend keeps its revision in `oaksend_alembic_version`, so an application's own
`alembic_version` (at any revision of its own) is never read or changed. A
database created by oaksend 0.1 is adopted first (oaksend.migrations.legacy).
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config

from oaksend import migrations
from oaksend.migrations.legacy import adopt_legacy
from oaksend.models.db import make_engine

log = logging.getLogger(__name__)

#: Where the migration scripts live inside the installed package.
SCRIPT_LOCATION = str(Path(migrations.__file__).parent)


def alembic_config(database_url: str, schema: str | None = None) -> Config:
    """An Alembic Config for `database_url`, independent of the working directory."""
    cfg = Config()
    cfg.set_main_option("script_location", SCRIPT_LOCATION)
    cfg.attributes["url"] = database_url
    cfg.attributes["schema"] = schema
    return cfg


def upgrade(database_url: str, revision: str = "head", *, schema: str | None = None) -> None:
    """Bring the database to `revision`, adopting an oaksend 0.1 database first."""
    adopt_legacy(database_url, schema, alembic_config)
    command.upgrade(alembic_config(database_url, schema), revision)


def downgrade(database_url: str, revision: str, *, schema: str | None = None) -> None:
    command.downgrade(alembic_config(database_url, schema), revision)


def current(database_url: str, *, schema: str | None = None) -> str | None:
    """oaksend's current revision in this database (None: not migrated)."""
    from alembic.runtime.migration import MigrationContext

    from oaksend.models.tables import VERSION_TABLE

    engine = make_engine(database_url, schema=schema)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE,
                                                         "version_table_schema": schema})
            return ctx.get_current_revision()
    finally:
        engine.dispose()


