"""NewOaksClient against a real local TCP server, plus the pure parsers.

The server is a raw socket server in a thread, so a test can answer with
exactly the bytes it wants, reset the connection, hang, or drip a body.
"""

from __future__ import annotations

import json
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oaksend.worker.newoaks.client import (
    SEND_PATH,
    Envelope,
    NewOaksClient,
    TransportError,
    base_url_for,
    parse_envelope,
    parse_retry_after,
)
from oaksend.errors import ConfigError

KEY = "sk-test-0123456789abcdefSECRET"
SERIAL = "3254a9d0424c4806b9ea3d0763abcdef"
PHONE = "+12025550123"
SUCCESS = {
    "Data": {"Status": "True", "Message": "test", "SessionID": 123123123123},
    "Version": "1.0.0",
    "Success": True,
    "Code": 200,
    "Message": "",
}
#: Short timeouts keep the hang cases fast; the server answers in microseconds.
READ_TIMEOUT_S = 0.5


# --- a real server ----------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    header_lines: list[str]
    body: bytes

    def header(self, name: str) -> str | None:
        for line in self.header_lines:
            key, _, value = line.partition(":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None


Handler = Callable[["RawServer", socket.socket], None]


class RawServer:
    """A TCP server on 127.0.0.1; each connection is given to ``handler``."""

    def __init__(self) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.handler: Handler = respond(200, SUCCESS)
        self.requests: list[Request] = []
        self.stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._serve, daemon=True)
        self._accept.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._handle, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            try:
                self.handler(self, conn)
            except OSError:
                pass  # the client gave up first: expected in several tests

    def read_request(self, conn: socket.socket) -> Request:
        conn.settimeout(5.0)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                raise ConnectionError("client closed before a full request")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        request = Request(method, path, lines[1:], b"")
        length = int(request.header("Content-Length") or 0)
        while len(body) < length:
            body += conn.recv(65536)
        request = Request(method, path, lines[1:], body)
        self.requests.append(request)
        return request

    def close(self) -> None:
        self.stopping.set()
        self._accept.join(timeout=5)
        self.listener.close()
        for thread in self._threads:
            thread.join(timeout=5)


