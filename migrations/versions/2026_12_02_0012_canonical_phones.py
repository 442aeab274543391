"""numbers stored in canonical E.164: one number, one spelling

Until now a number was stored as it was typed, so `+4407911123456` (a trunk zero
after the country code) and `+447911123456` were two numbers to the STOP list,
the frequency cap and the duplicate check. Every stored number becomes its
canonical E.164 (phonenumbers' parse and E.164 format, as the producer now
stores them):

- messages' to_phone: rewritten in place, whatever the state (open messages keep
  their rows, ids and keys); one UPDATE per distinct old spelling, through the
  (to_phone, state) index;
- suppressed numbers: rewritten; two spellings of one number become one row,
  the earliest suppression (its time and reason) kept;
- campaign recipients' phone, and the copy in their data under the campaign's
  phone column: rewritten row by row (a recipient keeps its row and key).

Values that are not a valid number (a purged row's empty text, a legacy oddity)
are left as they are. Work is done in batches, so a large table is never read
whole. Downgrade keeps the canonical spellings: they are valid numbers at 0011 too,
and the spellings they replaced are not kept anywhere.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02 08:00:00
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import phonenumbers
import sqlalchemy as sa
from alembic import op

revision: str = '0012'
down_revision: str | None = '0011'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: Rows (or distinct numbers) read per batch.
BATCH = 5000


def _schema() -> str | None:
    # Statements are not rewritten by the engine's schema translate map (OAKSEND_DB_SCHEMA),
    # so name the schema that env.py configured.
    return op.get_context().version_table_schema


def canonical(value: str | None) -> str | None:
    """The canonical E.164 of a stored number when it differs from it; None to leave the value alone."""
    if not value or not value.startswith("+"):
        return None
    try:
        number = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return e164 if e164 != value else None


def _messages(conn: sa.Connection) -> None:
    t = sa.table("oaksend_messages", sa.column("to_phone", sa.String), schema=_schema())
    last: str | None = None
    while True:
        q = sa.select(t.c.to_phone).distinct().order_by(t.c.to_phone).limit(BATCH)
        if last is not None:
            q = q.where(t.c.to_phone > last)
        phones = list(conn.scalars(q))
        if not phones:
            return
        last = phones[-1]
        changes = [{"old": p, "new": new} for p in phones if (new := canonical(p)) is not None]
        if changes:
            conn.execute(t.update().where(t.c.to_phone == sa.bindparam("old")).values(to_phone=sa.bindparam("new")),
                         changes)


def _suppressed(conn: sa.Connection) -> None:
    t = sa.table("oaksend_suppressed_numbers", sa.column("to_phone", sa.String), sa.column("reason", sa.String),
                 sa.column("at", sa.DateTime), schema=_schema())
    last: str | None = None
    while True:
        q = sa.select(t.c.to_phone, t.c.reason, t.c.at).order_by(t.c.to_phone).limit(BATCH)
        if last is not None:
            q = q.where(t.c.to_phone > last)
        rows = conn.execute(q).all()
        if not rows:
            return
        last = rows[-1][0]
        for phone, reason, at in rows:
            new = canonical(phone)
            if new is None:
                continue
            # Looked up one by one: an earlier row of this batch may have just become `new`.
            kept = conn.execute(sa.select(t.c.reason, t.c.at).where(t.c.to_phone == new)).first()
            if kept is None:
                conn.execute(t.update().where(t.c.to_phone == phone).values(to_phone=new))
                continue
            conn.execute(t.delete().where(t.c.to_phone == phone))
            if at is not None and (kept.at is None or at < kept.at):
                conn.execute(t.update().where(t.c.to_phone == new).values(reason=reason, at=at))


def _recipients(conn: sa.Connection) -> None:
    schema = _schema()
    campaigns = sa.table("oaksend_campaigns", sa.column("id", sa.BigInteger), sa.column("phone_column", sa.String),
                         schema=schema)
    t = sa.table("oaksend_campaign_recipients", sa.column("id", sa.BigInteger), sa.column("campaign_id", sa.BigInteger),
                 sa.column("phone", sa.String), sa.column("data", sa.JSON), schema=schema)
    column_of: dict[int, str] = {cid: col for cid, col in conn.execute(sa.select(campaigns.c.id,
                                                                                 campaigns.c.phone_column))}
    last = 0
    while True:
        rows = conn.execute(sa.select(t.c.id, t.c.campaign_id, t.c.phone, t.c.data).where(t.c.id > last)
                            .order_by(t.c.id).limit(BATCH)).all()
        if not rows:
            return
        last = rows[-1][0]
        changes: list[dict[str, Any]] = []
        for rid, cid, phone, data in rows:
            new = canonical(phone)
            if new is None:
                continue
            column = column_of.get(cid)
            if isinstance(data, dict) and column and isinstance(data.get(column), str) \
                    and data[column].strip() == phone:
                data = {**data, column: new}
            changes.append({"rid": rid, "new": new, "new_data": data})
        if changes:
            conn.execute(t.update().where(t.c.id == sa.bindparam("rid"))
                         .values(phone=sa.bindparam("new"), data=sa.bindparam("new_data", type_=sa.JSON)), changes)


def upgrade() -> None:
    conn = op.get_bind()
    _messages(conn)
    _suppressed(conn)
    _recipients(conn)


def downgrade() -> None:
    # Nothing to undo: canonical numbers are valid at 0011, and the old spellings are gone.
    pass
