"""outbox: messages, attempts, chatbots, operator actions

Revision ID: 0001
Revises:
Create Date: 2026-11-27 12:43:16.170449
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('oaksend_chatbots',
    sa.Column('serial_number', sa.String(length=64), nullable=False),
    sa.Column('rate_per_s', sa.Float(), nullable=True),
    sa.Column('burst', sa.Integer(), nullable=True),
    sa.Column('segments_per_s', sa.Float(), nullable=True),
    sa.Column('paused_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('pause_reason', sa.Text(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('serial_number', name=op.f('pk_oaksend_chatbots'))
    )
    op.create_table('oaksend_messages',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('serial_number', sa.String(length=64), nullable=False),
    sa.Column('to_phone', sa.String(length=16), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('segments', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('failures', sa.Integer(), nullable=False),
    sa.Column('ambiguous', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('deadline_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('lease_token', sa.String(length=36), nullable=True),
    sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('idempotency_key', sa.String(length=255), nullable=True),
    sa.Column('last_outcome', sa.String(length=32), nullable=True),
    sa.Column('last_reason', sa.Text(), nullable=True),
    sa.Column('session_id', sa.BigInteger(), nullable=True),
    sa.Column('metadata', sa.JSON(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("state IN ('pending', 'dispatched', 'sending', 'sent', 'failed', 'unknown', 'expired', 'cancelled')", name=op.f('ck_oaksend_messages_state')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_oaksend_messages')),
    sa.UniqueConstraint('idempotency_key', name=op.f('uq_oaksend_messages_idempotency_key'))
    )
    with op.batch_alter_table('oaksend_messages', schema=None) as batch_op:
        batch_op.create_index('ix_oaksend_messages_chatbot_due', ['serial_number', 'state', 'next_attempt_at'], unique=False)
        batch_op.create_index('ix_oaksend_messages_created', ['created_at'], unique=False)
        batch_op.create_index('ix_oaksend_messages_deadline', ['state', 'deadline_at'], unique=False)
        batch_op.create_index('ix_oaksend_messages_due', ['state', 'next_attempt_at'], unique=False)
        batch_op.create_index('ix_oaksend_messages_lease', ['state', 'lease_until'], unique=False)
        batch_op.create_index('ix_oaksend_messages_phone', ['to_phone', 'state'], unique=False)

    op.create_table('oaksend_suppressed_numbers',
    sa.Column('to_phone', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.String(length=64), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('to_phone', name=op.f('pk_oaksend_suppressed_numbers'))
    )
    op.create_table('oaksend_attempts',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('message_id', sa.BigInteger(), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('latency_ms', sa.Float(), nullable=True),
    sa.Column('http_status', sa.Integer(), nullable=True),
    sa.Column('success', sa.Boolean(), nullable=True),
    sa.Column('code', sa.Integer(), nullable=True),
    sa.Column('message', sa.Text(), nullable=True),
    sa.Column('data_status', sa.String(length=64), nullable=True),
    sa.Column('data_message', sa.Text(), nullable=True),
    sa.Column('session_id', sa.BigInteger(), nullable=True),
    sa.Column('classification', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('worker', sa.String(length=200), nullable=True),
    sa.ForeignKeyConstraint(['message_id'], ['oaksend_messages.id'], name=op.f('fk_oaksend_attempts_message_id_oaksend_messages'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_oaksend_attempts'))
    )
    with op.batch_alter_table('oaksend_attempts', schema=None) as batch_op:
        batch_op.create_index('ix_oaksend_attempts_message', ['message_id', 'number'], unique=False)

    op.create_table('oaksend_operator_actions',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('message_id', sa.BigInteger(), nullable=False),
    sa.Column('action', sa.String(length=32), nullable=False),
    sa.Column('from_state', sa.String(length=16), nullable=False),
    sa.Column('actor', sa.String(length=200), nullable=True),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('note', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['message_id'], ['oaksend_messages.id'], name=op.f('fk_oaksend_operator_actions_message_id_oaksend_messages'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_oaksend_operator_actions'))
    )
    with op.batch_alter_table('oaksend_operator_actions', schema=None) as batch_op:
        batch_op.create_index('ix_oaksend_operator_actions_message', ['message_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('oaksend_operator_actions', schema=None) as batch_op:
        batch_op.drop_index('ix_oaksend_operator_actions_message')

    op.drop_table('oaksend_operator_actions')
    with op.batch_alter_table('oaksend_attempts', schema=None) as batch_op:
        batch_op.drop_index('ix_oaksend_attempts_message')

    op.drop_table('oaksend_attempts')
    op.drop_table('oaksend_suppressed_numbers')
    with op.batch_alter_table('oaksend_messages', schema=None) as batch_op:
        batch_op.drop_index('ix_oaksend_messages_phone')
        batch_op.drop_index('ix_oaksend_messages_lease')
        batch_op.drop_index('ix_oaksend_messages_due')
        batch_op.drop_index('ix_oaksend_messages_deadline')
        batch_op.drop_index('ix_oaksend_messages_created')
        batch_op.drop_index('ix_oaksend_messages_chatbot_due')

    op.drop_table('oaksend_messages')
    op.drop_table('oaksend_chatbots')
