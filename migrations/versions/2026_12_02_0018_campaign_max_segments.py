"""campaigns keep their --max-segments, so updates and cron ticks apply it too

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-02 10:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0018'
down_revision: str | None = '0017'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _schema() -> str | None:
    # ALTER TABLE is not rewritten by the engine's schema translate map (OAKSEND_DB_SCHEMA),
    # so name the schema that env.py configured.
    return op.get_context().version_table_schema


def upgrade() -> None:
    with op.batch_alter_table('oaksend_campaigns', schema=_schema()) as batch_op:
        batch_op.add_column(sa.Column('max_segments', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('oaksend_campaigns', schema=_schema()) as batch_op:
        batch_op.drop_column('max_segments')
