"""oaksend inside a Django application: messages enqueued in Django's own transaction.

Add ``"oaksend.contrib.django"`` to ``INSTALLED_APPS``, then::

    from django.db import transaction
    from oaksend.contrib.django import send

    with transaction.atomic():
        booking = Booking.objects.create(...)
        send(chatbot, booking.phone, "See you at 10:00", idempotency_key=f"booking-{booking.pk}")

The message row is written on Django's connection, inside ``atomic()`` (a savepoint of
its transaction): rolled back with it, committed with it, and the dispatcher is woken only
once Django has committed (``transaction.on_commit``). Settings come from
``settings.OAKSEND`` (a dict of oaksend's environment names, e.g. ``{"REDIS_URL": ...}``)
over the environment; the database is Django's (``DATABASES``), so oaksend's tables live
beside the application's. ``manage.py migrate`` creates and upgrades them after Django's
own migrations (they are oaksend's, never Django models), and ``manage.py oaksend ...``
runs any oaksend command on that database (``manage.py oaksend worker``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from oaksend.worker.message.validation import SendRequest

__all__ = ["send", "send_many"]


def send(serial_number: str, to: str, text: str, *, using: str = "default", **options: Any) -> int:
    """`Producer.send` on Django's connection `using`, in its current transaction; returns the id."""
    from oaksend.contrib.django.bridge import bridge

    return bridge(using).send(serial_number, to, text, **options)


def send_many(requests: list[SendRequest], *, using: str = "default") -> list[int]:
    """`Producer.send_many` on Django's connection `using`, in its current transaction."""
    from oaksend.contrib.django.bridge import bridge

    return bridge(using).send_many(requests)
