"""The frequency cap's part of the repository: what every campaign holds for a chatbot and number.

The cap itself is a pure decision (oaksend.worker.message.cap); here are the rows
it looks at. Only campaign messages count: a confirmation or a one-time code is
never capped, and never uses up a number's allowance.

At send time the look-up and the cancel are one transaction, serialized per
(chatbot, number): SQLite's writers queue for its one lock (BEGIN IMMEDIATE), and on
PostgreSQL a transaction-scoped advisory lock per pair keeps two workers from both
finding the allowance free for two messages to one number.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from sqlalchemy import Connection, and_, func, or_, select, text, update
from sqlalchemy.orm import Session

from oaksend.models.repository.base import Repository, chunks
from oaksend.models.tables import OPEN_STATES, Message

_messages = Message.__table__
#: (chatbot, number) pairs per look-up.
CAP_CHUNK = 500
#: Decides, from the candidates ((id, number), most urgent first) and each number's recent count,
#: which ids are over the cap.
Decide = Callable[[Sequence[tuple[int, str]], dict[str, int]], list[int]]
_LOCK = text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))")


class CapRepository(Repository):
    def cap_times(self, session: Session, pairs: Sequence[tuple[str, str]], lo: datetime,
                  hi: datetime) -> dict[tuple[str, str], list[datetime]]:
        """Send times of every campaign's live or sent messages for these (chatbot, number) pairs, within [lo, hi]."""
        out: dict[tuple[str, str], list[datetime]] = {}
        m = _messages.c
        for chunk in chunks(sorted(set(pairs)), CAP_CHUNK):
            phones = sorted({phone for _, phone in chunk})
            rows = session.execute(
                select(m.serial_number, m.to_phone, m.next_attempt_at)
                .where(m.campaign_id.is_not(None), m.to_phone.in_(phones),
                       m.serial_number.in_(sorted({sn for sn, _ in chunk})),
                       m.state.in_((*OPEN_STATES, "sent")), m.next_attempt_at >= lo, m.next_attempt_at <= hi),
                execution_options=self._foreign_options)
            wanted = set(chunk)
            for sn, phone, at in rows:
                if (sn, phone) in wanted:
                    out.setdefault((sn, phone), []).append(at)
        return out

    def stop_over_cap(self, ids: Sequence[int], token: str, now: datetime, period: timedelta, decide: Decide,
                      reason: str) -> list[int]:
        """Send time: cancel the claimed, not yet called campaign messages among `ids` that `decide` finds
        over the cap, counting each number's campaign messages sent (or on their way) within `period`.

        Returns the ids cancelled (their worker must not call).
        """
        m = _messages.c
        with self.engine.begin() as conn:
            candidates = [(mid, sn, phone) for mid, sn, phone in conn.execute(
                select(m.id, m.serial_number, m.to_phone)
                .where(m.id.in_(list(ids)), m.campaign_id.is_not(None), m.state == "sending",
                       m.lease_token == token, m.calling_at.is_(None))
                .order_by(m.priority, m.next_attempt_at, m.id))]
            if not candidates:
                return []
            pairs = sorted({(sn, phone) for _, sn, phone in candidates})
            self._lock(conn, pairs)
            over: list[int] = []
            for serial_number in sorted({sn for sn, _ in pairs}):
                mine = [(mid, phone) for mid, sn, phone in candidates if sn == serial_number]
                used = self._recent(conn, serial_number, sorted({p for _, p in mine}), ids, now - period)
                over += decide(mine, used)
            if over:
                conn.execute(
                    update(_messages)
                    .where(m.id.in_(over), m.state == "sending", m.lease_token == token, m.calling_at.is_(None))
                    .values(state="cancelled", last_outcome="cancelled", last_reason=reason, lease_token=None,
                            lease_until=None, claimed_by=None, updated_at=now))
        return over

    @staticmethod
    def _lock(conn: Connection, pairs: Sequence[tuple[str, str]]) -> None:
        if conn.dialect.name != "postgresql":
            return  # SQLite: this transaction already holds the database's write lock
        for sn, phone in pairs:  # sorted: two workers never wait for each other in a circle
            conn.execute(_LOCK, {"k": f"oaksend-cap:{sn}:{phone}"})

    @staticmethod
    def _recent(conn: Connection, serial_number: str, phones: list[str], ids: Sequence[int],
                since: datetime) -> dict[str, int]:
        """Per number: campaign messages of this chatbot sent since `since`, maybe sent (unknown) since
        then, or claimed by another task right now."""
        m = _messages.c
        counted = or_(and_(m.state == "sent", m.sent_at > since), and_(m.state == "unknown", m.updated_at > since),
                      m.state == "sending")
        q = (select(m.to_phone, func.count())
             .where(m.campaign_id.is_not(None), m.serial_number == serial_number, m.to_phone.in_(phones),
                    m.id.not_in(list(ids)), counted)
             .group_by(m.to_phone))
        return {phone: n for phone, n in conn.execute(q)}


__all__ = ["CapRepository"]
