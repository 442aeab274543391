"""The scheduling layer over httpx, against real servers on 127.0.0.1.

- lateness: a call that waited for a pooled connection past its lateness is not made
  (certainly not sent); without a lateness bound the pool timeout ends the wait ("pool_timeout", not sent);
- one outcome per call: `submit_each` gives a future per call, and an exception inside one
  call is that call's outcome (sent or not, by whether httpx had the request), never the others';
- our request id travels as X-Request-ID and the sandbox records it;
- the Redis callbacks (pause probe and setter) run off the event loop: a slow Redis never
  freezes the requests in flight;
- an application's own httpx transport (`httpx.MockTransport`) can be handed in.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from oaksend.sandbox.control import SandboxControl
from oaksend.sandbox.server import running_sandbox
from oaksend.worker.newoaks.client import Call, CallResult, Transport
from oaksend.worker.newoaks.outcome import Envelope, Outcome, TransportError
from tests.integration.test_client_behaviour import SUCCESS, Handler, RawServer, http_response

KEY = "sk-test-0123456789abcdefSECRET"
SERIAL = "3254a9d0424c4806b9ea3d0763abcdef"
OTHER = "0be4c0a4c5e6f708192a3b4c5d6e7f80"


def transport(url: str, **options: Any) -> Transport:
    options.setdefault("connect_timeout_s", 2.0)
    options.setdefault("read_timeout_s", 5.0)
    options.setdefault("response_deadline_s", 10.0)
    return Transport(url, KEY, **options)


def ok(result: CallResult) -> bool:
    return isinstance(result.outcome, Envelope) and result.outcome.http_status == 200


def by_phone(delays: dict[str, float] | None = None, statuses: dict[str, int] | None = None) -> Handler:
    """Answer each request (one per connection) after the delay its phone number is given, with its status."""
    def handler(server: RawServer, conn: socket.socket) -> None:
        request = server.read_request(conn)
        phone = json.loads(request.body)["ToPhoneNumber"]
        if server.stopping.wait((delays or {}).get(phone, 0.0)):
            return
        status = (statuses or {}).get(phone, 200)
        conn.sendall(http_response(status, json.dumps(SUCCESS).encode(), {"Content-Type": "application/json"}))

    return handler


def phones(server: RawServer) -> list[str]:
    return [json.loads(r.body)["ToPhoneNumber"] for r in server.requests]


# -- lateness and the pool ---------------------------------------------------------------------------------------
def test_a_call_that_waited_for_a_connection_past_its_lateness_is_not_made(
        make_server: Callable[[Handler], RawServer]) -> None:
    """One connection, held 1 s by a slow call: a call whose lateness (0.2 s) runs out while it waits
    is not made (no outcome: certainly not sent); one without a lateness bound waits and is made."""
    server = make_server(by_phone(delays={"+14155550001": 1.0}))
    t = transport(server.url, max_connections=1)
    now = time.monotonic()
    try:
        slow, late, patient = [f.result(30) for f in t.submit_each([
            Call(SERIAL, "+14155550001", "slow", now),
            Call(SERIAL, "+14155550002", "late", now + 0.1, late_ok_s=0.2),
            Call(SERIAL, "+14155550003", "patient", now + 0.1),
        ])]
    finally:
        t.close()
    assert ok(slow) and ok(patient), (slow, patient)
    assert late.outcome is None
    # It gave up when its lateness ran out (0.3 s after `now`), not when the connection came free.
    assert late.started_monotonic - now >= 0.1 and late.started_monotonic + late.latency_ms / 1000 - now < 0.6, late
    assert phones(server) == ["+14155550001", "+14155550003"]


def test_without_a_lateness_bound_the_pool_timeout_ends_the_wait(
        make_server: Callable[[Handler], RawServer]) -> None:
    server = make_server(by_phone(delays={"+14155550001": 1.0}))
    t = transport(server.url, max_connections=1, pool_timeout_s=0.3)
    now = time.monotonic()
    try:
        slow, waiting = [f.result(30) for f in t.submit_each([Call(SERIAL, "+14155550001", "slow", now),
                                                              Call(SERIAL, "+14155550002", "waits", now + 0.05)])]
    finally:
        t.close()
    assert ok(slow)
    assert isinstance(waiting.outcome, TransportError)
    assert (waiting.outcome.kind, waiting.outcome.sent) == ("pool_timeout", False)
    assert 250 <= waiting.latency_ms < 900, waiting
    assert t.longest_call_s == pytest.approx(0.3 + 10.0)
    assert phones(server) == ["+14155550001"]


# -- one outcome per call ------------------------------------------------------------------------------------
class Flaky(httpx.AsyncBaseTransport):
    """httpx's own transport, except that a request to `phone` raises an exception no one expects."""

    def __init__(self, phone: str) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self._phone = phone.encode()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._phone in request.content:
            raise RuntimeError(f"boom, and the key {KEY}")
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def test_an_exception_inside_one_call_is_that_calls_outcome_only(
        make_server: Callable[[Handler], RawServer]) -> None:
    server = make_server(by_phone())
    t = transport(server.url, http_transport=Flaky("+14155550002"))
    now = time.monotonic()
    group = [Call(SERIAL, "+14155550001", "a", now), Call(SERIAL, "+14155550002", "b", now),
             Call(SERIAL, "+14155550003", "c", now, request_id="not ascii: \u00e9"), Call(SERIAL, "+14155550004", "d", now)]
    try:
        futures = t.submit_each(group)
        results = [f.result(30) for f in futures]
        whole = t.submit(group[:1]).result(30)
    finally:
        t.close()
    a, b, c, d = results
    assert ok(a) and ok(d) and ok(whole[0]), results
    # Handed to httpx: it may have left.
    assert isinstance(b.outcome, TransportError) and (b.outcome.kind, b.outcome.sent) == ("other", True)
    assert b.outcome.detail == "RuntimeError: boom, and the key [redacted]"
    # Refused while building the request (an illegal header value): certainly not sent.
    assert isinstance(c.outcome, TransportError) and (c.outcome.kind, c.outcome.sent) == ("other", False)
    assert sorted(phones(server)) == ["+14155550001", "+14155550001", "+14155550004"]


