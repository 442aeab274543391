"""The dashboard's part of the repository (oaksend.web): its users, and the reads its pages need
beyond `Status` and the operators' repository: a message search with keyset paging, activity per
minute, backlogs per chatbot, and the audit filtered and paged."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from oaksend.models.repository.base import Repository
from oaksend.models.tables import Attempt, Message, OperatorAudit, WebUser


class WebRepository(Repository):
    # -- users ----------------------------------------------------------------------------
    def put_user(self, name: str, password_hash: str, role: str, now: datetime) -> bool:
        """Add a dashboard user, or set an existing one's password and role; True when added."""
        with self.session() as s:
            row = s.scalar(select(WebUser).where(WebUser.name == name).with_for_update())
            if row is None:
                s.add(WebUser(name=name, password_hash=password_hash, role=role, created_at=now, updated_at=now))
                return True
            row.password_hash, row.role, row.updated_at = password_hash, role, now
            return False

    def web_user(self, name: str) -> WebUser | None:
        with self.session() as s:
            return s.scalar(select(WebUser).where(WebUser.name == name))

    def web_user_count(self) -> int:
        with self.session() as s:
            return int(s.scalar(select(func.count()).select_from(WebUser)) or 0)

    def set_password_hash(self, name: str, password_hash: str, now: datetime) -> None:
        """Store a rehash (argon2's parameters grew since the password was set)."""
        with self.session() as s:
            row = s.scalar(select(WebUser).where(WebUser.name == name))
            if row is not None:
                row.password_hash, row.updated_at = password_hash, now

    # -- messages -------------------------------------------------------------------------
    def find_messages(self, *, states: Sequence[str] = (), serial_number: str | None = None,
                      phone: str | None = None, message_id: int | None = None, campaign_id: int | None = None,
                      since: datetime | None = None, until: datetime | None = None,
                      before_id: int | None = None, limit: int = 50) -> list[Message]:
        """Messages newest first (by id), matching every filter given; `before_id` is the keyset cursor.

        A number goes through ix_oaksend_messages_phone (to_phone, state); the rest walk the primary key.
        """
        q = select(Message)
        if message_id is not None:
            q = q.where(Message.id == message_id)
        if phone is not None:
            q = q.where(Message.to_phone == phone)
        if states:
            q = q.where(Message.state.in_(list(states)))
        if serial_number:
            q = q.where(Message.serial_number == serial_number)
        if campaign_id is not None:
            q = q.where(Message.campaign_id == campaign_id)
        if since is not None:
            q = q.where(Message.created_at >= since)
        if until is not None:
            q = q.where(Message.created_at < until)
        if before_id is not None:
            q = q.where(Message.id < before_id)
        with self.session() as s:
            return list(s.scalars(q.order_by(Message.id.desc()).limit(limit)))

    def message_phones(self, ids: Sequence[int]) -> dict[int, str]:
        """The numbers of these messages (for a reveal, which the caller audits)."""
        with self.session() as s:
            rows = s.execute(select(Message.id, Message.to_phone).where(Message.id.in_(list(ids))))
            return {mid: phone for mid, phone in rows}

    # -- the overview ---------------------------------------------------------------------
    def activity_per_minute(self, since: datetime) -> dict[tuple[str, str], int]:
        """Attempts since `since` by (minute 'YYYY-MM-DDTHH:MM' UTC, classification)."""
        with self.session() as s:
            if s.get_bind().dialect.name == "postgresql":
                minute: Any = func.to_char(func.date_trunc("minute", func.timezone("UTC", Attempt.started_at)),
                                           'YYYY-MM-DD"T"HH24:MI')
            else:
                minute = func.strftime("%Y-%m-%dT%H:%M", Attempt.started_at)
            rows = s.execute(
                select(minute.label("minute"), Attempt.classification, func.count())
                .where(Attempt.started_at >= since)
                .group_by("minute", Attempt.classification)
            )
            return {(m, c): n for m, c, n in rows}

    def due_backlog(self, now: datetime) -> int:
        """Messages due and not yet being sent: pending and due, or dispatched (in the broker)."""
        with self.session() as s:
            pending = s.scalar(select(func.count()).select_from(Message)
                               .where(Message.state == "pending", Message.next_attempt_at <= now)) or 0
            dispatched = s.scalar(select(func.count()).select_from(Message)
                                  .where(Message.state.in_(("dispatched", "sending")))) or 0
            return int(pending) + int(dispatched)

    def sent_since_by_chatbot(self, since: datetime) -> dict[str, int]:
        """Messages sent since `since`, per chatbot."""
        with self.session() as s:
            rows = s.execute(select(Message.serial_number, func.count())
                             .where(Message.state == "sent", Message.sent_at >= since)
                             .group_by(Message.serial_number))
            return {sn: n for sn, n in rows}

    # -- the audit ------------------------------------------------------------------------
    def audit_page(self, *, command: str | None = None, actor: str | None = None,
                   before_id: int | None = None, limit: int = 50) -> list[OperatorAudit]:
        """Audit rows newest first, filtered by command prefix and actor; `before_id` is the cursor."""
        q = select(OperatorAudit)
        if command:
            q = q.where(OperatorAudit.command.startswith(command, autoescape=True))
        if actor:
            q = q.where(OperatorAudit.actor == actor)
        if before_id is not None:
            q = q.where(OperatorAudit.id < before_id)
        with self.session() as s:
            return list(s.scalars(q.order_by(OperatorAudit.id.desc()).limit(limit)))
