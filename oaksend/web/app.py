"""What every page of the dashboard shares (`Web`), and its guard.

Every page and action goes through `Web.guard`, which finds the session and the user, refuses a
state-changing request that comes from another site or lacks the session's CSRF token, refuses an
action the user's role does not allow (403), and puts the security headers (a CSP whose nonce is
new for every response) on whatever the handler answers.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from oaksend.web.auth import LoginBrake, Sessions, User, allowed, check_role, proxy_user, same_token, trusted_networks
from oaksend.web.security import cookie_flags, cross_site, new_nonce, security_headers
from oaksend.worker.settings import Settings

__all__ = ["Ctx", "Resolver", "Web", "route"]

HERE = Path(__file__).resolve().parent
COOKIE = "oaksend_session"
#: A resolver the application passes: the request -> the user (name and role), or None for "no access".
Resolver = Callable[[Request], "User | Awaitable[User | None] | None"]
Handler = Callable[[Request, "Ctx"], Awaitable[Response]]


@dataclass
class Ctx:
    """One request as the handlers see it."""

    user: User | None
    token: str
    record: dict[str, str]
    nonce: str
    base: str
    form: dict[str, Any] = field(default_factory=dict)
    set_cookie: bool = False


class Web:
    """What every handler shares: settings, the outbox, Redis, sessions, templates."""

    def __init__(self, settings: Settings, resolver: Resolver | None) -> None:
        import jinja2
        import redis

        from oaksend.models.db import make_engine
        from oaksend.models.repository import Outbox
        from oaksend.worker.status import Status

        self.settings, self.resolver = settings, resolver
        self.outbox = Outbox(make_engine(settings.database_url, schema=settings.db_schema))
        self.redis = redis.Redis.from_url(settings.redis_url, socket_timeout=3, socket_connect_timeout=3)
        self.status = Status(settings, outbox=self.outbox, redis_client=self.redis)
        self.sessions = Sessions(self.redis, settings.redis_prefix, settings.web_session_ttl_s)
        self.brake = LoginBrake(self.redis, settings.redis_prefix)
        self.networks = trusted_networks(settings.web_trusted_proxies)
        self.templates = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                                            autoescape=True, undefined=jinja2.StrictUndefined)
        from oaksend.web.filters import FILTERS

        self.templates.filters.update(FILTERS)

    async def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Blocking work (the database, Redis) off the event loop."""
        return await run_in_threadpool(fn, *args, **kwargs)

    # -- who is asking ---------------------------------------------------------------------
    async def _user(self, request: Request, record: dict[str, str]) -> User | None:
        if self.resolver is not None:
            found = self.resolver(request)
            if inspect.isawaitable(found):
                found = await found
            if found is None:
                return None
            if not isinstance(found, User):
                raise TypeError("the resolver must return oaksend.web.User or None")
            check_role(found.role)
            return found
        client = request.client.host if request.client else None
        name = proxy_user(self.settings.web_proxy_header, self.networks, client, request.headers)
        if name is not None:
            row = await self.run(self.outbox.web_user, name)
            return User(name, row.role if row is not None else "read")
        if record.get("user"):
            return User(record["user"], record["role"])
        return None

    async def context(self, request: Request) -> Ctx:
        base = request.scope.get("root_path", "").rstrip("/")
        token = request.cookies.get(COOKIE)
        record = await self.run(self.sessions.get, token) if token else None
        fresh = record is None
        if record is None:
            token, record = await self.run(self.sessions.new)
        assert token is not None
        user = await self._user(request, record)
        return Ctx(user, token, record, new_nonce(), base, set_cookie=fresh)

    # -- answering ---------------------------------------------------------------------------
    def render(self, ctx: Ctx, template: str, status_code: int = 200, **values: Any) -> HTMLResponse:
        from oaksend.web.auth import PERMISSIONS

        flash = ctx.record.pop("flash", None)
        if flash is not None:
            self.sessions.update(ctx.token, ctx.record)
        can = PERMISSIONS.get(ctx.user.role, frozenset()) if ctx.user else frozenset()
        html = self.templates.get_template(template).render(
            user=ctx.user, can=can, csrf=ctx.record["csrf"], nonce=ctx.nonce, base=ctx.base, flash=flash,
            login=self.resolver is None, **values)
        return HTMLResponse(html, status_code=status_code)

    def flash(self, ctx: Ctx, text: str) -> None:
        ctx.record["flash"] = text
        self.sessions.update(ctx.token, ctx.record)

    def redirect(self, ctx: Ctx, path: str) -> RedirectResponse:
        return RedirectResponse(ctx.base + path, status_code=303)

    def refuse(self, ctx: Ctx, status_code: int, text: str) -> HTMLResponse:
        return self.render(ctx, "error.html", status_code=status_code, error=text)

    def guard(self, handler: Handler, *, need: str | None = None, public: bool = False) -> Callable[..., Any]:
        """Wrap a handler: session, user, same-site and CSRF checks on POST, the role's permission, headers."""

        async def endpoint(request: Request) -> Response:
            ctx = await self.context(request)
            response = await self._checked(request, ctx, handler, need, public)
            response.headers.update(security_headers(ctx.nonce))
            if ctx.set_cookie:
                flags = cookie_flags(request.url.hostname, request.url.scheme, ctx.base or "/")
                response.set_cookie(COOKIE, ctx.token, max_age=int(self.settings.web_session_ttl_s), **flags)
            return response

        return endpoint

    async def _checked(self, request: Request, ctx: Ctx, handler: Handler, need: str | None,
                       public: bool) -> Response:
        from oaksend.errors import NotFound, ValidationError

        if request.method == "POST":
            if cross_site(request.headers, request.headers.get("host")):
                return self.refuse(ctx, 403, "refused: a request from another site")
            form = await request.form()
            ctx.form = {k: (form.getlist(k) if k.endswith("[]") else form.get(k)) for k in form}
            if not same_token(ctx.record.get("csrf"), ctx.form.get("csrf")):
                return self.refuse(ctx, 403, "refused: the form's security token is missing or out of date; "
                                             "reload the page and try again")
        if ctx.user is None and not public:
            if self.resolver is not None:
                return self.refuse(ctx, 403, "you have no access to this dashboard")
            return self.redirect(ctx, "/login")
        if need is not None and not allowed(ctx.user, need):
            return self.refuse(ctx, 403, "your role does not allow this")
        try:
            return await handler(request, ctx)
        except ValidationError as exc:
            return self.refuse(ctx, 400, str(exc))
        except NotFound as exc:
            return self.refuse(ctx, 404, str(exc))

    def close(self) -> None:
        self.status.close()
        self.redis.close()
        self.outbox.engine.dispose()


def route(path: str, endpoint: Callable[..., Any], methods: tuple[str, ...] = ("GET",)) -> Route:
    return Route(path, endpoint, methods=list(methods))
