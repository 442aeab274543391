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

import json
import math
import re
import ssl
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any, Final

import httpx

from oaksend.errors import ConfigError

__all__ = [
    "Envelope",
    "NewOaksClient",
    "Outcome",
    "SEND_PATH",
    "TransportError",
    "base_url_for",
    "parse_envelope",
    "parse_retry_after",
]

#: Appended to the base URL of a region or white-label host.
SEND_PATH: Final = "/chat/Chatbot/SendTwilioMessage"

_REGION_BASE_URLS: Final = {
    "us": "https://usapi.hottask.com",
    "eu": "https://euapi.hottask.com",
}

_EXCERPT_CHARS: Final = 500  #: body characters kept for the audit trail
_DETAIL_CHARS: Final = 300  #: longest TransportError.detail
_REDACTED: Final = "[redacted]"
_SESSION_ID_MAX: Final = 2**63 - 1  #: stored as a signed 64-bit integer
#: Larger Retry-After values are clamped: they mean "not for a very long time"
#: and classify caps them far lower anyway; this only keeps floats finite.
_RETRY_AFTER_MAX_S: Final = 10**9
# Idle connections are dropped before common server idle timeouts (uvicorn
# 5 s): reusing a connection the server is closing fails after the body may
# have been sent, which is an ambiguous outcome we would rather not create.
_KEEPALIVE_EXPIRY_S: Final = 4.0
_MAX_CONNECTIONS: Final = 4  #: per client; a client serves one thread
_LITERAL_PREFIXES: Final = frozenset(
    word[:i] for word in ("true", "false", "null") for i in range(1, len(word))
)
_DELTA_SECONDS = re.compile(r"\d+(?:\.\d+)?", re.ASCII)
_DIGITS = re.compile(r"\d{1,19}", re.ASCII)
# email.utils raises any of these for a junk date, depending on the junk.
_DATE_ERRORS: Final = (TypeError, ValueError, IndexError, OverflowError)


@dataclass(frozen=True)
class Envelope:
    """What came back over HTTP, parsed as far as possible.

    ``malformed`` is None when the body is the documented envelope; otherwise
    it is a short reason ("not json", "truncated json", "missing field Code",
    "wrong type Success", "body too large", "empty body", "html page", ...)
    and the fields hold whatever could still be read.
    """

    http_status: int
    success: bool | None
    code: int | None
    message: str | None  #: the envelope's Message
    data_status: str | None  #: Data.Status
    data_message: str | None  #: Data.Message
    session_id: int | None  #: Data.SessionID (64-bit)
    version: str | None
    retry_after_s: float | None  #: the Retry-After header, in seconds from the response
    malformed: str | None
    body_excerpt: str  #: the body's first characters, for the audit trail


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


def base_url_for(region: str | None, base_url: str | None) -> str:
    """Return the API base URL: an explicit ``base_url`` wins, else the region's.

    ``region`` is "us" or "eu" (any case). The result has no trailing slash.

    Raises:
        ConfigError: the region is unknown, or neither is given (guessing a
            region would send an EU customer's data to the US host).
    """
    if base_url is not None and base_url.strip():
        return base_url.strip().rstrip("/")
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
            response.headers.get("Retry-After"), now=_reference_time(response)
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


def parse_envelope(
    http_status: int,
    body: bytes,
    *,
    retry_after_s: float | None = None,
    incomplete: str | None = None,
    secret: str | None = None,
) -> Envelope:
    """Parse a response body into an :class:`Envelope`; never raises.

    Args:
        http_status: the response's status code.
        body: the body bytes read (possibly cut short).
        retry_after_s: the already parsed Retry-After, carried along.
        incomplete: why the body is not whole ("body too large", "body read
            failed: ..."), if so; the body is then not parsed, only excerpted.
        secret: a string to cut out of every text taken from the body (the API
            key, in case an error page echoes the request headers).
    """
    # Redact before cutting the excerpt, so no prefix of the key survives.
    head = body[: _EXCERPT_CHARS * 4 + len(secret or "")].decode("utf-8", errors="replace")
    excerpt = _redact(head, secret)[:_EXCERPT_CHARS]
    fields: dict[str, Any] = {}
    malformed = incomplete if incomplete is not None else _parse_fields(body, fields)
    for name in ("message", "data_status", "data_message", "version"):
        if fields.get(name) is not None:
            fields[name] = _redact(fields[name], secret)
    return Envelope(
        http_status=http_status,
        success=fields.get("success"),
        code=fields.get("code"),
        message=fields.get("message"),
        data_status=fields.get("data_status"),
        data_message=fields.get("data_message"),
        session_id=fields.get("session_id"),
        version=fields.get("version"),
        retry_after_s=retry_after_s,
        malformed=malformed,
        body_excerpt=excerpt,
    )


