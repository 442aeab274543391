"""attempts carry the id of the request they record

Each request a worker makes carries an id of ours (sent as X-Request-ID), and
its attempt row stores it under a unique index: writing a group's answers
again after a database blip (the commit may have landed before the connection
dropped) can never add a second attempt row for one call.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 05:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0011'
down_revision: str | None = '0010'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _schema() -> str | None:
    # ALTER TABLE is not rewritten by the engine's schema translate map (OAKSEND_DB_SCHEMA),
    # so name the schema that env.py configured.
    return op.get_context().version_table_schema


def upgrade() -> None:
    with op.batch_alter_table('oaksend_attempts', schema=_schema()) as batch_op:
        batch_op.add_column(sa.Column('request_id', sa.String(length=32), nullable=True))
        batch_op.create_index('uq_oaksend_attempts_request', ['request_id'], unique=True)


def downgrade() -> None:
    with op.batch_alter_table('oaksend_attempts', schema=_schema()) as batch_op:
        batch_op.drop_index('uq_oaksend_attempts_request')
        batch_op.drop_column('request_id')
