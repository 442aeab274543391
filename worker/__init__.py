"""oaksend: a durable SMS sender for the NewOaks SendTwilioMessage API."""

from worker.enqueue import Producer
from worker.errors import ConfigError, IdempotencyConflict, NotFound, OaksendError, ValidationError
from worker.settings import Settings, load_settings
from worker.validation import SendRequest

__all__ = [
    "ConfigError",
    "IdempotencyConflict",
    "NotFound",
    "OaksendError",
    "Producer",
    "SendRequest",
    "Settings",
    "ValidationError",
    "load_settings",
]
