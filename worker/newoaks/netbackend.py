"""The network layer under the worker's connections (worker.http11): plain asyncio.

It keeps httpcore's network-backend interface and contract (anyio, httpcore's
default, cost as much CPU per request as the HTTP/1.1 exchange itself: a cancel
scope and a backend lookup per read and write): the same httpcore exceptions for
the same failures (ConnectError/ConnectTimeout before anything was written,
ReadError/ReadTimeout and WriteError/WriteTimeout after), b"" at end of stream, and
"is_readable" by polling the socket, as httpcore's own backends do, so a connection
the server closed while idle is never reused.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import typing

import httpcore
from httpcore import (
    AsyncNetworkBackend,
    AsyncNetworkStream,
    ConnectError,
    ConnectTimeout,
    ReadError,
    ReadTimeout,
    WriteError,
    WriteTimeout,
)

# httpcore's own readability check (a zero-timeout poll); a private helper, but the
# one its sync and anyio backends use, so "expired" means the same here.
from httpcore._utils import is_socket_readable

_READ_CHUNK = 65536


class _Protocol(asyncio.Protocol):
    """Collects what arrives; wakes the one reader waiting, if any."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.drained: asyncio.Future[None] | None = None
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = typing.cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False  # close our side too: HTTP/1.1 has no half-closed use

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        if exc is not None:
            self.error = exc
        self._wake()
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


async def _wait(future: asyncio.Future[None], timeout: float | None) -> bool:
    """Wait for `future`; False if `timeout` passed first. Cheaper than asyncio.timeout per read."""
    if timeout is None:
        await future
        return True
    loop = asyncio.get_running_loop()
    handle = loop.call_later(timeout, _expire, future)
    try:
        await future
    except TimeoutError:
        return False
    finally:
        handle.cancel()
    return True


def _expire(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


class AsyncioStream(AsyncNetworkStream):
    """One connection: a transport and its protocol."""

    def __init__(self, transport: asyncio.Transport, protocol: _Protocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self._socket: socket.socket | None = transport.get_extra_info("socket")

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        p = self._protocol
        if not p.buffer and not p.eof:
            p.waiter = asyncio.get_running_loop().create_future()
            try:
                if not await _wait(p.waiter, timeout):
                    raise ReadTimeout("timed out")
            finally:
                p.waiter = None
        if p.buffer:
            data = bytes(p.buffer[:max_bytes])
            del p.buffer[:max_bytes]
            return data
        if p.error is not None:
            raise ReadError(str(p.error) or type(p.error).__name__) from p.error
        return b""  # end of stream: httpcore reports the server's disconnection

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        p = self._protocol
        if self._transport.is_closing() or p.error is not None:
            raise WriteError("connection closed") from p.error
        try:
            self._transport.write(buffer)
        except (OSError, RuntimeError) as exc:
            raise WriteError(str(exc)) from exc
        if p.paused:
            p.drained = asyncio.get_running_loop().create_future()
            try:
                if not await _wait(p.drained, timeout):
                    raise WriteTimeout("timed out")
            finally:
                p.drained = None
            if p.error is not None:
                raise WriteError(str(p.error)) from p.error

    async def aclose(self) -> None:
        self._transport.close()

    def close(self) -> None:
        """Now, without a TLS goodbye: the connection is discarded (an error, a body left unread,
        the server's "close", shutdown), and a close_notify exchange could outlive the loop."""
        self._transport.abort()

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> AsyncioStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                tls = await loop.start_tls(self._transport, self._protocol, ssl_context,
                                           server_hostname=server_hostname)
        except TimeoutError as exc:
            self._transport.close()
            raise ConnectTimeout("TLS handshake timed out") from exc
        except (OSError, ssl.SSLError, ConnectionError) as exc:
            self._transport.close()
            raise ConnectError(str(exc)) from exc
        if tls is None:
            raise ConnectError("connection closed during the TLS handshake")
        self._protocol.transport = tls
        return AsyncioStream(tls, self._protocol)

    def get_extra_info(self, info: str) -> typing.Any:
        if info == "is_readable":
            return self._socket is not None and is_socket_readable(self._socket)
        if info == "socket":
            return self._socket
        if info == "ssl_object":
            return self._transport.get_extra_info("ssl_object")
        if info == "client_addr":
            return self._transport.get_extra_info("sockname")
        if info == "server_addr":
            return self._transport.get_extra_info("peername")
        return None


class AsyncioBackend(AsyncNetworkBackend):
    """Connections for httpcore over the running asyncio loop (TCP_NODELAY is asyncio's default)."""

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
                          ) -> AsyncioStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport, protocol = await loop.create_connection(
                    _Protocol, host, port, local_addr=(local_address, 0) if local_address else None)
        except TimeoutError as exc:
            raise ConnectTimeout("connect timed out") from exc
        except OSError as exc:
            raise ConnectError(str(exc) or type(exc).__name__) from exc
        sock = transport.get_extra_info("socket")
        for option in socket_options or ():
            sock.setsockopt(*option)
        return AsyncioStream(transport, protocol)

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
                                  ) -> AsyncioStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport, protocol = await loop.create_unix_connection(_Protocol, path)
        except TimeoutError as exc:
            raise ConnectTimeout("connect timed out") from exc
        except OSError as exc:
            raise ConnectError(str(exc) or type(exc).__name__) from exc
        return AsyncioStream(transport, protocol)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