def http_response(status: int, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    head = [f"HTTP/1.1 {status} Whatever", "Connection: close"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if not any(k.lower() == "content-length" for k in headers or {}):
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def respond(status: int, body: Any, headers: dict[str, str] | None = None) -> Handler:
    """Answer with a status and a body (bytes as is, anything else as JSON)."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    all_headers = {"Content-Type": "application/json", **(headers or {})}

    def handler(server: RawServer, conn: socket.socket) -> None:
        server.read_request(conn)
        conn.sendall(http_response(status, raw, all_headers))

    return handler


def hang(server: RawServer, conn: socket.socket) -> None:
    server.read_request(conn)
    server.stopping.wait(10)


def reset(server: RawServer, conn: socket.socket) -> None:
    server.read_request(conn)
    # Linger 0: close() sends RST instead of FIN.
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def close_silently(server: RawServer, conn: socket.socket) -> None:
    server.read_request(conn)


def stream_forever(server: RawServer, conn: socket.socket) -> None:
    """A 200 with no Content-Length and an endless body (read until close)."""
    server.read_request(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: application/json\r\n\r\n")
    chunk = b'{"Data": "' + b"x" * 16384
    while not server.stopping.is_set():
        conn.sendall(chunk)
        chunk = b"x" * 16384


def stall_after_headers(server: RawServer, conn: socket.socket) -> None:
    server.read_request(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b'{"Success": true')
    server.stopping.wait(10)


def close_mid_body(server: RawServer, conn: socket.socket) -> None:
    server.read_request(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b'{"Success": true')


def drip(server: RawServer, conn: socket.socket) -> None:
    """One byte every 50 ms: each read is quick, the whole is endless."""
    server.read_request(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
    while not server.stopping.wait(0.05):
        conn.sendall(b" ")


def garbage_on_connect(server: RawServer, conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    server.stopping.wait(0.5)


@pytest.fixture
def server() -> Iterator[RawServer]:
    srv = RawServer()
    yield srv
    srv.close()


def client_for(url: str, **options: Any) -> NewOaksClient:
    options.setdefault("connect_timeout_s", 2.0)
    options.setdefault("read_timeout_s", READ_TIMEOUT_S)
    return NewOaksClient(url, KEY, **options)


def send(url: str, **options: Any) -> Any:
    with client_for(url, **options) as client:
        return client.send(SERIAL, PHONE, "Hello!")


def assert_no_key(value: object) -> None:
    assert KEY not in repr(value)
    assert KEY[:12] not in repr(value)


# --- the request, as documented -------------------------------------------------------


def test_success_and_the_request_as_documented(server: RawServer) -> None:
    text = "Grüße \U0001f600 \"quoted\"\n"
    with client_for(server.url + "/") as client:  # a trailing slash is tolerated
        outcome = client.send(SERIAL, PHONE, text)

    assert outcome == Envelope(
        http_status=200,
        success=True,
        code=200,
        message="",
        data_status="True",
        data_message="test",
        session_id=123123123123,
        version="1.0.0",
        retry_after_s=None,
        malformed=None,
        body_excerpt=json.dumps(SUCCESS),
    )
    [request] = server.requests
    assert request.method == "POST"
    assert request.path == SEND_PATH == "/chat/Chatbot/SendTwilioMessage"
    assert request.header("Authorization") == KEY  # raw, no "Bearer "
    assert request.header("Content-Type") == "application/json"
    assert json.loads(request.body) == {
        "SerialNumber": SERIAL,
        "ToPhoneNumber": PHONE,
        "Message": text,
    }


def test_session_id_as_a_digit_string(server: RawServer) -> None:
    body = {**SUCCESS, "Data": {"Status": "True", "Message": "", "SessionID": "9223372036854775807"}}
    server.handler = respond(200, body)
    outcome = send(server.url)
    assert isinstance(outcome, Envelope)
    assert outcome.session_id == 2**63 - 1
    assert outcome.malformed is None


def test_one_client_sends_many(server: RawServer) -> None:
    with client_for(server.url) as client:
        outcomes = [client.send(SERIAL, PHONE, f"n{i}") for i in range(5)]
    assert all(isinstance(o, Envelope) and o.session_id == 123123123123 for o in outcomes)
    assert [json.loads(r.body)["Message"] for r in server.requests] == [f"n{i}" for i in range(5)]


def test_redirects_are_not_followed(server: RawServer) -> None:
    server.handler = respond(301, b"", {"Location": "https://elsewhere.example/"})
    outcome = send(server.url)
    assert isinstance(outcome, Envelope)
    assert outcome.http_status == 301
    assert len(server.requests) == 1


# --- what came back ------------------------------------------------------------------

ERROR_ENVELOPE = {"Success": False, "Code": 401, "Message": "Unauthorized", "Data": None}


@pytest.mark.parametrize(
    ("status", "body", "malformed", "fields", "anomaly"),
    [
        (401, ERROR_ENVELOPE, None, {"success": False, "code": 401, "message": "Unauthorized"}, "no Version"),
        (200, SUCCESS, None, {"success": True, "code": 200, "session_id": 123123123123}, None),
        (200, {**SUCCESS, "Message": None, "Version": 3}, None, {"message": None, "version": "3"}, "Version is a number"),
        (
            200,
            {**SUCCESS, "Data": {"Status": "True"}},
            None,
            {"session_id": None, "session_id_text": None, "data_message": None, "data_status": "True"},
            None,
        ),
        (502, b"<!DOCTYPE html><html><body>Bad gateway</body></html>", "html page", {}, None),
        (200, b"<html><title>Login</title></html>", "html page", {}, None),
        (200, b'{"Success": true, "Code": 200, "Mess', "truncated json", {"success": None}, None),
        (200, b'{"Success": true, "Code": 200, "Message": "", "Data": {"Status": tr', "truncated json", {}, None),
        (200, b'{"Success": true, "Code": 20', "truncated json", {}, None),
        (200, b"OK", "not json", {}, None),
        (200, b'{"Success": true} trailing', "not json", {}, None),
        (200, b"\xff\xfe\xfa\x00", "not json", {}, None),
        (200, b"[1, 2]", "not an object", {}, None),
        (200, b'"True"', "not an object", {}, None),
        (200, b"", "empty body", {}, None),
        (200, b"  \r\n ", "empty body", {}, None),
        # Readable but odd: read as far as each field goes, the oddity listed, never malformed.
        (200, {k: v for k, v in SUCCESS.items() if k != "Code"}, None, {"code": None, "session_id": 123123123123}, "no Code"),
        (200, {k: v for k, v in SUCCESS.items() if k != "Success"}, None, {"success": None, "code": 200}, "no Success"),
        (200, {k: v for k, v in SUCCESS.items() if k != "Data"}, None, {"code": 200, "data_status": None}, "no Data"),
        (200, {k: v for k, v in SUCCESS.items() if k != "Message"}, None, {"message": None, "data_status": "True"}, "no Message"),
        (200, {k: v for k, v in SUCCESS.items() if k != "Version"}, None, {"version": None, "code": 200}, "no Version"),
        (200, {**SUCCESS, "Success": "true"}, None, {"success": True}, "Success is a string"),
        (200, {**SUCCESS, "Success": " FALSE "}, None, {"success": False}, "Success is a string"),
        (200, {**SUCCESS, "Success": None}, None, {"success": None, "code": 200}, "Success is null"),
        (200, {**SUCCESS, "Success": 1}, None, {"success": None}, "Success is a number: 1"),
        (200, {**SUCCESS, "Code": True}, None, {"code": None, "success": True}, "Code is a boolean"),
        (200, {**SUCCESS, "Code": "200"}, None, {"code": 200}, "Code is a string"),
        (200, {**SUCCESS, "Code": " 200 "}, None, {"code": 200}, "Code is a string"),
        (200, {**SUCCESS, "Code": "abc"}, None, {"code": None}, 'Code is a string: "abc"'),
        (200, {**SUCCESS, "Code": 200.0}, None, {"code": 200}, "Code is written as a float"),
        (200, {**SUCCESS, "Code": 200.5}, None, {"code": None}, "Code is not an integer: 200.5"),
        (200, {**SUCCESS, "Code": 2**40}, None, {"code": 2**40}, None),
        (200, {**SUCCESS, "Message": 5}, None, {"message": "5"}, "Message is a number"),
        (200, {**SUCCESS, "Message": {"a": [1]}}, None, {"message": '{"a":[1]}'}, "Message is an object"),
        (200, {**SUCCESS, "Data": []}, None, {"data_status": None}, "Data is a list, not an object"),
        (200, {**SUCCESS, "Data": {"Status": True, "SessionID": 1}}, None, {"data_status": "true", "session_id": 1}, "Data.Status is a boolean"),
        (200, {**SUCCESS, "Data": {"Status": "True", "Message": {}}}, None, {"data_message": "{}"}, "Data.Message is an object"),
        (200, {**SUCCESS, "Extra": 1, "Data": {**SUCCESS["Data"], "More": 2}}, None, {"code": 200}, "extra fields: Data.More"),
        # SessionID: a 64-bit integer when it is one, else kept as text.
        (200, {**SUCCESS, "Data": {"Status": "True", "SessionID": 123.0}}, None, {"session_id": 123, "session_id_text": None}, "written as a float"),
        (200, {**SUCCESS, "Data": {"Status": "True", "SessionID": 1.23e11}}, None, {"session_id": 123000000000}, "written as a float"),
        (200, {**SUCCESS, "Data": {"Status": "True", "SessionID": 1.5}}, None, {"session_id": None, "session_id_text": "1.5"}, "kept as text"),
        (200, {**SUCCESS, "Data": {"Status": "True", "SessionID": True}}, None, {"session_id": None, "session_id_text": "true"}, "kept as text"),
        (200, {**SUCCESS, "Data": {"Status": "True", "SessionID": "12a"}}, None, {"session_id": None, "session_id_text": "12a"}, "kept as text"),
        (200, {**SUCCESS, "Data": {"Status": "True", "SessionID": -1}}, None, {"session_id": -1}, "negative"),
        (200, {**SUCCESS, "Data": {"Status": "True", "SessionID": -(2**63)}}, None, {"session_id": -(2**63)}, "negative"),
        (200, {**SUCCESS, "Data": {"Status": "True", "SessionID": 2**63 - 1}}, None, {"session_id": 2**63 - 1}, None),
        (200, {**SUCCESS, "Data": {"Status": "True", "SessionID": 2**63}}, None, {"session_id": None, "session_id_text": str(2**63)}, "does not fit 64 bits"),
        (200, {**SUCCESS, "Data": {"Status": "True", "SessionID": 10**50}}, None, {"session_id": None, "session_id_text": str(10**50)}, "kept as text"),
        (200, b'{"Success":true,"Code":200,"Message":"","Data":{"Status":"True","SessionID":1e400}}', None, {"session_id_text": "1e400"}, "kept as text"),
        (200, b'{"Success":true,"Code":200,"Message":"","Data":{"Status":"True","SessionID":NaN}}', None, {"session_id_text": "NaN"}, "kept as text"),
    ],
)
def test_bodies(
    server: RawServer, status: int, body: Any, malformed: str | None, fields: dict[str, Any], anomaly: str | None
) -> None:
    server.handler = respond(status, body)
    outcome = send(server.url)
    assert isinstance(outcome, Envelope)
    assert outcome.http_status == status
    assert outcome.malformed == malformed
    for name, value in fields.items():
        assert getattr(outcome, name) == value, name
    if anomaly is None:
        assert outcome.anomalies == ()
    else:
        assert any(anomaly in a for a in outcome.anomalies), outcome.anomalies


def test_huge_body_is_cut_at_the_limit(server: RawServer) -> None:
    server.handler = stream_forever
    started = time.monotonic()
    outcome = send(server.url, max_body_bytes=65536)
    assert isinstance(outcome, Envelope)
    assert outcome.http_status == 200
    assert outcome.malformed == "body too large"
    assert outcome.body_excerpt.startswith('{"Data": "xxx')
    assert len(outcome.body_excerpt) == 500
    assert time.monotonic() - started < 5


def test_huge_declared_body_is_cut_at_the_limit(server: RawServer) -> None:
    server.handler = respond(200, b"x" * 200_000)
    outcome = send(server.url, max_body_bytes=1000)
    assert isinstance(outcome, Envelope)
    assert outcome.malformed == "body too large"


def test_body_at_the_limit_is_read(server: RawServer) -> None:
    raw = json.dumps(SUCCESS).encode()
    server.handler = respond(200, raw)
    outcome = send(server.url, max_body_bytes=len(raw))
    assert isinstance(outcome, Envelope)
    assert outcome.malformed is None


@pytest.mark.parametrize(
    ("headers", "expected_s"),
    [
        ({"Retry-After": "120"}, 120.0),
        ({"Retry-After": " 7 "}, 7.0),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "-5"}, None),
        (
            {"Retry-After": "Wed, 21 Oct 2015 07:28:30 GMT", "Date": "Wed, 21 Oct 2015 07:28:00 GMT"},
            30.0,
        ),
        (
            {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT", "Date": "Wed, 21 Oct 2015 07:29:00 GMT"},
            0.0,
        ),
        ({}, None),
    ],
)
def test_retry_after_header(server: RawServer, headers: dict[str, str], expected_s: float | None) -> None:
    server.handler = respond(503, b"busy", headers)
    outcome = send(server.url)
    assert isinstance(outcome, Envelope)
    assert outcome.http_status == 503
    assert outcome.retry_after_s == expected_s


# --- failures below HTTP -------------------------------------------------------------


def test_read_timeout_may_have_been_sent(server: RawServer) -> None:
    server.handler = hang
    started = time.monotonic()
    outcome = send(server.url)
    assert isinstance(outcome, TransportError)
    assert (outcome.kind, outcome.sent) == ("read_timeout", True)
    assert time.monotonic() - started < READ_TIMEOUT_S + 3
    assert len(server.requests) == 1  # the server did get the whole request
    assert_no_key(outcome)


def test_connection_refused_was_never_sent() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    outcome = send(f"http://127.0.0.1:{port}")
    assert isinstance(outcome, TransportError)
    assert (outcome.kind, outcome.sent) == ("connect", False)
    assert_no_key(outcome)


def test_reset_after_send_may_have_been_sent(server: RawServer) -> None:
    server.handler = reset
    outcome = send(server.url)
    assert isinstance(outcome, TransportError)
    assert (outcome.kind, outcome.sent) == ("reset", True)
    assert_no_key(outcome)


def test_close_without_response_may_have_been_sent(server: RawServer) -> None:
    server.handler = close_silently
    outcome = send(server.url)
    assert isinstance(outcome, TransportError)
    assert (outcome.kind, outcome.sent) == ("protocol", True)
    assert_no_key(outcome)


def test_tls_handshake_failure_was_never_sent(server: RawServer) -> None:
    server.handler = garbage_on_connect
    outcome = send(f"https://127.0.0.1:{server.port}")
    assert isinstance(outcome, TransportError)
    assert (outcome.kind, outcome.sent) == ("tls", False)
    assert server.requests == []


def test_stall_after_headers_keeps_the_status(server: RawServer) -> None:
    server.handler = stall_after_headers
    outcome = send(server.url)
    assert isinstance(outcome, Envelope)
    assert outcome.http_status == 200
    assert outcome.malformed == "body read failed: read_timeout"


def test_close_mid_body_keeps_the_status(server: RawServer) -> None:
    server.handler = close_mid_body
    outcome = send(server.url)
    assert isinstance(outcome, Envelope)
    assert outcome.http_status == 200
    assert outcome.malformed == "body read failed: protocol"


def test_a_dripping_body_is_bounded_by_the_response_deadline(server: RawServer) -> None:
    server.handler = drip
    started = time.monotonic()
    outcome = send(server.url, read_timeout_s=2.0, response_deadline_s=0.5)
    assert isinstance(outcome, Envelope)
    assert outcome.malformed == "body read failed: read_timeout"
    assert time.monotonic() - started < 3


# --- the key stays secret ----------------------------------------------------------


def test_repr_hides_the_key() -> None:
    client = NewOaksClient("https://usapi.hottask.com", KEY)
    try:
        assert KEY not in repr(client)
        assert KEY not in str(client)
        assert "usapi.hottask.com" in repr(client)
    finally:
        client.close()


def test_an_echoed_key_is_redacted(server: RawServer) -> None:
    echo = {**SUCCESS, "Success": False, "Message": f"bad key {KEY}", "Data": {"Message": KEY}}
    server.handler = respond(200, b"x" * 470 + json.dumps(echo).encode())  # key across char 500
    assert_no_key(send(server.url))
    server.handler = respond(401, echo)
    outcome = send(server.url)
    assert_no_key(outcome)
    assert isinstance(outcome, Envelope)
    assert outcome.message == "bad key [redacted]"


@pytest.mark.parametrize(
    ("exc", "kind", "sent"),
    [
        (httpx.ConnectError, "connect", False),
        (httpx.ConnectTimeout, "connect_timeout", False),
        (httpx.PoolTimeout, "pool_timeout", False),
        (httpx.ProxyError, "connect", False),
        (httpx.UnsupportedProtocol, "other", False),
        (httpx.LocalProtocolError, "protocol", False),
        (httpx.ReadTimeout, "read_timeout", True),
        (httpx.WriteTimeout, "write_timeout", True),
        (httpx.RemoteProtocolError, "protocol", True),
        (httpx.ReadError, "reset", True),
        (httpx.WriteError, "reset", True),
        (httpx.DecodingError, "other", True),
        (ConnectionResetError, "reset", True),
        (ssl.SSLError, "tls", True),
        (OSError, "other", True),
    ],
)
def test_every_exception_is_translated_without_the_key(
    exc: type[Exception], kind: str, sent: bool
) -> None:
    def raiser(request: httpx.Request) -> httpx.Response:
        raise exc(f"boom with {KEY}\nsecond line")

    with NewOaksClient("https://usapi.hottask.com", KEY, transport=httpx.MockTransport(raiser)) as client:
        outcome = client.send(SERIAL, PHONE, "the body text")
    assert isinstance(outcome, TransportError)
    assert (outcome.kind, outcome.sent) == (kind, sent)
    assert KEY not in outcome.detail
    assert "the body text" not in outcome.detail
    assert "\n" not in outcome.detail
    assert "[redacted]" in outcome.detail


def test_a_tls_cause_makes_a_connect_error_tls() -> None:
    def raiser(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("handshake") from ssl.SSLError(1, "CERTIFICATE_VERIFY_FAILED")

    with NewOaksClient("https://usapi.hottask.com", KEY, transport=httpx.MockTransport(raiser)) as client:
        outcome = client.send(SERIAL, PHONE, "x")
    assert isinstance(outcome, TransportError)
    assert (outcome.kind, outcome.sent) == ("tls", False)


@pytest.mark.parametrize(
    ("base_url", "api_key"),
    [
        ("usapi.hottask.com", KEY),
        ("ftp://usapi.hottask.com", KEY),
        ("https://", KEY),
        ("https://usapi.hottask.com", ""),
        ("https://usapi.hottask.com", f" {KEY}"),
        ("https://usapi.hottask.com", f"{KEY}\n"),
        ("https://usapi.hottask.com", f"{KEY}\r\nX-Evil: 1"),
        ("https://usapi.hottask.com", f"Bearer {KEY}"),
        ("https://usapi.hottask.com", f"{KEY}é"),
    ],
)
def test_bad_configuration_fails_at_start_without_the_key(base_url: str, api_key: str) -> None:
    with pytest.raises(ConfigError) as info:
        NewOaksClient(base_url, api_key)
    assert KEY not in str(info.value)


# --- base_url_for ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("region", "base_url", "expected"),
    [
        ("us", None, "https://usapi.hottask.com"),
        ("eu", None, "https://euapi.hottask.com"),
        ("EU", None, "https://euapi.hottask.com"),
        (" us ", "", "https://usapi.hottask.com"),
        ("us", "https://sms.example.com/", "https://sms.example.com"),
        (None, "https://sms.example.com//", "https://sms.example.com"),
        ("mars", "https://sms.example.com", "https://sms.example.com"),
    ],
)
def test_base_url_for(region: str | None, base_url: str | None, expected: str) -> None:
    assert base_url_for(region, base_url) == expected


@pytest.mark.parametrize("region", ["mars", "", None, "u s"])
def test_base_url_for_unknown_region(region: str | None) -> None:
    with pytest.raises(ConfigError, match="NEWOAKS_REGION"):
        base_url_for(region, None)


# --- the pure parsers never raise --------------------------------------------------------

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("0", 0.0),
        ("1.5", 1.5),
        ("9" * 400, 1e9),
        ("", None),
        ("nan", None),
        ("inf", None),
        ("1e3", None),
        ("Sun, 01 Jun 2025 12:01:00 GMT", 60.0),
        ("Sun, 01 Jun 2025 11:00:00 GMT", 0.0),
        ("Sunday, 01-Jun-25 12:00:10 GMT", 10.0),
        ("Sun, 99 Jun 2025 12:01:00 GMT", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == expected


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
_envelope_like = st.fixed_dictionaries(
    {},
    optional={
        "Success": _json,
        "Code": _json,
        "Message": _json,
        "Version": _json,
        "Data": st.one_of(
            _json,
            st.fixed_dictionaries({}, optional={"Status": _json, "Message": _json, "SessionID": _json}),
        ),
    },
)


@settings(max_examples=300, database=None, deadline=None)
@given(status=st.integers(min_value=100, max_value=999), body=st.binary(max_size=3000))
def test_parse_envelope_never_raises_for_bytes(status: int, body: bytes) -> None:
    outcome = parse_envelope(status, body, secret=KEY)
    assert outcome.http_status == status
    assert len(outcome.body_excerpt) <= 500


@settings(max_examples=300, database=None, deadline=None)
@given(doc=_envelope_like, cut=st.integers(min_value=0, max_value=400))
def test_parse_envelope_never_raises_for_envelope_like_json(doc: dict[str, Any], cut: int) -> None:
    raw = json.dumps(doc).encode()
    for body in (raw, raw[:cut]):
        outcome = parse_envelope(200, body)
        if outcome.malformed is not None:
            assert outcome.success is None and outcome.code is None and outcome.anomalies == ()
            continue
        assert outcome.success is None or isinstance(outcome.success, bool)
        assert outcome.code is None or type(outcome.code) is int
        assert outcome.session_id is None or -(2**63) <= outcome.session_id < 2**63
        assert outcome.session_id is None or outcome.session_id_text is None
        for text in (outcome.message, outcome.data_status, outcome.data_message, outcome.version,
                     outcome.session_id_text, *outcome.anomalies):
            assert text is None or type(text) is str


@settings(max_examples=300, database=None, deadline=None)
@given(value=st.text(max_size=60))
def test_parse_retry_after_never_raises(value: str) -> None:
    result = parse_retry_after(value, now=NOW)
    assert result is None or 0.0 <= result <= 1e9
