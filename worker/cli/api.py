"""`oaksend api-key create|list|revoke`, `oaksend webhook add|list|remove|rotate|deliveries|redeliver`,
and `oaksend webhooks`, the process that delivers status webhooks (docs/api.md).

A key and a webhook secret are printed once, when made; neither is stored (a key's
hash is; a secret is derived from OAKSEND_KEY_HASH_SECRET and a random salt).
"""

from __future__ import annotations

import argparse
from datetime import timedelta
from typing import Any

from oaksend.worker.cli.brakes import audited
from oaksend.worker.cli.common import EXIT_NOT_FOUND, EXIT_OK, CliError, outbox_of, settings_of
from oaksend.worker.cli.render import iso, print_json, table

__all__ = ["add_commands"]

#: After `webhook rotate` the previous secret signs too for this long.
ROTATION_OVERLAP_S = 24 * 3600.0


def _split(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def cmd_api_key(args: argparse.Namespace) -> int:
    """`api-key create|list|revoke`."""
    from oaksend.worker.apikeys import check_scopes, new_key
    from oaksend.worker.clock import utcnow
    from oaksend.worker.webhooks.endpoint import check_chatbots

    settings = settings_of(args)
    outbox = outbox_of(settings)
    if args.action == "create":
        if not (args.name or "").strip():
            raise CliError("name: `api-key create --name NAME` (who uses the key, e.g. booking-app)")
        if args.rate_limit is not None and args.rate_limit < 1:
            raise CliError("rate-limit: at least 1 request per OAKSEND_API_RATE_WINDOW_S")
        scopes = check_scopes(_split(args.scopes) or [])
        chatbots = check_chatbots(_split(args.chatbots))
        token, prefix, digest = new_key()
        with audited(outbox, args, "api-key create", {"prefix": prefix, "scopes": scopes, "chatbots": chatbots}):
            outbox.create_key(prefix=prefix, token_hash=digest, name=args.name.strip(), scopes=scopes,
                              chatbots=chatbots, rate_limit=args.rate_limit, actor=args.actor, now=utcnow())
        if args.json:
            print_json({"key": token, "prefix": prefix, "scopes": scopes, "chatbots": chatbots})
        else:
            print(token)
            print(f"# {prefix}: shown once, store it now (only its hash is kept)")
        return EXIT_OK
    if args.action == "revoke":
        if not args.prefix:
            raise CliError("prefix: `api-key revoke PREFIX` (the oks_... shown by `api-key list`)")
        with audited(outbox, args, "api-key revoke", {"prefix": args.prefix}) as audit:
            audit.result["revoked"] = outbox.revoke_key(args.prefix, utcnow())
        if not audit.result["revoked"]:
            raise CliError(f"prefix: no active key {args.prefix!r}", EXIT_NOT_FOUND)
        print(f"{args.prefix}: revoked")
        return EXIT_OK
    rows = [{"prefix": k.prefix, "name": k.name, "scopes": ",".join(k.scopes),
             "chatbots": ",".join(k.chatbots) if k.chatbots is not None else "*", "rate_limit": k.rate_limit,
             "created_at": iso(k.created_at), "revoked_at": iso(k.revoked_at)} for k in outbox.api_keys()]
    if args.json:
        print_json(rows)
    else:
        table(rows, ["prefix", "name", "scopes", "chatbots", "rate_limit", "created_at", "revoked_at"])
    return EXIT_OK


def cmd_webhook(args: argparse.Namespace) -> int:
    """`webhook add|list|remove|rotate|deliveries|redeliver`."""
    from oaksend.worker.clock import utcnow
    from oaksend.worker.webhooks.endpoint import check_chatbots, check_events, check_url, new_salt
    from oaksend.worker.webhooks.signing import derive_secret

    settings = settings_of(args)
    outbox = outbox_of(settings)
    if args.action in ("add", "rotate") and not settings.key_secret:
        raise CliError("OAKSEND_KEY_HASH_SECRET: set it first; webhook secrets are derived from it")
    if args.action == "add":
        url = check_url(args.target or "")
        events, chatbots = check_events(_split(args.events) or []), check_chatbots(_split(args.chatbots))
        salt = new_salt()
        with audited(outbox, args, "webhook add", {"url": url, "events": events, "chatbots": chatbots}) as audit:
            audit.result["id"] = outbox.add_endpoint(url=url, events=events, chatbots=chatbots, salt=salt,
                                                     actor=args.actor, now=utcnow())
        secret = derive_secret(settings.key_secret, salt)
        if args.json:
            print_json({"id": audit.result["id"], "secret": secret})
        else:
            print(f"endpoint {audit.result['id']}\n{secret}\n# the signing secret: shown once")
        return EXIT_OK
    if args.action == "list":
        rows = [{"id": e.id, "url": e.url, "events": ",".join(e.events),
                 "chatbots": ",".join(e.chatbots) if e.chatbots is not None else "*", "failures": e.failures,
                 "created_at": iso(e.created_at)} for e in outbox.endpoints()]
        if args.json:
            print_json(rows)
        else:
            table(rows, ["id", "url", "events", "chatbots", "failures", "created_at"])
        return EXIT_OK
    target = _int(args.target, "id")
    if args.action == "remove":
        with audited(outbox, args, "webhook remove", {"id": target}) as audit:
            audit.result["removed"] = outbox.remove_endpoint(target, utcnow())
        _found(audit.result["removed"], f"id: no webhook endpoint {target}")
    elif args.action == "rotate":
        salt = new_salt()
        with audited(outbox, args, "webhook rotate", {"id": target}) as audit:
            audit.result["rotated"] = outbox.rotate_endpoint(target, salt,
                                                             utcnow() + timedelta(seconds=ROTATION_OVERLAP_S))
        _found(audit.result["rotated"], f"id: no webhook endpoint {target}")
        print(derive_secret(settings.key_secret, salt))
    elif args.action == "redeliver":
        with audited(outbox, args, "webhook redeliver", {"delivery": target}) as audit:
            audit.result["queued"] = outbox.retry_delivery(target, utcnow())
        _found(audit.result["queued"], f"id: no delivery {target} that is delivered or failed")
    else:
        _deliveries(args, outbox, target)
    return EXIT_OK


def _int(value: str | None, field: str) -> int:
    if value is None or not value.isdigit():
        raise CliError(f"{field}: a positive integer")
    return int(value)


def _found(ok: bool, message: str) -> None:
    if not ok:
        raise CliError(message, EXIT_NOT_FOUND)


def _deliveries(args: argparse.Namespace, outbox: Any, endpoint_id: int) -> None:
    rows = [{"id": r.id, "event": r.event, "message_id": r.message_id, "state": r.state, "attempts": r.attempts,
             "last_status": r.last_status, "last_error": r.last_error, "next_attempt_at": iso(r.next_attempt_at),
             "delivered_at": iso(r.delivered_at)}
            for r in outbox.deliveries(endpoint_ids=[endpoint_id], state=args.state, limit=args.limit)]
    if args.json:
        print_json(rows)
    else:
        table(rows, ["id", "event", "message_id", "state", "attempts", "last_status", "last_error", "delivered_at"])


def cmd_webhooks(args: argparse.Namespace) -> int:
    """`webhooks`: deliver status webhooks until SIGTERM (one process active, others stand by)."""
    import os
    import signal
    import socket
    import threading

    from oaksend.worker.logs import configure_logging
    from oaksend.worker.webhooks.deliver import run

    settings = settings_of(args)
    configure_logging(args.log_level, secrets=settings.secrets(), fmt=settings.log_format)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    run(settings, stop, name=f"{socket.gethostname()}:{os.getpid()}")
    return EXIT_OK


def add_commands(sub: Any) -> None:
    """Register `api-key`, `webhook` and `webhooks`."""
    actor_help = "who did it, for the audit (default: OAKSEND_ACTOR, else the login name)"
    p = sub.add_parser("api-key", help="keys of the HTTP API: create (shown once), list, revoke")
    p.add_argument("action", choices=["create", "list", "revoke"])
    p.add_argument("prefix", nargs="?", help="the key to revoke (its oks_... prefix)")
    p.add_argument("--name", help="who uses the key (create)")
    p.add_argument("--scopes", default="send,read",
                   help="send, read, operate, admin; comma-separated (default send,read)")
    p.add_argument("--chatbots", help="the only chatbots the key may use and see, comma-separated (default: all)")
    p.add_argument("--rate-limit", type=int,
                   help="requests per OAKSEND_API_RATE_WINDOW_S (default OAKSEND_API_RATE_LIMIT)")
    p.add_argument("--actor", default=None, help=actor_help)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_api_key)

    p = sub.add_parser("webhook", help="status webhook endpoints and their deliveries")
    p.add_argument("action", choices=["add", "list", "remove", "rotate", "deliveries", "redeliver"])
    p.add_argument("target", nargs="?", help="the URL (add), the endpoint id (remove, rotate, deliveries) "
                                             "or the delivery id (redeliver)")
    p.add_argument("--events", default="sent,failed,unknown,expired", help="outcomes to deliver (add)")
    p.add_argument("--chatbots", help="only these chatbots' events, comma-separated (add; default: all)")
    p.add_argument("--state", choices=["pending", "delivered", "failed"], help="deliveries in this state only")
    p.add_argument("--limit", type=int, default=50, help="deliveries shown, newest first (default 50)")
    p.add_argument("--actor", default=None, help=actor_help)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_webhook)

    p = sub.add_parser("webhooks", help="run the status webhook deliveries (one is active, others stand by)")
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(func=cmd_webhooks)
