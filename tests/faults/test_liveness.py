"""Liveness and exactness under real clocks, stalls and networks (issue 17; DESIGN.md "Liveness and exactness").

Each run starts real processes (a dispatcher and two workers, tests.faults.harness.FaultStack)
on PostgreSQL and a redis-server of its own, streams 600-900 messages over ten chatbots to the
sandbox answering in 200 ms, and injects one fault in the middle of the stream (the faults on one
worker wait, 4 s in, until it has requests out at the API):

- the two workers' wall clocks 60 s ahead and 60 s behind for the whole run (libfaketime);
- Redis stalled by `DEBUG SLEEP` from another connection: 10 s (longer than the processes'
  5 s socket timeouts: the stall ends in errors) and 4 s (it ends without any error);
- one worker paused (SIGSTOP) for 10 s, then resumed (SIGCONT);
- one worker cut from Redis for 10 s by a TCP proxy of the test's own, its calls and the
  database going on: the connections stalled (no byte moves, nothing is closed), or reset;
- two groups of each of 60 fresh chatbots answered the chatbot's first 429 at about the same moment;
- every PostgreSQL connection of the workers terminated while a group with a 429 is recorded.

No worker dies in these runs, so each must end with every message `sent`, one attempt row per
request the API saw, no number requested beyond what the run itself caused (a scripted 429 is
one request more), and no `worker_lost` attempt (counting the stand-ins a late answer overwrote).
The control run (no fault) shows the harness itself leaves these figures at 0. A last run
SIGKILLs a worker: its unmarked messages are sent by the other within 5 s, its marked ones judged
ambiguous within the call deadline plus 5 s, and no more numbers are texted twice than its
requests in flight at the kill.

Each run prints a summary line (tests/faults/report.py). Run with `make chaos`.
"""

from __future__ import annotations

import math
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from oaksend.worker.clock import utcnow
from oaksend.worker.message.validation import SendRequest
from tests.faults.harness import (
    Audit,
    FaultStack,
    Stream,
    TcpProxy,
    answered_unwritten,
    attempt_rows,
    audit,
    blip_when_written,
    chatbots,
    faketime_env,
    measured_offset_s,
    message_rows,
    phone,
    require_faketime,
    stall_redis,
    wait_drained,
    wait_for_calls_out,
)
from tests.support import private_redis_server, reset_pg, stack_env, wait_until

pytestmark = pytest.mark.chaos

LATENCY_MS = 200
#: The stream: 900 messages over 10 chatbots in 15 s, 60 at a time every second; each chatbot is
#: limited to 10/s, so its 6 of each second are sent over 0.5 s, as one or two groups whose early
#: answers arrive while their later calls are still out. The fault starts 4 s in and lasts 10 s.
STREAM_TOTAL = 900
STREAM_PER_S = 60.0
STREAM_TICK_S = 1.0
BOTS = 10
BOT_RATE_PER_S = 10.0
FAULT_AT_S = 4.0
FAULT_S = 10.0
#: After the last message is enqueued, how long the outbox may take to drain.
DRAIN_S = 60.0
WORKER_CONCURRENCY = 8
#: Skewed clocks: no message may wait longer than this from its enqueue to its request. A time written
#: on a skewed clock (a hand-back or retry due a minute late, a worker noticed dead a minute late) waits
#: 60 s or more. Under libfaketime the two skewed workers drain the 900 messages in about 45 s instead
#: of 15 (up to 33 s from enqueue to request, against 2 s in the control run); not yet told apart from
#: the library's own cost on every clock read (an open question in the closing note).
SKEW_MAX_DELAY_S = 45.0
#: SIGKILL run: an answer the API sent this long before the kill still counts as in flight.
IN_FLIGHT_GRACE_S = 0.05
#: A call lease of 1 + (1 + 1) + 5 + (2 + 2) + 30 = 42 s, so that an outcome never written shows up
#: within the run (the 429 and blip runs): the test stacks' 1 s HTTP timeouts, short database bounds.
SHORT_LEASE = {"OAKSEND_RECORD_RETRY_S": 5, "OAKSEND_CONNECT_TIMEOUT_S": 1, "OAKSEND_READ_TIMEOUT_S": 1,
               "OAKSEND_DB_CONNECT_TIMEOUT_S": 2, "OAKSEND_DB_STATEMENT_TIMEOUT_S": 2}
