"""`oaksend`: a thin shell over the library. Parse, build from settings, call one function, print.

Exit codes (docs/cli.md):
    0  success
    1  done, but some items were refused (e.g. `retry` of a message that is not retryable)
    2  bad input or configuration (the message names the field or setting)
    3  not found
    4  a service (database, Redis) is unavailable
Errors are one line on stderr. `--json` prints machine-readable output on stdout.

One module per command family registers its commands (`add_commands`); this one
builds the parser and maps errors to exit codes.
"""

from __future__ import annotations

import argparse
import sys

from oaksend.worker.cli import api, campaign, chatbot, messages, ops, processes, web
from oaksend.worker.cli.common import EXIT_NOT_FOUND, EXIT_PARTIAL, EXIT_UNAVAILABLE, EXIT_USAGE, CliError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The `oaksend` parser with every command family's commands."""
    parser = argparse.ArgumentParser(prog="oaksend",
                                     description="Durable SMS through the NewOaks SendTwilioMessage API.")
    parser.add_argument("--database-url", help="overrides DATABASE_URL")
    parser.add_argument("--redis-url", help="overrides REDIS_URL")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    processes.add_commands(sub)  # migrate, worker, dispatcher
    messages.add_commands(sub)  # send, show, list, retry, cancel
    chatbot.add_commands(sub)
    processes.add_sandbox(sub)
    campaign.add_commands(sub)  # campaign, scheduler
    ops.add_commands(sub)  # health, stats, audit, resolve, purge, run; options of worker, retry, ...
    web.add_commands(sub)  # web, web add-user
    api.add_commands(sub)  # api-key, webhook, webhooks
    return parser


def main(argv: list[str] | None = None) -> int:
    """The console script. Returns the exit code (see the module docstring)."""
    from sqlalchemy.exc import OperationalError, SQLAlchemyError

    from oaksend.errors import ConfigError, NotFound, OaksendError, ValidationError

    parser = build_parser()
    # `worker` hands unknown arguments to Celery and `sandbox` all of its own to the sandbox.
    args, extra = parser.parse_known_args(argv)
    if extra and args.command not in ("worker", "sandbox"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = [a for a in extra if a != "--"] if args.command == "worker" else extra
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
    except Exception as exc:  # last line of defence: one line, no traceback
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
