"""Asynchronous sending: one asyncio loop and ONE `httpx.AsyncClient` per worker process.

Requests in flight are coroutines, not threads: a worker process keeps hundreds of
calls open at 200 ms (or 2 s) of API latency. Celery's threads only hand groups of
messages over (`Transport.submit_each`) and wait for each call's outcome.

httpx does the HTTP: connections and their pool (kept alive, an idle connection the
server closed or wrote on is never reused), proxies and TLS settings from the
environment (`trust_env`), decoding (gzip, deflate), Happy Eyeballs across a name's
addresses. Nothing of ours is below its public client API. Above it: the scheduling of
each call (its slot, its lateness, its chatbot's pauses), the whole-exchange deadline,
the body cap, and the translation of httpx's exceptions into `TransportError` values
(`kind_of`, here and nowhere else). Parsing is `newoaks.envelope`'s.

The process's connections are spread over small pools, each one `httpx.AsyncClient` with
the same settings (`_Pool`, `POOL_SIZE` connections each), a call going to the least busy:
httpcore 1.0.9's pool, at each request's start and end, counts its idle connections once
for each idle connection (quadratic in its size) and polls every idle socket
(encode/httpcore#1035). One client of 512 connections cost 16 ms of CPU per request at
200 ms of API latency (60 requests/s for a whole core); pools of 16 cost under 1 ms.
Two gates in front of each pool: at most `max_connections` requests are in httpx at once
(the others wait for a slot here, so no pool ever queues), and requests enter a pool one
at a time, each until its connection is its own (its first `trace` event), so an idle
connection is never handed to two requests at once (the loser would go round the pool
again). A transport handed in (`http_transport`, e.g. `httpx.MockTransport`) is one pool.

What bounds a call, from its slot (`Call.at`):
- the wait for a free connection (a slot, the entry, httpx's pool): the lateness left
  (`at + late_ok_s - now`), else the pool timeout; past it the request never left (a
  lateness-bound wait is "not made");
- a new connection: the connect timeout (TCP, then TLS, each), NOT the lateness: a slow
  TLS handshake to a distant API would otherwise never complete a connection, so a
  request on a new connection may leave later than its lateness;
- from the moment it has a connection (connecting included) to its body's last byte: the
  response deadline, however the bytes trickle; each read and write also has its timeout
  (a transport handed in that reports no `trace` events: from the hand-over, plus the
  pool timeout).
So a call ends at most `pool timeout + response deadline` after its wait began
(`Transport.longest_call_s`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import ssl
import time
from typing import Any

import httpx

from oaksend.errors import ConfigError
from oaksend.worker.newoaks.calls import (
    Call,
    CallLoop,
    CallResult,
    PauseProbe,
    PauseRule,
    Pauses,
    PauseSetter,
    Started,
    not_made,
)
from oaksend.worker.newoaks.endpoint import SEND_PATH, check_api_key, parse_retry_after, reference_time
from oaksend.worker.newoaks.envelope import Envelope, parse_envelope
from oaksend.worker.newoaks.outcome import Outcome, TransportError, safe_detail
from oaksend.worker.newoaks.tls import TlsTrust, tls_context

__all__ = ["Call", "CallResult", "Transport", "kind_of", "tls_context", "transport_error"]

#: Requests in flight per worker process (and connections kept). Calls beyond it wait for a
#: free connection. 512 in flight carry 250/s at 2 s of API latency per process, 2,500/s at 200 ms.
MAX_CONNECTIONS = 512
#: Connections per httpx pool (see the module's docstring): the process's are spread over
#: `ceil(max_connections / POOL_SIZE)` clients.
POOL_SIZE = 4
# Idle connections are dropped before common server idle timeouts (uvicorn 5 s): reusing a
# connection the server is closing fails after the body may have been sent (ambiguous).
KEEPALIVE_EXPIRY_S = 4.0


# -- exceptions -> TransportError: the one place that knows httpx's exception classes ----------
def transport_error(exc: BaseException, secret: str) -> TransportError:
    """Translate an exception raised while sending into a TransportError (no key in its detail)."""
    kind, sent = kind_of(exc)
    return TransportError(kind=kind, sent=sent, detail=safe_detail(exc, secret))


def kind_of(exc: BaseException) -> tuple[str, bool]:
    """Map an exception to (kind, sent). Subclasses are tested before bases."""
    # Before the request was written: certainly not sent.
    if isinstance(exc, httpx.ConnectTimeout):
        return "connect_timeout", False
    if isinstance(exc, httpx.PoolTimeout):
        return "pool_timeout", False
    if isinstance(exc, httpx.ConnectError):
        # A failed TLS handshake is a ConnectError caused by the ssl error: still "never left".
        return ("tls" if _caused_by_ssl(exc) else "connect"), False
    if isinstance(exc, httpx.ProxyError):
        return "connect", False
    if isinstance(exc, httpx.UnsupportedProtocol):
        return "other", False
    if isinstance(exc, httpx.LocalProtocolError):
        return "protocol", False  # we refused to build the request (e.g. an illegal header value)
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
    return "other", True  # unknown failure mid-send: assume the worst, a possible duplicate


def _caused_by_ssl(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return "SSL" in str(exc) or "CERTIFICATE" in str(exc).upper()


class _Pool:
    """One httpx client and its connections: a share of the process's (the module's docstring)."""

    __slots__ = ("busy", "client", "entry")

    def __init__(self, client: httpx.AsyncClient, *, gated: bool) -> None:
        self.client = client
        self.entry = asyncio.Lock() if gated else None  #: one request at a time until it has its connection
        self.busy = 0  #: calls holding a slot in this pool

    def load(self) -> int:
        return self.busy


class _Progress:
    """How far one call got, as httpx's `trace` extension reports its transport's events."""

    __slots__ = ("connected", "deadline_s", "gate", "response", "scope", "started", "writing")

    def __init__(self, deadline_s: float, started: Started, gate: asyncio.Lock | None) -> None:
        self.deadline_s = deadline_s
        self.started = started
        self.connected = False  #: a connection was taken from the pool (or started connecting)
        self.writing = False  #: our request's head started to be written
        self.response: httpx.Response | None = None  #: its head arrived
        self.scope: asyncio.Timeout | None = None
        self.gate = gate  #: the entry, taken by the caller, held until the request has its connection

    def let_go(self) -> None:
        if self.gate is not None:
            self.gate.release()
            self.gate = None

    async def trace(self, name: str, info: dict[str, Any]) -> None:
        if not self.connected:
            # Out of the pool: the response deadline runs from here, and the next request may enter.
            self.connected = True
            self.let_go()
            if self.scope is not None:
                self.scope.reschedule(asyncio.get_running_loop().time() + self.deadline_s)
        if not self.writing and name.endswith("send_request_headers.started"):
            # A proxy's CONNECT (the tunnel) is not our request.
            self.writing = getattr(info.get("request"), "method", None) != b"CONNECT"


class Transport(CallLoop):
    """A background event loop that makes SendTwilioMessage calls for the whole process (`CallLoop`)."""

    def __init__(self, base_url: str, api_key: str, *, connect_timeout_s: float, read_timeout_s: float,
                 response_deadline_s: float, max_connections: int = MAX_CONNECTIONS,
                 pool_timeout_s: float | None = None, max_body_bytes: int = 65536,
                 ca_bundle: str | None = None, tls_trust: TlsTrust = "certifi", client_cert: str | None = None,
                 client_key: str | None = None, http_transport: httpx.AsyncBaseTransport | None = None,
                 pause_rule: PauseRule | None = None, pause_setter: PauseSetter | None = None,
                 pause_probe: PauseProbe | None = None) -> None:
        _check_base_url(base_url)
        check_api_key(api_key)
        self._url = base_url.rstrip("/") + SEND_PATH
        self._api_key = api_key
        self._deadline_s = response_deadline_s
        #: A call waits this long at most for a pooled connection (less when its lateness binds).
        self._pool_timeout_s = connect_timeout_s if pool_timeout_s is None else pool_timeout_s
        self._timeouts = httpx.Timeout(connect=connect_timeout_s, read=read_timeout_s, write=read_timeout_s,
                                       pool=self._pool_timeout_s).as_dict()
        self._max_body_bytes = max_body_bytes
        self._pauses = Pauses(pause_rule, pause_setter, pause_probe)
        self._slots = asyncio.Semaphore(max_connections)  #: requests in httpx at once (`_call`)
        verify = tls_context(ca_bundle=ca_bundle, trust=tls_trust, client_cert=client_cert, client_key=client_key)
        count = 1 if http_transport is not None else -(-max_connections // POOL_SIZE)
        size = -(-max_connections // count)
        try:
            self._pools = [_Pool(httpx.AsyncClient(
                headers={"Authorization": api_key, "Content-Type": "application/json",
                         "Accept": "application/json", "User-Agent": "oaksend"},
                verify=verify, trust_env=True, follow_redirects=False, transport=http_transport,
                limits=httpx.Limits(max_connections=size, max_keepalive_connections=size,
                                    keepalive_expiry=KEEPALIVE_EXPIRY_S),
                timeout=httpx.Timeout(**self._timeouts)), gated=http_transport is None) for _ in range(count)]
        except (ImportError, ValueError) as exc:  # e.g. a SOCKS proxy in ALL_PROXY without socksio
            raise ConfigError(f"the HTTP client cannot be built: {safe_detail(exc, api_key)}") from None
        _quiet_httpx_log()
        super().__init__(api_key)

    def __repr__(self) -> str:
        return f"Transport(url={self._url!r}, api_key='[redacted]')"

    @property
    def longest_call_s(self) -> float:
        """The longest a call can take once handed to httpx: the pool wait, then the response deadline."""
        return self._pool_timeout_s + self._deadline_s

    def close(self) -> None:
        super().close()
        self._pauses.close()

    async def _aclose(self) -> None:
        for pool in self._pools:
            await pool.client.aclose()

    async def _warm_up(self) -> None:
        """The loop's resolver thread, and the async library httpx's transport loads on its first request."""
        with contextlib.suppress(Exception):  # only a warm-up: the real call reports any failure
            import anyio

            await anyio.sleep(0)
            await self._loop.run_in_executor(None, socket.getaddrinfo, "127.0.0.1", 80)

    async def _call(self, call: Call, started: Started) -> CallResult:
        delay = call.at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        serial = call.serial_number
        if self._pauses.here(serial) or (
                delay > 0 and await self._pauses.elsewhere(serial, call.at + call.late_ok_s - time.monotonic())):
            return not_made()
        left_s = call.at + call.late_ok_s - time.monotonic()
        if left_s < 0:
            return not_made()
        # Waiting for a free connection is bounded by the lateness left (past it: never left, not
        # made); the connect timeout is not (see the module's docstring). The wait is for a slot of
        # ours, then for the entry, then httpx's pool timeout is what is left of it.
        by_lateness = left_s < self._pool_timeout_s
        wait_s = left_s if by_lateness else self._pool_timeout_s
        waited_from, waited_wall = time.monotonic(), time.time()
        if not await _take(self._slots, wait_s):
            return self._no_connection(by_lateness, waited_from, waited_wall)
        pool = min(self._pools, key=_Pool.load)  # a slot held: this pool has a free connection
        pool.busy += 1
        try:
            if pool.entry is not None and not await _take(pool.entry, wait_s - (time.monotonic() - waited_from)):
                return self._no_connection(by_lateness, waited_from, waited_wall)
            progress = _Progress(self._deadline_s, started, pool.entry)
            try:
                pool_s = max(0.001, wait_s - (time.monotonic() - waited_from))
                outcome = await self._exchange(pool.client, self._request(pool.client, call, pool_s, progress),
                                               progress, pool_s)
            finally:
                progress.let_go()
        finally:
            pool.busy -= 1
            self._slots.release()
        latency_ms = (time.monotonic() - started.started) * 1000.0
        if by_lateness and isinstance(outcome, TransportError) and outcome.kind == "pool_timeout":
            return CallResult(None, started.started_wall, started.started, latency_ms)  # too late: not made
        self._pauses.note(serial, outcome)
        return CallResult(outcome, started.started_wall, started.started, latency_ms)

    @staticmethod
    def _no_connection(by_lateness: bool, waited_from: float, waited_wall: float) -> CallResult:
        """No connection came free in time: the request never left (not made, when its lateness ran out)."""
        if by_lateness:
            return not_made()
        return CallResult(TransportError("pool_timeout", False, "no free connection within the pool timeout"),
                          waited_wall, waited_from, (time.monotonic() - waited_from) * 1000.0)

    def _request(self, client: httpx.AsyncClient, call: Call, pool_s: float, progress: _Progress) -> httpx.Request:
        timeouts = {**self._timeouts, "pool": pool_s}
        payload = json.dumps({"SerialNumber": call.serial_number, "ToPhoneNumber": call.to_phone,
                              "Message": call.body}, ensure_ascii=True).encode("ascii")
        return client.build_request(
            "POST", self._url, content=payload, headers={"X-Request-ID": call.request_id} if call.request_id else None,
            extensions={"timeout": timeouts, "trace": progress.trace})

    async def _exchange(self, client: httpx.AsyncClient, request: httpx.Request, progress: _Progress,
                        pool_s: float) -> Outcome:
        """Send the request, read the answer: the whole exchange within the response deadline, counted
        from the moment it has a connection (`_Progress.trace`; before that, the pool timeout bounds it)."""
        scope = progress.scope = asyncio.timeout_at(self._loop.time() + pool_s + self._deadline_s)
        try:
            async with scope:
                progress.started.hand_over()
                try:
                    response = await client.send(request, stream=True)
                finally:
                    progress.let_go()
                progress.response = response
                return await self._receive(response)
        except TimeoutError as exc:
            return self._past_deadline(progress) if scope.expired() else transport_error(exc, self._api_key)
        except (httpx.TransportError, OSError) as exc:
            return transport_error(exc, self._api_key)
        finally:
            # Outside the deadline: a whole answer read is never lost to its closing.
            if progress.response is not None:
                with contextlib.suppress(httpx.HTTPError, OSError):
                    await progress.response.aclose()

    def _past_deadline(self, progress: _Progress) -> Outcome:
        if progress.response is not None:  # the head arrived: keep it (a 429 or 503 is still safe to retry)
            head = progress.response
            return parse_envelope(head.status_code, b"", retry_after_s=_retry_after(head.headers),
                                  incomplete="body read failed: read_timeout", secret=self._api_key)
        if progress.connected and not progress.writing:  # still connecting (a slow proxy): nothing written
            return TransportError("connect_timeout", False, "response deadline passed before the request left")
        return TransportError("read_timeout", True, "response deadline passed")

    async def _receive(self, response: httpx.Response) -> Envelope:
        """The body as httpx decodes it (gzip, deflate), cut at `max_body_bytes`."""
        chunks: list[bytes] = []
        size = 0
        incomplete: str | None = None
        try:
            async for chunk in response.aiter_bytes():
                if size + len(chunk) > self._max_body_bytes:
                    chunks.append(chunk[: self._max_body_bytes - size])
                    incomplete = "body too large"
                    break
                chunks.append(chunk)
                size += len(chunk)
        except httpx.DecodingError:
            incomplete = "body read failed: decoding"
        except (httpx.TransportError, OSError) as exc:
            incomplete = f"body read failed: {kind_of(exc)[0]}"
        return parse_envelope(response.status_code, b"".join(chunks), retry_after_s=_retry_after(response.headers),
                              incomplete=incomplete, secret=self._api_key)


async def _take(lock: asyncio.Semaphore | asyncio.Lock, wait_s: float) -> bool:
    """Acquire `lock` within `wait_s` (at once, without yielding, when it is free)."""
    if not lock.locked():
        await lock.acquire()
        return True
    try:
        async with asyncio.timeout(max(0.0, wait_s)):
            await lock.acquire()
    except TimeoutError:
        return False
    return True


def _retry_after(headers: httpx.Headers) -> float | None:
    """Seconds the response's Retry-After asks for (against its Date), or None."""
    values = headers.get_list("retry-after")
    if not values:
        return None
    dates = headers.get_list("date")
    return parse_retry_after(values[0], now=reference_time(dates[0] if dates else None))


def _quiet_httpx_log() -> None:
    """httpx logs every request at INFO; the worker logs each send itself. Unless the application
    set that logger's level, it says only warnings."""
    logger = logging.getLogger("httpx")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.WARNING)


def _check_base_url(base_url: str) -> None:
    try:
        url = httpx.URL(base_url)
    except (httpx.InvalidURL, TypeError, ValueError):
        raise ConfigError("base_url is not a valid URL") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError("base_url must be an http:// or https:// URL with a host")
