"""The worker's transport (one httpx.AsyncClient) against the real sandbox, raw servers and TLS servers.

What each failure is reported as decides whether a message may be sent again: a
refused connection never left; a reset, a hang or a broken body after the request was
written may have reached the API. The TLS settings (a CA bundle, the system store, a
client certificate) are tried against real handshakes.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Any

import pytest

from oaksend.sandbox.server import running_sandbox
from oaksend.worker.newoaks.outcome import Envelope, TransportError
from oaksend.worker.newoaks.client import Call, CallResult, Transport

KEY = "transport-test-key"
SERIAL = "0be4c0a4c5e6f708192a3b4c5d6e7f80"


def _transport(base_url: str, **kw: float) -> Transport:
    return Transport(base_url, KEY, connect_timeout_s=kw.get("connect_s", 2.0), read_timeout_s=kw.get("read_s", 2.0),
                     response_deadline_s=kw.get("deadline_s", 10.0))


def _calls(n: int, start: int = 0) -> list[Call]:
    return [Call(SERIAL, f"+1415{3000000 + start + i:07d}", f"hello {i}", time.monotonic()) for i in range(n)]


def _send(n: int, *, read_s: float = 2.0, **faults: float) -> list[CallResult]:
    """n calls through a fresh transport to a sandbox with these faults."""
    with running_sandbox(api_key=KEY, **faults) as base_url:
        transport = _transport(base_url, read_s=read_s)
        try:
            return transport.submit(_calls(n)).result(30)
        finally:
            transport.close()


def test_successes_reuse_kept_alive_connections() -> None:
    with running_sandbox(api_key=KEY) as base_url:
        transport = _transport(base_url)
        try:
            first = transport.submit(_calls(50)).result(30)
            second = transport.submit(_calls(50, start=50)).result(30)
        finally:
            transport.close()
    outcomes = [r.outcome for r in first + second]
    assert all(isinstance(o, Envelope) and o.http_status == 200 and o.session_id for o in outcomes)
    assert len({o.session_id for o in outcomes}) == 100  # type: ignore[union-attr]


def test_reset_after_the_request_is_ambiguous() -> None:
    for r in _send(5, p_reset=1.0):
        assert isinstance(r.outcome, TransportError)
        assert r.outcome.sent is True and r.outcome.kind in ("reset", "protocol")


def test_hang_is_a_read_timeout_that_may_have_been_sent() -> None:
    for r in _send(3, read_s=0.3, p_hang=1.0, hang_s=3.0):
        assert isinstance(r.outcome, TransportError)
        assert r.outcome.kind == "read_timeout" and r.outcome.sent is True


def test_malformed_body_is_an_envelope_marked_incomplete_or_unreadable() -> None:
    for r in _send(3, p_malformed=1.0):
        assert isinstance(r.outcome, Envelope)
        assert r.outcome.session_id is None


def test_refused_connection_never_left() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    transport = _transport(f"http://127.0.0.1:{port}")
    try:
        results = transport.submit(_calls(2)).result(30)
    finally:
        transport.close()
    for r in results:
        assert isinstance(r.outcome, TransportError)
        assert r.outcome.kind == "connect" and r.outcome.sent is False


def test_a_connection_the_server_closed_while_idle_is_not_reused() -> None:
    transport = None
    try:
        with running_sandbox(api_key=KEY) as base_url:
            transport = _transport(base_url)
            first = transport.submit(_calls(1)).result(30)[0].outcome
            assert isinstance(first, Envelope) and first.http_status == 200
        # The sandbox closed its kept-alive connection on the way out, as an idle timeout
        # would: the next call must see that, and not write its request on the dead one.
        result = transport.submit(_calls(1, start=9)).result(30)[0]
    finally:
        if transport is not None:
            transport.close()
    assert isinstance(result.outcome, TransportError)
    assert result.outcome.kind == "connect" and result.outcome.sent is False


def test_a_429_carries_its_retry_after() -> None:
    """The worker reads headers from httpcore's raw list: Retry-After (against the response's Date) reaches
    the envelope, and a 429 without the header has none."""
    with_header = _send(2, p_429=1.0, retry_after=7)
    without = _send(2, p_429=1.0, retry_after=-1)
    for r in with_header:
        assert isinstance(r.outcome, Envelope) and r.outcome.http_status == 429
        assert r.outcome.retry_after_s is not None and 5.0 <= r.outcome.retry_after_s <= 7.0
    for r in without:
        assert isinstance(r.outcome, Envelope) and r.outcome.http_status == 429 and r.outcome.retry_after_s is None


def test_a_connection_broken_by_a_reset_is_replaced_not_reused() -> None:
    """Half the calls are reset by the server: each later call gets a working connection (a closed one
    handed out again would fail before anything was written)."""
    with running_sandbox(api_key=KEY, p_reset=0.5) as base_url:
        transport = Transport(base_url, KEY, connect_timeout_s=2.0, read_timeout_s=2.0, response_deadline_s=10.0,
                              max_connections=4)
        try:
            results = [r for start in range(0, 200, 20) for r in transport.submit(_calls(20, start)).result(30)]
        finally:
            transport.close()
    ok = [r for r in results if isinstance(r.outcome, Envelope) and r.outcome.http_status == 200]
    broken = [r.outcome for r in results if isinstance(r.outcome, TransportError)]
    assert len(ok) + len(broken) == 200 and 40 <= len(ok) <= 160
    assert all(e.sent and e.kind in ("reset", "protocol") for e in broken), {e.kind for e in broken}


# -- framings the sandbox does not send: a raw server answers each request with canned bytes --------------

_BODY = b'{"Success":true,"Code":0,"Message":"ok","Data":{"Status":"True","Message":"","SessionID":4242}}'


class _RawServer:
    """A TCP server that answers the k-th request it reads with `answers[k]` (bytes), closing the
    connection after it when the answer says so (None: close without a word)."""

    def __init__(self, answers: list[tuple[bytes | None, bool]]) -> None:
        self.answers = answers
        self._lock = threading.Lock()
        self.requests = 0
        self.connections = 0
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):  # the client may hang up mid-answer
            buffer = b""
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = conn.recv(65536)
                    if not data:
                        break
                    buffer += data
                if b"\r\n\r\n" not in buffer:
                    break
                head, _, rest = buffer.partition(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                while len(rest) < length:
                    rest += conn.recv(65536)
                buffer = rest[length:]
                with self._lock:
                    answer, close = self.answers[min(self.requests, len(self.answers) - 1)]
                    self.requests += 1
                if answer is not None:
                    conn.sendall(answer)
                if close or answer is None:
                    break

    def close(self) -> None:
        self._sock.close()


def _through(answers: list[tuple[bytes | None, bool]], n: int, **kw: float) -> tuple[list[CallResult], _RawServer]:
    server = _RawServer(answers)
    transport = _transport(server.url, **kw)
    try:
        results = [transport.submit(_calls(1, start=i)).result(30)[0] for i in range(n)]
    finally:
        transport.close()
        server.close()
    return results, server


def _ok(result: CallResult) -> bool:
    o = result.outcome
    return isinstance(o, Envelope) and o.http_status == 200 and o.session_id == 4242


def test_a_chunked_answer_is_read_whole_and_its_connection_kept() -> None:
    chunked = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
               + b"%x\r\n%s\r\n" % (20, _BODY[:20]) + b"%x\r\n%s\r\n" % (len(_BODY) - 20, _BODY[20:]) + b"0\r\n\r\n")
    results, server = _through([(chunked, False)], 3)
    assert all(_ok(r) for r in results), [r.outcome for r in results]
    assert server.connections == 1


def test_an_answer_read_to_close_is_whole_and_its_connection_not_reused() -> None:
    """HTTP/1.0 style: no length, the body ends where the server closes."""
    results, server = _through([(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + _BODY, True)], 3)
    assert all(_ok(r) for r in results), [r.outcome for r in results]
    assert server.connections == 3


def test_connection_close_is_honoured_and_100_continue_skipped() -> None:
    """"Connection: close" ends the connection on our side, even if the server leaves it open."""
    answer = (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
              % (len(_BODY), _BODY))
    for server_closes in (True, False):
        results, server = _through([(answer, server_closes)], 3)
        assert all(_ok(r) for r in results), [r.outcome for r in results]
        assert server.connections == 3


def test_a_garbled_status_line_or_a_silent_close_may_have_been_sent() -> None:
    """The request was written either way: "protocol", sent, never a clean "not sent"."""
    for answer in (b"HTTP/1.1 two hundred OK\r\n\r\n", b"garbage\r\n\r\n", None):
        results, _ = _through([(answer, True)], 1)
        o = results[0].outcome
        assert isinstance(o, TransportError) and o.sent is True and o.kind == "protocol", (answer, o)


def test_a_body_cut_short_is_an_incomplete_envelope_and_a_huge_one_is_capped() -> None:
    short = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(_BODY) + 50, _BODY)
    results, _ = _through([(short, True)], 1)
    o = results[0].outcome
    assert isinstance(o, Envelope) and o.http_status == 200 and o.session_id is None, o
    assert o.malformed == "body read failed: protocol", o
    huge = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (200_000, b"x" * 200_000)
    results, server = _through([(huge, False), (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                                                % (len(_BODY), _BODY), False)], 2)
    o = results[0].outcome
    assert isinstance(o, Envelope) and o.malformed == "body too large" and o.session_id is None, o
    assert _ok(results[1]) and server.connections == 2  # the unread rest is not taken for the next answer


def _certificate(tmp_path: Any, name: str, common_name: str) -> tuple[Any, Any]:
    """A fresh self-signed certificate (and its key) for `common_name`, made by the openssl command."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a certificate")
    cert, key = tmp_path / f"{name}-cert.pem", tmp_path / f"{name}-key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", f"/CN={common_name}", "-addext",
                    f"subjectAltName=DNS:{common_name}"], check=True, capture_output=True)
    return cert, key


