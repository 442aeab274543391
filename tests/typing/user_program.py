"""A small application using oaksend's public API, type-checked strictly by `make lint`
(mypy --strict, against the package as installed): the published types stay usable.

It is never run; it only has to type-check. Each assignment to an annotated name is a
check that the API returns what its documentation says.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import create_engine
from sqlalchemy.orm import Session

import oaksend
from oaksend import (
    AsyncProducer,
    AsyncStatus,
    ConfigError,
    IdempotencyConflict,
    MessagePage,
    MessageStatus,
    Producer,
    SendRequest,
    Settings,
    Status,
    ValidationError,
    load_settings,
)


def book_and_remind(settings: Settings, chatbot: str, phone: str, at: datetime) -> int:
    producer = Producer(settings)
    engine = create_engine(settings.database_url)
    with Session(engine) as session, session.begin():
        message_id: int = producer.send(chatbot, phone, "See you at 10:00", idempotency_key="appt-981",
                                        send_at=at - timedelta(hours=2), metadata={"booking": 981},
                                        priority="high", session=session)
    return message_id


def bulk(settings: Settings, chatbot: str, phones: list[str]) -> list[int]:
    requests = [SendRequest(chatbot, p, "Your visit is tomorrow") for p in phones]
    ids: list[int] = Producer(settings).send_many(requests)
    return ids


def check(settings: Settings, message_id: int) -> str:
    with Status(settings) as status:
        message: MessageStatus = status.get_message(message_id)
        page: MessagePage = status.list_messages(state="failed", limit=50)
        counts: dict[str, int] = status.counts()
    state: str = message.state
    return f"{state} {len(page.messages)} {sum(counts.values())}"


async def book_async(settings: Settings, chatbot: str, phone: str) -> str:
    async with AsyncProducer(settings) as producer, AsyncStatus(settings) as status:
        message_id: int = await producer.send(chatbot, phone, "See you at 10:00", idempotency_key="appt-982")
        ids: list[int] = await producer.send_many([SendRequest(chatbot, phone, "Tomorrow")])
        message: MessageStatus = await status.get_message(message_id)
        return f"{message.state} {len(ids)}"


def main() -> None:
    try:
        settings = load_settings()
    except ConfigError as exc:
        raise SystemExit(str(exc)) from None
    try:
        book_and_remind(settings, "3254a9d0424c4806b9ea3d0763a1b2c3", "+14155550123",
                        datetime.now(UTC) + timedelta(days=1))
    except (ValidationError, IdempotencyConflict) as exc:
        print(f"refused: {exc}")
    version: str = oaksend.__version__
    print(version)