ZERO = {"not_sent": 0, "attempt_rows_not_requests": 0, "numbers_requested_again": 0, "worker_lost_attempts": 0}


@pytest.fixture
def database_url(pg_database: str) -> str:
    """PostgreSQL only: the production store, and the one the 429 race and the blip need."""
    from oaksend.migrations.runner import upgrade

    reset_pg(pg_database)
    upgrade(pg_database)
    return pg_database


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[str]:
    """A redis-server of this run's own (DEBUG allowed): stalls and cuts reach no other test."""
    with private_redis_server(tmp_path) as url:
        yield url


@pytest.fixture
def stacks(sandbox: Any, redis_server: str) -> Iterator[list[FaultStack]]:
    """The runs' stacks, stopped before the sandbox and Redis they use."""
    made: list[FaultStack] = []
    yield made
    for stack in made:
        for _, proc, _ in stack.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)  # a paused worker must be able to stop
        stack.stop()


@pytest.fixture
def start_stack(database_url: str, sandbox: Any, tmp_path: Path, redis_server: str,
                stacks: list[FaultStack]) -> Callable[..., FaultStack]:
    """A dispatcher and workers worker0, worker1 on this run's Redis; `worker_env` adds environment per worker."""

    def start(worker_env: dict[str, dict[str, str]] | None = None, workers: int = 2, **overrides: Any) -> FaultStack:
        sandbox.configure(latency=str(LATENCY_MS))
        # The production timeouts (the other tests' stacks use 1 s): a worker paused or cut off for
        # 10 s is within its calls' whole-exchange deadline (20 s), as it would be in production.
        overrides = {"OAKSEND_CONNECT_TIMEOUT_S": 5, "OAKSEND_READ_TIMEOUT_S": 15, **overrides}
        env = stack_env(database_url, sandbox, queue=f"oaksend-test-{uuid.uuid4().hex[:8]}", REDIS_URL=redis_server,
                        **overrides)
        names = [f"worker{i}" for i in range(workers)]
        process_env = {name: {"PGAPPNAME": f"oaksend-{name}"} for name in ["dispatcher", *names]}
        for name, extra in (worker_env or {}).items():
            process_env[name] = {**process_env.get(name, {}), **extra}
        stack = FaultStack(env, tmp_path, process_env=process_env)
        stacks.append(stack)
        stack.start_dispatcher()
        for name in names:
            stack.start_worker(name, concurrency=WORKER_CONCURRENCY)
        stack.wait_ready()
        return stack

    return start


def start_stream(run: int, producer: Any, outbox: Any, label: str, total: int = STREAM_TOTAL) -> Stream:
    """The run's stream over its ten chatbots, each limited to BOT_RATE_PER_S (burst 1)."""
    bots = chatbots(run, BOTS)
    for bot in bots:
        outbox.set_limit(bot, utcnow(), rate_per_s=BOT_RATE_PER_S, burst=1, segments_per_s=None)
    return Stream(producer, bots, block=700 + 10 * run, total=total, per_s=STREAM_PER_S, label=label,
                  tick_s=STREAM_TICK_S).start()


def run_stream(name: str, run: int, producer: Any, outbox: Any, sandbox: Any,
               fault: Callable[[Stream], str]) -> Audit:
    """Stream the run's messages, call `fault` (it returns a note for the summary), drain, audit."""
    stream = start_stream(run, producer, outbox, name)
    note = fault(stream)
    ids = stream.join()
    wait_drained(outbox, ids, DRAIN_S)
    return audit(name, outbox, sandbox, ids, stream.elapsed(), note=note)


