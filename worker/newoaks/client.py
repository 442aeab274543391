"""SendTwilioMessage over httpx: one POST in, one value out.

``NewOaksClient.send`` never raises for network or parse problems. It returns
an :class:`Envelope` (the server answered over HTTP, parsed as far as it
goes) or a :class:`TransportError` (the request failed below HTTP, with
whether the body may have reached the server). Deciding what that means is
``worker.classify``'s job; this module only reports faithfully.

httpx exceptions are translated here, once, and go no further. The API key
is never written into a value, an exception, a log line or a repr.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import ssl
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Final

import httpcore
import httpx

from oaksend.errors import ConfigError
from oaksend.worker.newoaks.envelope import Envelope, parse_envelope

__all__ = [
    "Envelope",
    "NewOaksClient",
    "Outcome",
    "SEND_PATH",
    "TransportError",
    "base_url_for",
    "check_base_url",
    "is_loopback_url",
    "parse_envelope",
    "parse_retry_after",
]

#: Appended to the base URL of a region or white-label host.
SEND_PATH: Final = "/chat/Chatbot/SendTwilioMessage"

_REGION_BASE_URLS: Final = {
    "us": "https://usapi.hottask.com",
    "eu": "https://euapi.hottask.com",
}

_DETAIL_CHARS: Final = 300  #: longest TransportError.detail
_REDACTED: Final = "[redacted]"
#: Larger Retry-After values are clamped: they mean "not for a very long time"
#: and classify caps them far lower anyway; this only keeps floats finite.
_RETRY_AFTER_MAX_S: Final = 10**9
# Idle connections are dropped before common server idle timeouts (uvicorn
# 5 s): reusing a connection the server is closing fails after the body may
# have been sent, which is an ambiguous outcome we would rather not create.
_KEEPALIVE_EXPIRY_S: Final = 4.0
_MAX_CONNECTIONS: Final = 4  #: per client; a client serves one thread
_DELTA_SECONDS = re.compile(r"\d+(?:\.\d+)?", re.ASCII)
# email.utils raises any of these for a junk date, depending on the junk.
_DATE_ERRORS: Final = (TypeError, ValueError, IndexError, OverflowError)


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


def base_url_for(region: str | None, base_url: str | None, *, allow_insecure: bool = False) -> str:
    """Return the API base URL: an explicit ``base_url`` wins, else the region's.

    ``region`` is "us" or "eu" (any case). The result has no trailing slash.
    An explicit URL must be https unless its host is loopback or
    ``allow_insecure`` is set (see :func:`check_base_url`).

    Raises:
        ConfigError: the region is unknown, or neither is given (guessing a
            region would send an EU customer's data to the US host), or the
            URL would carry the key in cleartext.
    """
    if base_url is not None and base_url.strip():
        url = base_url.strip().rstrip("/")
        check_base_url(url, allow_insecure=allow_insecure)
        return url
    if region is None or not region.strip():
        raise ConfigError("NEWOAKS_REGION: set NEWOAKS_REGION (us or eu) or NEWOAKS_BASE_URL")
    try:
        return _REGION_BASE_URLS[region.strip().lower()]
    except KeyError:
        shown = region if len(region) <= 40 else region[:40] + "..."
        raise ConfigError(
            f"NEWOAKS_REGION: unknown region {shown!r}; expected 'us' or 'eu' "
            "(or set NEWOAKS_BASE_URL for a white-label host)"
        ) from None


def check_base_url(base_url: str, *, allow_insecure: bool = False) -> None:
    """Refuse a base URL that would send the key (a header) and every number in cleartext.

    https is required, except for a loopback host (127.0.0.0/8, ::1, localhost:
    the sandbox on one's own machine) or when ``allow_insecure`` is set
    (``OAKSEND_ALLOW_INSECURE_BASE_URL``, e.g. a sandbox in a private network).

    Raises:
        ConfigError: naming NEWOAKS_BASE_URL; the message shows only scheme and host.
    """
    try:
        url = httpx.URL(base_url)
    except (httpx.InvalidURL, TypeError, ValueError):
        raise ConfigError("NEWOAKS_BASE_URL: is not a valid URL") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError("NEWOAKS_BASE_URL: must be an https:// URL with a host")
    if url.scheme == "https" or allow_insecure or is_loopback_url(url):
        return
    raise ConfigError(
        f"NEWOAKS_BASE_URL: http://{url.host} is not https; the API key would travel in cleartext "
        "(use https, a loopback host, or set OAKSEND_ALLOW_INSECURE_BASE_URL=1 for a private sandbox)"
    )


def is_loopback_url(url: str | httpx.URL) -> bool:
    """True when the URL's host is this machine: 127.0.0.0/8, ::1 or localhost."""
    try:
        host = (url if isinstance(url, httpx.URL) else httpx.URL(url)).host
    except (httpx.InvalidURL, TypeError, ValueError):
        return False
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class NewOaksClient:
    """A SendTwilioMessage client. Use one client per thread.

    httpx.Client keeps connections alive; one client shared across threads is
    slower than one each. ``transport`` is for tests and custom TLS setups.
    ``response_deadline_s`` bounds the whole exchange, so a server that drips
    its body one byte per read timeout cannot hold a worker for hours.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 15.0,
        max_body_bytes: int = 65536,
        transport: httpx.BaseTransport | None = None,
        response_deadline_s: float | None = 60.0,
    ) -> None:
        _check_base_url(base_url)
        _check_api_key(api_key)
        if max_body_bytes < 1:
            raise ConfigError(f"max_body_bytes must be at least 1, got {max_body_bytes}")
        self._base_url = base_url.rstrip("/")
        self._url = self._base_url + SEND_PATH
        self._api_key = api_key
        self._max_body_bytes = max_body_bytes
        self._response_deadline_s = response_deadline_s
        self._http = httpx.Client(
            headers={
                "Authorization": api_key,  # the raw key: the API takes no "Bearer "
                "Content-Type": "application/json",
                "Accept": "application/json",
                "User-Agent": "oaksend",
            },
            timeout=httpx.Timeout(
                connect=connect_timeout_s,
                read=read_timeout_s,
                write=read_timeout_s,
                pool=connect_timeout_s,
            ),
            limits=httpx.Limits(
                max_connections=_MAX_CONNECTIONS,
                max_keepalive_connections=_MAX_CONNECTIONS,
                keepalive_expiry=_KEEPALIVE_EXPIRY_S,
            ),
            # A redirect means a wrong base URL; re-POSTing the message to a
            # host nobody configured is worse than failing loudly.
            follow_redirects=False,
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"NewOaksClient(base_url={self._base_url!r}, api_key={_REDACTED!r})"

    def send(self, serial_number: str, to_phone: str, message: str) -> Outcome:
        """POST one message and return what happened; never raises for I/O or parsing.

        Args:
            serial_number: the chatbot ID (SerialNumber).
            to_phone: the target number (ToPhoneNumber), E.164.
            message: the text (Message).
        """
        # ensure_ascii: \u escapes cannot fail to encode, whatever the text
        # holds (even a lone surrogate), and the server's JSON parser reads them.
        payload = json.dumps(
            {"SerialNumber": serial_number, "ToPhoneNumber": to_phone, "Message": message},
            ensure_ascii=True,
        ).encode("ascii")
        started_s = time.monotonic()
        try:
            with self._http.stream("POST", self._url, content=payload) as response:
                return self._receive(response, started_s)
        except (httpx.HTTPError, OSError) as exc:  # the boundary: httpx stops here
            return _transport_error(exc, self._api_key)

    def close(self) -> None:
        """Close the pooled connections."""
        self._http.close()

    def __enter__(self) -> NewOaksClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _receive(self, response: httpx.Response, started_s: float) -> Envelope:
        """Read at most max_body_bytes of the body and parse it."""
        retry_after_s = parse_retry_after(
            response.headers.get("Retry-After"), now=_reference_time(response.headers.get("Date"))
        )
        chunks: list[bytes] = []
        size = 0
        incomplete: str | None = None
        try:
            for chunk in response.iter_bytes():
                if size + len(chunk) > self._max_body_bytes:
                    # Keep what fits, for the excerpt; leaving the with-block
                    # closes the connection instead of draining the rest.
                    chunks.append(chunk[: self._max_body_bytes - size])
                    incomplete = "body too large"
                    break
                chunks.append(chunk)
                size += len(chunk)
                if (
                    self._response_deadline_s is not None
                    and time.monotonic() - started_s > self._response_deadline_s
                ):
                    incomplete = "body read failed: read_timeout"
                    break
        except (httpx.HTTPError, OSError) as exc:
            # The status line and headers arrived, so keep them: a 429 or 503
            # is still safe to retry even if its body broke off.
            incomplete = f"body read failed: {_transport_error(exc, self._api_key).kind}"
        return parse_envelope(
            response.status_code,
            b"".join(chunks),
            retry_after_s=retry_after_s,
            incomplete=incomplete,
            secret=self._api_key,
        )


def parse_retry_after(value: str | None, *, now: datetime) -> float | None:
    """Return a Retry-After header value as seconds from ``now``; never raises.

    Accepts delta-seconds ("120", also "1.5") and an HTTP-date (a date in the
    past gives 0.0). Returns None when absent or unreadable. ``now`` should be
    the response's own Date when it has one, so clock skew cancels out.
    """
    if value is None:
        return None
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):
        if len(value) > 15:  # int() of thousands of digits is slow and refused
            return float(_RETRY_AFTER_MAX_S)
        return min(float(value), float(_RETRY_AFTER_MAX_S))
    try:
        when = parsedate_to_datetime(value)
        if when.tzinfo is None:  # RFC 9110 dates are GMT
            when = when.replace(tzinfo=timezone.utc)
        if now.tzinfo is None:
            now = now.replace(tzinfo=timezone.utc)
        delay_s = (when - now).total_seconds()
    except _DATE_ERRORS:
        return None
    if not math.isfinite(delay_s):
        return None
    return min(max(0.0, delay_s), float(_RETRY_AFTER_MAX_S))


def _reference_time(date: str | None) -> datetime:
    """The response's Date header (its value) if readable, else our clock (UTC)."""
    if date:
        try:
            parsed = parsedate_to_datetime(date)
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
        except _DATE_ERRORS:
            pass
    return datetime.now(timezone.utc)


def _transport_error(exc: BaseException, secret: str) -> TransportError:
    """Translate an exception raised while sending into a TransportError."""
    kind, sent = _kind_of(exc)
    return TransportError(kind=kind, sent=sent, detail=_safe_detail(exc, secret))


def _kind_of(exc: BaseException) -> tuple[str, bool]:
    """Map an exception to (kind, sent). Subclasses are tested before bases.

    httpx's exceptions (the synchronous client) and httpcore's (the worker's transport,
    which calls httpcore directly) have the same names and meanings: each pair is one kind."""
    # Before the request was written: certainly not sent.
    if isinstance(exc, (httpx.ConnectTimeout, httpcore.ConnectTimeout)):
        return "connect_timeout", False
    if isinstance(exc, (httpx.PoolTimeout, httpcore.PoolTimeout)):
        return "pool_timeout", False
    if isinstance(exc, httpcore.ConnectionNotAvailable):  # a connection refused the request before writing it
        return "connect", False
    if isinstance(exc, (httpx.ConnectError, httpcore.ConnectError)):
        # httpcore reports a failed TLS handshake as a ConnectError whose
        # cause is the ssl error; it is still "never left".
        return ("tls" if _caused_by_ssl(exc) else "connect"), False
    if isinstance(exc, (httpx.ProxyError, httpcore.ProxyError)):
        return "connect", False
    if isinstance(exc, (httpx.UnsupportedProtocol, httpcore.UnsupportedProtocol)):
        return "other", False
    if isinstance(exc, (httpx.LocalProtocolError, httpcore.LocalProtocolError)):
        # We refused to build the request (e.g. an illegal header value).
        return "protocol", False
    # After (part of) the request was written: the server may have it.
    if isinstance(exc, (httpx.ReadTimeout, httpcore.ReadTimeout)):
        return "read_timeout", True
    if isinstance(exc, (httpx.WriteTimeout, httpcore.WriteTimeout)):
        return "write_timeout", True
    if isinstance(exc, (httpx.RemoteProtocolError, httpcore.RemoteProtocolError)):
        return "protocol", True
    if isinstance(exc, (httpx.ReadError, httpx.WriteError, httpcore.ReadError, httpcore.WriteError,
                        ConnectionResetError)):
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


def _safe_detail(exc: BaseException, secret: str) -> str:
    """One line naming the exception, with the API key cut out."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    text = " ".join(_redact(text, secret).split())
    return text[:_DETAIL_CHARS]


def _redact(text: str, secret: str | None) -> str:
    return text.replace(secret, _REDACTED) if secret else text


def _check_base_url(base_url: str) -> None:
    try:
        url = httpx.URL(base_url)
    except (httpx.InvalidURL, TypeError, ValueError):
        raise ConfigError("base_url is not a valid URL") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError("base_url must be an http:// or https:// URL with a host")


def _check_api_key(api_key: str) -> None:
    # Messages never quote the key. Stray spaces are the usual cause of a 401,
    # which would pause the chatbot; better to refuse them at start.
    if not api_key:
        raise ConfigError("api_key is empty")
    if api_key != api_key.strip():
        raise ConfigError("api_key has leading or trailing whitespace")
    if not all(" " < char < "\x7f" for char in api_key):
        raise ConfigError("api_key holds characters not allowed in an HTTP header")
