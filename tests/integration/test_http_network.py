"""The worker's HTTP client under real network conditions, all on 127.0.0.1 (and a loopback blackhole).

- a forward proxy from the environment (HTTP_PROXY): every request goes through it,
  unless NO_PROXY names the host; a proxy that is down means "never left";
- a gzip- or deflate-encoded success is read as sent (a body claiming an encoding it
  does not have is not a success; the body cap counts decoded bytes);
- an unsolicited `408` on an idle kept-alive connection (HAProxy, Envoy) is never
  taken as the next request's answer;
- a name whose first address is a blackhole: the next address is tried (Happy Eyeballs).
"""

from __future__ import annotations

import gzip
import http.client
import http.server
import json
import select
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from oaksend.sandbox.control import SandboxControl
from oaksend.sandbox.server import running_sandbox
from oaksend.worker.newoaks.client import Call, CallResult, Transport
from oaksend.worker.newoaks.endpoint import SEND_PATH
from oaksend.worker.newoaks.outcome import Envelope, TransportError
from tests.integration.test_client_behaviour import SUCCESS, Handler, RawServer, respond

KEY = "sk-test-0123456789abcdefSECRET"
SERIAL = "3254a9d0424c4806b9ea3d0763abcdef"
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy",
                   "no_proxy")


def transport(url: str, **options: Any) -> Transport:
    options.setdefault("connect_timeout_s", 2.0)
    options.setdefault("read_timeout_s", 2.0)
    options.setdefault("response_deadline_s", 10.0)
    return Transport(url, KEY, **options)


def calls(n: int, start: int = 0) -> list[Call]:
    return [Call(SERIAL, f"+1415{5550000 + start + i:07d}", f"hello {i}", time.monotonic(),
                 request_id=f"{start + i:032x}") for i in range(n)]


def send(url: str, n: int = 1, **options: Any) -> list[CallResult]:
    t = transport(url, **options)
    try:
        return [f.result(30) for f in t.submit_each(calls(n))]
    finally:
        t.close()


def sent_ok(result: CallResult, session_id: int = 123123123123) -> bool:
    o = result.outcome
    return isinstance(o, Envelope) and o.http_status == 200 and o.session_id == session_id and o.malformed is None


@pytest.fixture
def clean_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


