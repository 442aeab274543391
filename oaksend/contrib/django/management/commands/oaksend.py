"""`manage.py oaksend ARGS...`: the oaksend command line on Django's database and settings."""

from __future__ import annotations

import os
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser


class Command(BaseCommand):
    help = "Run an oaksend command (worker, dispatcher, status, retry, ...) on this project's database."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--database", default="default", help="the DATABASES alias (default: default)")
        parser.add_argument("args", nargs="*", help="the oaksend command and its options")

    def run_from_argv(self, argv: list[str]) -> None:
        # Everything after `oaksend` belongs to oaksend's own parser (its options included).
        rest = argv[2:]
        using = "default"
        if len(rest) >= 2 and rest[0] == "--database":
            using, rest = rest[1], rest[2:]
        try:
            self.handle(*rest, database=using)
        except CommandError as exc:
            self.stderr.write(str(exc))
            sys.exit(exc.returncode)

    def handle(self, *args: Any, **options: Any) -> None:
        from oaksend.contrib.django.bridge import environment_for
        from oaksend.worker.cli import main

        # oaksend's processes read their settings from the environment (they may start children).
        os.environ.update(environment_for(options.get("database") or "default"))
        code = main(list(args))
        if code:
            raise CommandError(f"oaksend {' '.join(args[:1])} exited with {code}", returncode=code)
        sys.stdout.flush()