class _TLSServer:
    """An https server on a fresh self-signed certificate for localhost (`cert`), answering each POST
    with _BODY; its TLS handshake starts `handshake_delay_s` after the connection is accepted. With
    `client_ca`, it asks for a client certificate signed by it and records each one's subject."""

    def __init__(self, tmp_path: Any, handshake_delay_s: float = 0.0, client_ca: Any = None) -> None:
        import http.server
        import ssl

        self.cert, key = _certificate(tmp_path, "server", "localhost")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(self.cert), str(key))
        if client_ca is not None:
            context.load_verify_locations(str(client_ca))
            context.verify_mode = ssl.CERT_REQUIRED
        outer = self
        self.requests = 0
        self.connections = 0  #: TLS connections accepted
        self.client_subjects: list[Any] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.requests += 1
                outer.client_subjects.append(self.connection.getpeercert())  # type: ignore[attr-defined]
                self.send_response(200)
                self.send_header("Content-Length", str(len(_BODY)))
                self.end_headers()
                self.wfile.write(_BODY)

            def log_message(self, *args: Any) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            def process_request_thread(self, request: Any, client_address: Any) -> None:
                time.sleep(handshake_delay_s)
                try:
                    request = context.wrap_socket(request, server_side=True)
                except OSError:
                    self.shutdown_request(request)
                    return
                outer.connections += 1
                super().process_request_thread(request, client_address)

        self._server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"https://localhost:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _settle() -> None:
    """Let a new TLS connection's post-handshake messages (TLS 1.3 session tickets) arrive and be read:
    while they sit unread in the socket, the idle connection looks readable, as a server's close does,
    and is replaced rather than reused."""
    time.sleep(0.2)


