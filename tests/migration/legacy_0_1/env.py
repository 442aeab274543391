"""A minimal Alembic environment for oaksend 0.1's migrations (test data, copied from git history).

oaksend 0.1 kept its tables unprefixed and its revision in the default `alembic_version`;
the scripts in versions/ are 0.1's own (`git show 3bdd161:migrations/versions/...`).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

url = context.config.attributes["url"]
engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
try:
    with engine.connect() as connection:
        context.configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
        with context.begin_transaction():
            context.run_migrations()
finally:
    engine.dispose()
