"""idempotency keys scoped per chatbot: unique (serial_number, idempotency_key)

Revision ID: 0005
Revises: 0003
Create Date: 2026-11-27 20:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('oaksend_messages', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('uq_oaksend_messages_idempotency_key'), type_='unique')
        batch_op.create_index('uq_oaksend_messages_chatbot_key', ['serial_number', 'idempotency_key'], unique=True)


def downgrade() -> None:
    # Keys are unique per chatbot only from 0005 on: two chatbots may hold the same key,
    # which the older global constraint cannot take. Refuse rather than lose a row.
    table = 'oaksend_messages'
    messages = sa.Table(table, sa.MetaData(), sa.Column('idempotency_key', sa.String(255)))
    shared_keys = (
        sa.select(messages.c.idempotency_key)
        .where(messages.c.idempotency_key.is_not(None))
        .group_by(messages.c.idempotency_key)
        .having(sa.func.count() > 1)
        .subquery()
    )
    # Core, not text: the connection's schema translate map (OAKSEND_DB_SCHEMA) applies.
    shared = op.get_bind().execute(sa.select(sa.func.count()).select_from(shared_keys)).scalar()
    if shared:
        raise RuntimeError(f"cannot downgrade below 0005: {shared} idempotency keys are used by more than one chatbot")
    with op.batch_alter_table(table, schema=None) as batch_op:
        batch_op.drop_index('uq_oaksend_messages_chatbot_key')
        batch_op.create_unique_constraint(op.f('uq_oaksend_messages_idempotency_key'), ['idempotency_key'])
