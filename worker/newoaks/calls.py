"""The scheduling layer under `newoaks.client.Transport`, without HTTP: calls, their loop, chatbot pauses.

`Call` and `CallResult` are what the sender hands over and gets back. `CallLoop` runs
one asyncio loop in a background thread for the whole process and one coroutine per
call on it, and gives one future per call that never raises: whatever happens in one
call is that call's outcome, never another's. `Pauses` holds a chatbot's calls after a
429 (or an auth failure): here at once, and in other processes through Redis. Its Redis
callbacks are synchronous: they run in a small pool of threads of their own, never on
the event loop, so a slow Redis never freezes the requests in flight.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

from oaksend.worker.newoaks.outcome import Outcome, TransportError, safe_detail

__all__ = ["Call", "CallLoop", "CallResult", "PauseProbe", "PauseRule", "PauseSetter", "Pauses", "Started"]

log = logging.getLogger(__name__)

#: A waiting call asks the pause probe (Redis) at most this often per chatbot ...
PROBE_EVERY_S = 0.05
#: ... and waits for its answer at most this long (or its lateness left); a slower Redis is
#: taken as "not paused": the rate slot was granted.
PROBE_WAIT_S = 0.1
#: Threads for the synchronous Redis callbacks.
REDIS_THREADS = 2


@dataclass(frozen=True)
class Call:
    """One request to make: at monotonic time `at` (not before), and not more than `late_ok_s` after it.

    A request that leaves late lands on the next ones, which leave on time: past the
    chatbot's burst tolerance, a strict limiter at the API refuses them (429), and the
    chatbot pauses. Such a call is not made (its CallResult has no outcome): it is
    handed back, certainly not called, and sent again at a new slot. `request_id` (ours,
    hex) travels as the X-Request-ID header when set.
    """

    serial_number: str
    to_phone: str
    body: str
    at: float
    late_ok_s: float = math.inf
    request_id: str = ""


@dataclass(frozen=True)
class CallResult:
    """What a call did; `outcome` None: it was not made (its chatbot was paused meanwhile, or it was too late).

    `started_*`: when the request was handed to httpx (not made: when that was decided);
    `latency_ms` runs from then to its last byte (the wait for a connection and the connect included).
    """

    outcome: Outcome | None
    started_wall: float  #: time.time() when the request started
    started_monotonic: float  #: time.monotonic() at the same moment
    latency_ms: float


def not_made() -> CallResult:
    return CallResult(None, time.time(), time.monotonic(), 0.0)


class Started:
    """Whether a call's request was handed to the HTTP client yet (from then on, bytes may leave), and when."""

    def __init__(self) -> None:
        self.handed = False
        self.started = time.monotonic()
        self.started_wall = time.time()

    def hand_over(self) -> None:
        self.started = time.monotonic()
        self.started_wall = time.time()
        self.handed = True


class CallLoop:
    """A background event loop making calls for the whole process: `_call` (a subclass's) per call."""

    def __init__(self, secret: str) -> None:
        self._secret = secret  #: cut out of every detail
        self._loop = asyncio.new_event_loop()
        self._tasks: set[asyncio.Task[None]] = set()
        self._open: set[Future[CallResult]] = set()  #: futures handed out, not yet resolved
        self._lock = threading.Lock()
        self._closed = False
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="oaksend-transport", daemon=True)
        self._thread.start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._warm_up())
        ready.set()
        self._loop.run_forever()

    # -- what a subclass provides ---------------------------------------------------------
    async def _warm_up(self) -> None:
        """Before any call: pay one-time costs, so that the first request leaves at its slot."""

    async def _call(self, call: Call, started: Started) -> CallResult:
        raise NotImplementedError

    async def _aclose(self) -> None:
        """On the loop, after every call ended."""

    # -- from any thread ------------------------------------------------------------------
    def submit_each(self, calls: Sequence[Call]) -> list[Future[CallResult]]:
        """Schedule calls on the loop, all at once; one future per call, in order.

        Each future resolves to that call's CallResult and never raises: an unexpected
        exception in one call is its own outcome ("other"), never another's. One hand-over
        per group: the loop is woken once (its self-pipe)."""
        futures: list[Future[CallResult]] = []
        for _ in calls:
            future: Future[CallResult] = Future()
            future.set_running_or_notify_cancel()  # not cancellable: it always gets its result
            futures.append(future)
        with self._lock:
            self._open.update(futures)
        try:
            if self._closed:
                raise RuntimeError("transport closed")
            self._loop.call_soon_threadsafe(self._start, list(zip(calls, futures, strict=True)))
        except RuntimeError:  # closed: none of them started
            self._settle(futures, sent=False)
        return futures

    def submit(self, calls: Sequence[Call]) -> Future[list[CallResult]]:
        """The CallResults of `calls`, in order, in one future (a thin wrapper of `submit_each`)."""
        each = self.submit_each(calls)
        whole: Future[list[CallResult]] = Future()
        whole.set_running_or_notify_cancel()
        left = [len(each)]
        lock = threading.Lock()

        def one_done(_: Future[CallResult]) -> None:
            with lock:
                left[0] -= 1
                last = left[0] == 0
            if last:
                whole.set_result([f.result() for f in each])

        if not each:
            whole.set_result([])
        for future in each:
            future.add_done_callback(one_done)
        return whole

    def close(self) -> None:
        """End the calls in flight (each resolves as "other", "transport closed"), then the loop."""
        if self._closed:
            return
        self._closed = True
        if self._loop.is_running():
            with contextlib.suppress(Exception):  # closing at shutdown: nothing left to save
                asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        stuck = self._thread.is_alive()
        if not stuck:
            self._loop.close()
        with self._lock:
            left = list(self._open)
        # Calls cut off resolved themselves; what is left never started, unless the loop is stuck.
        self._settle(left, sent=stuck)

    def _settle(self, futures: list[Future[CallResult]], *, sent: bool) -> None:
        now_wall, now = time.time(), time.monotonic()
        for future in futures:
            self._resolve(future, CallResult(TransportError("other", sent, "transport closed"), now_wall, now, 0.0))

    def _resolve(self, future: Future[CallResult], result: CallResult) -> None:
        with self._lock:
            self._open.discard(future)
        with contextlib.suppress(concurrent.futures.InvalidStateError):  # settled meanwhile
            future.set_result(result)

    # -- on the loop ----------------------------------------------------------------------
    def _start(self, pairs: list[tuple[Call, Future[CallResult]]]) -> None:
        for call, future in pairs:
            task = self._loop.create_task(self._one(call, future))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._aclose()

    async def _one(self, call: Call, future: Future[CallResult]) -> None:
        """Make one call and resolve its future, whatever happens."""
        started = Started()
        try:
            result = await self._call(call, started)
        except BaseException as exc:
            cancelled = isinstance(exc, asyncio.CancelledError)
            detail = "transport closed" if cancelled else safe_detail(exc, self._secret)
            if not cancelled:
                log.error("a call failed unexpectedly (%s)", detail, exc_info=exc)
            latency_ms = (time.monotonic() - started.started) * 1000.0 if started.handed else 0.0
            self._resolve(future, CallResult(TransportError("other", started.handed, detail), started.started_wall,
                                             started.started, latency_ms))
            if not isinstance(exc, Exception):
                raise
            return
        self._resolve(future, result)