def _parse_fields(body: bytes, fields: dict[str, Any]) -> str | None:
    """Fill ``fields`` with what the body holds; return the first problem or None."""
    text = body.strip()
    if not text:
        return "empty body"
    if text.startswith(b"<"):
        return "html page" if b"html" in text[:1024].lower() else "not json"
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        tail = exc.doc[exc.pos :].strip()
        if exc.msg.startswith("Unterminated string") or not tail or tail in _LITERAL_PREFIXES:
            return "truncated json"
        return "not json"
    except (ValueError, RecursionError):
        # Bytes that are not UTF-8/16/32, or nesting deeper than the stack.
        return "not json"
    if not isinstance(doc, dict):
        return "not an object"

    problems: list[str] = []

    def take(obj: dict[str, Any], key: str, label: str, ok: Any, *, required: bool) -> Any:
        if key not in obj:
            if required:
                problems.append(f"missing field {label}")
            return None
        value = obj[key]
        if value is None and label not in ("Success", "Code"):
            return None
        if not ok(value):
            problems.append(f"wrong type {label}")
            return None
        return value

    fields["success"] = take(doc, "Success", "Success", _is_bool, required=True)
    fields["code"] = take(doc, "Code", "Code", _is_int, required=True)
    fields["message"] = take(doc, "Message", "Message", _is_str, required=True)
    data = take(doc, "Data", "Data", _is_dict, required=True)
    if data is not None:
        fields["data_status"] = take(data, "Status", "Data.Status", _is_str, required=False)
        fields["data_message"] = take(data, "Message", "Data.Message", _is_str, required=False)
        raw_id = take(data, "SessionID", "Data.SessionID", _is_int_or_digits, required=False)
        if raw_id is not None:
            session_id = int(raw_id)
            if session_id > _SESSION_ID_MAX:
                problems.append("out of range Data.SessionID")
            else:
                fields["session_id"] = session_id
    # Version is informational: a wrong type there must not cast doubt on a send.
    version = doc.get("Version")
    fields["version"] = version if isinstance(version, str) else None
    return problems[0] if problems else None


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool)


def _is_int(value: Any) -> bool:
    # bool is an int subclass in Python; true is not a status code.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _is_dict(value: Any) -> bool:
    return isinstance(value, dict)


def _is_int_or_digits(value: Any) -> bool:
    # 123123123123 exceeds 2**31; some serializers send 64-bit ids as strings
    # so that JavaScript clients keep every digit.
    if _is_int(value):
        return bool(value >= 0)
    return isinstance(value, str) and _DIGITS.fullmatch(value) is not None


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


def _reference_time(response: httpx.Response) -> datetime:
    """The response's Date header if readable, else our clock (UTC)."""
    date = response.headers.get("Date")
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
    """Map an exception to (kind, sent). Subclasses are tested before bases."""
    # Before the request was written: certainly not sent.
    if isinstance(exc, httpx.ConnectTimeout):
        return "connect_timeout", False
    if isinstance(exc, httpx.PoolTimeout):
        return "pool_timeout", False
    if isinstance(exc, httpx.ConnectError):
        # httpcore reports a failed TLS handshake as a ConnectError whose
        # cause is the ssl error; it is still "never left".
        return ("tls" if _caused_by_ssl(exc) else "connect"), False
    if isinstance(exc, httpx.ProxyError):
        return "connect", False
    if isinstance(exc, httpx.UnsupportedProtocol):
        return "other", False
    if isinstance(exc, httpx.LocalProtocolError):
        # We refused to build the request (e.g. an illegal header value).
        return "protocol", False
    # After (part of) the request was written: the server may have it.
    if isinstance(exc, httpx.ReadTimeout):
        return "read_timeout", True
    if isinstance(exc, httpx.WriteTimeout):
        return "write_timeout", True
    if isinstance(exc, httpx.RemoteProtocolError):
        return "protocol", True
    if isinstance(exc, (httpx.ReadError, httpx.WriteError, ConnectionResetError)):
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
