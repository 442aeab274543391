"""What a call to SendTwilioMessage came to, as values: an `Envelope` or a `TransportError`.

Pure: the client builds these values; `delivery.classify` decides what they mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from oaksend.worker.newoaks.envelope import Envelope

__all__ = ["Envelope", "Outcome", "TransportError", "redact", "safe_detail"]

_DETAIL_CHARS: Final = 300  #: longest TransportError.detail
REDACTED: Final = "[redacted]"


@dataclass(frozen=True)
class TransportError:
    """The request failed below HTTP.

    ``kind`` is one of "connect", "connect_timeout", "read_timeout",
    "write_timeout", "pool_timeout", "reset", "protocol", "tls", "other".
    ``sent`` is False only when the request certainly never reached the
    server; True means the server may have received (and acted on) it.
    ``detail`` is one safe line: no API key, no request body.
    """

    kind: str
    sent: bool
    detail: str


Outcome = Envelope | TransportError


def safe_detail(exc: BaseException, secret: str) -> str:
    """One line naming the exception, with the API key cut out."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    text = " ".join(redact(text, secret).split())
    return text[:_DETAIL_CHARS]


def redact(text: str, secret: str | None) -> str:
    return text.replace(secret, REDACTED) if secret else text