def assert_exact(result: Audit, stack: FaultStack, **extra: int) -> None:
    """Every message sent; attempt rows = requests; nothing requested again; no worker_lost attempt
    (and the `extra` figures 0); nobody died."""
    assert {**result.figures(), **extra} == {**ZERO, **dict.fromkeys(extra, 0)}, result.details()
    for name, proc, _ in stack.procs:
        assert proc.poll() is None, f"{name} exited with {proc.returncode}:\n{stack.log_of(name)[-3000:]}"


# -- the control: no fault ----------------------------------------------------------------------
def test_no_fault_control(start_stack: Callable[..., FaultStack], producer: Any, outbox: Any, sandbox: Any) -> None:
    stack = start_stack()

    def nothing(stream: Stream) -> str:
        return "no fault"

    assert_exact(run_stream("liveness control", 0, producer, outbox, sandbox, nothing), stack)


# -- 1. worker clocks 60 s ahead and 60 s behind -----------------------------------------------
def test_worker_clocks_sixty_seconds_off(start_stack: Callable[..., FaultStack], producer: Any, outbox: Any,
                                         sandbox: Any, tmp_path: Path) -> None:
    library = require_faketime()
    ahead, behind = faketime_env(library, "+60s", tmp_path), faketime_env(library, "-60s", tmp_path)
    offsets = measured_offset_s(ahead), measured_offset_s(behind)
    # The harness really moves a process's clock (and its time.sleep works under it).
    assert 55 < offsets[0] < 65 and -65 < offsets[1] < -55, offsets
    stack = start_stack(worker_env={"worker0": ahead, "worker1": behind})

    def skewed(stream: Stream) -> str:
        return f"worker0 clock {offsets[0]:+.0f}s, worker1 clock {offsets[1]:+.0f}s for the whole run"

    result = run_stream("clocks +60s/-60s", 1, producer, outbox, sandbox, skewed)
    # Exact whatever the clocks say: all sent, once, no worker judged lost. How late the skewed
    # workers send is printed (max_delay_s), not asserted: under libfaketime they drain the stream in
    # 45 to 55 s instead of 15, which is not yet told apart from the library's cost (see SKEW_MAX_DELAY_S).
    late = sum(1 for d in result.delays.values() if d > SKEW_MAX_DELAY_S)
    print(f"clocks +60s/-60s: {late} messages sent over {SKEW_MAX_DELAY_S:g}s after their enqueue")
    assert_exact(result, stack)


# -- 2. Redis stalled ----------------------------------------------------------------------------
@pytest.mark.parametrize("seconds", [4.0, FAULT_S])
def test_redis_stalled(seconds: float, start_stack: Callable[..., FaultStack], producer: Any, outbox: Any,
                       sandbox: Any, redis_server: str) -> None:
    """10 s outlasts the 5 s socket timeouts (the stall ends in errors); 4 s does not (no error at all)."""
    stack = start_stack()

    def stall(stream: Stream) -> str:
        stream.sleep_until(FAULT_AT_S)
        blocked = stall_redis(redis_server, seconds)
        assert blocked >= seconds - 0.5, blocked  # Redis really stood still
        return f"DEBUG SLEEP {seconds:g} at {FAULT_AT_S:g}s, blocked {blocked:.1f}s"

    assert_exact(run_stream(f"redis stalled {seconds:g}s", 2 if seconds == FAULT_S else 8, producer, outbox, sandbox,
                            stall), stack)


# -- 3. a worker paused (SIGSTOP) for 10 s -----------------------------------------------------
def test_worker_paused_ten_seconds(start_stack: Callable[..., FaultStack], producer: Any, outbox: Any,
                                   sandbox: Any) -> None:
    stack = start_stack()
    victim = stack.proc("worker1")

    def pause(stream: Stream) -> str:
        stream.sleep_until(FAULT_AT_S)
        held = wait_for_calls_out(outbox, sandbox, victim.pid, 10)  # paused with its requests at the API
        victim.send_signal(signal.SIGSTOP)
        at = stream.elapsed()
        try:
            time.sleep(FAULT_S)
        finally:
            victim.send_signal(signal.SIGCONT)
        return (f"worker1 SIGSTOP for {FAULT_S:g}s at {at:.1f}s holding {held[0]} marked calling, "
                f"{held[1]} of them at the API")

    assert_exact(run_stream("worker paused 10s", 3, producer, outbox, sandbox, pause), stack)


