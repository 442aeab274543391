"""Nothing is lost when processes die or Redis forgets: real processes, real signals, real FLUSHALL."""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
import redis

from tests.support import CHATBOT, free_port, wait_until
from oaksend.worker.clock import utcnow
from oaksend.worker.message.validation import SendRequest

TERMINAL = {"sent", "failed", "unknown", "expired", "cancelled"}


def numbers(block: int, n: int) -> list[str]:
    return [f"+1415{300 + block:03d}{i:04d}" for i in range(n)]


def wait_all_terminal(outbox: Any, ids: list[int], timeout_s: float) -> list[Any]:
    def done() -> list[Any] | None:
        rows = [outbox.get(i) for i in ids]
        return rows if all(r.state in TERMINAL for r in rows) else None

    return wait_until(done, timeout_s, 0.25, f"{len(ids)} messages to end")


def _terminal_supervised(stack: Any, outbox: Any, ids: list[int]) -> list[Any] | None:
    """All rows terminal, restarting a worker process that died meanwhile, as a supervisor would.

    Celery 5.7's consumer can die on a broker connection lost at the wrong moment
    ("Unrecoverable error: AttributeError: 'NoneType' object has no attribute
    'hostname'" in kombu's reconnect). oaksend runs its workers under a supervisor
    (`oaksend run`, the compose restart policy), so a restart is what production does;
    what must hold is that nothing is lost, invented or sent twice silently.
    """
    for i, (name, proc, _) in enumerate(list(stack.procs)):
        if name.startswith("worker") and proc.poll() is not None and not name.endswith("-restarted"):
            stack.procs[i] = (name + "-dead", proc, stack.procs[i][2])
            stack.start_worker(f"{name}-restarted")
    rows = [outbox.get(i) for i in ids]
    return rows if all(r.state in TERMINAL for r in rows) else None


def api_counts(sandbox: Any) -> Counter[str]:
    return Counter(r["to_phone_number"] for r in sandbox.requests())


def check_no_silent_duplicates(rows: list[Any], outbox: Any, sandbox: Any) -> None:
    """A number reached the API more than once only if an attempt of its message was ambiguous."""
    seen = api_counts(sandbox)
    for row in rows:
        attempts = outbox.history(row.id)[0]
        if seen[row.to_phone] > 1:
            assert row.ambiguous >= 1, (row.id, seen[row.to_phone], [a.reason for a in attempts])
        calls = [a for a in attempts if a.reason != "worker_lost"]
        # Every request the API saw has its attempt row (a lost worker's row is the ambiguous stand-in).
        assert len(calls) <= seen[row.to_phone] <= len(attempts), (row.id, seen[row.to_phone], len(attempts))


def test_sigkill_mid_batch_loses_nothing(make_stack: Any, producer: Any, outbox: Any, sandbox: Any) -> None:
    sandbox.configure(latency="100")  # calls take a while, so the kill lands mid-batch
    stack = make_stack(workers=1, concurrency=4, OAKSEND_LEASE_S=3)
    ids = producer.send_many([SendRequest(CHATBOT, p, "kill me") for p in numbers(1, 120)])
    wait_until(lambda: len(sandbox.requests()) >= 10, 20, what="sending to start")
    victim = stack.procs[-1][1]
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    held = outbox.counts()
    assert held.get("sending", 0) + held.get("dispatched", 0) > 0  # it really died holding messages
    stack.start_worker("worker-rescuer", concurrency=4)
    rows = wait_all_terminal(outbox, ids, 60)
    assert Counter(r.state for r in rows) == {"sent": 120}
    check_no_silent_duplicates(rows, outbox, sandbox)


def _redis_server(port: int, directory: Any) -> subprocess.Popen[bytes]:
    """A redis-server of this test's own, without persistence, on a fixed port (so it can restart)."""
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(directory)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)

    def up() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    wait_until(up, 10, what="redis-server")
    client.close()
    return proc


