"""cron campaigns' next fire time (indexed) and every campaign's last error

A scheduler tick used to read every recipient of every cron campaign and run
croniter for each, even when no occurrence was near (3.2 s per 20,000
recipients). Cron times are the campaign's (its zone, not the recipients'), so
the next one is stored on the campaign: a tick reads only the cron campaigns
whose next fire time falls within its horizon (an index on it), and reads
recipients only when an occurrence is to be written.

`last_error` keeps why a campaign could not be ticked (a bad stored zone, a
template that no longer renders), so one bad campaign is marked and skipped
while the others go on.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-02 08:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0014'
down_revision: str | None = '0013'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _schema() -> str | None:
    # ALTER TABLE is not rewritten by the engine's schema translate map (OAKSEND_DB_SCHEMA),
    # so name the schema that env.py configured.
    return op.get_context().version_table_schema


def upgrade() -> None:
    # NULL next_fire_at means "not known yet": the next tick computes it.
    with op.batch_alter_table('oaksend_campaigns', schema=_schema()) as batch_op:
        batch_op.add_column(sa.Column('next_fire_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('last_error', sa.Text(), nullable=True))
        batch_op.create_index('ix_oaksend_campaigns_next_fire', ['next_fire_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('oaksend_campaigns', schema=_schema()) as batch_op:
        batch_op.drop_index('ix_oaksend_campaigns_next_fire')
        batch_op.drop_column('last_error')
        batch_op.drop_column('next_fire_at')
