"""`oaksend campaign ...` and `oaksend scheduler`: a thin shell over oaksend.worker.campaigns.service.

Exit codes are the CLI's (oaksend.worker.cli.common): 2 for bad input (with
`--json`, the bad rows are also printed as JSON on stdout), 3 for an unknown
campaign, 1 for a state that does not allow the action (e.g. resume of a
campaign that is not paused).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

from oaksend.worker.cli.brakes import audited
from oaksend.worker.cli.campaign_actions import add_action_options
from oaksend.worker.cli.campaign_zones import TZ_HELP, campaign_zone, check_at, print_counts, stored_counts
from oaksend.worker.cli.common import EXIT_OK, settings_of
from oaksend.worker.cli.render import print_json, printable, table


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
    check_at(args.at)
    return CampaignSpec(
        name=args.name, chatbot=args.chatbot, template=template,
        schedule=parse_schedule(at=args.at, before=args.before, cron=args.cron), tz=campaign_zone(args),
        audience=AudienceSpec(args.phone_column, args.key_column, args.tz_column),
        quiet_hours=args.quiet_hours, deadline=args.deadline, rate_cap_per_s=args.rate_cap, missed=args.missed,
        frequency_cap=args.frequency_cap, draft=getattr(args, "draft", False),
        allow_empty=getattr(args, "allow_empty", False), max_segments=args.max_segments,
    )


def _audience_errors(args: argparse.Namespace, exc: Exception) -> None:
    """With --json, every bad row goes to stdout as JSON too (the one-line error still goes to stderr);
    without it, the one line names the first few and says how to see them all."""
    from oaksend.worker.campaigns.audience import AudienceError

    if not isinstance(exc, AudienceError):
        return
    if getattr(args, "json", False):
        print_json({"error": str(exc), "bad_rows": exc.total,
                    "errors": [{"row": e.row, "column": e.column, "why": e.why} for e in exc.errors]})
    elif exc.total > AudienceError.SHOWN:
        raise AudienceError(exc.errors, exc.total, "--json lists them all") from None


def cmd_create(args: argparse.Namespace) -> int:
    from oaksend.errors import ValidationError
    from oaksend.worker.campaigns.audience import read_csv
    from oaksend.worker.campaigns.previews import report

    spec = _spec(args)
    service = _service(args)
    try:
        selection = {"name": spec.name, "chatbot": spec.chatbot, "audience": args.audience, "draft": spec.draft}
        with audited(service.outbox, args, "campaign create", selection) as audit:  # the intent first
            result = service.create(spec, read_csv(args.audience, allow_multiline=args.allow_multiline))
            audit.count, audit.result = result.messages, {"campaign": result.id, "recipients": result.recipients}
    except ValidationError as exc:
        _audience_errors(args, exc)
        raise
    finally:
        service.close()
    if result.expiring:  # written all the same: the chatbot's limit may be raised before they are due
        print(f"oaksend: warning: {result.expiring} of {result.messages} message(s) are certain to expire: "
              "the chatbot's limit (or --rate-cap) cannot send them before their deadlines", file=sys.stderr)
    counts = report(result.recipients, result.messages, result.skipped, tz=str(spec.tz), tz_source=args.tz_source)
    if args.json:
        print_json({"id": result.id, **counts})
    else:
        print(result.id)
        print_counts(counts, args.tz_source, file=sys.stderr)  # stdout stays the id alone
    return EXIT_OK


def cmd_preview(args: argparse.Namespace) -> int:
    from oaksend.errors import ValidationError
    from oaksend.worker.campaigns.audience import read_csv

    service = _service(args)
    try:
        if args.id is not None:
            rows = service.preview_id(args.id, args.limit)
            counts = stored_counts(service.show(args.id))
        else:
            spec = _spec(args)
            audience = read_csv(args.audience, allow_multiline=args.allow_multiline) if args.audience else None
            rows = service.preview(spec, audience or ([], iter(())), args.limit)
            again = read_csv(args.audience, allow_multiline=args.allow_multiline) if args.audience else None
            counts = {**service.preview_counts(spec, again or ([], iter(()))), "tz_source": args.tz_source}
    except ValidationError as exc:
        _audience_errors(args, exc)
        raise
    finally:
        service.close()
    if args.json:
        print_json({"preview": rows, **counts})
        return EXIT_OK
    from oaksend.worker.logs import mask_phone

    for r in rows:
        key = mask_phone(r["recipient"]) if r["recipient"] == r["to"] else printable(r["recipient"])
        print(f"{key} {mask_phone(r['to'])}  {r['send_at_local']} ({r['zone']})  = {r['send_at_utc']}"
              f"  {r['segments']} segment(s) {r['encoding']}")
        print(f"    {printable(r['text'])}")
    if not rows:
        print("(no messages)")
    print_counts(counts, counts.get("tz_source"))
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
    counts = stored_counts(data)
    data["skipped"], data["campaign_zone"] = counts["skipped"], counts["campaign_zone"]
    if args.json:
        print_json(data)
        return EXIT_OK
    for k in ("id", "name", "chatbot", "state", "tz", "quiet_hours", "missed", "rate_cap_per_s", "frequency_cap",
              "recipients",
              "priority", "next_send_at", "eta", "last_error"):
        print(f"{k:15} {printable(data[k])}")
    print(f"{'schedule':15} {', '.join(f'{k}={v}' for k, v in data['schedule'].items())}")
    print()
    table([{"state": k, "messages": v} for k, v in sorted(data["messages"].items())], ["state", "messages"])
    if data["skipped"]:
        print()
        table([{"skipped": k, "messages": v} for k, v in sorted(data["skipped"].items())], ["skipped", "messages"])
    if data["campaign_zone"]:
        print()
        table([{"quiet hours in the campaign's zone": k, "recipients": v} for k, v in data["campaign_zone"].items()],
              ["quiet hours in the campaign's zone", "recipients"])
    return EXIT_OK


def _action(verb: str) -> Any:
    def cmd(args: argparse.Namespace) -> int:
        from oaksend.worker.cli.campaign_actions import DONE, run_action

        service = _service(args)
        try:
            stop, n = run_action(args, service, verb)  # --dry-run, the brakes, the audit
        finally:
            service.close()
        if stop is not None:
            return stop
        done = DONE[verb]
        if args.json:
            print_json({"id": args.id, "action": verb, done: n})
        else:
            print(f"campaign {args.id}: {n} unsent message(s) {done}")
        return EXIT_OK

    return cmd


def cmd_update(args: argparse.Namespace) -> int:
    from oaksend.errors import ValidationError
    from oaksend.worker.campaigns.audience import read_csv
    from oaksend.worker.campaigns.plan import summary

    service = _service(args)

    def update() -> Any:
        return service.update(args.id, read_csv(args.audience, allow_multiline=args.allow_multiline),
                              partial=args.partial, dry_run=args.dry_run)

    try:
        if args.dry_run:  # writes nothing, not even an audit row
            result = update()
        else:
            with audited(service.outbox, args, "campaign update",
                         {"campaign": args.id, "audience": args.audience, "partial": args.partial}) \
                    as audit:  # the intent first
                result = update()
                audit.count = result.messages + result.cancelled + result.moved
                audit.result = {"added": result.messages, "revived": result.revived, "cancelled": result.cancelled,
                                "changed": result.moved}
    except ValidationError as exc:
        _audience_errors(args, exc)
        raise
    finally:
        service.close()
    people = {"added": result.recipients_added, "changed": result.recipients_changed,
              "removed": result.recipients_removed}
    skipped, _ = summary(result.skipped)
    if args.json:
        print_json({"id": args.id, "dry_run": args.dry_run, "added": result.messages, "revived": result.revived,
                    "cancelled": result.cancelled, "changed": result.moved, "skipped": skipped,
                    "recipients": people})
        return EXIT_OK
    would = " (dry run: nothing written) would have" if args.dry_run else ""
    print(f"campaign {args.id}{would}: {result.messages} reminder(s) added ({result.revived} of them revived), "
          f"{result.cancelled} cancelled, {result.moved} changed; recipients: {people['added']} added, "
          f"{people['changed']} changed, {people['removed']} removed")
    if skipped:
        print("skipped: " + ", ".join(f"{n} {cause.replace('_', ' ')}" for cause, n in skipped.items()))
    return EXIT_OK


def cmd_delete(args: argparse.Namespace) -> int:
    """Delete a campaign, its recipients and its unsent messages (asks first, audited)."""
    from oaksend.errors import NotFound
    from oaksend.worker.cli.brakes import audited, stop_unless_confirmed
    from oaksend.worker.cli.common import outbox_of
    from oaksend.worker.clock import utcnow

    outbox = outbox_of(settings_of(args))
    try:
        campaign = outbox.campaign(args.id)
        if campaign is None:
            raise NotFound(f"campaign {args.id} not found")
        stop = stop_unless_confirmed(
            args, "campaign delete", 0, why="a deleted campaign cannot be restored",
            action=f"delete campaign {args.id} ({campaign.state}), its {campaign.recipients} recipient(s) "
                   "and its unsent messages")
        if stop is not None:
            return stop
        with audited(outbox, args, "campaign delete", {"campaign": args.id}) as audit:
            done = outbox.delete_campaign(args.id, utcnow())
            if done is None:
                raise NotFound(f"campaign {args.id} not found")
            audit.count, audit.result = done["messages"], dict(done)
    finally:
        outbox.engine.dispose()
    if args.json:
        print_json({"id": args.id, "action": "delete", **done})
    else:
        print(f"campaign {args.id} deleted: {done['recipients']} recipient(s), {done['messages']} unsent message(s)")
    return EXIT_OK


def cmd_scheduler(args: argparse.Namespace) -> int:
    from oaksend.worker.campaigns.scheduler import run
    from oaksend.worker.logs import configure_logging

    settings = settings_of(args)
    configure_logging(args.log_level, secrets=settings.secrets(), fmt=args.log_format or settings.log_format)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    run(settings, stop, tick_s=args.tick_s, horizon=timedelta(seconds=args.horizon_s), use_lock=not args.no_lock)
    return EXIT_OK


_MULTILINE_HELP = ("read quoted cells that hold line breaks (a row is still refused when a line inside a cell "
                   "is a whole row: a stray quote)")


def _campaign_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--name", required=required)
    p.add_argument("--chatbot", required=required, help="the chatbot's SerialNumber")
    p.add_argument("--audience", required=required, help="CSV file (UTF-8, header row)")
    p.add_argument("--allow-multiline", action="store_true", help=_MULTILINE_HELP)
    p.add_argument("--template", help="the text, with {column} and {column:%%a %%d %%b %%H:%%M} placeholders")
    p.add_argument("--template-file", help="read the template from this file")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--at", help="once, at this local time in --tz (2026-12-01T09:00)")
    when.add_argument("--before", help="relative: COLUMN:OFFSETS, e.g. appointment_at:24h,2h")
    when.add_argument("--cron", help='recurring: a cron expression in --tz, e.g. "0 9 * * MON"')
    p.add_argument("--tz", help=TZ_HELP)
    p.add_argument("--tz-column", help="a column with each recipient's IANA zone")
    p.add_argument("--phone-column", default="phone", help="default phone")
    p.add_argument("--key-column", help="the recipient key column (default: the phone column)")
    p.add_argument("--quiet-hours", default="21:00-08:00", help="local quiet window, or off (default 21:00-08:00)")
    p.add_argument("--deadline", help="how long after its time a message may still go (e.g. 2h); "
                                      "--before reminders never go after their anchor")
    p.add_argument("--rate-cap", type=float, help="messages per second for this campaign (at most the chatbot's)")
    p.add_argument("--frequency-cap", type=int,
                   help="at most N campaign messages (of any campaign) per number within 24 h (default: no cap)")
    p.add_argument("--max-segments", type=int, help="skip (and count) a recipient whose text takes more SMS "
                   "segments than this (default: no limit)")
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
    c.add_argument("--allow-empty", action="store_true",
                   help="create it even if it writes no message (else that is an error, exit 2, saying why)")
    c.add_argument("--actor", default=None,
                   help="who did it, for the audit (default: OAKSEND_ACTOR, else the login name)")
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
        add_action_options(c, verb)  # --dry-run, --yes, --actor
        c.add_argument("--json", action="store_true")
        c.set_defaults(func=_action(verb))

    c = csub.add_parser("update", help="replace the audience: move, cancel and add reminders")
    c.add_argument("id", type=int)
    c.add_argument("--audience", required=True)
    c.add_argument("--allow-multiline", action="store_true", help=_MULTILINE_HELP)
    c.add_argument("--partial", action="store_true",
                   help="the CSV holds only some recipients: those absent are left alone (default: cancelled)")
    c.add_argument("--dry-run", action="store_true",
                   help="print what would be added, revived, changed and cancelled; write nothing")
    c.add_argument("--actor", default=None,
                   help="who did it, for the audit (default: OAKSEND_ACTOR, else the login name)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_update)

    c = csub.add_parser("delete", help="delete a campaign, its recipients and its unsent messages (asks first)")
    c.add_argument("id", type=int)
    c.add_argument("--yes", action="store_true", help="delete without asking")
    c.add_argument("--actor", default=None, help="who did it (default OAKSEND_ACTOR, else the login name)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_delete)

    p = sub.add_parser("scheduler", help="tick campaigns (one is active, others stand by)")
    p.add_argument("--tick-s", type=float, default=5.0, help="seconds between ticks (default 5)")
    p.add_argument("--horizon-s", type=float, default=6 * 3600.0,
                   help="materialize cron occurrences this far ahead (default 6 h)")
    p.add_argument("--no-lock", action="store_true", help=argparse.SUPPRESS)  # tests: two active at once
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--log-format", choices=["text", "json"], help="text lines or JSON objects (OAKSEND_LOG_FORMAT)")
    p.set_defaults(func=cmd_scheduler)


__all__ = ["add_commands"]
