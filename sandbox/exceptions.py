"""Exceptions of the sandbox package.

    SandboxError
     +-- ConfigError      a flag, environment variable or runtime setting is invalid
     +-- ProtocolError    a client spoke HTTP/1.1 in a way the sandbox will not accept

Each class's docstring is its default message.
"""

from __future__ import annotations


class SandboxError(Exception):
    """The sandbox failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (type(self).__doc__ or "").strip())


class ConfigError(SandboxError):
    """Invalid sandbox configuration."""


class ProtocolError(SandboxError):
    """Bad HTTP request."""

    def __init__(self, status: int, message: str | None = None) -> None:
        super().__init__(message)
        #: the HTTP status the connection is answered with before it is closed
        self.status = status
