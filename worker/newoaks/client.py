"""Asynchronous sending: one asyncio loop per worker process, calls on kept-alive HTTP/1.1 connections.

Requests in flight are coroutines, not threads: a worker process keeps hundreds of
calls open at 200 ms (or 2 s) of API latency. Celery's threads only hand groups of
messages over (`Transport.submit`) and wait for their outcomes.

Each call is one POST on a connection of `newoaks.http11` (h11, the HTTP/1.1 parser
under httpx, over asyncio): httpx's request and response objects and httpcore's
connection machinery (anyio locks and cancel scopes around every request) cost
more CPU per message than the rest of a send and do nothing for one fixed POST on
a connection held by one request at a time. The request asks for an uncompressed
answer (`Accept-Encoding: identity`), so the body read is the body parsed; failures
are httpcore's exceptions, classified like httpx's.

Parsing is `newoaks.envelope`'s, error translation `newoaks.failures`'s: the values
handed back are `newoaks.outcome`'s.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx

from oaksend.errors import ConfigError
from oaksend.worker.newoaks.endpoint import SEND_PATH, check_api_key, parse_retry_after, reference_time
from oaksend.worker.newoaks.envelope import Envelope, parse_envelope
from oaksend.worker.newoaks.failures import transport_error
from oaksend.worker.newoaks.http11 import Connection, Response
from oaksend.worker.newoaks.netbackend import AsyncioBackend
from oaksend.worker.newoaks.outcome import Outcome, TransportError

#: Requests in flight per worker process (and connections kept). Calls beyond it wait
#: for a free one before they start (a wait for a connection is not counted against the
#: connect timeout). 512 in flight carry 250/s at 2 s of API latency per
#: process, 2,500/s at 200 ms.
MAX_CONNECTIONS = 512

# Idle connections are dropped before common server idle timeouts (uvicorn
# 5 s): reusing a connection the server is closing fails after the body may
# have been sent, which is an ambiguous outcome we would rather not create.
KEEPALIVE_EXPIRY_S = 4.0


@dataclass(frozen=True)
class Call:
    """One request to make: at monotonic time `at` (not before), and not more than `late_ok_s` after it.

    A request that leaves late lands on the next ones, which leave on time: past the
    chatbot's burst tolerance, a strict limiter at the API refuses them (429), and the
    chatbot pauses. Such a call is not made (its CallResult has no outcome): it is
    handed back, certainly not called, and sent again at a new slot.
    """

    serial_number: str
    to_phone: str
    body: str
    at: float
    late_ok_s: float = math.inf


@dataclass(frozen=True)
class CallResult:
    """What a call did; `outcome` None: it was not made (its chatbot was paused meanwhile, or it was too late)."""

    outcome: Outcome | None
    started_wall: float  #: time.time() when the request started
    latency_ms: float


#: Given an outcome, how many seconds its chatbot must pause (None: no pause). Runs on the loop.
PauseRule = Callable[[Outcome], float | None]
#: (serial number, seconds): spread a pause to the other processes (Redis). Runs on the loop.
PauseSetter = Callable[[str, float], None]
#: serial number -> whether it is paused elsewhere (Redis). Runs on the loop.
PauseProbe = Callable[[str], bool]
#: A waiting call asks the probe at most this often per chatbot.
PROBE_EVERY_S = 0.05


class Transport:
    """A background event loop that makes SendTwilioMessage calls for the whole process."""

    def __init__(self, base_url: str, api_key: str, *, connect_timeout_s: float, read_timeout_s: float,
                 response_deadline_s: float, max_connections: int = MAX_CONNECTIONS,
                 max_body_bytes: int = 65536, pause_rule: PauseRule | None = None,
                 pause_setter: PauseSetter | None = None, pause_probe: PauseProbe | None = None) -> None:
        _check_base_url(base_url)
        check_api_key(api_key)
        self._url = base_url.rstrip("/") + SEND_PATH
        self._api_key = api_key
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._deadline_s = response_deadline_s
        self._max_connections = max_connections
        self._max_body_bytes = max_body_bytes
        self._pause_rule = pause_rule
        self._pause_setter = pause_setter
        self._pause_probe = pause_probe
        #: serial -> monotonic time until which its calls do not start (a 429 seen here or elsewhere)
        self._paused: dict[str, float] = {}
        self._probed: dict[str, float] = {}
        self._loop = asyncio.new_event_loop()
        #: Idle connections, the most recently used last (the warmest, kept alive).
        self._idle: list[Connection] = []
        self._made: list[Connection] = []  #: at most max_connections
        self._waiting: collections.deque[asyncio.Future[Connection]] = collections.deque()
        self._tls: Any = None
        self._backend = AsyncioBackend()
        url = httpx.URL(self._url)
        # Parsed once.
        self._host = url.host
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._https = url.scheme == "https"
        self._target = url.raw_path
        self._headers = [(b"Host", url.netloc), (b"Authorization", api_key.encode("ascii")),
                         (b"Content-Type", b"application/json"), (b"Accept", b"application/json"),
                         (b"Accept-Encoding", b"identity"), (b"User-Agent", b"oaksend")]
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="oaksend-transport", daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def __repr__(self) -> str:
        return f"Transport(url={self._url!r}, api_key='[redacted]')"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._tls = httpx.create_ssl_context()  # one for all clients: each costs milliseconds and memory
        # The first name lookup starts the loop's resolver thread: pay that now, so the first
        # request leaves at its slot (a late first request crowds the next slot of its chatbot).
        self._loop.run_until_complete(self._warm_up())
        self._ready.set()
        self._loop.run_forever()

    async def _warm_up(self) -> None:
        with contextlib.suppress(Exception):  # only a warm-up: the real call reports any failure
            await self._loop.getaddrinfo(self._host, self._port)

    # -- from any thread ------------------------------------------------------------------
    def submit(self, calls: Sequence[Call]) -> Future[list[CallResult]]:
        """Schedule calls on the loop, all at once; the future holds their CallResults, in order.

        One hand-over per group, not per call: each wakes the loop through its self-pipe."""
        return asyncio.run_coroutine_threadsafe(self._calls(list(calls)), self._loop)

    def close(self) -> None:
        if not self._loop.is_running():
            return

        async def _close() -> None:
            for connection in self._made:
                await connection.aclose()
            await asyncio.sleep(0)  # the sockets close on the loop's next turn (connection_lost)

        with contextlib.suppress(Exception):  # closing at shutdown: nothing left to save
            asyncio.run_coroutine_threadsafe(_close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()

    # -- on the loop ----------------------------------------------------------------------
    async def _calls(self, calls: list[Call]) -> list[CallResult]:
        if len(calls) == 1:
            return [await self._call(calls[0])]
        return list(await asyncio.gather(*map(self._call, calls)))

    def _new_connection(self) -> Connection:
        """ONE keep-alive connection (worker.http11); it connects when first used (`_call`).

        No pool: this transport hands out whole connections itself (a request holds one
        from start to end), which is all a pool would do here."""
        connection = Connection(self._host, self._port, tls=self._tls if self._https else None,
                                connect_timeout_s=self._connect_timeout_s, read_timeout_s=self._read_timeout_s,
                                keepalive_expiry_s=KEEPALIVE_EXPIRY_S, backend=self._backend)
        self._made.append(connection)
        return connection

    async def _checkout(self) -> Connection:
        while self._idle:
            connection = self._idle.pop()
            if self._usable(connection):
                return connection
            await self._discard(connection)
        if len(self._made) < self._max_connections:
            return self._new_connection()
        waiter: asyncio.Future[Connection] = self._loop.create_future()
        self._waiting.append(waiter)
        connection = await waiter
        if self._usable(connection):
            return connection
        await self._discard(connection)
        return self._new_connection()  # the one discarded left room

    def _checkin(self, connection: Connection) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        self._idle.append(connection)

    @staticmethod
    def _usable(connection: Connection) -> bool:
        """Not closed (an error, or the server said so) and not expired: the keep-alive time passed,
        or the server closed it while it was idle (its socket reads end-of-stream). A connection
        that never connected is usable: it connects on its request."""
        return not (connection.is_closed() or connection.has_expired())

    async def _discard(self, connection: Connection) -> None:
        self._made.remove(connection)
        with contextlib.suppress(Exception):  # closing a dead connection: nothing to report
            await connection.aclose()

    async def _call(self, call: Call) -> CallResult:
        delay = call.at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if time.monotonic() - call.at > call.late_ok_s or self._is_paused(call.serial_number, waited=delay > 0):
            return CallResult(None, time.time(), 0.0)
        payload = json.dumps({"SerialNumber": call.serial_number, "ToPhoneNumber": call.to_phone,
                              "Message": call.body}, ensure_ascii=True).encode("ascii")
        connection = await self._checkout()
        try:
            started_wall = time.time()
            t0 = time.perf_counter()
            if connection.connected:
                outcome = await self._post(connection, payload)
            else:
                # A new connection: connect first (a TLS handshake to a distant API takes tens
                # of milliseconds or more), then ask again whether the request is still in time
                # for its slot; if not, it is not made: nothing was written.
                failed = await self._connect(connection)
                if failed is not None:
                    outcome = failed
                elif time.monotonic() - call.at > call.late_ok_s:
                    return CallResult(None, time.time(), 0.0)
                else:
                    started_wall = time.time()
                    t0 = time.perf_counter()
                    outcome = await self._post(connection, payload)
        finally:
            self._checkin(connection)
        if self._pause_rule is not None:
            self._note_pause(call.serial_number, outcome)
        return CallResult(outcome, started_wall, (time.perf_counter() - t0) * 1000.0)

    def _is_paused(self, serial_number: str, *, waited: bool) -> bool:
        """Whether a call of this chatbot must not start now: paused here, or (for a call
        that waited for its slot) paused by another process."""
        now = time.monotonic()
        if self._paused.get(serial_number, 0.0) > now:
            return True
        if waited and self._pause_probe is not None and self._probed.get(serial_number, 0.0) <= now:
            self._probed[serial_number] = now + PROBE_EVERY_S
            try:
                if self._pause_probe(serial_number):
                    self._paused[serial_number] = now + PROBE_EVERY_S
                    return True
            except Exception:  # noqa: BLE001 - Redis away: the slot was granted, go ahead
                return False
        return False

    def _note_pause(self, serial_number: str, outcome: Outcome) -> None:
        """A 429 (or an auth failure): hold this chatbot's later calls here at once, and elsewhere."""
        assert self._pause_rule is not None
        seconds = self._pause_rule(outcome)
        if not seconds:
            return
        self._paused[serial_number] = max(self._paused.get(serial_number, 0.0), time.monotonic() + seconds)
        if self._pause_setter is not None:
            with contextlib.suppress(Exception):  # the worker writes the pause to the database too
                self._pause_setter(serial_number, seconds)

    async def _connect(self, connection: Connection) -> TransportError | None:
        """Connect a new connection; the failure (never sent), if any."""
        try:
            await connection.connect()
        except (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError,
                httpcore.ConnectionNotAvailable, OSError) as exc:
            failed = transport_error(exc, self._api_key)
            # Nothing is written while connecting: whatever failed, the request never left.
            return failed if not failed.sent else TransportError("connect", False, failed.detail)
        return None

    async def _post(self, connection: Connection, payload: bytes) -> Outcome:
        head: list[Response] = []
        try:
            async with asyncio.timeout(self._deadline_s):
                response = await connection.request(
                    self._target, [*self._headers, (b"Content-Length", b"%d" % len(payload))], payload)
                head.append(response)
                try:
                    return await self._receive(response)
                finally:
                    await response.aclose()
        except TimeoutError:
            # The whole-response deadline passed: the request may have reached the server.
            if head:  # the status line arrived: keep it (a 429 or 503 is still safe to retry)
                return parse_envelope(head[0].status, b"", retry_after_s=self._retry_after(head[0]),
                                      incomplete="body read failed: read_timeout", secret=self._api_key)
            return TransportError("read_timeout", True, "response deadline passed")
        except (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError, httpcore.ProxyError,
                httpcore.ConnectionNotAvailable, httpcore.UnsupportedProtocol, OSError) as exc:
            return transport_error(exc, self._api_key)

    async def _receive(self, response: Response) -> Envelope:
        retry_after_s = self._retry_after(response)
        chunks: list[bytes] = []
        size = 0
        incomplete: str | None = None
        try:
            async for chunk in response.aiter_stream():
                if size + len(chunk) > self._max_body_bytes:
                    chunks.append(chunk[: self._max_body_bytes - size])
                    incomplete = "body too large"
                    break
                chunks.append(chunk)
                size += len(chunk)
        except (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError, OSError) as exc:
            incomplete = f"body read failed: {transport_error(exc, self._api_key).kind}"
        return parse_envelope(response.status, b"".join(chunks), retry_after_s=retry_after_s,
                              incomplete=incomplete, secret=self._api_key)

    @staticmethod
    def _retry_after(response: Response) -> float | None:
        """Seconds the response's Retry-After asks for (against its Date), or None."""
        retry_after = date = None
        for name, value in response.headers:
            lower = name.lower()
            if lower == b"retry-after" and retry_after is None:
                retry_after = value.decode("latin-1")
            elif lower == b"date" and date is None:
                date = value.decode("latin-1")
        if retry_after is None:
            return None
        return parse_retry_after(retry_after, now=reference_time(date))


def _check_base_url(base_url: str) -> None:
    try:
        url = httpx.URL(base_url)
    except (httpx.InvalidURL, TypeError, ValueError):
        raise ConfigError("base_url is not a valid URL") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError("base_url must be an http:// or https:// URL with a host")
