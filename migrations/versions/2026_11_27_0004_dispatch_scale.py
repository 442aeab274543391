"""message priorities; a ready flag and partial indexes that scale with chatbots

Revision ID: 0004
Revises: 0005
Create Date: 2026-11-27 20:00:00

The dispatcher used to walk every chatbot with pending messages on each pass.
Now due messages carry `ready`, and the hot indexes are partial, so a pass
costs one probe per chatbot with DUE work and a state change writes few index
entries. Existing pending messages start not ready: the first pass stages
those that are due.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PENDING = "state = 'pending'"
WAITING = "state = 'pending' AND NOT ready"
READY = "state = 'pending' AND ready"
LEASED = "state IN ('dispatched', 'sending')"


def _schema() -> str | None:
    # ALTER TABLE is not rewritten by the engine's schema translate map (OAKSEND_DB_SCHEMA),
    # so name the schema that env.py configured.
    return op.get_context().version_table_schema


def _where(predicate: str) -> dict[str, object]:
    return {"postgresql_where": sa.text(predicate), "sqlite_where": sa.text(predicate)}


def upgrade() -> None:
    with op.batch_alter_table('oaksend_messages', schema=_schema()) as batch_op:
        batch_op.add_column(sa.Column('priority', sa.SmallInteger(), server_default=sa.text('1'), nullable=False))
        batch_op.add_column(sa.Column('ready', sa.Boolean(), server_default=sa.false(), nullable=False))
        batch_op.create_check_constraint('priority', 'priority IN (0, 1, 2)')
        # Replaced by the partial indexes below (nothing queries them any more).
        batch_op.drop_index('ix_oaksend_messages_due')
        batch_op.drop_index('ix_oaksend_messages_chatbot_due')
        batch_op.drop_index('ix_oaksend_messages_lease')
        batch_op.drop_index('ix_oaksend_messages_deadline')
        batch_op.drop_index('ix_oaksend_messages_pending', **_where(PENDING))
        batch_op.create_index('ix_oaksend_messages_waiting', ['next_attempt_at'], unique=False, **_where(WAITING))
        batch_op.create_index('ix_oaksend_messages_ready', ['serial_number', 'priority', 'next_attempt_at', 'id'],
                              unique=False, **_where(READY))
        batch_op.create_index('ix_oaksend_messages_leased', ['state', 'lease_until', 'serial_number'], unique=False,
                              **_where(LEASED))
        batch_op.create_index('ix_oaksend_messages_deadline', ['deadline_at'], unique=False, **_where(PENDING))


def downgrade() -> None:
    with op.batch_alter_table('oaksend_messages', schema=_schema()) as batch_op:
        batch_op.drop_index('ix_oaksend_messages_deadline', **_where(PENDING))
        batch_op.drop_index('ix_oaksend_messages_leased', **_where(LEASED))
        batch_op.drop_index('ix_oaksend_messages_ready', **_where(READY))
        batch_op.drop_index('ix_oaksend_messages_waiting', **_where(WAITING))
        batch_op.create_index('ix_oaksend_messages_pending', ['serial_number', 'next_attempt_at'], unique=False,
                              **_where(PENDING))
        batch_op.create_index('ix_oaksend_messages_deadline', ['state', 'deadline_at'], unique=False)
        batch_op.create_index('ix_oaksend_messages_lease', ['state', 'lease_until'], unique=False)
        batch_op.create_index('ix_oaksend_messages_chatbot_due', ['serial_number', 'state', 'next_attempt_at'],
                              unique=False)
        batch_op.create_index('ix_oaksend_messages_due', ['state', 'next_attempt_at'], unique=False)
        batch_op.drop_constraint(op.f('ck_oaksend_messages_priority'), type_='check')
        batch_op.drop_column('ready')
        batch_op.drop_column('priority')
