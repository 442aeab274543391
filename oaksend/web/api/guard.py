"""What runs before every operation: the API key, its request limit, and idempotency of POSTs.

`GuardedRoute` wraps each route's handler: authenticate (401), count the request
against the key's limit in Redis (429, with Retry-After and RateLimit headers on
every answer), then, for a POST with an `Idempotency-Key`, claim the key (409 while
the first request runs, 422 for another body) or replay the first response.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import redis
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from oaksend.errors import ValidationError
from oaksend.web.api.problems import MEDIA_TYPE, Problem, from_validation, problem_response
from oaksend.worker.apikeys import prefix_of, token_hash
from oaksend.worker.clock import utcnow

__all__ = ["WINDOW_SCRIPT", "GuardedRoute", "Principal", "validation_problem"]

log = logging.getLogger(__name__)
#: A request whose idempotency record is 'started' for longer than this died with its process.
IDEMPOTENCY_STALE_S = 60.0
#: Records are kept at least 24 h; older than this they are purged.
IDEMPOTENCY_KEEP_S = 48 * 3600.0
MAX_IDEMPOTENCY_KEY_CHARS = 255
# A fixed window per key, on Redis's clock: (count in this window, seconds until it ends).
WINDOW_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1])
local window = tonumber(ARGV[1])
local key = KEYS[1] .. ':' .. math.floor(now / window)
local n = redis.call('INCR', key)
if n == 1 then redis.call('EXPIRE', key, window + 1) end
return {n, window - (now % window)}
"""


@dataclass(frozen=True)
class Principal:
    """The API key behind a request."""

    id: int
    prefix: str
    scopes: tuple[str, ...]
    chatbots: tuple[str, ...] | None
    rate_limit: int | None

    @property
    def actor(self) -> str:
        """Who did it, for the operator audit."""
        return f"api-key:{self.prefix}"

    def may(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes

    def sees(self, chatbot: str) -> bool:
        return self.chatbots is None or chatbot in self.chatbots


def validation_problem(exc: RequestValidationError) -> Response:
    """FastAPI's refusal of a body or parameter, as one problem naming the first field at fault."""
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    field = "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in loc).lstrip(".") or "body"
    kind = first.get("type", "")
    if kind == "json_invalid":
        return problem_response("invalid-json", f"body: {first.get('msg', 'not JSON')}", field="body")
    message = "is not a known field" if kind == "extra_forbidden" else str(first.get("msg", "is not valid"))
    return problem_response("invalid-field", f"{field}: {message}", field=field)


class GuardedRoute(APIRoute):
    """An APIRoute whose handler is wrapped by authentication, the request limit and idempotency."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        inner = super().get_route_handler()

        async def handler(request: Request) -> Response:
            api = request.app.state.api
            try:
                who = await run_in_threadpool(authenticate, api, request)
                limit_headers = await run_in_threadpool(count_request, api, who)
                request.state.principal = who
                response = await idempotent(api, who, request, inner)
                response.headers.update(limit_headers)
            except Problem as problem:
                response = problem.response()
            return response

        return handler


async def _answer(request: Request, inner: Callable[[Request], Awaitable[Response]]) -> Response:
    """The route's own answer, its refusals rendered here (so an idempotent POST can keep them)."""
    try:
        return await inner(request)
    except Problem as problem:
        return problem.response()
    except ValidationError as exc:
        return from_validation(exc).response()
    except RequestValidationError as exc:
        return validation_problem(exc)


def authenticate(api: Any, request: Request) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or prefix_of(token.strip()) is None:
        raise Problem("unauthorized", "send `Authorization: Bearer <API key>` (oaksend api-key create)",
                      headers={"www-authenticate": "Bearer"})
    row = api.outbox.key_by_hash(token_hash(token.strip()))
    if row is None or row.revoked_at is not None:
        raise Problem("unauthorized", "the API key is unknown or revoked", headers={"www-authenticate": "Bearer"})
    return Principal(row.id, row.prefix, tuple(row.scopes), None if row.chatbots is None else tuple(row.chatbots),
                     row.rate_limit)


def count_request(api: Any, who: Principal) -> dict[str, str]:
    """Count this request in the key's window; the RateLimit headers, or Problem 429 over the limit."""
    limit, window = who.rate_limit or api.settings.api_rate_limit, api.settings.api_rate_window_s
    try:
        n, reset = api.window(keys=[f"{api.settings.keys.prefix}:api:rl:{who.prefix}"], args=[window])
    except redis.RedisError as exc:  # the limit is a brake, not a gate: Redis away lets requests through
        log.warning("API request limit not counted: Redis %s", type(exc).__name__)
        return {}
    headers = {"ratelimit-policy": f'"per-key";q={limit};w={window}',
               "ratelimit": f'"per-key";r={max(0, limit - int(n))};t={int(reset)}'}
    if int(n) > limit:
        raise Problem("rate-limited", f"at most {limit} requests per {window} s for this key; "
                      f"try again in {int(reset)} s", headers={**headers, "retry-after": str(int(reset))})
    return headers


async def idempotent(api: Any, who: Principal, request: Request,
                     inner: Callable[[Request], Awaitable[Response]]) -> Response:
    """Run the route once per (key, Idempotency-Key); a repeat gets the first answer."""
    idem_key = request.headers.get("idempotency-key")
    if request.method != "POST" or idem_key is None:
        return await _answer(request, inner)
    if not 1 <= len(idem_key) <= MAX_IDEMPOTENCY_KEY_CHARS:
        raise Problem("invalid-field", f"Idempotency-Key: 1 to {MAX_IDEMPOTENCY_KEY_CHARS} characters",
                      field="Idempotency-Key")
    body = await request.body()
    digest = hashlib.sha256(f"{request.method} {request.url.path}\n".encode() + body).hexdigest()
    now = utcnow()
    state, status, stored = await run_in_threadpool(api.outbox.idem_begin, who.id, idem_key, digest, now,
                                                    now - timedelta(seconds=IDEMPOTENCY_STALE_S))
    if state == "conflict":
        raise Problem("idempotency-conflict", "Idempotency-Key: already used with another request body",
                      field="Idempotency-Key")
    if state == "busy":
        raise Problem("idempotency-in-progress", "Idempotency-Key: the first request with it is still running",
                      field="Idempotency-Key")
    if state == "replay":
        media = MEDIA_TYPE if status is not None and status >= 400 else "application/json"
        return Response(stored, status_code=status or 200, media_type=media, headers={"idempotent-replayed": "true"})
    try:
        response = await _answer(request, inner)
    except BaseException:
        await run_in_threadpool(api.outbox.idem_finish, who.id, idem_key, 500, None)
        raise
    kept = bytes(response.body) if response.status_code < 500 else None
    await run_in_threadpool(api.outbox.idem_finish, who.id, idem_key, response.status_code,
                            None if kept is None else kept.decode())
    api.purge_idempotency(now - timedelta(seconds=IDEMPOTENCY_KEEP_S))
    return response
