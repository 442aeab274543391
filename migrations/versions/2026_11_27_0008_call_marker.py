"""send path: who holds a sending row, whether its call may have left, lost claims

Revision ID: 0008
Revises: 0004
Create Date: 2026-11-27 20:05:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _schema() -> str | None:
    # ALTER TABLE ... ADD/DROP COLUMN is not rewritten by the engine's schema translate map
    # (OAKSEND_DB_SCHEMA), so name the schema that env.py configured.
    return op.get_context().version_table_schema


def upgrade() -> None:
    with op.batch_alter_table('oaksend_messages', schema=_schema()) as batch_op:
        batch_op.add_column(sa.Column('claimed_by', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('calling_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('lost', sa.Integer(), server_default=sa.text('0'), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('oaksend_messages', schema=_schema()) as batch_op:
        batch_op.drop_column('lost')
        batch_op.drop_column('calling_at')
        batch_op.drop_column('claimed_by')
