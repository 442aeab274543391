"""`oaksend migrate`, `worker`, `dispatcher` and `sandbox`: the commands that run oaksend's processes."""

from __future__ import annotations

import argparse
import signal
import threading
from typing import Any

from oaksend.worker.cli.common import EXIT_OK, settings_of
from oaksend.worker.cli.ops import start_dispatcher_services, start_worker_services

__all__ = ["add_commands", "add_sandbox"]


def cmd_migrate(args: argparse.Namespace) -> int:
    """Upgrade the database, audited: the intent first when the audit table exists already
    (an empty database gets its row once the table is there)."""
    from oaksend.migrations.runner import current, upgrade
    from oaksend.worker.cli.common import outbox_of
    from oaksend.worker.clock import utcnow

    settings = settings_of(args)
    outbox = outbox_of(settings)
    command, selection = f"migrate {args.revision}", {"revision": args.revision}
    try:
        before = current(settings.database_url, schema=settings.db_schema)
        audit_id = outbox.begin_audit_any_schema(command, selection, args.actor, utcnow())
        try:
            upgrade(settings.database_url, args.revision, schema=settings.db_schema)
        except BaseException as exc:
            try:
                if audit_id is not None:
                    outbox.finish_audit_any_schema(audit_id, "failed", {"from": before,
                                                                        "error": type(exc).__name__}, utcnow())
            except Exception:  # noqa: BLE001 - the database is away: the intent stays as written
                pass
            raise
        result = {"from": before, "to": current(settings.database_url, schema=settings.db_schema)}
        if audit_id is None:  # no audit table before: the row comes after, and says so
            audit_id = outbox.begin_audit_any_schema(command, selection, args.actor, utcnow())
            result["intent"] = "written after the migration: the database had no audit table"
        if audit_id is not None:
            outbox.finish_audit_any_schema(audit_id, "done", result, utcnow())
    finally:
        outbox.engine.dispose()
    print(f"database at revision {args.revision}")
    return EXIT_OK


def cmd_worker(args: argparse.Namespace) -> int:
    from oaksend.worker.delivery.app import make_app

    settings = settings_of(args)
    key = settings.api_key()  # refuses to start without a usable key, without printing it
    start_worker_services(settings, args, secrets=(key, *settings.secrets()))
    app = make_app(settings)
    argv = ["worker", "--loglevel", args.log_level, "-Q", settings.queue_name,
            "--pool", args.pool, "--concurrency", str(args.concurrency), "--without-gossip",
            "--without-mingle", "--without-heartbeat", *args.extra]
    app.worker_main(argv)
    return EXIT_OK


def cmd_dispatcher(args: argparse.Namespace) -> int:
    from oaksend.worker.delivery.dispatcher import run

    settings = settings_of(args)
    stop = threading.Event()
    start_dispatcher_services(settings, args, stop)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    run(settings, stop)
    return EXIT_OK


def cmd_sandbox(args: argparse.Namespace) -> int:
    from oaksend.sandbox.server import main as sandbox_main

    return sandbox_main(args.extra)


def add_commands(sub: Any) -> None:
    """Register `migrate`, `worker` and `dispatcher`."""
    p = sub.add_parser("migrate", help="apply the database migrations (creates the outbox)")
    p.add_argument("--revision", default="head")
    p.add_argument("--actor", default=None,
                   help="who did it, for the audit (default: OAKSEND_ACTOR, else the login name)")
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


def add_sandbox(sub: Any) -> None:
    """Register `sandbox` (its arguments are the sandbox's own)."""
    p = sub.add_parser("sandbox", help="run the fake NewOaks API (see `oaksend sandbox --help`)", add_help=False)
    p.set_defaults(func=cmd_sandbox)
