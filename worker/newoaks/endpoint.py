"""Where SendTwilioMessage lives and what its HTTP layer says: URLs, the key check, Retry-After.

Pure: base URLs are checked with the standard library's URL parser, so settings can be
validated without loading the HTTP client.
"""

from __future__ import annotations

import ipaddress
import math
import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Final
from urllib.parse import SplitResult, urlsplit

from oaksend.errors import ConfigError

__all__ = [
    "SEND_PATH",
    "base_url_for",
    "check_api_key",
    "check_base_url",
    "is_loopback_url",
    "parse_retry_after",
    "reference_time",
]

#: Appended to the base URL of a region or white-label host.
SEND_PATH: Final = "/chat/Chatbot/SendTwilioMessage"

_REGION_BASE_URLS: Final = {
    "us": "https://usapi.hottask.com",
    "eu": "https://euapi.hottask.com",
}

#: Larger Retry-After values are clamped: they mean "not for a very long time"
#: and classify caps them far lower anyway; this only keeps floats finite.
_RETRY_AFTER_MAX_S: Final = 10**9
_DELTA_SECONDS = re.compile(r"\d+(?:\.\d+)?", re.ASCII)
# email.utils raises any of these for a junk date, depending on the junk.
_DATE_ERRORS: Final = (TypeError, ValueError, IndexError, OverflowError)


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
    url = _split(base_url)
    if url is None:
        raise ConfigError("NEWOAKS_BASE_URL: is not a valid URL")
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ConfigError("NEWOAKS_BASE_URL: must be an https:// URL with a host")
    if url.scheme == "https" or allow_insecure or is_loopback_url(base_url):
        return
    raise ConfigError(
        f"NEWOAKS_BASE_URL: http://{url.hostname} is not https; the API key would travel in cleartext "
        "(use https, a loopback host, or set OAKSEND_ALLOW_INSECURE_BASE_URL=1 for a private sandbox)"
    )


def _split(url: str) -> SplitResult | None:
    """The URL's parts, or None when it cannot be read (a bad port, a stray bracket, not text)."""
    try:
        parts = urlsplit(url.strip())
        _ = parts.port  # reading the port is what validates it
    except (TypeError, ValueError, AttributeError):
        return None
    return parts


def is_loopback_url(url: str) -> bool:
    """True when the URL's host is this machine: 127.0.0.0/8, ::1 or localhost."""
    parts = _split(url)
    if parts is None or not parts.hostname:
        return False
    host = parts.hostname.strip("[]").rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
            when = when.replace(tzinfo=UTC)
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        delay_s = (when - now).total_seconds()
    except _DATE_ERRORS:
        return None
    if not math.isfinite(delay_s):
        return None
    return min(max(0.0, delay_s), float(_RETRY_AFTER_MAX_S))


def reference_time(date: str | None) -> datetime:
    """The response's Date header (its value) if readable, else our clock (UTC)."""
    if date:
        try:
            parsed = parsedate_to_datetime(date)
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        except _DATE_ERRORS:
            pass
    return datetime.now(UTC)


def check_api_key(api_key: str) -> None:
    # Messages never quote the key. Stray spaces are the usual cause of a 401,
    # which would pause the chatbot; better to refuse them at start.
    if not api_key:
        raise ConfigError("api_key is empty")
    if api_key != api_key.strip():
        raise ConfigError("api_key has leading or trailing whitespace")
    if not all(" " < char < "\x7f" for char in api_key):
        raise ConfigError("api_key holds characters not allowed in an HTTP header")
