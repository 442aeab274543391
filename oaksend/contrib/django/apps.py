"""The Django app: `INSTALLED_APPS = [..., "oaksend.contrib.django"]`."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate


class OaksendConfig(AppConfig):
    name = "oaksend.contrib.django"
    label = "oaksend"
    verbose_name = "oaksend"

    def ready(self) -> None:
        post_migrate.connect(_migrate_oaksend, sender=self, dispatch_uid="oaksend-migrate")


def _migrate_oaksend(sender: AppConfig, using: str = "default", verbosity: int = 1, **_kw: Any) -> None:
    """After `manage.py migrate`: oaksend's own tables (its Alembic migrations) on the same database."""
    from oaksend.contrib.django.bridge import settings_for
    from oaksend.migrations.runner import upgrade

    settings = settings_for(using)
    upgrade(settings.database_url, schema=settings.db_schema)
    if verbosity:
        print("  oaksend: tables up to date")