# -- a forward proxy of the test's own ------------------------------------------------------------------------
class ForwardProxy:
    """An HTTP forward proxy on 127.0.0.1: takes absolute-form requests, forwards each to its origin,
    relays the answer, and keeps (method, target) of every request it forwarded."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        outer = self

        class Forward(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                outer.seen.append((self.command, self.path))
                target = urlsplit(self.path)
                if not target.scheme:  # origin-form: not a proxy request
                    self.send_error(400, "absolute-form expected")
                    return
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("connection", "proxy-connection", "keep-alive")}
                upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
                try:
                    upstream.request(self.command, target.path, body=body, headers=headers)
                    answer = upstream.getresponse()
                    data = answer.read()
                finally:
                    upstream.close()
                self.send_response(answer.status)
                for k, v in answer.getheaders():
                    if k.lower() not in ("connection", "content-length", "transfer-encoding", "date", "server"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Via", "1.1 oaksend-test-proxy")
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST

            def log_message(self, *args: Any) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            request_queue_size = 128  # 20 clients connect at once: a full accept queue would reset some

        self._server = Server(("127.0.0.1", 0), Forward)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def proxy() -> Iterator[ForwardProxy]:
    p = ForwardProxy()
    yield p
    p.close()


def test_every_request_goes_through_the_proxy_of_the_environment(
        clean_proxy_env: pytest.MonkeyPatch, proxy: ForwardProxy) -> None:
    with running_sandbox(api_key=KEY) as base_url, SandboxControl(base_url, KEY) as control:  # control: built before
        clean_proxy_env.setenv("HTTP_PROXY", proxy.url)  # the proxy is set, so it talks to the sandbox directly
        results = send(base_url, 20)
        records = control.requests()
    assert all(isinstance(r.outcome, Envelope) and r.outcome.http_status == 200 for r in results), results
    assert proxy.seen == [("POST", base_url + SEND_PATH)] * 20  # absolute-form, every one
    # The sandbox got them from the proxy, each with its request id.
    assert sorted(r["request_id"] for r in records) == [f"{i:032x}" for i in range(20)]


def test_no_proxy_names_the_hosts_reached_directly(clean_proxy_env: pytest.MonkeyPatch, proxy: ForwardProxy) -> None:
    clean_proxy_env.setenv("HTTP_PROXY", proxy.url)
    clean_proxy_env.setenv("NO_PROXY", "localhost,127.0.0.1")
    with running_sandbox(api_key=KEY) as base_url:
        results = send(base_url, 3)
    assert all(isinstance(r.outcome, Envelope) and r.outcome.http_status == 200 for r in results), results
    assert proxy.seen == []


def test_a_proxy_that_is_down_means_the_request_never_left(clean_proxy_env: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with running_sandbox(api_key=KEY) as base_url, SandboxControl(base_url, KEY) as control:
        clean_proxy_env.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
        [result] = send(base_url)
        assert control.requests() == []
    assert isinstance(result.outcome, TransportError)
    assert (result.outcome.kind, result.outcome.sent) == ("connect", False)


# -- encoded bodies -------------------------------------------------------------------------------------------
RAW_SUCCESS = json.dumps(SUCCESS).encode()


@pytest.mark.parametrize(("encoding", "encode"), [("gzip", gzip.compress), ("deflate", zlib.compress),
                                                  ("deflate", lambda b: zlib.compress(b)[2:-4])],
                         ids=["gzip", "deflate-zlib", "deflate-raw"])
def test_an_encoded_success_is_read_as_sent(make_server: Callable[[Handler], RawServer], encoding: str,
                                            encode: Callable[[bytes], bytes]) -> None:
    server = make_server(respond(200, encode(RAW_SUCCESS), {"Content-Encoding": encoding}))
    [result] = send(server.url)
    assert sent_ok(result), result.outcome
    assert isinstance(result.outcome, Envelope) and result.outcome.body_excerpt == RAW_SUCCESS.decode()
    accepted = server.requests[0].header("Accept-Encoding") or ""
    assert {"gzip", "deflate"} <= {e.strip() for e in accepted.split(",")}


def test_a_body_that_is_not_what_its_encoding_says_is_not_a_success(
        make_server: Callable[[Handler], RawServer]) -> None:
    server = make_server(respond(200, RAW_SUCCESS, {"Content-Encoding": "gzip"}))
    [result] = send(server.url)
    o = result.outcome
    assert isinstance(o, Envelope) and o.http_status == 200 and o.session_id is None
    assert o.malformed == "body read failed: decoding"


def test_the_body_cap_counts_decoded_bytes(make_server: Callable[[Handler], RawServer]) -> None:
    padded = json.dumps({**SUCCESS, "Pad": "x" * 200_000}).encode()  # 200 KB, a few hundred bytes compressed
    server = make_server(respond(200, gzip.compress(padded), {"Content-Encoding": "gzip"}))
    [result] = send(server.url, max_body_bytes=65536)
    o = result.outcome
    assert isinstance(o, Envelope) and o.malformed == "body too large" and o.session_id is None


# -- an unsolicited 408 on an idle connection -------------------------------------------------------------------
def _keep_alive(session_id: int) -> bytes:
    body = json.dumps({**SUCCESS, "Data": {**SUCCESS["Data"], "SessionID": session_id}}).encode()
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


@pytest.mark.parametrize("then_close", [True, False], ids=["408-then-close", "408-left-open"])
def test_an_unsolicited_408_on_an_idle_connection_is_nobodys_answer(
        make_server: Callable[[Handler], RawServer], then_close: bool) -> None:
    """The first connection answers its request, then, idle, says 408 (as HAProxy and Envoy do after
    their idle timeout): the next call must get its own answer on a new connection, never the 408.
    Were the 408 connection reused anyway, its request would be answered 9999 (a stale SessionID)."""
    accepted = [0]
    lock = threading.Lock()

    def handler(server: RawServer, conn: socket.socket) -> None:
        with lock:
            accepted[0] += 1
            n = accepted[0]
        server.read_request(conn)
        conn.sendall(_keep_alive(n))
        if n == 1:
            time.sleep(0.1)
            conn.sendall(b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
            if not then_close:
                server.read_request(conn)  # a client that reused this connection gets a stale answer
                conn.sendall(_keep_alive(9999))
                server.stopping.wait(5)

    server = make_server(handler)
    t = transport(server.url)
    try:
        first = t.submit_each(calls(1))[0].result(30)
        time.sleep(0.5)  # the 408 arrives while the connection is idle in the pool
        second = t.submit_each(calls(1, start=1))[0].result(30)
    finally:
        t.close()
    assert sent_ok(first, 1), first.outcome
    assert sent_ok(second, 2), second.outcome
    assert server.connections == 2 and len(server.requests) == 2


# -- an unroutable first address --------------------------------------------------------------------------------
TEST_HOST = "api.blackhole.oaksend.test"


class Blackhole:
    """A listening socket on 127.0.0.2 whose accept queue is full and never drained: the kernel drops
    every further SYN, as a blackholed route does (loopback only, nothing leaves the machine)."""

    def __init__(self, port: int) -> None:
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.2", port))
        self.listener.listen(0)
        self.fillers: list[socket.socket] = []
        for _ in range(16):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.2", port))
            self.fillers.append(filler)
            _, writable, _ = select.select([], [filler], [], 0.3)
            if not writable:
                return  # this SYN was dropped: the queue is full
        pytest.skip("could not fill a loopback accept queue here")

    def close(self) -> None:
        for s in [*self.fillers, self.listener]:
            s.close()


def test_a_blackholed_first_address_falls_through_to_the_next(
        make_server: Callable[[Handler], RawServer], monkeypatch: pytest.MonkeyPatch) -> None:
    server = make_server(respond(200, SUCCESS))
    try:
        blackhole = Blackhole(server.port)
    except OSError as exc:
        pytest.skip(f"127.0.0.2 is not usable here: {exc}")
    real_getaddrinfo = socket.getaddrinfo
    asked: list[Any] = []

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name != TEST_HOST:
            return real_getaddrinfo(host, port, *args, **kwargs)
        asked.append(name)
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.2", server.port)),
                (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", server.port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    try:
        started = time.monotonic()
        [result] = send(f"http://{TEST_HOST}:{server.port}", connect_timeout_s=5.0)
        took = time.monotonic() - started
    finally:
        blackhole.close()
    assert sent_ok(result), result.outcome
    assert asked and len(server.requests) == 1
    # The first address hung (its connect was never answered) until the next one was tried, after
    # a short delay (250 ms), not after the 5 s connect timeout.
    assert 0.2 <= took < 2.5, took


