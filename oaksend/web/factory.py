"""The dashboard's ASGI app: `create_app(settings, *, resolver=None)`, with the HTTP API under /v1
when it is installed (oaksend.web.api)."""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from oaksend.web.app import HERE, Resolver, Web
from oaksend.worker.settings import Settings

__all__ = ["create_app"]


def create_app(settings: Settings, *, resolver: Resolver | None = None) -> Starlette:
    """The dashboard (and, when installed, the HTTP API under /v1) as one ASGI app.

    Mounted in an application, pass `resolver`: a callable taking the request and returning
    `oaksend.web.User(name, role)` or None (no access); the application's own login decides.
    Standalone (`oaksend web`), users log in (`oaksend web add-user`) or a trusted proxy names them.
    """
    from contextlib import asynccontextmanager

    from oaksend.web.login import routes as login_routes
    from oaksend.web.messages import routes as message_routes
    from oaksend.web.pages import routes as page_routes

    web = Web(settings, resolver)
    routes: list[Any] = [*login_routes(web), *page_routes(web), *message_routes(web),
                         Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static")]
    try:
        from oaksend.web.api import create_api  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        pass
    else:
        routes.append(Mount("/v1", app=create_api(settings)))

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> Any:
        yield
        web.close()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.web = web
    return app
