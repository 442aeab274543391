"""The dashboard and the HTTP API: one ASGI app (`oaksend web`, or mounted in an application).

    from oaksend.web import User, create_app

    app = create_app(load_settings(), resolver=lambda request: User("alice", "operator"))

Needs the `web` extra (`pip install 'oaksend[web]'`). docs/web.md has the pages, the roles
and the security measures.
"""

from __future__ import annotations

from oaksend.web.auth import ROLES, User
from oaksend.web.factory import create_app

__all__ = ["ROLES", "User", "create_app"]