# -- 4. a worker cut from Redis for 10 s -------------------------------------------------------
@pytest.fixture
def redis_proxy(redis_server: str) -> Iterator[TcpProxy]:
    """A TCP proxy to this run's Redis; requested before `start_stack`, so the processes stop first."""
    host_port = redis_server.split("://", 1)[1].split("/", 1)[0]
    proxy = TcpProxy("127.0.0.1", int(host_port.rsplit(":", 1)[1]))
    yield proxy
    proxy.close()


@pytest.mark.parametrize("mode", ["stall", "reset"])
def test_worker_cut_from_redis_ten_seconds(mode: str, redis_proxy: TcpProxy, start_stack: Callable[..., FaultStack],
                                           producer: Any, outbox: Any, sandbox: Any, redis_server: str) -> None:
    proxy = redis_proxy
    # Only worker1 reaches Redis (heartbeat, broker, rate limits, pauses) through the proxy.
    stack = start_stack(worker_env={"worker1": {"REDIS_URL": proxy.url_for(redis_server)}})

    def cut(stream: Stream) -> str:
        stream.sleep_until(FAULT_AT_S)
        held = wait_for_calls_out(outbox, sandbox, stack.proc("worker1").pid, 10)  # cut with requests at the API
        n = proxy.cut(mode)
        at = stream.elapsed()
        assert n > 0, "worker1 had no Redis connection through the proxy to cut"
        try:
            time.sleep(FAULT_S)
        finally:
            proxy.resume()
        return (f"worker1 cut from Redis ({mode}) for {FAULT_S:g}s at {at:.1f}s holding {held[0]} marked calling, "
                f"{held[1]} of them at the API: {n} connections cut, {proxy.accepted} accepted in all")

    assert_exact(run_stream(f"worker cut from redis ({mode}) 10s", 4 if mode == "stall" else 5, producer, outbox,
                            sandbox, cut), stack)


# -- 5. two groups hit one chatbot's first 429 at the same moment --------------------------------
def test_two_groups_hit_a_chatbots_first_429_together(start_stack: Callable[..., FaultStack], producer: Any,
                                                      outbox: Any, sandbox: Any) -> None:
    """Rounds of fresh chatbots (no chatbots row yet: the first 429 creates its pause), each given
    10 messages that the dispatcher publishes as two tasks of 5; the first message of each task is
    answered 429, so two groups record the chatbot's first pause at about the same moment.

    SHORT_LEASE shortens the call lease to 42 s, so that an outcome that was never
    written is taken back by the lease within the run (as a `worker_lost` attempt) instead of after 333 s.
    """
    rounds, per_round, group = 10, 6, 5
    stack = start_stack(OAKSEND_DISPATCH_BATCH_SIZE=group, **SHORT_LEASE)
    scripted: dict[str, list[str]] = {}  # chatbot -> its two numbers answered 429
    ids: list[int] = []
    started = time.monotonic()
    for r in range(rounds):
        time.sleep(max(0.0, started + 1.5 * r - time.monotonic()))
        reqs = []
        for b, bot in enumerate(chatbots(100 + r, per_round)):
            for k in range(2 * group):
                number = phone(750, (r * per_round + b) * 2 * group + k)
                if k % group == 0:  # the first message of each task
                    sandbox.script(number, ["429"])
                    scripted.setdefault(bot, []).append(number)
                reqs.append(SendRequest(bot, number, f"race {r}.{b}.{k}"))
        ids += producer.send_many(reqs)
    wait_drained(outbox, ids, DRAIN_S)
    records = sandbox.requests()
    first_429 = {r["to_phone_number"]: r["received_at"] for r in sorted(records, key=lambda r: r["seq"])
                 if r["status"] == 429}
    gaps = sorted(abs(first_429[a] - first_429[b]) for a, b in scripted.values() if a in first_429 and b in first_429)
    # Both 429s out at once: the second reached the API before the first was answered.
    together = sum(1 for g in gaps if g < LATENCY_MS / 1000)
    collisions = stack.logs().count("IntegrityError")
    twice = {n for numbers in scripted.values() for n in numbers}
    result = audit("first 429 of two groups at once", outbox, sandbox, ids, time.monotonic() - started,
                   expected_requests=lambda n: 2 if n in twice else 1,
                   note=f"{together}/{len(scripted)} chatbots had both 429s out at once (median gap "
                        f"{1000 * gaps[len(gaps) // 2] if gaps else float('nan'):.0f} ms); "
                        f"'IntegrityError' in worker logs: {collisions}")
    # The harness really made the groups race: for many chatbots both 429s were out together.
    assert together >= len(scripted) // 3, result.line
    assert_exact(result, stack)


