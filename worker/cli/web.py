"""`oaksend web` (the dashboard, and the HTTP API under /v1) and `oaksend web add-user`.

The dashboard refuses to start without a way to know who is asking: users (`add-user`), or a
trusted reverse proxy's header (OAKSEND_WEB_PROXY_HEADER with OAKSEND_WEB_TRUSTED_PROXIES).
It binds 127.0.0.1 unless told otherwise. Needs the `web` extra.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from oaksend.worker.cli.common import EXIT_OK, CliError, settings_of

__all__ = ["add_commands"]


def _need_web_extra() -> None:
    try:
        import argon2  # noqa: F401
        import jinja2  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise CliError(f"web: needs the web extra (pip install 'oaksend[web]'): {exc.name} is missing") from None


def cmd_web(args: argparse.Namespace) -> int:
    if getattr(args, "web_command", None) == "add-user":
        return cmd_add_user(args)
    _need_web_extra()
    import uvicorn

    from oaksend.web import create_app
    from oaksend.web.auth import trusted_networks
    from oaksend.worker.cli.common import outbox_of

    if not 1 <= args.port <= 65535:
        raise CliError("port: must be from 1 to 65535")
    settings = settings_of(args)
    try:
        networks = trusted_networks(settings.web_trusted_proxies)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    proxy = bool(settings.web_proxy_header and networks)
    if settings.web_proxy_header and not networks:
        raise CliError("OAKSEND_WEB_PROXY_HEADER is set but OAKSEND_WEB_TRUSTED_PROXIES is not: the header "
                       "would be believed from no one; list the proxies' addresses")
    outbox = outbox_of(settings)
    try:
        users = outbox.web_user_count()
    finally:
        outbox.engine.dispose()
    if not users and not proxy:
        raise CliError("web: no way to log in: add a user (oaksend web add-user NAME --role admin), or set "
                       "OAKSEND_WEB_PROXY_HEADER and OAKSEND_WEB_TRUSTED_PROXIES")
    how = f"{users} users" + (f", and {settings.web_proxy_header} from trusted proxies" if proxy else "")
    print(f"oaksend web: http://{args.host}:{args.port}/ ({how})", file=sys.stderr, flush=True)
    # proxy_headers off: the peer's own address decides whether a proxy header is believed.
    uvicorn.run(create_app(settings), host=args.host, port=args.port, proxy_headers=False,
                log_level=args.log_level.lower(), server_header=False)
    return EXIT_OK


def _password(args: argparse.Namespace) -> str:
    """From a prompt (twice) at a terminal, else the first line of stdin: never from the command line."""
    import getpass

    if sys.stdin.isatty():
        first = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != first:
            raise CliError("password: the two entries differ")
        return first
    return sys.stdin.readline().rstrip("\r\n")


def cmd_add_user(args: argparse.Namespace) -> int:
    _need_web_extra()
    from oaksend.web.auth import hash_password
    from oaksend.worker.cli.brakes import audited
    from oaksend.worker.cli.common import outbox_of
    from oaksend.worker.clock import utcnow

    name = (args.name or "").strip()
    if not name or len(name) > 200 or any(c.isspace() or not c.isprintable() for c in name):
        raise CliError("name: 1-200 printable characters without spaces")
    try:
        digest = hash_password(_password(args))
    except ValueError as exc:
        raise CliError(str(exc)) from None
    settings = settings_of(args)
    outbox = outbox_of(settings)
    try:
        with audited(outbox, args, "web add-user", {"user": name, "role": args.role}) as audit:
            added = outbox.put_user(name, digest, args.role, utcnow())
            audit.count = 1
            audit.result["added" if added else "updated"] = name
    finally:
        outbox.engine.dispose()
    print(f"{'added' if added else 'updated'} {name} ({args.role})")
    return EXIT_OK


def add_commands(sub: Any) -> None:
    """Register `web` and `web add-user`."""
    p = sub.add_parser("web", help="the dashboard (and the HTTP API under /v1)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_web)
    web_sub = p.add_subparsers(dest="web_command", metavar="COMMAND")
    u = web_sub.add_parser("add-user", help="add a dashboard user, or set their password and role")
    u.add_argument("name")
    u.add_argument("--role", required=True, choices=["read", "operator", "admin"],
                   help="read: everything, numbers masked; operator: + retry, cancel, pauses; "
                        "admin: + limits and revealing numbers")
    u.add_argument("--actor", default=None,
                   help="who did it, for the audit (default: OAKSEND_ACTOR, else the login name)")
    u.set_defaults(func=cmd_web)
