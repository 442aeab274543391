"""Adopting an oaksend 0.1 database: its unprefixed tables become oaksend_* ones, nothing lost.

Databases created by oaksend 0.1 hold unprefixed tables (`messages`, `attempts`,
...) and oaksend's revision in `alembic_version`. `adopt_legacy` (run first by
`upgrade`) creates the prefixed tables, copies every row across in one transaction,
drops the old tables and removes oaksend's row from `alembic_version`, so nothing
is lost and the application's tables of the same names are never touched unless
they are unmistakably oaksend 0.1's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, MetaData, Table, delete, func, insert, inspect, select

from oaksend.models.db import make_engine

__all__ = ["adopt_legacy"]

log = logging.getLogger(__name__)

#: oaksend 0.1's tables, parents first, with a column set that only they have.
_LEGACY_TABLES = ("chatbots", "messages", "suppressed_numbers", "attempts", "operator_actions")
_LEGACY_SIGNATURE = {
    "messages": {"serial_number", "to_phone", "lease_token", "next_attempt_at", "failures", "ambiguous"},
    "attempts": {"message_id", "classification", "data_status", "session_id", "worker"},
}
#: The revisions oaksend 0.1 wrote into the shared `alembic_version`.
_LEGACY_REVISIONS = {"0001", "0002"}


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


def adopt_legacy(database_url: str, schema: str | None, config_for: Callable[[str, str | None], Config]) -> None:
    """Adopt the database if it is oaksend 0.1's; otherwise do nothing. `config_for` builds the Alembic
    config (oaksend.migrations.runner.alembic_config) that brings 0.1's tables to its last revision."""
    engine = make_engine(database_url, schema=schema)
    try:
        with engine.connect() as conn:
            revision = _legacy_revision(conn, schema)
            conn.rollback()
            if revision is None:
                return
            log.warning("adopting an oaksend 0.1 database (revision %s): moving its tables to oaksend_*", revision)
            with conn.begin():
                cfg = config_for(database_url, schema)
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