def test_https_a_trusted_server_answers_and_an_untrusted_one_never_gets_the_request(
        tmp_path: Any, monkeypatch: Any) -> None:
    """The handshake comes before the request, so a certificate the worker does not trust is "tls",
    not sent; one it trusts (SSL_CERT_FILE, read as httpx does with trust_env) carries the calls, on
    connections kept alive across groups."""
    server = _TLSServer(tmp_path)
    try:
        untrusted = _transport(server.url)
        try:
            refused = untrusted.submit(_calls(2)).result(30)
        finally:
            untrusted.close()
        monkeypatch.setenv("SSL_CERT_FILE", str(server.cert))
        trusted = _transport(server.url)
        try:
            answered = trusted.submit(_calls(3)).result(30)
            _settle()
            answered += trusted.submit(_calls(3, start=3)).result(30)
        finally:
            trusted.close()
    finally:
        server.close()
    for r in refused:
        assert isinstance(r.outcome, TransportError) and r.outcome.kind == "tls" and r.outcome.sent is False, r
    assert all(_ok(r) for r in answered), [r.outcome for r in answered]
    assert server.requests == 6
    assert server.connections == 3  # the second group reused the first group's connections


def test_a_slow_handshake_is_not_cut_short_by_the_lateness(tmp_path: Any, monkeypatch: Any) -> None:
    """The lateness bounds the wait for a pooled connection, not the connect: a TLS handshake slower
    than the lateness (a distant API) completes, and the request is made, late. (The h11 transport
    handed such a request back; with httpx the request is sent once it has its connection.)"""
    server = _TLSServer(tmp_path, handshake_delay_s=0.4)
    monkeypatch.setenv("SSL_CERT_FILE", str(server.cert))
    transport = _transport(server.url)
    try:
        late = transport.submit([Call(SERIAL, "+14153000001", "hi", time.monotonic(), 0.05)]).result(30)[0]
        _settle()
        again = transport.submit([Call(SERIAL, "+14153000002", "hi", time.monotonic(), 0.05)]).result(30)[0]
    finally:
        transport.close()
        server.close()
    assert _ok(late) and late.latency_ms >= 400, late
    assert _ok(again) and again.latency_ms < 400, again
    assert server.requests == 2 and server.connections == 1


