"""The production transport (`newoaks.client.Transport`) against raw TCP servers on 127.0.0.1.

Each server is a socket in a thread, so a test answers with exactly the bytes it
wants, resets the connection, hangs, or drips a response: the request as the API
documents it, redirects refused, bodies capped, Retry-After read, failures below
HTTP classified (and never carrying the key), and the whole-exchange response
deadline. The sandbox-based cases live in test_transport.py.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from oaksend.errors import ConfigError
from oaksend.worker.newoaks.client import Call, CallResult, Transport
from oaksend.worker.newoaks.endpoint import SEND_PATH
from oaksend.worker.newoaks.outcome import Envelope, Outcome, TransportError

KEY = "sk-test-0123456789abcdefSECRET"
SERIAL = "3254a9d0424c4806b9ea3d0763abcdef"
PHONE = "+12025550123"
SUCCESS: dict[str, Any] = {
    "Data": {"Status": "True", "Message": "test", "SessionID": 123123123123},
    "Version": "1.0.0",
    "Success": True,
    "Code": 200,
    "Message": "",
}
#: Short timeouts keep the hang cases fast; the server answers in microseconds.
READ_TIMEOUT_S = 0.5
#: The longest any one call may take here before the test gives up on it.
CALL_LIMIT_S = 15.0


# --- a raw server --------------------------------------------------------------------


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
    """A TCP server on 127.0.0.1; each connection is given to ``handler`` in its own thread."""

    def __init__(self, handler: Handler) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.05)
        self.port: int = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.handler = handler
        self.requests: list[Request] = []
        self.connections = 0
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
            self.connections += 1
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
        length = int(Request(method, path, lines[1:], b"").header("Content-Length") or 0)
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                raise ConnectionError("client closed mid-body")
            body += chunk
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


def garbage_on_connect(server: RawServer, conn: socket.socket) -> None:
    """Plain HTTP where a TLS handshake was expected."""
    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    server.stopping.wait(0.5)


#: One byte every DRIP_S: each read is quick, the whole never ends.
DRIP_S = 0.05


def drip_body(server: RawServer, conn: socket.socket) -> None:
    """A 503 head with Retry-After at once, then a 100,000-byte body one byte at a time."""
    server.read_request(conn)
    conn.sendall(b"HTTP/1.1 503 Busy\r\nRetry-After: 7\r\nContent-Length: 100000\r\n\r\n")
    while not server.stopping.wait(DRIP_S):
        conn.sendall(b" ")


def drip_head(server: RawServer, conn: socket.socket) -> None:
    """The status line and headers one byte at a time, never reaching their end."""
    server.read_request(conn)
    head = b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 40) for i in range(500))
    for byte in head:
        if server.stopping.wait(DRIP_S):
            return
        conn.sendall(bytes([byte]))


# --- the transport ---------------------------------------------------------------------


def call(url: str, message: str = "Hello!", **options: Any) -> CallResult:
    """One call through a fresh transport, closed afterwards."""
    options.setdefault("connect_timeout_s", 2.0)
    options.setdefault("read_timeout_s", READ_TIMEOUT_S)
    options.setdefault("response_deadline_s", 10.0)
    transport = Transport(url, KEY, **options)
    try:
        [result] = transport.submit([Call(SERIAL, PHONE, message, time.monotonic())]).result(CALL_LIMIT_S)
    finally:
        transport.close()
    return result


def send(url: str, **options: Any) -> Outcome:
    outcome = call(url, **options).outcome
    assert outcome is not None  # no lateness limit, no pause: the call is always made
    return outcome


def assert_no_key(value: object) -> None:
    assert KEY not in repr(value)
    assert KEY[:12] not in repr(value)


# --- the request, as documented -----------------------------------------------------------


def test_success_and_the_request_as_documented(make_server: Callable[[Handler], RawServer]) -> None:
    server = make_server(respond(200, SUCCESS))
    text = "Grüße \U0001f600 \"quoted\"\n"
    outcome = send(server.url + "/", message=text)  # a trailing slash is tolerated

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
    assert request.header("Content-Length") == str(len(request.body))
    assert json.loads(request.body) == {"SerialNumber": SERIAL, "ToPhoneNumber": PHONE, "Message": text}


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_redirects_are_not_followed(make_server: Callable[[Handler], RawServer], status: int) -> None:
    """A redirect means a wrong base URL: POSTing the message again elsewhere could send it twice."""
    elsewhere = make_server(respond(200, SUCCESS))
    server = make_server(respond(status, b"", {"Location": elsewhere.url + SEND_PATH}))
    outcome = send(server.url)
    assert isinstance(outcome, Envelope)
    assert outcome.http_status == status
    assert len(server.requests) == 1
    assert elsewhere.connections == 0 and elsewhere.requests == []


# --- bodies: capped ----------------------------------------------------------------


def test_an_endless_body_without_a_length_is_cut_at_the_limit(make_server: Callable[[Handler], RawServer]) -> None:
    server = make_server(stream_forever)
    started = time.monotonic()
    outcome = send(server.url, max_body_bytes=65536)
    assert isinstance(outcome, Envelope)
    assert outcome.http_status == 200
    assert outcome.malformed == "body too large"
    assert outcome.body_excerpt.startswith('{"Data": "xxx')
    assert len(outcome.body_excerpt) == 500
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(("over", "malformed"), [(0, None), (1, "body too large")])
def test_a_body_at_the_limit_is_read_and_one_byte_more_is_not(
    make_server: Callable[[Handler], RawServer], over: int, malformed: str | None
) -> None:
    raw = json.dumps(SUCCESS).encode()
    server = make_server(respond(200, raw))
    outcome = send(server.url, max_body_bytes=len(raw) - over)
    assert isinstance(outcome, Envelope)
    assert outcome.malformed == malformed
    assert outcome.session_id == (123123123123 if malformed is None else None)


# --- Retry-After, read from the response's headers ---------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected_s"),
    [
        ({"Retry-After": "120"}, 120.0),
        ({"Retry-After": " 7 "}, 7.0),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "-5"}, None),
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:30 GMT", "Date": "Wed, 21 Oct 2015 07:28:00 GMT"}, 30.0),
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT", "Date": "Wed, 21 Oct 2015 07:29:00 GMT"}, 0.0),
        ({"retry-after": "9"}, 9.0),
        ({}, None),
    ],
)
def test_retry_after_header(
    make_server: Callable[[Handler], RawServer], headers: dict[str, str], expected_s: float | None
) -> None:
    server = make_server(respond(503, b"busy", headers))
    outcome = send(server.url)
    assert isinstance(outcome, Envelope)
    assert outcome.http_status == 503
    assert outcome.retry_after_s == expected_s


# --- failures below HTTP ------------------------------------------------------------


@pytest.mark.parametrize(
    ("handler", "kind"),
    [(hang, "read_timeout"), (reset, "reset"), (close_silently, "protocol")],
    ids=["hang", "reset", "close"],
)
def test_a_failure_after_the_request_may_have_been_sent(
    make_server: Callable[[Handler], RawServer], handler: Handler, kind: str
) -> None:
    server = make_server(handler)
    started = time.monotonic()
    outcome = send(server.url)
    assert isinstance(outcome, TransportError)
    assert (outcome.kind, outcome.sent) == (kind, True)
    assert time.monotonic() - started < READ_TIMEOUT_S + 3
    assert len(server.requests) == 1  # the server did get the whole request
    assert_no_key(outcome)


def test_a_tls_handshake_with_a_plain_http_server_was_never_sent(make_server: Callable[[Handler], RawServer]) -> None:
    server = make_server(garbage_on_connect)
    outcome = send(f"https://127.0.0.1:{server.port}")
    assert isinstance(outcome, TransportError)
    assert (outcome.kind, outcome.sent) == ("tls", False)
    assert server.requests == []
    assert_no_key(outcome)


def test_a_stall_after_the_headers_keeps_the_status(make_server: Callable[[Handler], RawServer]) -> None:
    server = make_server(stall_after_headers)
    outcome = send(server.url)
    assert isinstance(outcome, Envelope)
    assert outcome.http_status == 200
    assert outcome.malformed == "body read failed: read_timeout"
    assert outcome.success is None


# --- the response deadline: the whole exchange, however the bytes trickle ------------------

#: The deadline under test, and a per-read timeout far longer: only the deadline can end these calls.
DEADLINE_S = 0.5
LONG_READ_S = 5.0


def test_a_server_that_never_answers_is_cut_off_at_the_deadline(make_server: Callable[[Handler], RawServer]) -> None:
    server = make_server(hang)
    result = call(server.url, read_timeout_s=LONG_READ_S, response_deadline_s=DEADLINE_S)
    assert result.outcome == TransportError("read_timeout", True, "response deadline passed")
    assert DEADLINE_S * 1000 * 0.9 <= result.latency_ms < (DEADLINE_S + 1.5) * 1000
    assert len(server.requests) == 1


def test_a_dripping_head_is_cut_off_at_the_deadline(make_server: Callable[[Handler], RawServer]) -> None:
    """Every read gets a byte within DRIP_S, so no read times out; the headers never end."""
    server = make_server(drip_head)
    result = call(server.url, read_timeout_s=LONG_READ_S, response_deadline_s=DEADLINE_S)
    assert result.outcome == TransportError("read_timeout", True, "response deadline passed")
    assert DEADLINE_S * 1000 * 0.9 <= result.latency_ms < (DEADLINE_S + 1.5) * 1000


def test_a_dripping_body_is_cut_off_at_the_deadline_keeping_the_status(
    make_server: Callable[[Handler], RawServer],
) -> None:
    """The head arrived whole, so its status and Retry-After are kept (a 503 is safe to retry);
    the body, unfinished, is not read as an envelope."""
    server = make_server(drip_body)
    result = call(server.url, read_timeout_s=LONG_READ_S, response_deadline_s=DEADLINE_S)
    outcome = result.outcome
    assert isinstance(outcome, Envelope)
    assert (outcome.http_status, outcome.retry_after_s) == (503, 7.0)
    assert outcome.malformed == "body read failed: read_timeout"
    assert DEADLINE_S * 1000 * 0.9 <= result.latency_ms < (DEADLINE_S + 1.5) * 1000


# --- the key stays secret ------------------------------------------------------------


def test_repr_hides_the_key() -> None:
    transport = Transport("https://usapi.hottask.com", KEY, connect_timeout_s=1.0, read_timeout_s=1.0,
                          response_deadline_s=1.0)
    try:
        assert KEY not in repr(transport)
        assert KEY not in str(transport)
        assert "usapi.hottask.com" in repr(transport)
    finally:
        transport.close()


def test_an_echoed_key_is_redacted(make_server: Callable[[Handler], RawServer]) -> None:
    echo = {**SUCCESS, "Success": False, "Message": f"bad key {KEY}", "Data": {"Message": KEY}}
    across = make_server(respond(200, b"x" * 470 + json.dumps(echo).encode()))  # the key across character 500
    assert_no_key(send(across.url))
    server = make_server(respond(401, echo))
    outcome = send(server.url)
    assert_no_key(outcome)
    assert isinstance(outcome, Envelope)
    assert outcome.message == "bad key [redacted]"
    assert outcome.data_message == "[redacted]"


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
        Transport(base_url, api_key, connect_timeout_s=1.0, read_timeout_s=1.0, response_deadline_s=1.0)
    assert KEY not in str(info.value)