def test_after_close_every_future_still_resolves() -> None:
    t = transport("http://127.0.0.1:9")
    t.close()
    [future] = t.submit_each([Call(SERIAL, "+14155550001", "a", time.monotonic())])
    result = future.result(1)
    assert result.outcome == TransportError("other", False, "transport closed")
    assert t.submit([]).result(1) == []


def test_the_request_id_reaches_the_api_and_its_record() -> None:
    ids = [uuid.uuid4().hex for _ in range(5)]
    with running_sandbox(api_key=KEY) as base_url, SandboxControl(base_url, KEY) as control:
        t = transport(base_url)
        try:
            results = [f.result(30) for f in t.submit_each(
                [Call(SERIAL, f"+1415555{i:04d}", "hi", time.monotonic(), request_id=rid) for i, rid in enumerate(ids)])]
        finally:
            t.close()
        records = control.requests()
    assert all(ok(r) for r in results)
    assert {r["request_id"]: r["to_phone_number"] for r in records} == {rid: f"+1415555{i:04d}"
                                                                        for i, rid in enumerate(ids)}


# -- Redis off the event loop ---------------------------------------------------------------------------------
def test_a_slow_pause_probe_holds_only_its_own_call(make_server: Callable[[Handler], RawServer]) -> None:
    """The probe answers in 2 s for one chatbot (a Redis stall): the other chatbot's calls leave at
    their slots, and the slow one goes ahead after a short wait (its slot was granted)."""
    server = make_server(by_phone())
    asked: list[str] = []

    def probe(serial: str) -> bool:
        asked.append(serial)
        if serial == SERIAL:
            time.sleep(2.0)
        return False

    t = transport(server.url, pause_probe=probe)
    at = time.monotonic() + 0.1
    started = time.monotonic()
    try:
        results = [f.result(30) for f in t.submit_each(
            [Call(SERIAL, "+14155550001", "stalled", at)]
            + [Call(OTHER, f"+1415555100{i}", "free", at + 0.01 * i) for i in range(5)])]
    finally:
        t.close()
    took = time.monotonic() - started
    assert all(ok(r) for r in results), results
    assert {SERIAL, OTHER} <= set(asked)
    for r in results:
        assert r.started_monotonic - at < 0.5, [r.started_monotonic - at for r in results]
    assert took < 1.5, took  # on the loop, the stalled probe would have frozen every call for 2 s