def _tls_transport(url: str, **tls: Any) -> Transport:
    return Transport(url, KEY, connect_timeout_s=2.0, read_timeout_s=2.0, response_deadline_s=10.0, **tls)


def test_a_ca_bundle_is_the_trust_whatever_the_environment_says(tmp_path: Any, monkeypatch: Any) -> None:
    """OAKSEND_CA_BUNDLE: the server is trusted through the bundle alone, while SSL_CERT_FILE names
    another file (which would not trust it); the system store does not trust a self-signed server."""
    server = _TLSServer(tmp_path)
    other, _ = _certificate(tmp_path, "other", "elsewhere.test")
    monkeypatch.setenv("SSL_CERT_FILE", str(other))
    try:
        by_bundle = _tls_transport(server.url, ca_bundle=str(server.cert))
        by_env = _tls_transport(server.url)  # certifi trust: SSL_CERT_FILE wins, and it names the other cert
        monkeypatch.delenv("SSL_CERT_FILE")
        monkeypatch.delenv("SSL_CERT_DIR", raising=False)
        by_system = _tls_transport(server.url, tls_trust="system")
        try:
            results = [t.submit(_calls(1)).result(30)[0] for t in (by_bundle, by_env, by_system)]
        finally:
            for t in (by_bundle, by_env, by_system):
                t.close()
    finally:
        server.close()
    assert _ok(results[0]), results[0]
    for r in results[1:]:
        assert isinstance(r.outcome, TransportError) and (r.outcome.kind, r.outcome.sent) == ("tls", False), r
    assert server.requests == 1


def test_a_client_certificate_is_presented(tmp_path: Any) -> None:
    """OAKSEND_CLIENT_CERT / OAKSEND_CLIENT_KEY: a server that requires a client certificate gets ours."""
    client_cert, client_key = _certificate(tmp_path, "client", "oaksend-worker")
    server = _TLSServer(tmp_path, client_ca=client_cert)
    try:
        transport = _tls_transport(server.url, ca_bundle=str(server.cert), client_cert=str(client_cert),
                                   client_key=str(client_key))
        try:
            result = transport.submit(_calls(1)).result(30)[0]
        finally:
            transport.close()
    finally:
        server.close()
    assert _ok(result), result
    [subject] = server.client_subjects
    assert ((("commonName", "oaksend-worker"),),) == tuple(
        rdn for rdn in subject["subject"] if rdn[0][0] == "commonName")


def test_tls_settings_are_checked_at_start(tmp_path: Any) -> None:
    """A missing file, a file that is no certificate, a key without its certificate: refused when the
    settings load (naming the setting) or the transport is built, never at the first send."""
    from oaksend.errors import ConfigError
    from oaksend.worker.settings import load_settings

    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    cert, key = _certificate(tmp_path, "client", "oaksend-worker")
    for changes, named in [({"ca_bundle": str(tmp_path / "missing.pem")}, "CA_BUNDLE"),
                           ({"client_cert": str(tmp_path / "missing.pem")}, "CLIENT_CERT"),
                           ({"client_key": str(key)}, "CLIENT_KEY"),
                           ({"tls_trust": "browser"}, "TLS_TRUST")]:
        with pytest.raises(ConfigError, match=named):
            load_settings(_env_file=None, **changes)
    settings = load_settings(_env_file=None, ca_bundle=str(cert), tls_trust="system", client_cert=str(cert),
                             client_key=str(key))
    assert (settings.ca_bundle, settings.tls_trust, settings.client_key) == (str(cert), "system", str(key))
    for tls in ({"ca_bundle": str(junk)}, {"client_cert": str(junk)}, {"client_cert": str(cert)}):
        with pytest.raises(ConfigError):
            _tls_transport("https://localhost:1", **tls)
