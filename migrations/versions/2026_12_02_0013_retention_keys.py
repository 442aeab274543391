"""idempotency keys stored as keyed hashes; what an earlier anonymize left behind, cleared

A key could hold a phone number: producers use them as keys, and a campaign's
key held its recipient's key, the phone number unless the audience has a key
column (`oaksend-campaign:2:12:+14155550311:...`). From now on keys are stored
as a keyed hash (oaksend.models.keyhash, under OAKSEND_KEY_HASH_SECRET, read
from the settings as `oaksend migrate` reads them):

- a producer's key `k` becomes `h1:` + digest(k), exactly what a producer now
  stores for `k`: sending `k` again still finds its message;
- a campaign's key `oaksend-campaign:<id>:<length>:<recipient key>:<occurrence>`
  becomes `oaksend-campaign:<id>:<digest(recipient key)>:<occurrence>`, what the
  campaign code now builds: updates and ticks still find their messages.

Messages that an earlier `purge --anonymize` blanked (empty number) lose what
it left: their last reason, their attempts' API texts and their operators' notes.

Work is done in batches of ids, so a large table is never read whole. Downgrade
keeps the hashes (the keys they replaced are not kept anywhere): messages are
still found by them only with this revision's code.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02 08:00:00
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

from oaksend.models.keyhash import digest, stored_key

revision: str = '0013'
down_revision: str | None = '0012'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: Rows read per batch.
BATCH = 5000
_CAMPAIGN_KEY = re.compile(r"oaksend-campaign:(\d+):(\d+):")


def _schema() -> str | None:
    # Statements are not rewritten by the engine's schema translate map (OAKSEND_DB_SCHEMA).
    return op.get_context().version_table_schema


def _secret() -> str | None:
    attributes = context.config.attributes
    if "key_secret" in attributes:
        return attributes["key_secret"] or None
    from oaksend.worker.settings import load_settings

    return load_settings().key_secret


def hashed(key: str, from_campaign: bool, secret: str | None) -> str:
    """The stored form of a key written before this revision."""
    match = _CAMPAIGN_KEY.match(key) if from_campaign else None
    if match is not None:
        start, length = match.end(), int(match.group(2))
        recipient, rest = key[start : start + length], key[start + length :]
        if len(recipient) == length and rest.startswith(":"):
            return f"oaksend-campaign:{match.group(1)}:{digest(recipient, secret)}{rest}"
    return stored_key(key, secret) or key


def _keys(conn: sa.Connection, secret: str | None) -> None:
    t = sa.table("oaksend_messages", sa.column("id", sa.BigInteger), sa.column("campaign_id", sa.BigInteger),
                 sa.column("idempotency_key", sa.String), schema=_schema())
    update = t.update().where(t.c.id == sa.bindparam("b_id")).values(idempotency_key=sa.bindparam("b_key"))
    last = 0
    while True:
        rows = list(conn.execute(sa.select(t.c.id, t.c.campaign_id, t.c.idempotency_key)
                                 .where(t.c.id > last, t.c.idempotency_key.is_not(None))
                                 .order_by(t.c.id).limit(BATCH)))
        if not rows:
            return
        last = rows[-1][0]
        conn.execute(update, [{"b_id": mid, "b_key": hashed(key, campaign is not None, secret)}
                              for mid, campaign, key in rows])


def _anonymized_leftovers(conn: sa.Connection) -> None:
    schema = _schema()
    messages = sa.table("oaksend_messages", sa.column("id", sa.BigInteger), sa.column("to_phone", sa.String),
                        sa.column("last_reason", sa.Text), schema=schema)
    attempts = sa.table("oaksend_attempts", sa.column("message_id", sa.BigInteger), sa.column("message", sa.Text),
                        sa.column("data_message", sa.Text), sa.column("error", sa.Text),
                        sa.column("anomalies", sa.Text), schema=schema)
    actions = sa.table("oaksend_operator_actions", sa.column("message_id", sa.BigInteger),
                       sa.column("note", sa.Text), schema=schema)
    blank = sa.select(messages.c.id).where(messages.c.to_phone == "")
    conn.execute(attempts.update().where(attempts.c.message_id.in_(blank))
                 .values(message=None, data_message=None, error=None, anomalies=None))
    conn.execute(actions.update().where(actions.c.message_id.in_(blank)).values(note=None))
    conn.execute(messages.update().where(messages.c.to_phone == "").values(last_reason=None))


def upgrade() -> None:
    conn = op.get_bind()
    _keys(conn, _secret())
    _anonymized_leftovers(conn)


def downgrade() -> None:
    pass  # the keys' hashes stay: what they replaced is gone
