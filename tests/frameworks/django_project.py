"""A small Django project that books appointments and texts reminders through oaksend.

Run by tests/frameworks/test_django.py in a process of its own (Django's settings are
global): `python django_project.py DATABASE_URL REDIS_URL`. Prints one JSON line per case.
"""

from __future__ import annotations

import json
import sys

import django
from django.conf import settings
from sqlalchemy.engine import make_url


def databases(url: str) -> dict[str, dict[str, object]]:
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        return {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": u.database}}
    return {"default": {"ENGINE": "django.db.backends.postgresql", "NAME": u.database, "USER": u.username or "",
                        "PASSWORD": u.password or "", "HOST": u.host or "", "PORT": str(u.port or "")}}


def configure(database_url: str, redis_url: str) -> None:
    settings.configure(
        INSTALLED_APPS=["django.contrib.contenttypes", "tests.frameworks.booking", "oaksend.contrib.django"],
        DATABASES=databases(database_url),
        OAKSEND={"REDIS_URL": redis_url},
        USE_TZ=True,
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
    )
    django.setup()


def main() -> None:
    configure(sys.argv[1], sys.argv[2])
    from django.core.management import call_command
    from django.db import transaction

    from oaksend import ValidationError
    from oaksend.contrib.django import send
    from tests.frameworks.booking.models import Booking

    call_command("migrate", run_syncdb=True, verbosity=0)
    chatbot = sys.argv[3]
    out: dict[str, object] = {}

    # Committed with the booking.
    with transaction.atomic():
        b = Booking.objects.create(phone="+14155550101")
        out["committed"] = send(chatbot, b.phone, "See you at 10:00", idempotency_key=f"booking-{b.pk}")

    # Rolled back with the booking: no message.
    try:
        with transaction.atomic():
            b = Booking.objects.create(phone="+14155550102")
            out["rolled_back"] = send(chatbot, b.phone, "never sent", idempotency_key=f"booking-{b.pk}")
            raise RuntimeError("the booking failed after the message was enqueued")
    except RuntimeError:
        pass

    # A refused message leaves the caller's transaction usable.
    with transaction.atomic():
        b = Booking.objects.create(phone="+14155550103")
        try:
            send(chatbot, "not a number", "x")
        except ValidationError as exc:
            out["refused"] = exc.field
        out["after_refusal"] = send(chatbot, b.phone, "Still booked", idempotency_key=f"booking-{b.pk}")

    # Outside any atomic(): its own transaction (Django's autocommit).
    out["autocommit"] = send(chatbot, "+14155550104", "Walk-in confirmed")
    out["bookings"] = Booking.objects.count()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
