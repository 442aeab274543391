"""operator audit: one row per operator command over a selection

Revision ID: 0007
Revises: 0004
Create Date: 2026-11-27 20:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'oaksend_operator_audit',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
        sa.Column('actor', sa.String(length=200), nullable=True),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('command', sa.String(length=200), nullable=False),
        sa.Column('selection', sa.JSON(), nullable=False),
        sa.Column('count', sa.Integer(), nullable=False),
        sa.Column('note', sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_oaksend_operator_audit')),
    )
    with op.batch_alter_table('oaksend_operator_audit', schema=None) as batch_op:
        batch_op.create_index('ix_oaksend_operator_audit_at', ['at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('oaksend_operator_audit', schema=None) as batch_op:
        batch_op.drop_index('ix_oaksend_operator_audit_at')
    op.drop_table('oaksend_operator_audit')
