"""Operations commands of `oaksend`: health, stats, audit, anomalies, resolve, purge, run; and what they add to others.

`add_commands(sub)` registers them (one line in cli/__init__.py), and gives `retry` and
`cancel` their `--dry-run` / `--yes` / `--note` (brakes and audit: cli/brakes.py), and `worker`
and `dispatcher` their `--log-format` / `--metrics-port`. Exit codes are cli/common.py's; `health`
exits 0 when healthy and 1 otherwise.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from typing import Any

from oaksend.errors import ValidationError
from oaksend.worker.cli.brakes import CONFIRM_ABOVE, SAMPLE, audited, confirm, refused_of, stop_unless_confirmed
from oaksend.worker.cli.brakes import print_preview as _print_preview
from oaksend.worker.cli.brakes import sample_rows as _sample_rows
from oaksend.worker.cli.common import EXIT_NOT_FOUND, EXIT_OK, EXIT_PARTIAL, outbox_of, parse_when, settings_of
from oaksend.worker.cli.render import iso, print_json, table


# -- process start-up: logs, metrics, liveness ------------------------------------------------------
def _log_format(args: argparse.Namespace, settings: Any) -> str:
    return getattr(args, "log_format", None) or settings.log_format


def _metrics_port(args: argparse.Namespace, settings: Any) -> int | None:
    port = getattr(args, "metrics_port", None)
    return port if port is not None else settings.metrics_port


def start_worker_services(settings: Any, args: argparse.Namespace, secrets: tuple[str, ...]) -> None:
    """In a worker process: logs in the chosen format and the metrics exporter."""
    from oaksend.worker import metrics
    from oaksend.worker.logs import configure_logging

    configure_logging(args.log_level, secrets=secrets, fmt=_log_format(args, settings))
    for warning in settings.insecure_warnings():
        logging.getLogger("oaksend.worker").warning("%s", warning)
    port = _metrics_port(args, settings)
    if port is not None and getattr(args, "pool", "threads") not in ("threads", "solo"):
        raise ValidationError("metrics-port", f"needs --pool threads (or solo); a {args.pool} pool's children "
                       f"would not be counted")
    metrics.serve(port, settings.metrics_host, settings.metrics_chatbots)
    # The liveness beat starts with the send path (oaksend.worker.delivery.task) when the worker is ready.


def start_dispatcher_services(settings: Any, args: argparse.Namespace, stop: threading.Event) -> None:
    """In a dispatcher process: logs, the metrics exporter and its sampler, and the retention purge."""
    from oaksend.worker import metrics
    from oaksend.worker.clock import utcnow
    from oaksend.worker.logs import configure_logging

    configure_logging(args.log_level, secrets=settings.secrets(), fmt=_log_format(args, settings))
    port = _metrics_port(args, settings)
    if port is not None:
        metrics.serve(port, settings.metrics_host, settings.metrics_chatbots)
        metrics.OutboxSampler(outbox_of(settings), stop, utcnow).start()
    if settings.retention_days:
        import redis

        from oaksend.worker.ops.purge import PeriodicPurge

        client = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
        PeriodicPurge(settings, outbox_of(settings), client, stop, utcnow).start()


# -- commands -------------------------------------------------------------------------------------
def cmd_health(args: argparse.Namespace) -> int:
    from oaksend.worker.ops.health import PARTS, check, healthy

    parts = [p.strip() for p in args.only.split(",")] if args.only else list(PARTS)
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValidationError("only", f"unknown part {unknown[0]!r} (choose from {', '.join(PARTS)})")
    checks = check(settings_of(args), parts=parts, this_host=args.this_host)
    ok = healthy(checks)
    if args.json:
        print_json({"healthy": ok, "checks": {c.part: {"ok": c.ok, "detail": c.detail} for c in checks}})
    else:
        table([{"part": c.part, "ok": "ok" if c.ok else "FAIL", "detail": c.detail} for c in checks],
              ["part", "ok", "detail"])
    if not ok:
        failed = ", ".join(f"{c.part} ({c.detail})" for c in checks if not c.ok)
        print(f"oaksend: unhealthy: {failed}", file=sys.stderr)
        return 1
    return EXIT_OK


def cmd_stats(args: argparse.Namespace) -> int:
    from oaksend.worker.clock import utcnow
    from oaksend.worker.ops.purge import parse_age
    from oaksend.worker.ops.stats import gather, sparkline

    try:
        window = parse_age(args.window)
    except ValueError as exc:
        raise ValidationError("window", f"{exc}") from None
    data = gather(outbox_of(settings_of(args)), utcnow(), window)
    if args.json:
        print_json(data)
        return EXIT_OK
    table([{"state": k, "messages": v} for k, v in data["by_state"].items()], ["state", "messages"])
    print()
    states = sorted({s for per in data["by_chatbot"].values() for s in per})
    table([{"chatbot": sn, **{s: per.get(s, 0) for s in states}} for sn, per in sorted(data["by_chatbot"].items())],
          ["chatbot", *states])
    print()
    print(f"attempts in the last {args.window}:")
    table([{**a, "code": "" if a["code"] is None else a["code"]} for a in data["attempts"]],
          ["verdict", "code", "attempts"])
    lat = data["latency_ms"]
    print()
    print("API latency (ms): " + "  ".join(f"{k} {'-' if v is None else v}" for k, v in lat.items()))
    per_min = [m["sent"] for m in data["sent_per_minute"]]
    print(f"sent per minute, last hour ({data['sent_last_hour']} in all): {sparkline(per_min)}  max {max(per_min)}")
    age = data["oldest_due_age_s"]
    print(f"oldest due message: {'none due' if age is None else f'waiting {age:.0f}s'}")
    return EXIT_OK


def cmd_audit(args: argparse.Namespace) -> int:
    rows = outbox_of(settings_of(args)).audit_log(since=parse_when(args.since, "since"), command=args.command_name,
                                              limit=args.limit)
    data = [{"id": r.id, "at": iso(r.at), "actor": r.actor, "command": r.command, "selection": r.selection,
             "count": r.count, "note": r.note, "state": r.state, "finished_at": iso(r.finished_at),
             "result": r.result} for r in rows]
    if args.json:
        print_json(data)
        return EXIT_OK
    import json

    table([{**d, "selection": json.dumps(d["selection"], separators=(",", ":"))[:60], "actor": d["actor"] or "-",
            "note": d["note"] or ""} for d in data],
          ["id", "at", "actor", "command", "state", "count", "selection", "note"])
    return EXIT_OK


#: `oaksend anomalies`: the columns, and the widest anomalies text shown in the table (--json has it whole).
ANOMALY_COLUMNS = ("message_id", "attempt", "started_at", "http_status", "code", "data_status", "classification",
                   "anomalies")
ANOMALIES_SHOWN = 100


def cmd_anomalies(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise ValidationError("limit", "must be at least 1")
    since = parse_when(args.since, "since")
    outbox = outbox_of(settings_of(args))
    try:
        rows = outbox.anomalous_attempts(since=since, limit=args.limit)
    finally:
        outbox.engine.dispose()  # in-process callers (tests, scripts) keep no connection open
    data = [{"message_id": a.message_id, "attempt": a.number, "started_at": iso(a.started_at),
             "http_status": a.http_status, "code": a.code, "data_status": a.data_status,
             "classification": a.classification, "anomalies": a.anomalies} for a in rows]
    if args.json:
        print_json(data)
        return EXIT_OK

    def shown(text: str) -> str:
        return text if len(text) <= ANOMALIES_SHOWN else text[: ANOMALIES_SHOWN - 3] + "..."

    table([{**d, "anomalies": shown(d["anomalies"] or "")} for d in data], ANOMALY_COLUMNS)
    return EXIT_OK


def cmd_resolve(args: argparse.Namespace) -> int:
    from oaksend.worker.clock import utcnow

    note = (args.note or "").strip()
    if not note:
        raise ValidationError("note", "say what the check by hand found (e.g. --note 'carrier log shows delivered')")
    outcome = "sent" if args.sent else "failed"
    outbox, ids, command = outbox_of(settings_of(args)), list(args.ids), f"resolve --{outcome}"
    if args.dry_run or (len(ids) > CONFIRM_ABOVE and not args.yes):
        with outbox.rehearsal() as box:  # resolve's own statements, rolled back
            would = box.resolve(ids, outcome, note, args.actor, utcnow())
        changing = [k for k, v in would.items() if v == "resolved"]
        if args.dry_run:
            _print_preview(args, command, len(changing), _sample_rows(outbox, changing), selected=len(ids),
                           refused=refused_of(would, "resolved"))
            return EXIT_OK
        if (stop := stop_unless_confirmed(args, "resolve", len(changing))) is not None:
            return stop
    with audited(outbox, args, command, {"ids": ids}, result={"selected": len(ids)}) as audit:
        results = outbox.resolve(ids, outcome, note, args.actor, utcnow())
        audit.count = sum(1 for v in results.values() if v == "resolved")
        audit.result["refused"] = refused_of(results, "resolved")
    if args.json:
        print_json([{"id": k, "result": v} for k, v in results.items()])
    else:
        for mid, result in results.items():
            print(f"{mid}: {result}" + (f" as {outcome}" if result == "resolved" else ""))
    if all(v == "not found" for v in results.values()):
        return EXIT_NOT_FOUND
    return EXIT_OK if all(v == "resolved" for v in results.values()) else EXIT_PARTIAL


def cmd_purge(args: argparse.Namespace) -> int:
    from oaksend.worker.clock import utcnow
    from oaksend.worker.ops.purge import parse_age, purge

    try:
        age = parse_age(args.older_than)
    except ValueError as exc:
        raise ValidationError("older-than", f"{exc}") from None
    if args.batch < 1:
        raise ValidationError("batch", "must be at least 1")
    outbox = outbox_of(settings_of(args))
    cutoff = utcnow() - age
    verb = "anonymize" if args.anonymize else "purge"
    count, sample = outbox.purge_preview(cutoff, args.anonymize, SAMPLE)
    if args.dry_run:
        recipients = outbox.purge_recipients_preview(cutoff)
        _print_preview(args, f"purge{' --anonymize' if args.anonymize else ''}", count,
                       _sample_rows(outbox, [m.id for m in sample]), extra={"campaign_recipients": recipients})
        if not args.json:
            print(f"and {recipients} recipients of campaigns that ended before {iso(cutoff)} would be deleted")
        return EXIT_OK
    if not confirm(args, verb, count):
        print(f"oaksend: {verb}: not confirmed; nothing was changed", file=sys.stderr)
        return EXIT_PARTIAL
    progress = (lambda n: print(f"{verb}: {n}/{count} messages", file=sys.stderr, flush=True)) \
        if sys.stderr.isatty() else None
    command = f"purge --older-than {args.older_than}" + (" --anonymize" if args.anonymize else "")
    done = purge(outbox, cutoff, anonymize=args.anonymize, clock=utcnow, actor=args.actor, command=command,
                 batch=args.batch, progress=progress)
    if args.json:
        print_json({"command": command, "created_before": iso(cutoff), "messages": done.messages,
                    "campaign_recipients": done.recipients, "texts_cleared": done.texts})
    else:
        print(f"{'anonymized' if args.anonymize else 'deleted'} {done.messages} messages created before "
              f"{iso(cutoff)}; deleted {done.recipients} recipients of campaigns that ended before it")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    import os

    from oaksend.worker.logs import configure_logging
    from oaksend.worker.ops.supervisor import Supervisor, child_commands, children_environ
    from oaksend.worker.sources import env_file_values

    settings = settings_of(args)
    settings.api_key()  # refuse now rather than restart workers that refuse forever
    if args.workers < 1:
        raise ValidationError("workers", "must be at least 1")
    configure_logging(args.log_level, secrets=settings.secrets(), fmt=_log_format(args, settings))
    scheduler = not args.no_scheduler
    port = _metrics_port(args, settings)
    grace = args.grace if args.grace is not None else (
        settings.max_token_wait_s + settings.connect_timeout_s + settings.read_timeout_s + 10)
    sup = Supervisor(child_commands(workers=args.workers, concurrency=args.concurrency, metrics_port=port,
                                    log_format=getattr(args, "log_format", None), log_level=args.log_level,
                                    scheduler=scheduler), grace_s=grace,
                     environ=children_environ(os.environ, env_file_values(), database_url=args.database_url,
                                              redis_url=args.redis_url))
    sup.install_signals()
    return sup.run()


# -- the parser -----------------------------------------------------------------------------------
def _process_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-format", choices=["text", "json"], help="text lines or JSON objects (OAKSEND_LOG_FORMAT)")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port (OAKSEND_METRICS_PORT)")


def add_commands(sub: Any) -> None:
    """Register the operations commands and the options they add to existing ones."""
    for name in ("worker", "dispatcher"):
        if name in sub.choices:
            _process_options(sub.choices[name])
    for name in ("retry", "cancel"):
        if name in sub.choices:
            p = sub.choices[name]
            p.add_argument("--dry-run", action="store_true", help="print the count and a sample; change nothing")
            p.add_argument("--yes", action="store_true",
                           help=f"confirm a selection of more than {CONFIRM_ABOVE} messages without a prompt")
            p.add_argument("--note", help="why, for the operator audit")

    p = sub.add_parser("health", help="exit 0 when the database, Redis, a dispatcher and a worker are fine")
    p.add_argument("--only", help="comma-separated parts to check: database,redis,dispatcher,workers,backlog")
    p.add_argument("--this-host", action="store_true", help="workers: require a worker of this host")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_health)

    p = sub.add_parser("stats", help="messages by state and chatbot, attempts, latency, sent per minute")
    p.add_argument("--window", default="1h", help="attempts and latency over this window (default 1h)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("audit", help="operator actions: who ran what on which selection")
    p.add_argument("--since", help="at or after (ISO 8601, or relative: --since=-7d)")
    p.add_argument("--command", dest="command_name", help="only this command (retry, cancel, ...)")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("anomalies", help="attempts whose response differed from the documented envelope")
    p.add_argument("--since", help="started at or after (ISO 8601, or relative: --since=-1d)")
    p.add_argument("--limit", type=int, default=50, help="rows shown, newest first (default 50)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_anomalies)

    p = sub.add_parser("resolve", help="settle unknown messages as sent or failed after a check by hand")
    p.add_argument("ids", type=int, nargs="+", help="message ids (state unknown)")
    outcome = p.add_mutually_exclusive_group(required=True)
    outcome.add_argument("--sent", action="store_true", help="the SMS did go out")
    outcome.add_argument("--failed", action="store_true", help="it did not")
    p.add_argument("--note", required=True, help="what the check found (kept in the audit)")
    p.add_argument("--dry-run", action="store_true", help="print what would be resolved; change nothing")
    p.add_argument("--yes", action="store_true", help=f"confirm more than {CONFIRM_ABOVE} messages without a prompt")
    p.add_argument("--actor", default=None, help="who did it (default: OAKSEND_ACTOR, else the login name)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_resolve)

    p = sub.add_parser("purge", help="delete (or anonymize) terminal messages older than an age, audited")
    p.add_argument("--older-than", required=True, help="age of the messages, e.g. 90d, 12w, 36h")
    p.add_argument("--anonymize", action="store_true",
                   help="blank numbers, texts, names and notes; keep the rows (and their hashed keys)")
    p.add_argument("--dry-run", action="store_true", help="print the count and a sample; change nothing")
    p.add_argument("--yes", action="store_true", help=f"confirm more than {CONFIRM_ABOVE} messages without a prompt")
    p.add_argument("--batch", type=int, default=500, help="messages per transaction (default 500)")
    p.add_argument("--actor", default=None, help="who did it (default: OAKSEND_ACTOR, else the login name)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_purge)

    p = sub.add_parser("run", help="supervise a dispatcher, workers and the scheduler on this machine")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--concurrency", type=int, default=8, help="sends in flight per worker process (default 8)")
    p.add_argument("--no-scheduler", action="store_true", help="do not run the campaign scheduler")
    p.add_argument("--grace", type=float, help="seconds to wait for children on SIGTERM (default: the longest send)")
    p.add_argument("--log-level", default="INFO")
    _process_options(p)
    p.set_defaults(func=cmd_run)


__all__ = ["add_commands", "start_dispatcher_services", "start_worker_services"]
