"""API keys, idempotency records, webhook endpoints and their event outbox

The HTTP API (docs/api.md): keys stored as hashes, the responses of POSTs made
with an Idempotency-Key, and the status webhooks: endpoints, the events written
in the same transaction as the outcomes they announce, and one delivery per
event and endpoint.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-02 09:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0016'
down_revision: str | None = '0015'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
_PENDING = "state = 'pending'"
_NEW = "fanned_at IS NULL"


def _schema() -> str | None:
    # Index DDL in batch mode is not rewritten by the engine's schema translate map
    # (OAKSEND_DB_SCHEMA), so name the schema that env.py configured.
    return op.get_context().version_table_schema


def upgrade() -> None:
    op.create_table('oaksend_api_keys',
    sa.Column('id', _BIG_ID, autoincrement=True, nullable=False),
    sa.Column('prefix', sa.String(length=16), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('scopes', sa.JSON(), nullable=False),
    sa.Column('chatbots', sa.JSON(), nullable=True),
    sa.Column('rate_limit', sa.Integer(), nullable=True),
    sa.Column('created_by', sa.String(length=200), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_oaksend_api_keys')),
    sa.UniqueConstraint('prefix', name=op.f('uq_oaksend_api_keys_prefix')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_oaksend_api_keys_token_hash'))
    )
    op.create_table('oaksend_api_idempotency',
    sa.Column('key_id', sa.BigInteger(), nullable=False),
    sa.Column('idem_key', sa.String(length=255), nullable=False),
    sa.Column('request_hash', sa.String(length=64), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('status_code', sa.Integer(), nullable=True),
    sa.Column('response', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('key_id', 'idem_key', name=op.f('pk_oaksend_api_idempotency'))
    )
    with op.batch_alter_table('oaksend_api_idempotency', schema=_schema()) as batch_op:
        batch_op.create_index('ix_oaksend_api_idempotency_created', ['created_at'], unique=False)

    op.create_table('oaksend_webhook_endpoints',
    sa.Column('id', _BIG_ID, autoincrement=True, nullable=False),
    sa.Column('url', sa.Text(), nullable=False),
    sa.Column('events', sa.JSON(), nullable=False),
    sa.Column('chatbots', sa.JSON(), nullable=True),
    sa.Column('salt', sa.String(length=64), nullable=False),
    sa.Column('old_salt', sa.String(length=64), nullable=True),
    sa.Column('old_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('failures', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('retry_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_by', sa.String(length=200), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('removed_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_oaksend_webhook_endpoints'))
    )
    op.create_table('oaksend_webhook_events',
    sa.Column('id', _BIG_ID, autoincrement=True, nullable=False),
    sa.Column('message_id', sa.BigInteger(), nullable=False),
    sa.Column('serial_number', sa.String(length=64), nullable=False),
    sa.Column('event', sa.String(length=16), nullable=False),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('fanned_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_oaksend_webhook_events'))
    )
    with op.batch_alter_table('oaksend_webhook_events', schema=_schema()) as batch_op:
        batch_op.create_index('ix_oaksend_webhook_events_new', ['id'], unique=False,
                              postgresql_where=sa.text(_NEW), sqlite_where=sa.text(_NEW))

    op.create_table('oaksend_webhook_deliveries',
    sa.Column('id', _BIG_ID, autoincrement=True, nullable=False),
    sa.Column('event_id', sa.BigInteger(), nullable=False),
    sa.Column('endpoint_id', sa.BigInteger(), nullable=False),
    sa.Column('message_id', sa.BigInteger(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_status', sa.Integer(), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('delivered_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("state IN ('pending', 'delivered', 'failed')", name=op.f('ck_oaksend_webhook_deliveries_state')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_oaksend_webhook_deliveries'))
    )
    with op.batch_alter_table('oaksend_webhook_deliveries', schema=_schema()) as batch_op:
        batch_op.create_index('ix_oaksend_webhook_deliveries_due', ['next_attempt_at'], unique=False,
                              postgresql_where=sa.text(_PENDING), sqlite_where=sa.text(_PENDING))
        batch_op.create_index('ix_oaksend_webhook_deliveries_order', ['endpoint_id', 'message_id', 'id'],
                              unique=False, postgresql_where=sa.text(_PENDING), sqlite_where=sa.text(_PENDING))
        batch_op.create_index('ix_oaksend_webhook_deliveries_endpoint', ['endpoint_id', 'id'], unique=False)


def downgrade() -> None:
    op.drop_table('oaksend_webhook_deliveries')
    op.drop_table('oaksend_webhook_events')
    op.drop_table('oaksend_webhook_endpoints')
    op.drop_table('oaksend_api_idempotency')
    op.drop_table('oaksend_api_keys')
