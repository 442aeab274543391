"""open messages leave the campaign and age indexes

A message waiting or moving through the send path used to be in every one of
the outbox's full indexes, so each state change (pending, dispatched, sending,
sent) wrote an entry to each. Two of them now hold only the rows they are for:
- ix_oaksend_messages_campaign: campaign messages only (campaign_id IS NOT NULL);
- ix_oaksend_messages_created becomes ix_oaksend_messages_finished: the
  creation time of finished (terminal) messages only, which is what a purge
  looks up. A campaign's 100,000 pending reminders are no longer in it.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-28 05:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0010'
down_revision: str | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TERMINAL = "state IN ('sent', 'failed', 'unknown', 'expired', 'cancelled')"
FROM_CAMPAIGN = "campaign_id IS NOT NULL"


def _schema() -> str | None:
    # ALTER TABLE is not rewritten by the engine's schema translate map (OAKSEND_DB_SCHEMA),
    # so name the schema that env.py configured.
    return op.get_context().version_table_schema


def _where(predicate: str) -> dict[str, object]:
    return {"postgresql_where": sa.text(predicate), "sqlite_where": sa.text(predicate)}


def upgrade() -> None:
    with op.batch_alter_table('oaksend_messages', schema=_schema()) as batch_op:
        batch_op.drop_index('ix_oaksend_messages_created')
        batch_op.drop_index('ix_oaksend_messages_campaign')
        batch_op.create_index('ix_oaksend_messages_finished', ['created_at'], unique=False, **_where(TERMINAL))
        batch_op.create_index('ix_oaksend_messages_campaign', ['campaign_id', 'state'], unique=False,
                              **_where(FROM_CAMPAIGN))


def downgrade() -> None:
    with op.batch_alter_table('oaksend_messages', schema=_schema()) as batch_op:
        batch_op.drop_index('ix_oaksend_messages_campaign', **_where(FROM_CAMPAIGN))
        batch_op.drop_index('ix_oaksend_messages_finished', **_where(TERMINAL))
        batch_op.create_index('ix_oaksend_messages_campaign', ['campaign_id', 'state'], unique=False)
        batch_op.create_index('ix_oaksend_messages_created', ['created_at'], unique=False)