#: Given an outcome, how many seconds its chatbot must pause (None: no pause). Runs on the loop.
PauseRule = Callable[[Outcome], float | None]
#: (serial number, seconds): spread a pause to the other processes (Redis). Runs in a thread.
PauseSetter = Callable[[str, float], None]
#: serial number -> whether it is paused elsewhere (Redis). Runs in a thread.
PauseProbe = Callable[[str], bool]


class Pauses:
    """Whether a chatbot's call may start; used on the transport's event loop only."""

    def __init__(self, rule: PauseRule | None, setter: PauseSetter | None, probe: PauseProbe | None) -> None:
        self._rule = rule
        self._setter = setter
        self._probe = probe
        #: serial -> monotonic time until which its calls do not start (a 429 seen here or elsewhere)
        self._until: dict[str, float] = {}
        self._probes: dict[str, asyncio.Future[bool]] = {}  #: serial -> its last probe
        self._probed: dict[str, float] = {}  #: serial -> until when that probe's answer stands
        self._threads = (concurrent.futures.ThreadPoolExecutor(REDIS_THREADS, thread_name_prefix="oaksend-redis")
                         if probe is not None or setter is not None else None)

    def here(self, serial: str) -> bool:
        """Paused by this process (or by a probe's answer, for PROBE_EVERY_S)."""
        return self._until.get(serial, 0.0) > time.monotonic()

    async def elsewhere(self, serial: str, left_s: float) -> bool:
        """Whether another process paused this chatbot. One probe per chatbot at a time, its answer
        shared for PROBE_EVERY_S; a call waits for it at most PROBE_WAIT_S (or its lateness left)."""
        if self._probe is None or self._threads is None:
            return False
        probe = self._probes.get(serial)
        if probe is None or (probe.done() and self._probed.get(serial, 0.0) <= time.monotonic()):
            try:
                probe = asyncio.get_running_loop().run_in_executor(self._threads, self._probe_quietly, serial)
            except RuntimeError:  # closing
                return False
            self._probes[serial] = probe
            self._probed[serial] = time.monotonic() + PROBE_EVERY_S
        if not probe.done():
            await asyncio.wait((probe,), timeout=max(0.0, min(PROBE_WAIT_S, left_s)))
            if not probe.done():
                return False  # Redis slow: the slot was granted, go ahead
        if probe.result():
            self._until[serial] = max(self._until.get(serial, 0.0), time.monotonic() + PROBE_EVERY_S)
            return True
        return False

    def note(self, serial: str, outcome: Outcome) -> None:
        """A 429 (or an auth failure): hold this chatbot's later calls here at once, and elsewhere."""
        if self._rule is None:
            return
        seconds = self._rule(outcome)
        if not seconds:
            return
        self._until[serial] = max(self._until.get(serial, 0.0), time.monotonic() + seconds)
        if self._setter is not None and self._threads is not None:
            with contextlib.suppress(RuntimeError):  # closing
                asyncio.get_running_loop().run_in_executor(self._threads, self._set_quietly, serial, seconds)

    def close(self) -> None:
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)

    def _probe_quietly(self, serial: str) -> bool:
        assert self._probe is not None
        try:
            return bool(self._probe(serial))
        except Exception:  # noqa: BLE001 - Redis away: the slot was granted, go ahead
            return False

    def _set_quietly(self, serial: str, seconds: float) -> None:
        assert self._setter is not None
        with contextlib.suppress(Exception):  # the worker writes the pause to the database too
            self._setter(serial, seconds)
