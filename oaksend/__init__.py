"""oaksend: a durable SMS sender for the NewOaks SendTwilioMessage API.

The public API, importable from the top-level package::

    from oaksend import Producer, SendRequest, Status, load_settings

    producer = Producer(load_settings())
    message_id = producer.send(chatbot_id, "+14155550123", "See you at 10:00", idempotency_key="appt-981")
    Status(load_settings()).get_message(message_id).state      # "pending", then "sent"

The wheel installs one import package, ``oaksend``; the source folders of the
repository (``worker/``, ``models/``, ``migrations/``, ``sandbox/``) are its
subpackages ``oaksend.worker``, ``oaksend.models``, ``oaksend.migrations`` and
``oaksend.sandbox``. Names are imported lazily, so ``python -m oaksend.sandbox``
does not load the database and broker libraries.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers see; at run time each name is imported on first use (below)
    from oaksend.errors import (
        ConfigError,
        IdempotencyConflict,
        InvalidTransition,
        NotFound,
        OaksendError,
        ValidationError,
    )
    from oaksend.worker.aio import AsyncProducer, AsyncStatus
    from oaksend.worker.campaigns.audience import AudienceSpec, read_csv
    from oaksend.worker.campaigns.schedule import parse_schedule
    from oaksend.worker.campaigns.service import Campaigns, CampaignSpec
    from oaksend.worker.enqueue import Producer
    from oaksend.worker.message.validation import SendRequest
    from oaksend.worker.settings import Settings, load_settings
    from oaksend.worker.status import AttemptStatus, MessagePage, MessageStatus, OperatorActionStatus, Status

__version__ = "0.2.0"

_HOMES = {
    "Producer": "oaksend.worker.enqueue",
    "AsyncProducer": "oaksend.worker.aio",
    "AsyncStatus": "oaksend.worker.aio",
    "SendRequest": "oaksend.worker.message.validation",
    "Settings": "oaksend.worker.settings",
    "load_settings": "oaksend.worker.settings",
    "Status": "oaksend.worker.status",
    "MessageStatus": "oaksend.worker.status",
    "AttemptStatus": "oaksend.worker.status",
    "OperatorActionStatus": "oaksend.worker.status",
    "MessagePage": "oaksend.worker.status",
    "OaksendError": "oaksend.errors",
    "ConfigError": "oaksend.errors",
    "ValidationError": "oaksend.errors",
    "IdempotencyConflict": "oaksend.errors",
    "NotFound": "oaksend.errors",
    "InvalidTransition": "oaksend.errors",
    # campaigns (see README "Campaigns")
    "Campaigns": "oaksend.worker.campaigns.service",
    "CampaignSpec": "oaksend.worker.campaigns.service",
    "AudienceSpec": "oaksend.worker.campaigns.audience",
    "parse_schedule": "oaksend.worker.campaigns.schedule",
    "read_csv": "oaksend.worker.campaigns.audience",
}

__all__ = [  # the public names (a literal list: type checkers read it)
    "AsyncProducer",
    "AsyncStatus",
    "AttemptStatus",
    "AudienceSpec",
    "CampaignSpec",
    "Campaigns",
    "ConfigError",
    "IdempotencyConflict",
    "InvalidTransition",
    "MessagePage",
    "MessageStatus",
    "NotFound",
    "OaksendError",
    "OperatorActionStatus",
    "Producer",
    "SendRequest",
    "Settings",
    "Status",
    "ValidationError",
    "load_settings",
    "parse_schedule",
    "read_csv",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'oaksend' has no attribute {name!r}")
    value = getattr(import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
