"""`oaksend`: a thin shell over the library. Parse, build from settings, call one function, print.

Exit codes (documented in the README):
    0  success
    1  done, but some items were refused (e.g. `retry` of a message that is not retryable)
    2  bad input or configuration (the message names the field or setting)
    3  not found
    4  a service (database, Redis) is unavailable
Errors are one line on stderr. `--json` prints machine-readable output on stdout.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from datetime import datetime, timedelta
from typing import Any

from oaksend.worker.cli.render import attempt_dict, iso, message_dict, print_json, table

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_UNAVAILABLE = 0, 1, 2, 3, 4


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


# -- helpers ----------------------------------------------------------------------------------
def _settings(args: argparse.Namespace) -> Any:
    from oaksend.worker.settings import load_settings

    overrides = {}
    if getattr(args, "database_url", None):
        overrides["database_url"] = args.database_url
    if getattr(args, "redis_url", None):
        overrides["redis_url"] = args.redis_url
    return load_settings(**overrides)


def _outbox(settings: Any) -> Any:
    from oaksend.models.db import make_engine
    from oaksend.models.repository import Outbox

    return Outbox(make_engine(settings.database_url, schema=settings.db_schema))


def _when(value: str | None, field: str) -> datetime | None:
    """Parse an ISO time (naive = UTC) or one relative to now: +10m, +2h, -30s, -1d."""
    if value is None:
        return None
    from oaksend.worker.clock import utcnow

    value = value.strip()
    if value[:1] in {"+", "-"} and value[-1:] in {"s", "m", "h", "d"}:
        try:
            amount = float(value[1:-1])
        except ValueError:
            raise CliError(f"{field}: {value!r} is not a time (use ISO 8601, or +30s, +10m, -2h, -1d)") from None
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[value[-1]]
        sign = 1 if value[0] == "+" else -1
        return utcnow() + timedelta(seconds=sign * amount * unit)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise CliError(f"{field}: {value!r} is not a time (use ISO 8601 or +30s, +10m, +2h, +1d)") from None
    if parsed.tzinfo is None:
        from datetime import timezone

        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed


# -- commands ---------------------------------------------------------------------------------
def cmd_migrate(args: argparse.Namespace) -> int:
    from oaksend.migrations.runner import upgrade

    settings = _settings(args)
    upgrade(settings.database_url, args.revision, schema=settings.db_schema)
    print(f"database at revision {args.revision}")
    return EXIT_OK


def cmd_worker(args: argparse.Namespace) -> int:
    from oaksend.worker.cli import ops as cli_ops
    from oaksend.worker.delivery.app import make_app

    settings = _settings(args)
    key = settings.api_key()  # refuses to start without a usable key, without printing it
    cli_ops.start_worker_services(settings, args, secrets=(key, *settings.secrets()))
    app = make_app(settings)
    argv = ["worker", "--loglevel", args.log_level, "-Q", settings.queue_name,
            "--pool", args.pool, "--concurrency", str(args.concurrency), "--without-gossip",
            "--without-mingle", "--without-heartbeat", *args.extra]
    app.worker_main(argv)
    return EXIT_OK


def cmd_dispatcher(args: argparse.Namespace) -> int:
    from oaksend.worker.cli import ops as cli_ops
    from oaksend.worker.delivery.dispatcher import run

    settings = _settings(args)
    stop = threading.Event()
    cli_ops.start_dispatcher_services(settings, args, stop)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    run(settings, stop)
    return EXIT_OK


def cmd_send(args: argparse.Namespace) -> int:
    from oaksend.worker.enqueue import Producer

    metadata = None
    if args.metadata is not None:
        try:
            metadata = json.loads(args.metadata)
        except json.JSONDecodeError as exc:
            raise CliError(f"metadata: not JSON ({exc.msg})") from None
    settings = _settings(args)
    producer = Producer(settings)
    try:
        mid = producer.send(args.chatbot, args.to, args.text, idempotency_key=args.key,
                            send_at=_when(args.send_at, "send_at"), deadline=_when(args.deadline, "deadline"),
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
    with _status(_settings(args)) as status:
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
        print(f"{k:16} {'' if data[k] is None else data[k]}")
    print(f"{'text':16} {data['text']}")
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
        print(f"operator {a['action']} from {a['from_state']} at {a['at']} by {a['actor'] or '-'}")
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= 1000:
        raise CliError("limit: must be from 1 to 1000")
    with _status(_settings(args)) as status:
        page = status.list_messages(state=args.state, chatbot=args.chatbot, since=_when(args.since, "since"),
                                    until=_when(args.until, "until"), limit=args.limit, cursor=args.cursor)
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
    return status.select_ids(state=args.state, chatbot=args.chatbot, since=_when(args.since, "since"),
                             until=_when(args.until, "until"))


def _apply(args: argparse.Namespace, verb: str) -> int:
    from oaksend.worker.cli import ops as cli_ops

    settings = _settings(args)
    deadline = _when(getattr(args, "deadline", None), "deadline")
    with _status(settings) as status:
        ids = _selected_ids(args, status)
        if not ids:
            print("no message matches", file=sys.stderr)
            return EXIT_NOT_FOUND
        if (stop_with := cli_ops.guard_bulk(args, ids, status.outbox, verb)) is not None:  # --dry-run, confirm
            return stop_with
        done = "retried" if verb == "retry" else "cancelled"
        results: dict[int, str] = {}
        show_progress = len(ids) > BULK_CHUNK and (sys.stderr.isatty() or args.progress)
        for start in range(0, len(ids), BULK_CHUNK):
            chunk = ids[start : start + BULK_CHUNK]
            if verb == "retry":
                results.update(status.retry(chunk, actor=args.actor, deadline=deadline))
            else:
                results.update(status.cancel(chunk, actor=args.actor))
            if show_progress:
                print(f"{verb}: {min(start + BULK_CHUNK, len(ids))}/{len(ids)} messages", file=sys.stderr, flush=True)
        cli_ops.audit_bulk(args, status.outbox, verb, results)
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


def cmd_chatbot(args: argparse.Namespace) -> int:
    """`chatbot show|set-limit|pause|resume`: limits and pauses, stored in the database."""
    import redis

    from oaksend.worker.clock import utcnow
    from oaksend.worker.delivery.limits import LimitBook
    from oaksend.worker.delivery.ratelimit import RateLimiter

    settings = _settings(args)
    outbox = _outbox(settings)
    now = utcnow()
    if args.action == "set-limit":
        if args.rate is not None and args.rate <= 0:
            raise CliError("rate: must be greater than 0 (messages per second)")
        if args.burst is not None and args.burst < 1:
            raise CliError("burst: must be at least 1")
        if args.segments_per_s is not None and args.segments_per_s <= 0:
            raise CliError("segments-per-s: must be greater than 0")
        outbox.set_limit(args.serial_number, now, rate_per_s=args.rate, burst=args.burst,
                         segments_per_s=args.segments_per_s)
    elif args.action in ("pause", "resume"):
        client = redis.Redis.from_url(settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
        limiter = RateLimiter(client, settings.keys)
        if args.action == "pause":
            until = now + timedelta(seconds=args.for_s) if args.for_s else now + timedelta(days=3650)
            reason = f"paused by operator{': ' + args.reason if args.reason else ''}"
            outbox.pause(args.serial_number, until, reason, now)
            limiter.pause(args.serial_number, until, now)
        else:
            if not outbox.resume(args.serial_number, now):
                print(f"{args.serial_number}: was not paused")
            limiter.resume(args.serial_number)
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


def cmd_sandbox(args: argparse.Namespace) -> int:
    from oaksend.sandbox.server import main as sandbox_main

    return sandbox_main(args.extra)


# -- parser -----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="oaksend", description="Durable SMS through the NewOaks SendTwilioMessage API.")
    parser.add_argument("--database-url", help="overrides DATABASE_URL")
    parser.add_argument("--redis-url", help="overrides REDIS_URL")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("migrate", help="apply the database migrations (creates the outbox)")
    p.add_argument("--revision", default="head")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("worker", help="run a Celery worker of oaksend's app (extra args go to Celery)")
    p.add_argument("--pool", default="threads", help="Celery pool (default threads)")
    p.add_argument("--concurrency", type=int, default=16,
                   help="batches in flight per worker process; each batch's sends run concurrently (default 16)")
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("dispatcher", help="run the dispatcher (one is active, others stand by)")
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(func=cmd_dispatcher)

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
        p.add_argument("--actor", default=None, help="who did it, for the audit trail (default $USER)")
        if name == "retry":
            p.add_argument("--deadline", help="a new deadline (ISO 8601 or +2h); default: the message's own while "
                                              "still ahead, else now + OAKSEND_DEFAULT_DEADLINE_S")
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=func)

    p = sub.add_parser("chatbot", help="a chatbot's rate limit and pause (no restart needed)")
    p.add_argument("action", choices=["show", "set-limit", "pause", "resume"])
    p.add_argument("serial_number", nargs="?", help="the chatbot (all configured ones for `show` when omitted)")
    p.add_argument("--rate", type=float, help="messages per second")
    p.add_argument("--burst", type=int, help="messages allowed at once")
    p.add_argument("--segments-per-s", type=float, help="optional limit in SMS segments per second")
    p.add_argument("--for", dest="for_s", type=float, help="pause for this many seconds (default: until resumed)")
    p.add_argument("--reason", help="why (shown to operators)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_chatbot)

    p = sub.add_parser("sandbox", help="run the fake NewOaks API (see `oaksend sandbox --help`)", add_help=False)
    p.set_defaults(func=cmd_sandbox)
    __import__("oaksend.worker.cli.campaign", fromlist=["add_commands"]).add_commands(sub)  # campaign, scheduler
    __import__("oaksend.worker.cli.ops", fromlist=["add_commands"]).add_commands(sub)  # health, stats, audit, run, ...
    return parser


def main(argv: list[str] | None = None) -> int:
    """The console script. Returns the exit code (see the module docstring)."""
    import os

    from sqlalchemy.exc import OperationalError, SQLAlchemyError

    from oaksend.errors import ConfigError, NotFound, OaksendError, ValidationError

    parser = build_parser()
    # `worker` hands unknown arguments to Celery and `sandbox` all of its own to the sandbox.
    args, extra = parser.parse_known_args(argv)
    if extra and args.command not in ("worker", "sandbox"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = [a for a in extra if a != "--"] if args.command == "worker" else extra
    if getattr(args, "actor", "unset") is None:
        args.actor = os.environ.get("USER") or None
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        _error(args, str(exc))
        return exc.code
    except (ValidationError, ConfigError) as exc:
        _error(args, str(exc))
        return EXIT_USAGE
    except NotFound as exc:
        _error(args, str(exc))
        return EXIT_NOT_FOUND
    except OaksendError as exc:
        _error(args, str(exc))
        return EXIT_PARTIAL
    except OperationalError as exc:
        _error(args, f"database unavailable: {str(exc.orig).splitlines()[0] if exc.orig else type(exc).__name__}")
        return EXIT_UNAVAILABLE
    except SQLAlchemyError as exc:
        _error(args, f"database error: {type(exc).__name__} (has `oaksend migrate` been run?)")
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - last line of defence: one line, no traceback
        import redis

        if isinstance(exc, redis.RedisError):
            _error(args, f"Redis unavailable: {type(exc).__name__}")
            return EXIT_UNAVAILABLE
        raise


def _error(args: argparse.Namespace, message: str) -> None:
    """One line on stderr, with phone numbers, URL passwords and known secrets masked."""
    import os

    from oaksend.worker.logs import redact, url_password

    candidates = [getattr(args, "database_url", None), getattr(args, "redis_url", None),
                  *(os.environ.get(name) for name in ("DATABASE_URL", "OAKSEND_DATABASE_URL", "REDIS_URL",
                                                      "OAKSEND_REDIS_URL"))]
    secrets = [url_password(url) for url in candidates if url]
    secrets.append(os.environ.get("NEWOAKS_API_KEY", "").strip())
    text = redact(" ".join(message.split()), tuple(s for s in secrets if s and len(s) >= 4))
    print(f"oaksend: {text}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
