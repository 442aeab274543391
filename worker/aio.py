"""The producer and status APIs for asyncio applications: `AsyncProducer`, `AsyncStatus`.

    from oaksend import AsyncProducer, load_settings

    producer = AsyncProducer(load_settings())
    async with session.begin():                       # your AsyncSession
        session.add(booking)
        await producer.send(chatbot, booking.phone, "See you at 10:00", session=session)

The same methods, arguments, rules and errors as `Producer` and `Status` (and a campaign's
`upsert_recipient` / `remove_recipient`, the booking system's calls): validation,
canonical numbers, idempotency and suppression are the same code, and so are the
outbox's statements. Only the I/O differs: they run on SQLAlchemy's asyncio engine
(psycopg 3's async connections on PostgreSQL, aiosqlite on SQLite), through its
greenlet bridge (`AsyncSession.run_sync`), so the event loop is never blocked by the
database; the dispatcher is woken through `redis.asyncio`. With `session=` (an
`AsyncSession`), the rows join the caller's transaction inside a savepoint, and the
wake-up waits for its commit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import redis
import redis.asyncio as aioredis
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.util import greenlet_spawn

from oaksend.models.db import make_async_engine
from oaksend.models.records import NewMessage
from oaksend.models.repository import Outbox
from oaksend.worker.clock import utcnow
from oaksend.worker.enqueue import refuse_suppressed, validate_many
from oaksend.worker.message.validation import SendRequest, validate
from oaksend.worker.settings import Settings
from oaksend.worker.status import MessagePage, MessageStatus, Status

if TYPE_CHECKING:
    from oaksend.worker.campaigns.service import Campaigns
    from oaksend.worker.campaigns.sync import SyncResult

log = logging.getLogger(__name__)
T = TypeVar("T")

__all__ = ["AsyncProducer", "AsyncStatus"]


class _AsyncOutbox:
    """The outbox's (synchronous) repository over an async engine: each call runs in SQLAlchemy's
    greenlet bridge, so its statements await the async driver instead of blocking the loop."""

    def __init__(self, settings: Settings, engine: AsyncEngine | None) -> None:
        self.own_engine = engine is None
        self.engine = engine or make_async_engine(settings.database_url, schema=settings.db_schema)
        self.outbox = Outbox(self.engine.sync_engine)

    async def run(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await greenlet_spawn(call, *args, **kwargs)

    async def dispose(self) -> None:
        if self.own_engine:
            await self.engine.dispose()


class AsyncProducer:
    """`Producer` for asyncio code. Build one per process (or per event loop) and `await close()`."""

    def __init__(self, settings: Settings, *, engine: AsyncEngine | None = None,
                 redis_client: aioredis.Redis | None = None) -> None:
        self.settings = settings
        self._db = _AsyncOutbox(settings, engine)
        self.redis = redis_client or aioredis.Redis.from_url(settings.redis_url, socket_timeout=2,
                                                             socket_connect_timeout=2)
        self._wakes: set[asyncio.Task[None]] = set()
        self._campaign_service: Campaigns | None = None

    async def send(self, serial_number: str, to: str, text: str, *, idempotency_key: str | None = None,
                   send_at: datetime | None = None, deadline: datetime | None = None,
                   metadata: dict[str, Any] | None = None, priority: str = "normal",
                   session: AsyncSession | None = None) -> int:
        """Enqueue one message; return its id (see `Producer.send`)."""
        request = SendRequest(serial_number, to, text, idempotency_key, send_at, deadline, metadata, priority)
        now = utcnow()
        row = validate(request, now=now, default_deadline_s=self.settings.default_deadline_s)
        return (await self._write([row], now, session))[0]

    async def send_many(self, requests: Iterable[SendRequest], *, session: AsyncSession | None = None) -> list[int]:
        """Enqueue many messages in one transaction, all validated first (see `Producer.send_many`)."""
        now = utcnow()
        rows = validate_many(requests, now=now, default_deadline_s=self.settings.default_deadline_s)
        return await self._write(rows, now, session) if rows else []

    async def _write(self, rows: list[NewMessage], now: datetime, session: AsyncSession | None) -> list[int]:
        outbox, secret = self._db.outbox, self.settings.key_secret

        def add(sync_session: Session | None) -> list[int]:
            return outbox.add(rows, now, session=sync_session, refuse=refuse_suppressed, key_secret=secret)

        if session is None:
            ids = await self._db.run(add, None)
            await self._wake()
            return ids
        ids = await session.run_sync(add)
        # Wake only once the caller's transaction has really committed (the listener runs on the loop).
        event.listen(session.sync_session, "after_commit", lambda _s: self._wake_soon(), once=True)
        return ids

    async def upsert_recipient(self, campaign_id: int, row: dict[str, Any], *,
                               session: AsyncSession | None = None) -> SyncResult:
        """Add or change one campaign recipient, its reminders following (see `Campaigns.upsert_recipient`)."""
        campaigns = self._campaigns()
        if session is None:
            return await self._db.run(campaigns.upsert_recipient, campaign_id, row)
        return await session.run_sync(lambda s: campaigns.upsert_recipient(campaign_id, row, session=s))

    async def remove_recipient(self, campaign_id: int, key: str, *, session: AsyncSession | None = None) -> int:
        """Remove one campaign recipient; its unsent reminders are cancelled (see `Campaigns.remove_recipient`)."""
        campaigns = self._campaigns()
        if session is None:
            return await self._db.run(campaigns.remove_recipient, campaign_id, key)
        return await session.run_sync(lambda s: campaigns.remove_recipient(campaign_id, key, session=s))

    def _campaigns(self) -> Campaigns:
        if self._campaign_service is None:
            from oaksend.worker.campaigns.service import Campaigns

            self._campaign_service = Campaigns(self.settings, outbox=self._db.outbox)
        return self._campaign_service

    def _wake_soon(self) -> None:
        task = asyncio.get_running_loop().create_task(self._wake())
        self._wakes.add(task)
        task.add_done_callback(self._wakes.discard)

    async def _wake(self) -> None:
        """Tell the dispatcher there is new work. Best effort: the database is the truth."""
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.lpush(self.settings.keys.wake, "1")
                pipe.ltrim(self.settings.keys.wake, 0, 9)
                await pipe.execute()
        except (redis.RedisError, OSError) as exc:
            log.warning("could not wake the dispatcher (%s); it will find the work on its next poll",
                        type(exc).__name__)

    async def close(self) -> None:
        if self._wakes:
            await asyncio.gather(*self._wakes, return_exceptions=True)
        await self.redis.aclose()
        if self._campaign_service is not None:
            self._campaign_service.redis.close()
        await self._db.dispose()

    async def __aenter__(self) -> AsyncProducer:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()


class AsyncStatus:
    """`Status`'s reading and acting methods for asyncio code (each one the same code, awaited)."""

    def __init__(self, settings: Settings, *, engine: AsyncEngine | None = None) -> None:
        self._db = _AsyncOutbox(settings, engine)
        self._status = Status(settings, outbox=self._db.outbox)

    async def get_message(self, message_id: int) -> MessageStatus:
        return await self._db.run(self._status.get_message, message_id)

    async def list_messages(self, **filters: Any) -> MessagePage:
        return await self._db.run(lambda: self._status.list_messages(**filters))

    async def counts(self) -> dict[str, int]:
        return await self._db.run(self._status.counts)

    async def retry(self, ids: Iterable[int], **options: Any) -> dict[int, str]:
        return await self._db.run(lambda: self._status.retry(list(ids), **options))

    async def cancel(self, ids: Iterable[int], **options: Any) -> dict[int, str]:
        return await self._db.run(lambda: self._status.cancel(list(ids), **options))

    async def close(self) -> None:
        await self._db.dispose()

    async def __aenter__(self) -> AsyncStatus:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()
