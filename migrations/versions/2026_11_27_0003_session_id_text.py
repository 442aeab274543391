"""SessionIDs that are not 64-bit integers kept as text; the attempt's anomalies

Revision ID: 0003
Revises: 0006
Create Date: 2026-11-27 20:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _schema() -> str | None:
    # ALTER TABLE ... ADD/DROP COLUMN is not rewritten by the engine's schema translate map
    # (OAKSEND_DB_SCHEMA), so name the schema that env.py configured.
    return op.get_context().version_table_schema


def upgrade() -> None:
    with op.batch_alter_table('oaksend_attempts', schema=_schema()) as batch_op:
        batch_op.add_column(sa.Column('session_id_text', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('anomalies', sa.Text(), nullable=True))
    with op.batch_alter_table('oaksend_messages', schema=_schema()) as batch_op:
        batch_op.add_column(sa.Column('session_id_text', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('oaksend_messages', schema=_schema()) as batch_op:
        batch_op.drop_column('session_id_text')
    with op.batch_alter_table('oaksend_attempts', schema=_schema()) as batch_op:
        batch_op.drop_column('anomalies')
        batch_op.drop_column('session_id_text')
