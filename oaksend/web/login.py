"""Logging in and out: argon2 hashes in `oaksend_web_users`, a new session on success (never the
anonymous one: no fixation), failed attempts braked per name and per address."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from oaksend.web.auth import LOGIN_WINDOW_S, dummy_verify, verify_password

if TYPE_CHECKING:
    from oaksend.web.app import Ctx, Web


def routes(web: Web) -> list[Any]:
    from oaksend.web.app import route

    async def login_page(request: Request, ctx: Ctx) -> Response:
        if ctx.user is not None:
            return web.redirect(ctx, "/")
        return web.render(ctx, "login.html", error=None, name="")

    async def login(request: Request, ctx: Ctx) -> Response:
        name = str(ctx.form.get("name") or "").strip()[:200]
        password = str(ctx.form.get("password") or "")
        address = request.client.host if request.client else "?"
        if await web.run(web.brake.blocked, name, address):
            return web.render(ctx, "login.html", status_code=429, name=name,
                              error=f"too many failed attempts: wait {LOGIN_WINDOW_S // 60} minutes")
        ok, role = await web.run(_check, web, name, password)
        if not ok:
            await web.run(web.brake.failed, name, address)
            return web.render(ctx, "login.html", status_code=401, name=name, error="wrong name or password")
        await web.run(web.brake.succeeded, name, address)
        await web.run(web.sessions.end, ctx.token)
        ctx.token, ctx.record = await web.run(web.sessions.new, name, role)
        ctx.set_cookie = True
        return web.redirect(ctx, "/")

    async def logout(request: Request, ctx: Ctx) -> Response:
        await web.run(web.sessions.end, ctx.token)
        ctx.token, ctx.record = await web.run(web.sessions.new)
        ctx.set_cookie = True
        return web.redirect(ctx, "/login")

    return [route("/login", web.guard(login_page, public=True)),
            route("/login", web.guard(login, public=True), ("POST",)),
            route("/logout", web.guard(logout, public=True), ("POST",))]


def _check(web: Web, name: str, password: str) -> tuple[bool, str]:
    """(the name and password match, the user's role); rehashes a hash made with older parameters."""
    from oaksend.web.auth import hash_password
    from oaksend.worker.clock import utcnow

    row = web.outbox.web_user(name) if name else None
    if row is None:
        dummy_verify(password)  # the same work for an unknown name: no timing tells names apart
        return False, ""
    ok, rehash = verify_password(row.password_hash, password)
    if ok and rehash:
        web.outbox.set_password_hash(name, hash_password(password), utcnow())
    return ok, row.role
