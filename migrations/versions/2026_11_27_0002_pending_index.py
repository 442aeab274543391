"""partial index of pending messages per chatbot

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 12:53:44.943748
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('oaksend_messages', schema=None) as batch_op:
        batch_op.create_index('ix_oaksend_messages_pending', ['serial_number', 'next_attempt_at'], unique=False, postgresql_where=sa.text("state = 'pending'"), sqlite_where=sa.text("state = 'pending'"))



def downgrade() -> None:
    with op.batch_alter_table('oaksend_messages', schema=None) as batch_op:
        batch_op.drop_index('ix_oaksend_messages_pending', postgresql_where=sa.text("state = 'pending'"), sqlite_where=sa.text("state = 'pending'"))

