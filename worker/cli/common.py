"""What every `oaksend` command shares: exit codes, the one-line error, settings, the outbox, times."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = ["EXIT_NOT_FOUND", "EXIT_OK", "EXIT_PARTIAL", "EXIT_UNAVAILABLE", "EXIT_USAGE", "CliError",
           "outbox_of", "parse_when", "settings_of"]

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_UNAVAILABLE = 0, 1, 2, 3, 4


class CliError(Exception):
    """A refusal of the command line: one line on stderr and this exit code."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def settings_of(args: argparse.Namespace) -> Any:
    """The settings, with --database-url / --redis-url applied."""
    from oaksend.worker.settings import load_settings

    overrides = {}
    if getattr(args, "database_url", None):
        overrides["database_url"] = args.database_url
    if getattr(args, "redis_url", None):
        overrides["redis_url"] = args.redis_url
    return load_settings(**overrides)


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
