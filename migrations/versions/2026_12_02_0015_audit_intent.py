"""operator audit: the intent is written before the command acts, and completed after

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-02 10:00:00

`state` ('started', then 'done' or 'failed'), `finished_at` and `result`. The rows
written before this revision were written after their work: 'done', finished when written.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0015'
down_revision: str | None = '0014'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _schema() -> str | None:
    # ALTER TABLE is not rewritten by the engine's schema translate map (OAKSEND_DB_SCHEMA),
    # so name the schema that env.py configured.
    return op.get_context().version_table_schema


def upgrade() -> None:
    with op.batch_alter_table('oaksend_operator_audit', schema=_schema()) as batch_op:
        batch_op.add_column(sa.Column('state', sa.String(length=16), server_default=sa.text("'done'"),
                                      nullable=False))
        batch_op.add_column(sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('result', sa.JSON(), nullable=True))
    audit = sa.table('oaksend_operator_audit', sa.column('at'), sa.column('finished_at'), schema=_schema())
    op.execute(audit.update().values(finished_at=audit.c.at))


def downgrade() -> None:
    with op.batch_alter_table('oaksend_operator_audit', schema=_schema()) as batch_op:
        batch_op.drop_column('result')
        batch_op.drop_column('finished_at')
        batch_op.drop_column('state')
