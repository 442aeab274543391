"""The API's ASGI app: `create_api(settings)`, mounted by the dashboard under `/v1`.

One `Api` object per app holds what every request shares: the settings, the outbox,
the producer and status objects of the library (the API validates nothing itself),
the Redis client and its request-limit script.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from oaksend.web.api.guard import WINDOW_SCRIPT, validation_problem
from oaksend.web.api.problems import Problem, problem_response

__all__ = ["Api", "create_api"]

#: Seconds between two purges of old idempotency records by one process.
PURGE_EVERY_S = 3600.0


class Api:
    """What the routes share (request.app.state.api)."""

    def __init__(self, settings: Any) -> None:
        from oaksend.models.db import make_engine
        from oaksend.models.repository import Outbox
        from oaksend.worker.enqueue import Producer
        from oaksend.worker.status import Status

        self.settings = settings
        self.outbox = Outbox(make_engine(settings.database_url, schema=settings.db_schema))
        self.redis = redis.Redis.from_url(settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
        self.producer = Producer(settings, outbox=self.outbox, redis_client=self.redis)
        self.status = Status(settings, outbox=self.outbox, redis_client=self.redis)
        self.window = self.redis.register_script(WINDOW_SCRIPT)
        self._purged_at = 0.0
        self._purge_lock = threading.Lock()

    def purge_idempotency(self, before: datetime) -> None:
        """Delete old idempotency records, at most once per PURGE_EVERY_S in this process."""
        now = time.monotonic()
        with self._purge_lock:
            if now - self._purged_at < PURGE_EVERY_S:
                return
            self._purged_at = now
        self.outbox.idem_purge(before)

    def close(self) -> None:
        self.redis.close()
        self.outbox.engine.dispose()


class BodyCap:
    """ASGI middleware: a body above `limit` bytes is answered 413 (by Content-Length, or as it streams)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await self._refuse(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise Problem("too-large", f"body: at most {self.limit} bytes")
            return message

        try:
            await self.app(scope, counted, send)
        except Problem as problem:
            await problem.response()(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        await problem_response("too-large", f"body: at most {self.limit} bytes", field="body")(scope, receive, send)


def create_api(settings: Any) -> FastAPI:
    """The HTTP API (OpenAPI 3.1 at /openapi.json, the reference at /docs), to mount under `/v1`."""
    from oaksend.web.api import messages, webhooks

    app = FastAPI(title="oaksend API", version="1", docs_url="/docs", redoc_url="/reference",
                  description="Send SMS through NewOaks chatbots from any language; read outcomes; "
                              "receive them as signed webhooks. See docs/api.md.")
    app.state.api = Api(settings)
    app.include_router(messages.router)
    app.include_router(webhooks.router)
    app.add_middleware(BodyCap, limit=settings.api_max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> Response:
        return validation_problem(exc)

    @app.exception_handler(HTTPException)
    async def _http(_request: Request, exc: HTTPException) -> Response:
        name = {404: "not-found", 413: "too-large"}.get(exc.status_code, "invalid-field")
        return problem_response(name, str(exc.detail))

    @app.exception_handler(OperationalError)
    async def _database_away(_request: Request, _exc: OperationalError) -> Response:
        return problem_response("unavailable", "the database is unavailable; try again")

    @app.exception_handler(Problem)
    async def _problem(_request: Request, exc: Problem) -> Response:
        return exc.response()

    return app
