"""Translating the transport's exceptions into `TransportError` values, once, at the boundary.

httpcore's exceptions (the worker's connections raise them) go no further than
this module: the send path sees only `TransportError(kind, sent, detail)`.
"""

from __future__ import annotations

import ssl

import httpcore

from oaksend.worker.newoaks.outcome import TransportError, safe_detail

__all__ = ["kind_of", "transport_error"]


def transport_error(exc: BaseException, secret: str) -> TransportError:
    """Translate an exception raised while sending into a TransportError."""
    kind, sent = kind_of(exc)
    return TransportError(kind=kind, sent=sent, detail=safe_detail(exc, secret))


def kind_of(exc: BaseException) -> tuple[str, bool]:
    """Map an exception to (kind, sent). Subclasses are tested before bases.

    The worker's connections raise httpcore's exceptions (the same names and meanings
    as httpx's)."""
    # Before the request was written: certainly not sent.
    if isinstance(exc, httpcore.ConnectTimeout):
        return "connect_timeout", False
    if isinstance(exc, httpcore.PoolTimeout):
        return "pool_timeout", False
    if isinstance(exc, httpcore.ConnectionNotAvailable):  # a connection refused the request before writing it
        return "connect", False
    if isinstance(exc, httpcore.ConnectError):
        # httpcore reports a failed TLS handshake as a ConnectError whose
        # cause is the ssl error; it is still "never left".
        return ("tls" if _caused_by_ssl(exc) else "connect"), False
    if isinstance(exc, httpcore.ProxyError):
        return "connect", False
    if isinstance(exc, httpcore.UnsupportedProtocol):
        return "other", False
    if isinstance(exc, httpcore.LocalProtocolError):
        # We refused to build the request (e.g. an illegal header value).
        return "protocol", False
    # After (part of) the request was written: the server may have it.
    if isinstance(exc, httpcore.ReadTimeout):
        return "read_timeout", True
    if isinstance(exc, httpcore.WriteTimeout):
        return "write_timeout", True
    if isinstance(exc, httpcore.RemoteProtocolError):
        return "protocol", True
    if isinstance(exc, (httpcore.ReadError, httpcore.WriteError, ConnectionResetError)):
        return "reset", True
    if isinstance(exc, ssl.SSLError):
        return "tls", True
    # Unknown failure mid-send: assume the worst, which is a possible duplicate.
    return "other", True


def _caused_by_ssl(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return "SSL" in str(exc) or "CERTIFICATE" in str(exc).upper()
