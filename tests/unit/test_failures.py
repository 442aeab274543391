"""Translating a failed send into a `TransportError`: its kind, whether it may have been sent, a safe detail.

`newoaks.client` maps httpx's exceptions (the only module that knows them);
`newoaks.outcome` makes the one-line detail, with the API key cut out.
"""

from __future__ import annotations

import ssl

import httpx
import pytest

from oaksend.worker.newoaks.client import kind_of, transport_error
from oaksend.worker.newoaks.outcome import redact, safe_detail

KEY = "sk-test-0123456789abcdefSECRET"


@pytest.mark.parametrize(
    ("exc", "kind", "sent"),
    [
        # Before the request was written: certainly not sent.
        (httpx.ConnectError, "connect", False),
        (httpx.ConnectTimeout, "connect_timeout", False),
        (httpx.PoolTimeout, "pool_timeout", False),
        (httpx.ProxyError, "connect", False),
        (httpx.UnsupportedProtocol, "other", False),
        (httpx.LocalProtocolError, "protocol", False),
        # After (part of) it was written: the server may have it.
        (httpx.ReadTimeout, "read_timeout", True),
        (httpx.WriteTimeout, "write_timeout", True),
        (httpx.RemoteProtocolError, "protocol", True),
        (httpx.ReadError, "reset", True),
        (httpx.WriteError, "reset", True),
        (httpx.CloseError, "other", True),
        (ConnectionResetError, "reset", True),
        (ssl.SSLError, "tls", True),
        (OSError, "other", True),
        (RuntimeError, "other", True),
    ],
)
def test_every_exception_is_translated_without_the_key(exc: type[Exception], kind: str, sent: bool) -> None:
    assert kind_of(exc("boom")) == (kind, sent)
    error = transport_error(exc(f"boom with {KEY}\nsecond line"), KEY)
    assert (error.kind, error.sent) == (kind, sent)
    assert KEY not in error.detail and KEY not in repr(error)
    assert "\n" not in error.detail
    assert error.detail.startswith(f"{exc.__name__}: ") and "[redacted]" in error.detail


def test_a_connect_error_caused_by_tls_is_tls_and_never_sent() -> None:
    try:
        try:
            raise ssl.SSLError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
        except ssl.SSLError as cause:
            raise httpx.ConnectError("handshake") from cause
    except httpx.ConnectError as exc:
        assert kind_of(exc) == ("tls", False)


def test_a_connect_error_naming_a_certificate_is_tls() -> None:
    assert kind_of(httpx.ConnectError("certificate verify failed")) == ("tls", False)
    assert kind_of(httpx.ConnectError("[SSL: WRONG_VERSION_NUMBER] wrong version number")) == ("tls", False)


def test_a_plain_connect_error_is_connect() -> None:
    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except ConnectionRefusedError as cause:
            raise httpx.ConnectError("All connection attempts failed") from cause
    except httpx.ConnectError as exc:
        assert kind_of(exc) == ("connect", False)


def test_a_cycle_of_causes_does_not_loop() -> None:
    first, second = httpx.ConnectError("a"), httpx.ConnectError("b")
    first.__cause__, second.__cause__ = second, first
    assert kind_of(first) == ("connect", False)


def test_safe_detail_is_one_bounded_line() -> None:
    detail = safe_detail(httpx.ReadError("x" * 1000 + "\r\n\t" + KEY), KEY)
    assert len(detail) == 300 and "\n" not in detail and "\r" not in detail
    assert safe_detail(httpx.ReadTimeout(""), KEY) == "ReadTimeout"


def test_a_key_split_by_the_cut_leaves_no_prefix() -> None:
    # Redacted before it is cut to 300 characters: no prefix of the key survives.
    text = "y" * (300 - len("ReadError: ") - 5) + KEY
    detail = safe_detail(httpx.ReadError(text), KEY)
    assert detail.endswith("[reda") and KEY[:5] not in detail


def test_redact() -> None:
    assert redact(f"a {KEY} b {KEY}", KEY) == "a [redacted] b [redacted]"
    assert redact(f"a {KEY}", None) == f"a {KEY}"
    assert redact(f"a {KEY}", "") == f"a {KEY}"  # an empty secret must not blank the text