# -- 6. a database blip while a group with a 429 is recorded ------------------------------------
def test_database_blip_while_a_group_with_a_429_is_recorded(start_stack: Callable[..., FaultStack], producer: Any,
                                                            outbox: Any, sandbox: Any) -> None:
    """A stream over ten chatbots; 3 s in, 40 messages of one more chatbot go out as one group whose
    first message is answered 429. As soon as the first of that group's attempt rows is committed
    (the group is being recorded), every PostgreSQL connection of the workers is terminated once."""
    stack = start_stack(**SHORT_LEASE)
    stream = start_stream(6, producer, outbox, "blip", total=600)
    stream.sleep_until(3.0)
    bot = chatbots(200, 1)[0]
    numbers = [phone(790, i) for i in range(40)]
    sandbox.script(numbers[0], ["429"])
    group_ids = producer.send_many([SendRequest(bot, n, f"blip group {i}") for i, n in enumerate(numbers)])
    at_blip, killed = blip_when_written(outbox.engine.url, group_ids, "oaksend-worker", 30)
    assert killed > 0  # the blip really cut the workers' connections
    ids = stream.join() + group_ids
    wait_drained(outbox, ids, DRAIN_S)
    result = audit("database blip while recording a 429 group", outbox, sandbox, ids, stream.elapsed(),
                   expected_requests=lambda n: 2 if n == numbers[0] else 1,
                   note=f"{killed} worker connections terminated after {at_blip}/{len(group_ids)} of the group's "
                        "attempt rows were written")
    assert_exact(result, stack)


