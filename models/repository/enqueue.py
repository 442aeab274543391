"""The producers' part of the repository: inserting messages, idempotently."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from oaksend.models.records import NewMessage
from oaksend.models.repository.base import Repository, _chunks
from oaksend.models.tables import (
    Message,
    SuppressedNumber,
)


class EnqueueRepository(Repository):
    # -- producing ------------------------------------------------------------------------
    def add(self, messages: Sequence[NewMessage], now: datetime, session: Session | None = None) -> list[int]:
        """Insert messages (idempotently) and return their ids, in order.

        With `session`, the rows join the caller's transaction and are only
        flushed; the caller commits. Without it, one transaction of our own.
        """
        if session is not None:
            return self._add(session, messages, now)
        for _ in range(3):
            try:
                with self.session() as own:
                    return self._add(own, messages, now)
            except IntegrityError:
                # A concurrent producer inserted one of our idempotency keys first:
                # go round again, and this time it is found and compared.
                continue
        raise RuntimeError("could not insert messages: idempotency keys kept conflicting")

    def _add(self, session: Session, messages: Sequence[NewMessage], now: datetime) -> list[int]:
        from oaksend.errors import IdempotencyConflict  # noqa: PLC0415

        keys = [m.idempotency_key for m in messages if m.idempotency_key]
        existing: dict[str, Message] = {}
        if keys:
            for chunk in _chunks(keys, 500):
                for row in session.scalars(select(Message).where(Message.idempotency_key.in_(chunk))):
                    existing[row.idempotency_key] = row  # type: ignore[index]
        ids: list[int | None] = []
        to_insert: list[dict[str, Any]] = []
        positions: list[int] = []
        seen: dict[str, NewMessage] = {}
        for i, m in enumerate(messages):
            key = m.idempotency_key
            if key and key in existing:
                if not m.same_content(existing[key]):
                    raise IdempotencyConflict(
                        "idempotency_key", f"{key!r} was already used for a different message"
                    )
                ids.append(existing[key].id)
                continue
            if key and key in seen:
                if seen[key] != m:
                    raise IdempotencyConflict("idempotency_key", f"{key!r} appears twice with different content")
                ids.append(None)  # filled from the first occurrence below
                positions.append(-1 - list(seen).index(key))
                continue
            if key:
                seen[key] = m
            ids.append(None)
            positions.append(len(to_insert))
            to_insert.append(
                {
                    "serial_number": m.serial_number,
                    "to_phone": m.to_phone,
                    "body": m.body,
                    "segments": m.segments,
                    "state": "pending",
                    "attempts": 0,
                    "failures": 0,
                    "ambiguous": 0,
                    "next_attempt_at": m.next_attempt_at,
                    "deadline_at": m.deadline_at,
                    "idempotency_key": m.idempotency_key,
                    "meta": m.meta,
                    "created_at": now,
                    "updated_at": now,
                }
            )
        new_ids: list[int] = []
        if to_insert:
            result = session.execute(
                insert(Message).returning(Message.id, sort_by_parameter_order=True), to_insert
            )
            new_ids = list(result.scalars())
        key_ids = {}
        pos_iter = iter(positions)
        out: list[int] = []
        for i, current in enumerate(ids):
            if current is not None:
                out.append(current)
                continue
            pos = next(pos_iter)
            if pos >= 0:
                out.append(new_ids[pos])
                key = messages[i].idempotency_key
                if key:
                    key_ids[key] = new_ids[pos]
            else:
                out.append(key_ids[messages[i].idempotency_key])  # type: ignore[index]
        return out

    def is_suppressed(self, to_phones: Iterable[str], session: Session | None = None) -> dict[str, str]:
        """Which of these numbers must not be texted, with the reason (in `session` when given)."""
        phones = list(set(to_phones))
        if session is not None:
            return self._suppressed(session, phones)
        with self.session() as s:
            return self._suppressed(s, phones)

    def _suppressed(self, s: Session, phones: list[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for chunk in _chunks(phones, 500):
            for row in s.scalars(select(SuppressedNumber).where(SuppressedNumber.to_phone.in_(chunk))):
                out[row.to_phone] = row.reason
        return out