@pytest.mark.parametrize("how,policy", [("flushall", "retry"), ("restart", "retry"), ("restart", "hold")])
def test_redis_lost_loses_nothing(how: str, policy: str, make_stack: Any, producer: Any, outbox: Any,
                                  sandbox: Any, tmp_path: Any) -> None:
    """Redis emptied (FLUSHALL) or restarted without persistence while messages are queued and dispatched.

    Under `hold` nothing may end `unknown`: messages waiting for a rate slot when Redis
    went were never called, and the heartbeats Redis forgot do not make live workers dead.
    """
    port = free_port()
    server = _redis_server(port, tmp_path)
    try:
        sandbox.configure(latency="20")
        # Tasks of 10: 150 messages make 15 tasks, more than the worker holds, so some wait in the broker.
        stack = make_stack(workers=1, concurrency=2, OAKSEND_LEASE_S=3, REDIS_URL=f"redis://127.0.0.1:{port}/0",
                           OAKSEND_AMBIGUOUS_POLICY=policy, OAKSEND_DISPATCH_BATCH_SIZE=10)
        ids = producer.send_many([SendRequest(CHATBOT, p, how) for p in numbers(2, 150)])
        wait_until(lambda: len(sandbox.requests()) >= 10, 20, what="sending to start")
        client = redis.Redis(port=port)
        # There are tasks in the broker to lose (on a loaded machine, look for a moment when some wait).
        queued = wait_until(lambda: sum(client.llen(k) for k in client.scan_iter("oaksend-test-*")), 10, 0.005,
                            "tasks waiting in the broker")
        assert queued > 0
        if how == "flushall":
            client.flushall()  # queued tasks, rate state, the dispatcher's lock: all gone
        else:
            server.kill()
            server.wait(10)
            time.sleep(2.0)  # workers and dispatcher see the connection refused meanwhile
            server = _redis_server(port, tmp_path)
        client.close()
        rows = wait_until(lambda: _terminal_supervised(stack, outbox, ids), 90, 0.25, "150 messages to end")
        assert Counter(r.state for r in rows) == {"sent": 150}
        check_no_silent_duplicates(rows, outbox, sandbox)
        seen = api_counts(sandbox)
        for row in rows:  # nothing invented: the attempt rows are the requests the API saw
            assert [a.reason for a in outbox.history(row.id)[0]] == ["ok"] * seen[row.to_phone], row.id
    finally:
        server.kill()
        server.wait(10)


def test_standby_dispatcher_takes_over(make_stack: Any, producer: Any, outbox: Any, sandbox: Any) -> None:
    stack = make_stack(workers=1)
    standby = stack.start_dispatcher("dispatcher-standby")
    time.sleep(1.0)
    active = stack.procs[0][1]
    first = producer.send(CHATBOT, numbers(3, 1)[0], "before")
    wait_until(lambda: outbox.get(first).state == "sent", 15, what="the first send")
    active.send_signal(signal.SIGKILL)
    active.wait(10)
    killed_at = time.monotonic()
    second = producer.send(CHATBOT, numbers(3, 2)[1], "after")
    wait_until(lambda: outbox.get(second).state == "sent", 20, what="the standby to send")
    assert time.monotonic() - killed_at < 15
    assert standby.poll() is None
    assert "is now active" in stack.log_of("dispatcher-standby")


def test_deadline_passes_while_the_api_is_down(make_stack: Any, producer: Any, outbox: Any, sandbox: Any) -> None:
    sandbox.configure(p_503=1.0)
    make_stack(OAKSEND_MAX_ATTEMPTS=1000)
    deadline = utcnow() + timedelta(seconds=3)
    ids = [producer.send(CHATBOT, p, "down", deadline=deadline) for p in numbers(4, 5)]
    rows = wait_all_terminal(outbox, ids, 20)
    assert {r.state for r in rows} == {"expired"}
    late = [r for r in sandbox.requests() if r["received_at"] > deadline.timestamp() + 0.05]
    assert late == []  # never sent after the deadline
    assert all(r.sent_at is None for r in rows)


def test_sigterm_leaves_nothing_in_sending(make_stack: Any, producer: Any, outbox: Any, sandbox: Any) -> None:
    sandbox.configure(latency="50")
    stack = make_stack(workers=1, concurrency=4, OAKSEND_LEASE_S=3)
    ids = producer.send_many([SendRequest(CHATBOT, p, "term") for p in numbers(5, 100)])
    wait_until(lambda: len(sandbox.requests()) >= 10, 20, what="sending to start")
    worker = stack.procs[-1][1]
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(60) == 0
    counts = outbox.counts()
    assert counts.get("sending", 0) == 0  # it finished what it was sending
    stack.start_worker("worker-next", concurrency=4)
    rows = wait_all_terminal(outbox, ids, 60)
    assert Counter(r.state for r in rows) == {"sent": 100}
    assert all(r.ambiguous == 0 for r in rows)  # a graceful stop makes no ambiguous outcome
    assert max(api_counts(sandbox).values()) == 1