# -- a worker that really dies -----------------------------------------------------------------
def test_worker_sigkilled_mid_stream(start_stack: Callable[..., FaultStack], producer: Any, outbox: Any,
                                     sandbox: Any) -> None:
    """SIGKILL one worker 4 s into the stream. Its claimed messages not marked calling were certainly
    not sent: another worker sends them within 5 s. Those marked calling are judged (an ambiguous
    `worker_lost` attempt) within the call deadline + 5 s. Numbers texted twice are at most its
    requests in flight at the kill (sent, not yet answered); answers it had read are not among them."""
    stack = start_stack()
    victim = stack.proc("worker1")
    suffix = f":{victim.pid}"
    stream = start_stream(7, producer, outbox, "kill")
    stream.sleep_until(FAULT_AT_S)
    wait_for_calls_out(outbox, sandbox, victim.pid, 10)  # killed with its requests at the API
    # The hardest moment, if it comes within 3 s: answers the API sent over 0.1 s ago not written yet.
    # Answers are written as they arrive, so that moment may never come: then any moment at which the
    # worker holds claimed messages.
    hard = time.monotonic() + 3.0

    def holding() -> bool:
        return any(r.state == "sending" and str(r.claimed_by).endswith(suffix)
                   for r in message_rows(outbox, list(stream.ids)))

    while ((answered_unwritten(outbox, sandbox, victim.pid, 0.1) < 3 and time.monotonic() < hard)
           or not holding()) and time.monotonic() < hard + 10:
        time.sleep(0.01)
    os.kill(victim.pid, signal.SIGKILL)
    killed_wall, killed_at = time.time(), time.monotonic()
    victim.wait(10)
    held = [r for r in message_rows(outbox, list(stream.ids))
            if r.state == "sending" and str(r.claimed_by).endswith(suffix)]
    unmarked = {r.id for r in held if r.calling_at is None}
    marked = {r.id for r in held if r.calling_at is not None}
    held_phones = {r.to_phone for r in held}
    assert held, "the worker held no claimed message when it was killed"

    judged_after: dict[int, float] = {}

    def judged() -> bool:
        now = time.monotonic() - killed_at
        for r in message_rows(outbox, sorted(marked - judged_after.keys())):
            if not (r.state == "sending" and str(r.claimed_by).endswith(suffix)):
                judged_after[r.id] = now
        return len(judged_after) == len(marked)

    wait_until(judged, 60, 0.1, "the killed worker's marked messages to be judged")
    ids = stream.join()
    wait_drained(outbox, ids, DRAIN_S)
    records = sandbox.requests()
    # In flight: reached the API before the kill, answered after it, or in the last IN_FLIGHT_GRACE_S
    # before it (an answer on its way: read, but no write can land in that time).
    in_flight = sum(1 for r in records if r["to_phone_number"] in held_phones and r["received_at"] <= killed_wall
                    < r["received_at"] + r["delay_ms"] / 1000.0 + IN_FLIGHT_GRACE_S)
    result = audit("worker SIGKILLed", outbox, sandbox, ids, stream.elapsed(),
                   note=f"killed at {FAULT_AT_S:g}s holding {len(unmarked)} unmarked, {len(marked)} marked; "
                        f"{in_flight} of its requests in flight")
    rows = {r.id: r for r in message_rows(outbox, ids)}
    history = attempt_rows(outbox, ids)
    per_phone = Counter(r["to_phone_number"] for r in records)
    deadline_s = float(stack.env["OAKSEND_CONNECT_TIMEOUT_S"]) + float(stack.env["OAKSEND_READ_TIMEOUT_S"])
    sent_late = {i: rows[i].sent_at.timestamp() - killed_wall for i in unmarked if rows[i].sent_at is not None}

    def one_to_one(message_id: int) -> bool:
        """Each request has its attempt row; a marked message of the dead worker may have one
        stand-in for a request that never left (marked a moment before it would have)."""
        attempts = history.get(message_id, [])
        seen = per_phone[rows[message_id].to_phone]
        if message_id in marked:
            return len([a for a in attempts if a.reason != "worker_lost"]) <= seen <= len(attempts)
        return seen == len(attempts)

    problems = {
        "not_sent": sum(1 for r in rows.values() if r.state != "sent"),
        "unmarked_not_sent_within_5s": sum(1 for i in unmarked if sent_late.get(i, math.inf) > 5.0),
        "unmarked_not_sent_once_by_another": sum(
            1 for i in unmarked if [str(a.worker).endswith(suffix) for a in history.get(i, [])] != [False]),
        "marked_judged_after_deadline_plus_5s": sum(1 for s in judged_after.values() if s > deadline_s + 5.0),
        "marked_without_one_worker_lost": sum(
            1 for i in marked if [a.reason for a in history.get(i, [])].count("worker_lost") != 1),
        "worker_lost_on_others": sum(1 for i, attempts in history.items() if i not in marked
                                     for a in attempts if a.reason == "worker_lost"),
        "attempt_rows_not_requests": sum(1 for i in rows if not one_to_one(i)),
        "texted_twice_beyond_in_flight": max(0, len(result.texted_twice) - in_flight),
    }
    details = (f"{result.line}\n  unmarked sent after (s): {sorted(round(s, 2) for s in sent_late.values())}\n"
               f"  marked judged after (s): {sorted(round(s, 2) for s in judged_after.values())}\n"
               f"  texted twice: {len(result.texted_twice)}, in flight at the kill: {in_flight}")
    assert problems == dict.fromkeys(problems, 0), details
    for name, proc, _ in stack.procs:
        if name != "worker1":
            assert proc.poll() is None, f"{name} exited with {proc.returncode}"
