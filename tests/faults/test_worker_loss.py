"""A worker process killed with SIGKILL: its messages come back through its missing heartbeat
(not after the call lease), and the audit stays one to one with the API.

- killed while its messages wait for their rate slots: they were certainly not called,
  so they go back to pending with no attempt at all;
- killed with calls out: each call the API saw has its attempt row (the rescue's
  ambiguous "worker_lost" stands in for the outcome the worker never wrote), and a
  stand-in is written only for a message marked calling, whose request may have left
  (marked a moment before its connection opened, it may not have reached the API).
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from typing import Any

from oaksend.worker.clock import utcnow
from oaksend.worker.message.validation import SendRequest
from tests.support import CHATBOT, wait_until

TERMINAL = {"sent", "failed", "unknown", "expired", "cancelled"}


def numbers(block: int, n: int) -> list[str]:
    return [f"+1415{600 + block:03d}{i:04d}" for i in range(n)]


def wait_all_terminal(outbox: Any, ids: list[int], timeout_s: float) -> list[Any]:
    def done() -> list[Any] | None:
        rows = [outbox.get(i) for i in ids]
        return rows if all(r.state in TERMINAL for r in rows) else None

    return wait_until(done, timeout_s, 0.25, f"{len(ids)} messages to end")


def assert_one_to_one(rows: list[Any], outbox: Any, sandbox: Any) -> list[list[Any]]:
    """Every message's attempt rows are exactly the requests the API saw for it."""
    seen = Counter(r["to_phone_number"] for r in sandbox.requests())
    histories = []
    for row in rows:
        history = outbox.history(row.id)[0]
        assert len(history) == seen[row.to_phone], (row.id, seen[row.to_phone], [a.reason for a in history])
        assert [a.number for a in history] == list(range(1, len(history) + 1))
        histories.append(history)
    return histories


def kill_when(stack: Any, predicate: Any, timeout_s: float) -> Any:
    wait_until(predicate, timeout_s, 0.005, "the moment to kill")
    victim = stack.procs[-1][1]
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    return time.monotonic()


def test_killed_while_waiting_for_rate_slots_invents_no_attempt(make_stack: Any, producer: Any, outbox: Any,
                                                                 sandbox: Any) -> None:
    # 1/s with slots reserved up to 9 s ahead: a batch of 10 waits seconds for its slots.
    outbox.set_limit(CHATBOT, utcnow(), rate_per_s=1, burst=1, segments_per_s=None)
    stack = make_stack(workers=1, concurrency=2, OAKSEND_MAX_TOKEN_WAIT_S=9, OAKSEND_DISPATCH_LOOKAHEAD_S=9,
                       OAKSEND_DISPATCH_BATCH_SIZE=10)
    ids = producer.send_many([SendRequest(CHATBOT, p, "slot wait") for p in numbers(1, 10)])
    # Right after a request reached the API, the next slot is about 1 s away and its mark 0.9 s: the
    # kill lands while the worker waits, even on a loaded machine (a kill between a mark and its
    # request, a few milliseconds apart, is an ambiguous call: the other test covers it).
    killed_at = kill_when(stack, lambda: len(sandbox.requests()) >= 2, 30)
    held = [outbox.get(i) for i in ids]
    waiting = [r for r in held if r.state == "sending" and r.calling_at is None]
    assert waiting, [r.state for r in held]  # it really died holding messages it had not called
    stack.start_worker("worker-next", concurrency=2)
    wait_until(lambda: outbox.counts().get("sending", 0) == 0, 60, 0.1, "the dead worker's rows to come back")
    recovered_s = time.monotonic() - killed_at
    rows = wait_all_terminal(outbox, ids, 60)
    assert Counter(r.state for r in rows) == {"sent": 10}
    histories = assert_one_to_one(rows, outbox, sandbox)
    by_id = dict(zip(ids, histories))
    for r in waiting:
        assert [a.reason for a in by_id[r.id]] == ["ok"]  # one real call, no stand-in before it
        assert outbox.get(r.id).lost == 1
    # Taken back because the heartbeat stopped, far sooner than the call lease (over 300 s here).
    assert recovered_s < 60


def test_killed_with_calls_out_leaves_one_attempt_per_call(make_stack: Any, producer: Any, outbox: Any,
                                                            sandbox: Any) -> None:
    sandbox.configure(latency="2000")  # every call is out for 2 s: the kill lands mid-call
    stack = make_stack(workers=1, concurrency=2, OAKSEND_READ_TIMEOUT_S=5)
    ids = producer.send_many([SendRequest(CHATBOT, p, "calls out") for p in numbers(2, 40)])
    killed_at = kill_when(stack, lambda: len(sandbox.requests()) >= 10, 30)
    in_flight = [r for r in (outbox.get(i) for i in ids) if r.state == "sending" and r.calling_at is not None]
    assert in_flight
    sandbox.configure(latency="0")
    stack.start_worker("worker-next", concurrency=2)
    wait_until(lambda: not any(outbox.get(r.id).state == "sending" and outbox.get(r.id).attempts == 0
                               for r in in_flight), 60, 0.1, "the calls out to be rescued")
    recovered_s = time.monotonic() - killed_at
    rows = wait_all_terminal(outbox, ids, 60)
    assert {r.state for r in rows} == {"sent"}
    seen = Counter(r["to_phone_number"] for r in sandbox.requests())
    marked = {r.id for r in in_flight}
    for row in rows:
        history = outbox.history(row.id)[0]
        real = [a for a in history if a.reason != "worker_lost"]
        assert len(real) <= seen[row.to_phone] <= len(history), (row.id, seen[row.to_phone], len(history))
        assert [a.number for a in history] == list(range(1, len(history) + 1))
        lost = [a for a in history if a.reason == "worker_lost"]
        assert len(lost) == (1 if row.id in marked else 0), row.id
        if row.id in marked:
            assert history[0].reason == "worker_lost" and row.ambiguous == 1
    assert recovered_s < 60  # the heartbeat, not the call lease (over 300 s here)
