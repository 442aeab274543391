"""`oaksend chatbot show|set-limit|pause|resume`: a chatbot's rate limit and pause, no restart needed.

Every change is audited (`oaksend audit`), its intent written before it acts.
"""

from __future__ import annotations

import argparse
from datetime import datetime, timedelta
from typing import Any

from oaksend.worker.cli.brakes import audited
from oaksend.worker.cli.common import EXIT_OK, CliError, outbox_of, settings_of
from oaksend.worker.cli.render import iso, print_json, table

__all__ = ["add_commands"]


def cmd_chatbot(args: argparse.Namespace) -> int:
    """`chatbot show|set-limit|pause|resume`: limits and pauses, stored in the database."""
    import redis

    from oaksend.worker.clock import utcnow
    from oaksend.worker.delivery.limits import LimitBook
    from oaksend.worker.delivery.ratelimit import RateLimiter

    if args.action != "show" and not (args.serial_number or "").strip():
        raise CliError(f"serial_number: `chatbot {args.action}` needs the chatbot's SerialNumber "
                       f"(oaksend chatbot {args.action} SN)")
    settings = settings_of(args)
    outbox = outbox_of(settings)
    now = utcnow()
    if args.action == "set-limit":
        if args.rate is not None and args.rate <= 0:
            raise CliError("rate: must be greater than 0 (messages per second)")
        if args.burst is not None and args.burst < 1:
            raise CliError("burst: must be at least 1")
        if args.segments_per_s is not None and args.segments_per_s <= 0:
            raise CliError("segments-per-s: must be greater than 0")
        limits = {"rate_per_s": args.rate, "burst": args.burst, "segments_per_s": args.segments_per_s}
        with audited(outbox, args, "chatbot set-limit", {"chatbot": args.serial_number, **limits}):
            outbox.set_limit(args.serial_number, now, **limits)
    elif args.action in ("pause", "resume"):
        client = redis.Redis.from_url(settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
        try:
            _pause_or_resume(args, outbox, RateLimiter(client, settings.keys), now)
        finally:
            client.close()
    rows = outbox.chatbots([args.serial_number] if args.serial_number else None)
    names = [args.serial_number] if args.serial_number else sorted(rows)
    book = LimitBook(outbox, settings, ttl_s=0)
    out = []
    for sn in names:
        state = book.get(sn)
        paused = state.paused(now)
        out.append({
            "chatbot": sn,
            "rate_per_s": state.limit.rate_per_s,
            "burst": state.limit.burst,
            "segments_per_s": state.limit.segments_per_s,
            "configured": sn in rows,
            "paused": paused,
            "paused_until": iso(state.paused_until) if paused else None,
            "pause_reason": state.pause_reason if paused else None,
        })
    if args.json:
        print_json(out if not args.serial_number else out[0])
    else:
        table(out, ["chatbot", "rate_per_s", "burst", "segments_per_s", "paused", "paused_until", "pause_reason"])
    return EXIT_OK


def _pause_or_resume(args: argparse.Namespace, outbox: Any, limiter: Any, now: datetime) -> None:
    """`chatbot pause|resume`, audited before it acts: in the database (the truth), then Redis."""
    sn = args.serial_number
    if args.action == "pause":
        until = now + timedelta(seconds=args.for_s) if args.for_s else now + timedelta(days=3650)
        reason = f"paused by operator{': ' + args.reason if args.reason else ''}"
        with audited(outbox, args, "chatbot pause", {"chatbot": sn, "for_s": args.for_s}, note=args.reason,
                     result={"paused_until": until.isoformat()}):
            outbox.pause(sn, until, reason, now)
            limiter.pause(sn, until, now)
        return
    with audited(outbox, args, "chatbot resume", {"chatbot": sn}) as audit:
        audit.result["was_paused"] = outbox.resume(sn, now)
        limiter.resume(sn)
    if not audit.result["was_paused"]:
        print(f"{sn}: was not paused")


def add_commands(sub: Any) -> None:
    """Register `chatbot`."""
    p = sub.add_parser("chatbot", help="a chatbot's rate limit and pause (no restart needed)")
    p.add_argument("action", choices=["show", "set-limit", "pause", "resume"])
    p.add_argument("serial_number", nargs="?", help="the chatbot (all configured ones for `show` when omitted)")
    p.add_argument("--rate", type=float, help="messages per second")
    p.add_argument("--burst", type=int, help="messages allowed at once")
    p.add_argument("--segments-per-s", type=float, help="optional limit in SMS segments per second")
    p.add_argument("--for", dest="for_s", type=float, help="pause for this many seconds (default: until resumed)")
    p.add_argument("--reason", help="why (shown to operators)")
    p.add_argument("--actor", default=None,
                   help="who did it, for the audit (default: OAKSEND_ACTOR, else the login name)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_chatbot)
