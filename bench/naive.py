"""The second baseline of `python -m bench.pipeline`: what a user would write instead of oaksend.

A plain Celery app of its own on the benchmark's baseline Redis db (queue `bench-naive`), configured
like oaksend's app and the no-op baseline (JSON, no results, early ack, prefetch multiplier 1, no
events), with one task per message, `send_one(message_id)`, written the way a careful user would:

1. load the message row (to_phone, body, chatbot) from `bench_naive_messages`;
2. POST SendTwilioMessage with a module-level `httpx.Client` (keep-alive, timeouts, no redirects):
   the raw key in `Authorization`, a JSON body of SerialNumber, ToPhoneNumber and Message;
3. parse the JSON envelope (HTTP status, Success, Code, Data.SessionID);
4. in one transaction: insert one row into `bench_naive_attempts` (message id, HTTP status, Code,
   SessionID, latency) and update the message's state.

The database engine's pool holds a connection per worker thread (BENCH_NAIVE_POOL_SIZE), so no thread
waits for one, and no connection is held over the HTTP call. httpx's per-request INFO line is turned
down to warnings, as oaksend's worker does. Nothing of oaksend is imported. The benchmark creates the
tables (in oaksend's database), fills them and starts the workers as subprocesses:

    python -m celery -A bench.naive worker --pool threads --concurrency 16 -Q bench-naive
"""

from __future__ import annotations

import logging
import os
import time
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    insert,
    select,
    update,
)

from bench.baseline_app import baseline_app

BROKER_URL = os.environ.get("BENCH_NAIVE_BROKER_URL", "redis://127.0.0.1:6379/14")
DATABASE_URL = os.environ.get("BENCH_NAIVE_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/oaksend_bench")
API_URL = os.environ.get("BENCH_NAIVE_API_URL", "http://127.0.0.1:8080")
API_KEY = os.environ.get("BENCH_NAIVE_API_KEY", "")
POOL_SIZE = int(os.environ.get("BENCH_NAIVE_POOL_SIZE", "16"))
QUEUE = "bench-naive"
TASK = "bench.naive.send_one"
SEND_PATH = "/chat/Chatbot/SendTwilioMessage"

#: An integer key that autoincrements on both PostgreSQL (BIGSERIAL) and SQLite (INTEGER PRIMARY KEY).
ID = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData()
messages = Table(
    "bench_naive_messages", metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("chatbot", String(64), nullable=False),
    Column("to_phone", String(32), nullable=False),
    Column("body", Text, nullable=False),
    Column("state", String(16), nullable=False, server_default="pending"),
)
attempts = Table(
    "bench_naive_attempts", metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("message_id", ID, ForeignKey("bench_naive_messages.id"), nullable=False, index=True),
    Column("http_status", Integer),
    Column("code", Integer),
    Column("session_id", BigInteger),
    Column("latency_ms", Float),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

app = baseline_app("bench_naive", BROKER_URL, QUEUE)


def make_engine(url: str, pool_size: int) -> Any:
    """The engine of a threaded worker: a pooled connection per thread (SQLite: wait for its write lock)."""
    connect_args = {"timeout": 30} if url.startswith("sqlite") else {}
    return create_engine(url, pool_size=pool_size, connect_args=connect_args)


engine = make_engine(DATABASE_URL, POOL_SIZE)
http = httpx.Client(
    base_url=API_URL,
    headers={"Authorization": API_KEY, "Content-Type": "application/json"},
    timeout=httpx.Timeout(10.0, connect=5.0),
    limits=httpx.Limits(max_connections=POOL_SIZE, max_keepalive_connections=POOL_SIZE),
)
logging.getLogger("httpx").setLevel(logging.WARNING)


def outcome(status: int | None, envelope: Any) -> tuple[str, int | None, int | None]:
    """(state, Code, SessionID) of an answer: sent only when HTTP 200, Success true and Code 200;
    failed on a 4xx; unknown otherwise (no answer, a 5xx, a body that is not the envelope)."""
    body = envelope if isinstance(envelope, dict) else {}
    data = body["Data"] if isinstance(body.get("Data"), dict) else {}
    code = body.get("Code") if isinstance(body.get("Code"), int) else None
    session = data.get("SessionID") if isinstance(data.get("SessionID"), int) else None
    if status == 200 and body.get("Success") is True and code == 200:
        return "sent", code, session
    if status is not None and 400 <= status < 500:
        return "failed", code, session
    return "unknown", code, session


@app.task(name=TASK, ignore_result=True)
def send_one(message_id: int) -> None:
    with engine.connect() as conn:
        row = conn.execute(
            select(messages.c.to_phone, messages.c.body, messages.c.chatbot).where(messages.c.id == message_id)
        ).one()
    status: int | None = None
    envelope: Any = None
    started = time.perf_counter()
    try:
        response = http.post(SEND_PATH, json={"SerialNumber": row.chatbot, "ToPhoneNumber": row.to_phone,
                                              "Message": row.body})
        status = response.status_code
        envelope = response.json()
    except (httpx.HTTPError, ValueError):
        pass  # no answer, or not JSON: recorded as such below
    latency_ms = (time.perf_counter() - started) * 1000.0
    state, code, session = outcome(status, envelope)
    with engine.begin() as conn:
        conn.execute(insert(attempts).values(
            message_id=message_id, http_status=status, code=code, session_id=session, latency_ms=latency_ms,
            created_at=datetime.now(UTC),
        ))
        conn.execute(update(messages).where(messages.c.id == message_id).values(state=state))
