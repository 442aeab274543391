"""campaigns: campaigns, their recipients, and the campaign and quiet hours of a message

Revision ID: 0006
Revises: 0002
Create Date: 2026-11-27 20:05:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def _schema() -> str | None:
    # ALTER TABLE ... ADD/DROP COLUMN is not rewritten by the engine's schema translate map
    # (OAKSEND_DB_SCHEMA), so name the schema that env.py configured.
    return op.get_context().version_table_schema


def upgrade() -> None:
    op.create_table('oaksend_campaigns',
    sa.Column('id', _BIG_ID, autoincrement=True, nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('serial_number', sa.String(length=64), nullable=False),
    sa.Column('template', sa.Text(), nullable=False),
    sa.Column('schedule_kind', sa.String(length=16), nullable=False),
    sa.Column('schedule', sa.JSON(), nullable=False),
    sa.Column('tz', sa.String(length=64), nullable=False),
    sa.Column('phone_column', sa.String(length=64), nullable=False),
    sa.Column('key_column', sa.String(length=64), nullable=True),
    sa.Column('tz_column', sa.String(length=64), nullable=True),
    sa.Column('quiet_hours', sa.String(length=16), nullable=True),
    sa.Column('deadline_s', sa.Float(), nullable=True),
    sa.Column('rate_cap_per_s', sa.Float(), nullable=True),
    sa.Column('frequency_cap', sa.Integer(), nullable=True),
    sa.Column('missed', sa.String(length=8), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('skipped', sa.JSON(), nullable=True),
    sa.Column('recipients', sa.Integer(), nullable=False),
    sa.Column('materialized_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("state IN ('draft', 'scheduled', 'running', 'paused', 'cancelled', 'finished')", name=op.f('ck_oaksend_campaigns_state')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_oaksend_campaigns'))
    )
    with op.batch_alter_table('oaksend_campaigns', schema=None) as batch_op:
        batch_op.create_index('ix_oaksend_campaigns_state', ['state'], unique=False)

    op.create_table('oaksend_campaign_recipients',
    sa.Column('id', _BIG_ID, autoincrement=True, nullable=False),
    sa.Column('campaign_id', sa.BigInteger(), nullable=False),
    sa.Column('key', sa.String(length=150), nullable=False),
    sa.Column('phone', sa.String(length=16), nullable=False),
    sa.Column('tz', sa.String(length=64), nullable=False),
    sa.Column('data', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['campaign_id'], ['oaksend_campaigns.id'], name=op.f('fk_oaksend_campaign_recipients_campaign_id_oaksend_campaigns'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_oaksend_campaign_recipients')),
    sa.UniqueConstraint('campaign_id', 'key', name=op.f('uq_oaksend_campaign_recipients_campaign_id'))
    )

    with op.batch_alter_table('oaksend_messages', schema=_schema()) as batch_op:
        batch_op.add_column(sa.Column('campaign_id', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('quiet', sa.String(length=80), nullable=True))
        batch_op.create_index('ix_oaksend_messages_campaign', ['campaign_id', 'state'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('oaksend_messages', schema=_schema()) as batch_op:
        batch_op.drop_index('ix_oaksend_messages_campaign')
        batch_op.drop_column('quiet')
        batch_op.drop_column('campaign_id')
    op.drop_table('oaksend_campaign_recipients')
    with op.batch_alter_table('oaksend_campaigns', schema=None) as batch_op:
        batch_op.drop_index('ix_oaksend_campaigns_state')
    op.drop_table('oaksend_campaigns')
