"""One HTTP/1.1 keep-alive connection for the worker's transport: h11 over worker.netbackend.

httpcore's connection classes (AsyncHTTPConnection around AsyncHTTP11Connection) wrap
each request in anyio locks, cancel scopes and trace hooks; on Python 3.11 every one of
those asks asyncio for the current task, which is a getpid() system call. For a
connection that this transport hands to one request at a time, that machinery guards
nothing, and it cost more CPU per call than parsing the response. This class keeps the
rest of httpcore's contract, so `client._kind_of` classifies failures unchanged:

- the same httpcore exceptions for the same failures: ConnectError/ConnectTimeout before
  anything was written (from netbackend), WriteError/WriteTimeout and
  ReadError/ReadTimeout after, RemoteProtocolError for a malformed response or a server
  that closed without answering;
- h11 parses the response (status line, headers, Content-Length, chunked, read-to-close,
  1xx), exactly as under httpcore;
- a connection is reused only after a complete exchange that both sides keep alive,
  never after an error, a cancellation or a body left unread, and not once its
  keep-alive time passed or the server closed it while it was idle.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator
from typing import cast

import h11
from httpcore import ConnectionNotAvailable, LocalProtocolError, RemoteProtocolError

from oaksend.worker.newoaks.netbackend import AsyncioBackend, AsyncioStream

_READ_CHUNK = 65536


class Response:
    """A response's head, and its body as it arrives (`aiter_stream`); `aclose` when done."""

    def __init__(self, connection: Connection, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        self.headers = headers
        self._connection = connection

    def aiter_stream(self) -> AsyncIterator[bytes]:
        return self._connection._body()

    async def aclose(self) -> None:
        self._connection._response_closed()


class Connection:
    """ONE keep-alive HTTP/1.1 connection to `host:port`; it connects on its first request.

    Not shared: the transport hands it to one request at a time (checkout/checkin)."""

    def __init__(self, host: str, port: int, *, tls: ssl.SSLContext | None, connect_timeout_s: float,
                 read_timeout_s: float, keepalive_expiry_s: float, backend: AsyncioBackend) -> None:
        self._host = host
        self._port = port
        self._tls = tls
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._keepalive_expiry_s = keepalive_expiry_s
        self._backend = backend
        self._stream: AsyncioStream | None = None
        self._h11 = h11.Connection(h11.CLIENT)
        self._closed = False
        self._busy = False
        self._expires_at: float | None = None

    # -- the transport's view ----------------------------------------------------------------
    def is_closed(self) -> bool:
        return self._closed

    @property
    def connected(self) -> bool:
        return self._stream is not None and not self._closed

    async def connect(self) -> None:
        """Connect (and the TLS handshake) now, before any request: nothing is written.
        A failure closes the connection; its exception says it never left."""
        if self._stream is None and not self._closed:
            try:
                self._stream = await self._connect()
            except BaseException:
                self._close()
                raise

    def has_expired(self) -> bool:
        """Idle past its keep-alive time, or the server closed it (or sent something) while idle."""
        if self._stream is None or self._busy:
            return False
        if self._expires_at is not None and time.monotonic() > self._expires_at:
            return True
        return bool(self._stream.get_extra_info("is_readable"))

    async def aclose(self) -> None:
        self._close()

    # -- a request ---------------------------------------------------------------------------
    async def request(self, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes) -> Response:
        """POST `body` to `target`; returns once the response's head has arrived.

        Any failure or cancellation closes the connection: its state is unknown."""
        if self._closed:  # the transport checks first; were it to get here, nothing was written
            raise ConnectionNotAvailable("connection closed")
        self._busy = True
        try:
            await self.connect()
            assert self._stream is not None
            try:
                data = (self._h11.send(h11.Request(method=b"POST", target=target, headers=headers))
                        + self._h11.send(h11.Data(data=body)) + self._h11.send(h11.EndOfMessage()))
            except h11.LocalProtocolError as exc:
                raise LocalProtocolError(str(exc)) from exc
            await self._stream.write(data, self._read_timeout_s)
            while True:
                event = await self._next_event()
                if isinstance(event, h11.Response):
                    return Response(self, event.status_code, list(event.headers))
                if isinstance(event, h11.InformationalResponse):
                    continue  # 100 Continue and the like: the real answer follows
                if isinstance(event, h11.ConnectionClosed):
                    raise RemoteProtocolError("Server disconnected without sending a response.")
                raise RemoteProtocolError(f"unexpected {type(event).__name__} before the response")
        except BaseException:
            self._close()
            raise

    async def _connect(self) -> AsyncioStream:
        stream = await self._backend.connect_tcp(self._host, self._port, timeout=self._connect_timeout_s)
        if self._tls is not None:
            try:
                stream = await stream.start_tls(self._tls, server_hostname=self._host,
                                                timeout=self._connect_timeout_s)
            except BaseException:
                await stream.aclose()
                raise
        return stream

    async def _next_event(self) -> h11.Event | type[h11.PAUSED]:
        assert self._stream is not None
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise RemoteProtocolError(str(exc)) from exc
            if event is not h11.NEED_DATA:
                # mypy does not narrow a union of sentinel classes by `is` (httpcore ignores the same line).
                return cast("h11.Event | type[h11.PAUSED]", event)
            data = await self._stream.read(_READ_CHUNK, self._read_timeout_s)
            if data == b"" and self._h11.their_state == h11.SEND_RESPONSE:
                raise RemoteProtocolError("Server disconnected without sending a response.")
            try:
                self._h11.receive_data(data)
            except h11.RemoteProtocolError as exc:
                raise RemoteProtocolError(str(exc)) from exc

    async def _body(self) -> AsyncIterator[bytes]:
        try:
            while True:
                event = await self._next_event()
                if isinstance(event, h11.Data):
                    yield bytes(event.data)
                elif isinstance(event, (h11.EndOfMessage, h11.PAUSED)):
                    return
                else:
                    raise RemoteProtocolError(f"unexpected {type(event).__name__} in the body")
        except BaseException:
            self._close()
            raise

    def _response_closed(self) -> None:
        """Keep the connection for the next request only if both sides finished cleanly."""
        self._busy = False
        if self._closed:
            return
        if self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE:
            try:
                self._h11.start_next_cycle()
            except h11.LocalProtocolError:
                self._close()
                return
            self._expires_at = time.monotonic() + self._keepalive_expiry_s
        else:
            self._close()  # a body left unread, or "Connection: close"

    def _close(self) -> None:
        self._busy = False
        if not self._closed:
            self._closed = True
            if self._stream is not None:
                self._stream.close()