def test_a_429_pauses_its_chatbot_here_at_once_while_a_slow_setter_spreads_it(
        make_server: Callable[[Handler], RawServer]) -> None:
    server = make_server(by_phone(statuses={"+14155550001": 429}))
    spread: list[tuple[str, float]] = []

    def setter(serial: str, seconds: float) -> None:
        time.sleep(2.0)  # a slow Redis
        spread.append((serial, seconds))

    def rule(outcome: Outcome) -> float | None:
        return 5.0 if isinstance(outcome, Envelope) and outcome.http_status == 429 else None

    t = transport(server.url, pause_rule=rule, pause_setter=setter)
    now = time.monotonic()
    try:
        first = t.submit_each([Call(SERIAL, "+14155550001", "429", now)])[0].result(30)
        later = t.submit_each([Call(SERIAL, "+14155550002", "held", now + 0.2),
                               Call(OTHER, "+14155550003", "free", now + 0.2)])
        held, free = [f.result(30) for f in later]
        took = time.monotonic() - now
        deadline = time.monotonic() + 5
        while not spread and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        t.close()
    assert isinstance(first.outcome, Envelope) and first.outcome.http_status == 429
    assert held.outcome is None  # not made: its chatbot is paused
    assert ok(free) and took < 1.5, (free, took)
    assert spread == [(SERIAL, 5.0)]
    assert phones(server) == ["+14155550001", "+14155550003"]


# -- a transport of the application's own -------------------------------------------------------------------
def test_a_mock_transport_can_stand_in_for_the_api() -> None:
    seen: list[httpx.Request] = []

    def api(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=SUCCESS)

    t = transport("https://usapi.hottask.com", http_transport=httpx.MockTransport(api))
    try:
        [result] = [f.result(10) for f in t.submit_each(
            [Call(SERIAL, "+14155550001", "hi", time.monotonic(), request_id="ab" * 16)])]
    finally:
        t.close()
    assert ok(result) and isinstance(result.outcome, Envelope) and result.outcome.session_id == 123123123123
    [request] = seen
    assert str(request.url) == "https://usapi.hottask.com/chat/Chatbot/SendTwilioMessage"
    assert request.headers["Authorization"] == KEY and request.headers["X-Request-ID"] == "ab" * 16
    assert json.loads(request.content) == {"SerialNumber": SERIAL, "ToPhoneNumber": "+14155550001", "Message": "hi"}


def test_calls_of_many_threads_at_once() -> None:
    """Celery's threads hand groups over concurrently: every future gets its own call's outcome."""
    out: dict[int, list[CallResult]] = {}
    with running_sandbox(api_key=KEY) as base_url, SandboxControl(base_url, KEY) as control:
        t = transport(base_url)

        def group(k: int) -> None:
            futures = t.submit_each([Call(SERIAL, f"+141555{k:02d}{i:03d}", "hi", time.monotonic(),
                                          request_id=f"{k:016x}{i:016x}") for i in range(10)])
            out[k] = [f.result(30) for f in futures]

        try:
            threads = [threading.Thread(target=group, args=(k,)) for k in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
        finally:
            t.close()
        records = control.requests()
    assert sorted(out) == list(range(8)) and all(ok(r) for rs in out.values() for r in rs)
    # Each answer is its own request's: the SessionID the sandbox gave that request id.
    session_of = {r["request_id"]: r["session_id"] for r in records}
    assert len(session_of) == 80
    for k, results in out.items():
        for i, r in enumerate(results):
            assert isinstance(r.outcome, Envelope) and r.outcome.session_id == session_of[f"{k:016x}{i:016x}"]
