"""`oaksend campaign ...` and `oaksend scheduler`: a thin shell over oaksend.worker.campaigns.service.

Exit codes are the CLI's (oaksend.worker.cli.common): 2 for bad input (with
`--json`, the bad rows are also printed as JSON on stdout), 3 for an unknown
campaign, 1 for a state that does not allow the action (e.g. resume of a
campaign that is not paused).
"""

from __future__ import annotations

import argparse
import signal
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

from oaksend.worker.cli.common import EXIT_OK, settings_of
from oaksend.worker.cli.render import print_json, table


def _service(args: argparse.Namespace) -> Any:
    from oaksend.worker.campaigns.service import Campaigns

    return Campaigns(settings_of(args))


def _spec(args: argparse.Namespace) -> Any:
    from oaksend.errors import ValidationError
    from oaksend.worker.campaigns.audience import AudienceSpec
    from oaksend.worker.campaigns.schedule import parse_schedule
    from oaksend.worker.campaigns.service import CampaignSpec

    if args.template is not None and args.template_file is not None:
        raise ValidationError("template", "give --template or --template-file, not both")
    template = args.template
    if args.template_file is not None:
        try:
            template = Path(args.template_file).read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValidationError("template_file",
                                  f"cannot read {args.template_file!r} ({type(exc).__name__})") from None
    if template is None:
        raise ValidationError("template", "is required (--template TEXT or --template-file F)")
    for name in ("name", "chatbot", "audience"):
        if not getattr(args, name):
            raise ValidationError(name, f"is required (--{name})")
    return CampaignSpec(
        name=args.name, chatbot=args.chatbot, template=template,
        schedule=parse_schedule(at=args.at, before=args.before, cron=args.cron), tz=args.tz,
        audience=AudienceSpec(args.phone_column, args.key_column, args.tz_column),
        quiet_hours=args.quiet_hours, deadline=args.deadline, rate_cap_per_s=args.rate_cap, missed=args.missed,
        frequency_cap=args.frequency_cap, draft=getattr(args, "draft", False),
    )


def _audience_errors(args: argparse.Namespace, exc: Exception) -> None:
    """With --json, bad rows go to stdout as JSON too (the one-line error still goes to stderr)."""
    from oaksend.worker.campaigns.audience import AudienceError

    if getattr(args, "json", False) and isinstance(exc, AudienceError):
        print_json({"error": str(exc), "bad_rows": exc.total,
                    "errors": [{"row": e.row, "column": e.column, "why": e.why} for e in exc.errors]})


def cmd_create(args: argparse.Namespace) -> int:
    from oaksend.errors import ValidationError
    from oaksend.worker.campaigns.audience import read_csv

    spec = _spec(args)
    service = _service(args)
    try:
        result = service.create(spec, read_csv(args.audience))
    except ValidationError as exc:
        _audience_errors(args, exc)
        raise
    finally:
        service.close()
    if args.json:
        print_json({"id": result.id, "recipients": result.recipients, "messages": result.messages,
                    "skipped": dict(result.skipped)})
    else:
        print(result.id)
    return EXIT_OK


def cmd_preview(args: argparse.Namespace) -> int:
    from oaksend.errors import ValidationError
    from oaksend.worker.campaigns.audience import read_csv

    service = _service(args)
    try:
        if args.id is not None:
            rows = service.preview_id(args.id, args.limit)
        else:
            rows = service.preview(_spec(args), read_csv(args.audience) if args.audience else ([], iter(())),
                                   args.limit)
    except ValidationError as exc:
        _audience_errors(args, exc)
        raise
    finally:
        service.close()
    if args.json:
        print_json(rows)
        return EXIT_OK
    from oaksend.worker.logs import mask_phone

    for r in rows:
        key = mask_phone(r["recipient"]) if r["recipient"] == r["to"] else r["recipient"]
        print(f"{key} {mask_phone(r['to'])}  {r['send_at_local']} ({r['zone']})  = {r['send_at_utc']}"
              f"  {r['segments']} segment(s) {r['encoding']}")
        print(f"    {r['text']}")
    if not rows:
        print("(no messages)")
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    service = _service(args)
    try:
        rows = [{"id": c.id, "name": c.name, "chatbot": c.serial_number, "state": c.state,
                 "schedule": c.schedule_kind, "recipients": c.recipients, "tz": c.tz,
                 "created_at": c.created_at.isoformat()} for c in service.list()]
    finally:
        service.close()
    if args.json:
        print_json(rows)
    else:
        table(rows, ["id", "name", "chatbot", "state", "schedule", "recipients", "tz", "created_at"])
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    service = _service(args)
    try:
        data = service.show(args.id)
    finally:
        service.close()
    if args.json:
        print_json(data)
        return EXIT_OK
    for k in ("id", "name", "chatbot", "state", "tz", "quiet_hours", "missed", "rate_cap_per_s", "frequency_cap",
              "recipients",
              "priority", "next_send_at", "eta"):
        print(f"{k:15} {'' if data[k] is None else data[k]}")
    print(f"{'schedule':15} {', '.join(f'{k}={v}' for k, v in data['schedule'].items())}")
    print()
    table([{"state": k, "messages": v} for k, v in sorted(data["messages"].items())], ["state", "messages"])
    if data["skipped"]:
        print()
        table([{"skipped": k, "messages": v} for k, v in sorted(data["skipped"].items())], ["skipped", "messages"])
    return EXIT_OK


