"""The retention part of the repository: what `purge` deletes or blanks, and `campaign delete`.

Every column that can hold a phone number, a message's text or a name is listed
here (`ANONYMIZED`, `RECIPIENT_TABLE`, `FREE_TEXT`); docs/operations.md says the
same in words, and tests/integration/test_retention_dump.py checks a full dump
of the database against it. Idempotency keys are stored hashed from the start
(oaksend.models.keyhash), so they are kept: dropping them would let a producer's
retry of an old key send again. Suppressed numbers (the STOP list) are kept on
purpose: forgetting them would text people who said STOP.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, null, or_, select, text, update
from sqlalchemy.orm import Session

from oaksend.models.api_tables import WebhookDelivery, WebhookEvent
from oaksend.models.repository.base import Repository, chunks, rowcount
from oaksend.models.tables import (
    TERMINAL,
    TERMINAL_STATES,
    Attempt,
    Campaign,
    CampaignRecipient,
    Chatbot,
    Message,
    OperatorAction,
    OperatorAudit,
)

#: Campaigns whose recipients retention removes (once they ended before the cutoff).
ENDED_CAMPAIGNS = ("finished", "cancelled")
#: What `--anonymize` blanks, by table (the rows stay).
ANONYMIZED = {
    Message.__tablename__: ("to_phone", "body", "metadata", "last_reason"),
    Attempt.__tablename__: ("message", "data_message", "error", "anomalies"),
    OperatorAction.__tablename__: ("note",),
}
#: Free text not tied to one message, cleared once older than the cutoff (both modes).
FREE_TEXT = {
    # `result` may quote an error's text (a value named in it): its counts stay in `count`.
    OperatorAudit.__tablename__: ("note", "result"),
    Chatbot.__tablename__: ("pause_reason",),
}
#: Rows deleted with their campaign's end (phone, key and every audience column).
RECIPIENT_TABLE = CampaignRecipient.__tablename__
#: Campaigns' rows deleted per statement (recipients by campaign, then in slices of ids).
RECIPIENT_BATCH = 5000


class RetentionRepository(Repository):
    # -- messages -------------------------------------------------------------------------
    def _purgeable(self, cutoff: datetime, anonymize: bool) -> list[Any]:
        # TERMINAL word for word: SQLite uses the partial index ix_oaksend_messages_finished only then.
        where = [text(TERMINAL), Message.created_at < cutoff]
        if anonymize:
            where.append(Message.to_phone != "")  # already blanked rows are done
        return where

    def purge_preview(self, cutoff: datetime, anonymize: bool, sample: int = 10) -> tuple[int, list[Message]]:
        """How many terminal messages created before `cutoff` a purge would touch, and a few of them."""
        where = self._purgeable(cutoff, anonymize)
        with self.session() as s:
            n = s.scalar(select(func.count()).select_from(Message).where(*where)) or 0
            rows = list(s.scalars(select(Message).where(*where).order_by(Message.id).limit(sample)))
            return n, rows

    def purge_batch(self, cutoff: datetime, anonymize: bool, batch: int, now: datetime) -> int:
        """Delete (or blank) one batch of terminal messages created before `cutoff`, in one short transaction.

        Deleting removes the messages with their attempts and per-message operator
        actions; anonymizing blanks every column of ANONYMIZED (the number, the text,
        the metadata, the last reason, the API's own texts, the operators' notes) and
        keeps the rows, their states, times, codes and hashed keys. Open messages are
        never touched. Returns the number of messages changed (0 when there is nothing left).
        """
        with self.session() as s:
            q = select(Message.id).where(*self._purgeable(cutoff, anonymize)).order_by(Message.id).limit(batch)
            if s.get_bind().dialect.name == "postgresql":
                q = q.with_for_update(skip_locked=True)
            ids = list(s.scalars(q))
            if not ids:
                return 0
            # The state is checked again under the row lock: nothing open is ever purged.
            still = (Message.id.in_(ids), Message.state.in_(TERMINAL_STATES))
            doomed = select(Message.id).where(*still)
            if anonymize:
                s.execute(update(Attempt).where(Attempt.message_id.in_(doomed))
                          .values(message=null(), data_message=null(), error=null(), anomalies=null()))
                s.execute(update(OperatorAction).where(OperatorAction.message_id.in_(doomed)).values(note=null()))
                return rowcount(s.execute(
                    update(Message).where(*still)
                    .values(to_phone="", body="", meta=null(), last_reason=null(), updated_at=now)
                ))
            s.execute(delete(Attempt).where(Attempt.message_id.in_(doomed)))
            s.execute(delete(OperatorAction).where(OperatorAction.message_id.in_(doomed)))
            return rowcount(s.execute(delete(Message).where(*still)))

    # -- campaign recipients and free text --------------------------------------------------
    def _ended(self, cutoff: datetime) -> Any:
        return select(Campaign.id).where(Campaign.state.in_(ENDED_CAMPAIGNS), Campaign.updated_at < cutoff)

    def purge_recipients_preview(self, cutoff: datetime) -> int:
        """Recipients of campaigns that finished or were cancelled before `cutoff` (what a purge deletes)."""
        with self.session() as s:
            return s.scalar(select(func.count()).select_from(CampaignRecipient)
                            .where(CampaignRecipient.campaign_id.in_(self._ended(cutoff)))) or 0

    def purge_recipients_batch(self, cutoff: datetime, batch: int) -> int:
        """Delete up to `batch` recipients of campaigns that ended before `cutoff`; returns how many."""
        with self.session() as s:
            ids = list(s.scalars(select(CampaignRecipient.id)
                                 .where(CampaignRecipient.campaign_id.in_(self._ended(cutoff)))
                                 .order_by(CampaignRecipient.id).limit(batch)))
            if not ids:
                return 0
            return rowcount(s.execute(delete(CampaignRecipient).where(CampaignRecipient.id.in_(ids))))

    def purge_free_text(self, cutoff: datetime) -> int:
        """Clear the free text of FREE_TEXT older than `cutoff`: audit notes, reasons of pauses long over."""
        with self.session() as s:
            n = rowcount(s.execute(update(OperatorAudit)
                                   .where(OperatorAudit.at < cutoff, OperatorAudit.state != "started",
                                          or_(OperatorAudit.note.is_not(None), OperatorAudit.result.is_not(None)))
                                   .values(note=null(), result=null())))
            n += rowcount(s.execute(update(Chatbot)
                                    .where(Chatbot.paused_until < cutoff, Chatbot.pause_reason.is_not(None))
                                    .values(pause_reason=null())))
            # Status webhook events (their reason may quote the API's text) and their deliveries:
            # retried for a day at most, so anything older than the cutoff is history only.
            old_events = select(WebhookEvent.id).where(WebhookEvent.created_at < cutoff)
            s.execute(delete(WebhookDelivery).where(WebhookDelivery.event_id.in_(old_events)))
            n += rowcount(s.execute(delete(WebhookEvent).where(WebhookEvent.created_at < cutoff)))
            return n

    # -- deleting a campaign --------------------------------------------------------------
    def delete_campaign(self, campaign_id: int, now: datetime) -> dict[str, int] | None:
        """Delete a campaign, its recipients and its messages not yet sent (pending or dispatched), in one
        transaction; None when there is no such campaign.

        A message being sent (`sending`) or already finished stays: it is history (its
        campaign id then names a campaign that is gone), and retention takes it in its turn.
        Returns {"recipients": n, "messages": n}.
        """
        with self.session() as s:
            row = s.get(Campaign, campaign_id, with_for_update=True)
            if row is None:
                return None
            unsent = (Message.campaign_id == campaign_id, Message.state.in_(("pending", "dispatched")))
            messages = self._delete_messages(s, list(s.scalars(select(Message.id).where(*unsent))))
            recipients = rowcount(s.execute(delete(CampaignRecipient)
                                            .where(CampaignRecipient.campaign_id == campaign_id)))
            s.delete(row)
            return {"recipients": recipients, "messages": messages}

    @staticmethod
    def _delete_messages(s: Session, ids: list[int]) -> int:
        n = 0
        for chunk in chunks(ids, 500):
            # Pending or dispatched: a worker that holds one finds it gone and skips it.
            still = (Message.id.in_(list(chunk)), Message.state.in_(("pending", "dispatched")))
            doomed = select(Message.id).where(*still)
            s.execute(delete(Attempt).where(Attempt.message_id.in_(doomed)))
            s.execute(delete(OperatorAction).where(OperatorAction.message_id.in_(doomed)))
            n += rowcount(s.execute(delete(Message).where(*still)))
        return n


__all__ = ["ANONYMIZED", "ENDED_CAMPAIGNS", "FREE_TEXT", "RECIPIENT_TABLE", "RetentionRepository"]
