"""campaign recipients: no foreign key to their campaign (bulk loads)

PostgreSQL checks a foreign key row by row: of the 1.3 s that 100,000 recipient
rows took to COPY, 0.8 s were those checks. Like messages.campaign_id, the
column is now plain: the repository writes recipients only with their campaign,
in one transaction, and nothing deletes a campaign.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-27 23:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FK = 'fk_oaksend_campaign_recipients_campaign_id_oaksend_campaigns'


def _schema() -> str | None:
    # ALTER TABLE is not rewritten by the engine's schema translate map (OAKSEND_DB_SCHEMA),
    # so name the schema that env.py configured.
    return op.get_context().version_table_schema


def upgrade() -> None:
    with op.batch_alter_table('oaksend_campaign_recipients', schema=_schema()) as batch_op:
        batch_op.drop_constraint(_FK, type_='foreignkey')


def downgrade() -> None:
    with op.batch_alter_table('oaksend_campaign_recipients', schema=_schema()) as batch_op:
        batch_op.create_foreign_key(_FK, 'oaksend_campaigns', ['campaign_id'], ['id'], ondelete='CASCADE',
                                    referent_schema=_schema())