def _action(verb: str) -> Any:
    def cmd(args: argparse.Namespace) -> int:
        service = _service(args)
        try:
            n = getattr(service, verb)(args.id)
        finally:
            service.close()
        done = {"start": "released", "pause": "held", "resume": "released", "cancel": "cancelled"}[verb]
        if args.json:
            print_json({"id": args.id, "action": verb, done: n})
        else:
            print(f"campaign {args.id}: {n} unsent message(s) {done}")
        return EXIT_OK

    return cmd


def cmd_update(args: argparse.Namespace) -> int:
    from oaksend.errors import ValidationError
    from oaksend.worker.campaigns.audience import read_csv

    service = _service(args)
    try:
        result = service.update(args.id, read_csv(args.audience))
    except ValidationError as exc:
        _audience_errors(args, exc)
        raise
    finally:
        service.close()
    data = {"id": args.id, "added": result.messages, "cancelled": result.cancelled, "changed": result.moved,
            "skipped": dict(result.skipped)}
    if args.json:
        print_json(data)
    else:
        print(f"campaign {args.id}: {result.messages} reminder(s) added, {result.cancelled} cancelled, "
              f"{result.moved} changed")
    return EXIT_OK


def cmd_scheduler(args: argparse.Namespace) -> int:
    from oaksend.worker.campaigns.scheduler import run
    from oaksend.worker.logs import configure_logging

    settings = settings_of(args)
    configure_logging(args.log_level)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    run(settings, stop, tick_s=args.tick_s, horizon=timedelta(seconds=args.horizon_s), use_lock=not args.no_lock)
    return EXIT_OK


def _campaign_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--name", required=required)
    p.add_argument("--chatbot", required=required, help="the chatbot's SerialNumber")
    p.add_argument("--audience", required=required, help="CSV file (UTF-8, header row)")
    p.add_argument("--template", help="the text, with {column} and {column:%%a %%d %%b %%H:%%M} placeholders")
    p.add_argument("--template-file", help="read the template from this file")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--at", help="once, at this local time in --tz (2026-12-01T09:00)")
    when.add_argument("--before", help="relative: COLUMN:OFFSETS, e.g. appointment_at:24h,2h")
    when.add_argument("--cron", help='recurring: a cron expression in --tz, e.g. "0 9 * * MON"')
    p.add_argument("--tz", default="UTC", help="the campaign's IANA time zone (default UTC)")
    p.add_argument("--tz-column", help="a column with each recipient's IANA zone")
    p.add_argument("--phone-column", default="phone", help="default phone")
    p.add_argument("--key-column", help="the recipient key column (default: the phone column)")
    p.add_argument("--quiet-hours", default="21:00-08:00", help="local quiet window, or off (default 21:00-08:00)")
    p.add_argument("--deadline", help="how long after its time a message may still go (e.g. 2h); "
                                      "--before reminders never go after their anchor")
    p.add_argument("--rate-cap", type=float, help="messages per second for this campaign (at most the chatbot's)")
    p.add_argument("--frequency-cap", type=int,
                   help="at most N campaign messages (of any campaign) per number within 24 h (default: no cap)")
    p.add_argument("--missed", choices=["send", "skip"], default="send",
                   help="an occurrence missed during downtime: send late (while its deadline allows) or skip")
    p.add_argument("--json", action="store_true")


def add_commands(sub: Any) -> None:
    """Register `campaign` and `scheduler` on the `oaksend` parser."""
    p = sub.add_parser("campaign", help="scheduled reminder campaigns (create, preview, show, pause, ...)")
    csub = p.add_subparsers(dest="campaign_command", required=True, metavar="ACTION")

    c = csub.add_parser("create", help="validate an audience and schedule its messages; prints the id")
    _campaign_args(c, required=True)
    c.add_argument("--draft", action="store_true",
                   help="write everything but send nothing until `oaksend campaign start ID`")
    c.set_defaults(func=cmd_create)

    c = csub.add_parser("preview", help="the first messages as they would be sent (writes nothing)")
    c.add_argument("id", type=int, nargs="?", help="a stored campaign (or give the create arguments)")
    c.add_argument("--limit", type=int, default=5)
    _campaign_args(c, required=False)
    c.set_defaults(func=cmd_preview)

    c = csub.add_parser("list", help="every campaign")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_list)

    c = csub.add_parser("show", help="counts by state, skipped by cause, next send time, ETA")
    c.add_argument("id", type=int)
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_show)

    for verb, helptext in (("start", "schedule a draft (created with --draft)"),
                           ("pause", "keep unsent messages pending until resumed"),
                           ("resume", "release a paused campaign's messages"),
                           ("cancel", "cancel every unsent message")):
        c = csub.add_parser(verb, help=helptext)
        c.add_argument("id", type=int)
        c.add_argument("--json", action="store_true")
        c.set_defaults(func=_action(verb))

    c = csub.add_parser("update", help="replace the audience: move, cancel and add reminders")
    c.add_argument("id", type=int)
    c.add_argument("--audience", required=True)
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_update)

    p = sub.add_parser("scheduler", help="tick campaigns (one is active, others stand by)")
    p.add_argument("--tick-s", type=float, default=5.0, help="seconds between ticks (default 5)")
    p.add_argument("--horizon-s", type=float, default=6 * 3600.0,
                   help="materialize cron occurrences this far ahead (default 6 h)")
    p.add_argument("--no-lock", action="store_true", help=argparse.SUPPRESS)  # tests: two active at once
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(func=cmd_scheduler)


__all__ = ["add_commands"]
