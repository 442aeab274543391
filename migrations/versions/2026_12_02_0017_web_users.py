"""dashboard users: a name, an argon2 hash and a role (read, operator, admin) for `oaksend web`

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-02 09:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0017'
down_revision: str | None = '0016'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'oaksend_web_users',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
        sa.Column('name', sa.String(length=200), nullable=False),
        sa.Column('password_hash', sa.String(length=255), nullable=False),
        sa.Column('role', sa.String(length=16), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("role IN ('read', 'operator', 'admin')", name=op.f('ck_oaksend_web_users_role')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_oaksend_web_users')),
        sa.UniqueConstraint('name', name=op.f('uq_oaksend_web_users_name')),
    )


def downgrade() -> None:
    op.drop_table('oaksend_web_users')
