"""Apply Alembic migrations programmatically: what `oaksend migrate` runs.

oaksend keeps its revision in `oaksend_alembic_version`, so an application's own
`alembic_version` (at any revision of its own) is never read or changed.

Databases created by oaksend 0.1 hold unprefixed tables (`messages`, `attempts`,
...) and oaksend's revision in `alembic_version`. `upgrade` adopts them first:
it creates the prefixed tables, copies every row across in one transaction,
drops the old tables and removes oaksend's row from `alembic_version`, so
nothing is lost and the application's tables of the same names never are
touched unless they are unmistakably oaksend 0.1's.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, MetaData, Table, delete, func, insert, inspect, select

from oaksend import migrations
from oaksend.models.db import make_engine

log = logging.getLogger(__name__)

#: Where the migration scripts live inside the installed package.
SCRIPT_LOCATION = str(Path(migrations.__file__).parent)

#: oaksend 0.1's tables, parents first, with a column set that only they have.
_LEGACY_TABLES = ("chatbots", "messages", "suppressed_numbers", "attempts", "operator_actions")
_LEGACY_SIGNATURE = {
    "messages": {"serial_number", "to_phone", "lease_token", "next_attempt_at", "failures", "ambiguous"},
    "attempts": {"message_id", "classification", "data_status", "session_id", "worker"},
}
#: The revisions oaksend 0.1 wrote into the shared `alembic_version`.
_LEGACY_REVISIONS = {"0001", "0002"}


def alembic_config(database_url: str, schema: str | None = None) -> Config:
    """An Alembic Config for `database_url`, independent of the working directory."""
    cfg = Config()
    cfg.set_main_option("script_location", SCRIPT_LOCATION)
    cfg.attributes["url"] = database_url
    cfg.attributes["schema"] = schema
    return cfg


def upgrade(database_url: str, revision: str = "head", *, schema: str | None = None) -> None:
    """Bring the database to `revision`, adopting an oaksend 0.1 database first."""
    _adopt_legacy(database_url, schema)
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


def _legacy_revision(conn: Connection, schema: str | None) -> str | None:
    """oaksend 0.1's revision if this database (schema) is one of its, else None."""
    insp = inspect(conn)
    tables = set(insp.get_table_names(schema=schema))
    if "alembic_version" not in tables or not set(_LEGACY_TABLES) <= tables:
        return None
    if any(t.startswith("oaksend_") for t in tables):
        return None
    for table, needed in _LEGACY_SIGNATURE.items():
        columns = {c["name"] for c in insp.get_columns(table, schema=schema)}
        if not needed <= columns:
            return None
    version = Table("alembic_version", MetaData(schema=schema), autoload_with=conn)
    found = {row[0] for row in conn.execute(select(version.c.version_num))} & _LEGACY_REVISIONS
    return max(found) if found else None


def _adopt_legacy(database_url: str, schema: str | None) -> None:
    engine = make_engine(database_url, schema=schema)
    try:
        with engine.connect() as conn:
            revision = _legacy_revision(conn, schema)
            conn.rollback()
            if revision is None:
                return
            log.warning("adopting an oaksend 0.1 database (revision %s): moving its tables to oaksend_*", revision)
            with conn.begin():
                cfg = alembic_config(database_url, schema)
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, revision)
                meta = MetaData(schema=schema)
                old = {t: Table(t, meta, autoload_with=conn) for t in (*_LEGACY_TABLES, "alembic_version")}
                new = {t: Table("oaksend_" + t, meta, autoload_with=conn) for t in _LEGACY_TABLES}
                for table in _LEGACY_TABLES:
                    columns = [c.name for c in old[table].columns]
                    conn.execute(insert(new[table]).from_select(columns, select(*old[table].columns)))
                if conn.dialect.name == "postgresql":
                    for table in ("messages", "attempts", "operator_actions"):
                        qualified = f"{schema}.oaksend_{table}" if schema else f"oaksend_{table}"
                        top = select(func.coalesce(func.max(new[table].c.id), 0) + 1).scalar_subquery()
                        conn.execute(select(func.setval(func.pg_get_serial_sequence(qualified, "id"), top, False)))
                for table in reversed(_LEGACY_TABLES):
                    old[table].drop(conn)
                versions = old["alembic_version"]
                conn.execute(delete(versions).where(versions.c.version_num == revision))
                if conn.execute(select(func.count()).select_from(versions)).scalar() == 0:
                    versions.drop(conn)
    finally:
        engine.dispose()
