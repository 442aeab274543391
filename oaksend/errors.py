"""The exceptions oaksend raises, one tree under one base.

::

    OaksendError                 anything oaksend raises on purpose
     +-- ConfigError             a setting is missing or wrong; fail at start
     +-- ValidationError         a caller's input is refused (``field`` names it)
     |    +-- IdempotencyConflict  same idempotency key, different request
     +-- NotFound                no such message, chatbot or campaign
     +-- InvalidTransition       the message's state does not allow that action

Each class's docstring is its default message, so ``raise NotFound()`` still
says something useful. Network and parse problems of the NewOaks API are not
exceptions: the client returns them as values (see ``worker.client``).
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "IdempotencyConflict",
    "InvalidTransition",
    "NotFound",
    "OaksendError",
    "ValidationError",
]


def _one_line(text: str) -> str:
    # Messages end up in logs and on a CLI's stderr, where one line per error
    # keeps them greppable.
    return " ".join(text.split())


class OaksendError(Exception):
    """An oaksend error occurred."""

    def __init__(self, message: str | None = None) -> None:
        if message is None:
            message = _one_line(type(self).__doc__ or type(self).__name__)
        super().__init__(message)


class ConfigError(OaksendError):
    """The configuration is missing or invalid."""


class ValidationError(OaksendError):
    """The value is invalid."""

    def __init__(self, field: str, message: str | None = None) -> None:
        self.field = field
        if message is None:
            message = _one_line(type(self).__doc__ or type(self).__name__)
        self.message = _one_line(message)
        super().__init__(f"{field}: {self.message}")


class IdempotencyConflict(ValidationError):
    """The idempotency key was already used for a different request."""


class NotFound(OaksendError):
    """The requested object does not exist."""


class InvalidTransition(OaksendError):
    """The message's current state does not allow this action."""
