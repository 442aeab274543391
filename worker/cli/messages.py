"""`oaksend send`, `show`, `list`, `retry` and `cancel`: one message in, messages read and acted on."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from oaksend.errors import ValidationError
from oaksend.worker.cli.brakes import (
    CONFIRM_ABOVE,
    audited,
    brake,
    print_preview,
    refused_of,
    sample_rows,
    selection_of,
    stop_unless_confirmed,
)
from oaksend.worker.cli.common import EXIT_NOT_FOUND, EXIT_OK, EXIT_PARTIAL, CliError, parse_when, settings_of
from oaksend.worker.cli.render import attempt_dict, iso, message_dict, print_json, printable, table

__all__ = ["add_commands"]


def cmd_send(args: argparse.Namespace) -> int:
    from oaksend.worker.enqueue import Producer

    metadata = None
    if args.metadata is not None:
        try:
            metadata = json.loads(args.metadata)
        except json.JSONDecodeError as exc:
            raise CliError(f"metadata: not JSON ({exc.msg})") from None
    settings = settings_of(args)
    producer = Producer(settings)
    try:
        mid = producer.send(args.chatbot, args.to, args.text, idempotency_key=args.key,
                            send_at=parse_when(args.send_at, "send_at"), deadline=parse_when(args.deadline, "deadline"),
                            metadata=metadata, priority=args.priority)
    finally:
        producer.close()
    if args.json:
        print_json({"id": mid})
    else:
        print(mid)
    return EXIT_OK


def _status(settings: Any) -> Any:
    from oaksend.worker.status import Status

    return Status(settings)


def cmd_show(args: argparse.Namespace) -> int:
    with _status(settings_of(args)) as status:
        message = status.get_message(args.id)
    data = message_dict(message)
    data["attempt_history"] = [attempt_dict(a) for a in message.attempt_history]
    data["operator_actions"] = [
        {"action": a.action, "from_state": a.from_state, "actor": a.actor, "at": iso(a.at), "note": a.note}
        for a in message.operator_actions
    ]
    if args.json:
        print_json(data)
        return EXIT_OK
    for k in ("id", "chatbot", "to", "state", "priority", "attempts", "failures", "ambiguous", "session_id",
              "session_id_text", "last_outcome", "last_reason", "next_attempt_at", "deadline_at", "idempotency_key",
              "created_at", "sent_at"):
        if k == "session_id_text" and data[k] is None:
            continue  # only for a SessionID that is not a 64-bit integer
        print(f"{k:16} {printable(data[k])}")
    print(f"{'text':16} {printable(data['text'])}")
    if data["metadata"]:
        print(f"{'metadata':16} {json.dumps(data['metadata'])}")
    print()
    rows = [
        {**attempt_dict(a), "started_at": a.started_at.strftime("%H:%M:%S.%f")[:-3],
         "envelope": f"Success={a.success} Code={a.code} Status={a.data_status}" if a.http_status else ""}
        for a in message.attempt_history
    ]
    table(rows, ["number", "started_at", "latency_ms", "http_status", "envelope", "session_id",
                  "classification", "reason", "error"])
    for a in data["operator_actions"]:
        print(printable(f"operator {a['action']} from {a['from_state']} at {a['at']} by {a['actor'] or '-'}"))
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= 1000:
        raise CliError("limit: must be from 1 to 1000")
    with _status(settings_of(args)) as status:
        page = status.list_messages(state=args.state, chatbot=args.chatbot, since=parse_when(args.since, "since"),
                                    until=parse_when(args.until, "until"), limit=args.limit, cursor=args.cursor)
    if args.json:
        print_json([message_dict(m) for m in page.messages])
        if page.next_cursor:
            print(f"more: --cursor {page.next_cursor}", file=sys.stderr)
        return EXIT_OK
    from oaksend.worker.logs import mask_phone

    rows = [{**message_dict(m), "to": mask_phone(m.to), "created_at": m.created_at.strftime("%Y-%m-%d %H:%M:%S"),
             "last_reason": (m.last_reason or "")[:50]} for m in page.messages]
    table(rows, ["id", "chatbot", "to", "state", "priority", "attempts", "session_id", "created_at", "last_reason"])
    if page.next_cursor:
        print(f"(more: --cursor {page.next_cursor})")
    return EXIT_OK


#: Messages changed per transaction by bulk `retry` / `cancel`.
BULK_CHUNK = 500


def _selected_ids(args: argparse.Namespace, status: Any) -> list[int]:
    """The ids named on the command line, or those matching --state/--chatbot/--since/--until."""
    if args.ids:
        if args.state or args.chatbot or args.since or args.until:
            raise CliError("ids: give message ids or a selection (--state, --chatbot, --since, --until), not both")
        return list(args.ids)
    if not args.state:
        raise CliError("ids: give message ids, or select messages with --state (and optionally --chatbot, --since)")
    return status.select_ids(state=args.state, chatbot=args.chatbot, since=parse_when(args.since, "since"),
                             until=parse_when(args.until, "until"))


def _rehearse(outbox: Any, verb: str, ids: list[int], actor: str, deadline: Any) -> dict[int, str]:
    """What `retry` / `cancel` would do now: their own statements, in a transaction rolled back."""
    from oaksend.worker.clock import utcnow

    now = utcnow()
    if deadline is not None and deadline <= now:
        raise ValidationError("deadline", "has already passed")
    with outbox.rehearsal() as box:
        if verb == "retry":
            return dict(box.operator_retry(ids, now, actor, deadline, renew_deadline_at=now))
        return dict(box.cancel(ids, now, actor))


def _brakes(args: argparse.Namespace, outbox: Any, verb: str, ids: list[int], deadline: Any) -> int | None:
    """Before acting: a dry run reports what would change and ends here; a retry of `unknown`
    messages or more than CONFIRM_ABOVE changes need confirming. An exit code to stop with, or None."""
    done = "retried" if verb == "retry" else "cancelled"
    if args.dry_run:
        would = _rehearse(outbox, verb, ids, args.actor, deadline)
        changing = [k for k, v in would.items() if v == done]
        print_preview(args, verb, len(changing), sample_rows(outbox, changing), selected=len(ids),
                      refused=refused_of(would, done))
        return EXIT_OK
    if args.yes:
        return None
    unknown = outbox.state_counts(ids).get("unknown", 0) if verb == "retry" else 0
    if len(ids) <= CONFIRM_ABOVE and not unknown:
        return None
    would = _rehearse(outbox, verb, ids, args.actor, deadline)
    changing = [k for k, v in would.items() if v == done]
    if unknown:
        unknown = outbox.state_counts(changing).get("unknown", 0)
    return stop_unless_confirmed(args, verb, len(changing), why=brake(len(changing), unknown=unknown))


def _apply(args: argparse.Namespace, verb: str) -> int:
    settings = settings_of(args)
    deadline = parse_when(getattr(args, "deadline", None), "deadline")
    done = "retried" if verb == "retry" else "cancelled"
    with _status(settings) as status:
        ids = _selected_ids(args, status)
        if not ids:
            print("no message matches", file=sys.stderr)
            return EXIT_NOT_FOUND
        if (stop_with := _brakes(args, status.outbox, verb, ids, deadline)) is not None:
            return stop_with
        results: dict[int, str] = {}
        show_progress = len(ids) > BULK_CHUNK and (sys.stderr.isatty() or args.progress)
        with audited(status.outbox, args, verb, selection_of(args), result={"selected": len(ids)}) as audit:
            for start in range(0, len(ids), BULK_CHUNK):
                chunk = ids[start : start + BULK_CHUNK]
                if verb == "retry":
                    results.update(status.retry(chunk, actor=args.actor, deadline=deadline))
                else:
                    results.update(status.cancel(chunk, actor=args.actor))
                audit.progress(sum(1 for v in results.values() if v == done))
                if show_progress:
                    print(f"{verb}: {min(start + BULK_CHUNK, len(ids))}/{len(ids)} messages", file=sys.stderr,
                          flush=True)
            audit.result["refused"] = refused_of(results, done)
    if args.json:
        print_json([{"id": k, "result": v} for k, v in results.items()])
    elif len(results) > 50:
        tally: dict[str, int] = {}
        for v in results.values():
            tally[v] = tally.get(v, 0) + 1
        table([{"result": k, "messages": n} for k, n in sorted(tally.items())], ["result", "messages"])
    else:
        for mid, result in results.items():
            print(f"{mid}: {result}")
    if all(v == "not found" for v in results.values()):
        return EXIT_NOT_FOUND
    return EXIT_OK if all(v == done for v in results.values()) else EXIT_PARTIAL


def cmd_retry(args: argparse.Namespace) -> int:
    return _apply(args, "retry")


def cmd_cancel(args: argparse.Namespace) -> int:
    return _apply(args, "cancel")


def add_commands(sub: Any) -> None:
    """Register `send`, `show`, `list`, `retry` and `cancel`."""
    p = sub.add_parser("send", help="enqueue one message and print its id")
    p.add_argument("--chatbot", required=True, help="the chatbot's SerialNumber")
    p.add_argument("--to", required=True, help="E.164 destination, e.g. +14155550123")
    p.add_argument("--text", required=True, help="the message (at most 1600 characters)")
    p.add_argument("--key", help="idempotency key")
    p.add_argument("--send-at", help="not before this time (ISO 8601, or +10m)")
    p.add_argument("--deadline", help="never after this time (ISO 8601, or +2h)")
    p.add_argument("--metadata", help="a JSON object kept with the message")
    p.add_argument("--priority", default="normal", choices=["high", "normal", "bulk"],
                   help="a chatbot's due messages go out most urgent first (default normal)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_send)

    p = sub.add_parser("show", help="a message and its whole attempt history")
    p.add_argument("id", type=int)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("list", help="messages, newest first")
    p.add_argument("--state", action="append", choices=["pending", "dispatched", "sending", "sent", "failed",
                                                          "unknown", "expired", "cancelled"])
    p.add_argument("--chatbot")
    p.add_argument("--since", help="created at or after (ISO 8601, or relative: --since=-1h)")
    p.add_argument("--until", help="created before (ISO 8601 or relative)")
    p.add_argument("--limit", type=int, default=50, help="messages per page (1-1000, default 50)")
    p.add_argument("--cursor", help="the next page: the cursor printed after the previous one")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)

    for name, func, helptext in (("retry", cmd_retry, "send failed / expired / unknown messages again"),
                                 ("cancel", cmd_cancel, "cancel messages not yet sent")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("ids", type=int, nargs="*", help="message ids (or select with --state)")
        p.add_argument("--state", action="append", choices=["pending", "dispatched", "failed", "unknown",
                                                              "expired", "cancelled"],
                       help="select every message in this state (repeatable)")
        p.add_argument("--chatbot", help="with --state: only this chatbot")
        p.add_argument("--since", help="with --state: created at or after (ISO 8601, or relative: --since=-1h)")
        p.add_argument("--until", help="with --state: created before")
        p.add_argument("--progress", action="store_true", help="show progress even when stderr is not a terminal")
        p.add_argument("--actor", default=None,
                       help="who did it, for the audit (default: OAKSEND_ACTOR, else the login name)")
        if name == "retry":
            p.add_argument("--deadline", help="a new deadline (ISO 8601 or +2h); default: the message's own while "
                                              "still ahead, else now + OAKSEND_DEFAULT_DEADLINE_S")
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=func)
