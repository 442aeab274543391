"""What every `oaksend` command shares: exit codes, the one-line error, settings, the outbox, times."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = ["EXIT_NOT_FOUND", "EXIT_OK", "EXIT_PARTIAL", "EXIT_UNAVAILABLE", "EXIT_USAGE", "CliError",
           "login_name", "outbox_of", "parse_when", "resolve_actor", "settings_of"]

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_UNAVAILABLE = 0, 1, 2, 3, 4


class CliError(Exception):
    """A refusal of the command line: one line on stderr and this exit code."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def settings_of(args: argparse.Namespace) -> Any:
    """The settings, with --database-url / --redis-url applied; and, for a command that takes
    `--actor`, `args.actor` resolved (never empty: see `resolve_actor`)."""
    from oaksend.worker.settings import load_settings

    overrides = {}
    if getattr(args, "database_url", None):
        overrides["database_url"] = args.database_url
    if getattr(args, "redis_url", None):
        overrides["redis_url"] = args.redis_url
    settings = load_settings(**overrides)
    if hasattr(args, "actor"):
        args.actor = resolve_actor(args.actor, settings.actor)
    return settings


#: The audit's actor column holds this many characters.
ACTOR_MAX = 200


def resolve_actor(given: str | None, configured: str | None) -> str:
    """Who runs an operator command: `--actor`, else OAKSEND_ACTOR, else the login name. Never empty."""
    if given is not None:
        given = given.strip()
        if not given:
            raise CliError("actor: must not be empty (leave --actor out to use OAKSEND_ACTOR or the login name)")
        if len(given) > ACTOR_MAX:
            raise CliError(f"actor: at most {ACTOR_MAX} characters")
        return given
    if configured and configured.strip():
        return configured.strip()
    return login_name()


def login_name() -> str:
    """The login name: LOGNAME / USER / LNAME / USERNAME, else this uid's entry in the password
    database (docker exec, systemd and cron often set no USER), else `uid N`."""
    import getpass
    import os

    try:
        name = getpass.getuser().strip()
    except (OSError, KeyError, ImportError):  # no variable and no password entry (an arbitrary container uid)
        name = ""
    return name[:ACTOR_MAX] or f"uid {os.getuid()}"


def outbox_of(settings: Any) -> Any:
    """The outbox repository on the configured database."""
    from oaksend.models.db import make_engine
    from oaksend.models.repository import Outbox

    return Outbox(make_engine(settings.database_url, schema=settings.db_schema))


def parse_when(value: str | None, field: str) -> datetime | None:
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
        parsed = parsed.replace(tzinfo=UTC)
    return parsed
