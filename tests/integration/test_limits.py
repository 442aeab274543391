"""Per-chatbot limits hold across worker processes; 429 and 401 pause a chatbot; chatbots are served fairly.

The sandbox enforces the same limit server-side and counts violations, so a
limit that several workers multiplied would show up there.
"""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import timedelta
from typing import Any

from bench.limits import max_in_window
from tests.support import ROOT, wait_until
from oaksend.worker.clock import utcnow

BOT_A = "aaaa0000000000000000000000000001"
BOT_B = "bbbb0000000000000000000000000002"
BOT_BIG = "cccc0000000000000000000000000003"
BOT_SMALL = "dddd0000000000000000000000000004"


def phones(prefix: int, n: int) -> list[str]:
    return [f"+1415{200 + prefix:03d}{i:04d}" for i in range(n)]


def arrivals(sandbox: Any, serial: str) -> list[float]:
    return sorted(r["received_at"] for r in sandbox.requests() if r["serial_number"] == serial)


def wait_sent(outbox: Any, ids: list[int], timeout_s: float) -> list[Any]:
    def done() -> list[Any] | None:
        rows = [outbox.get(i) for i in ids]
        return rows if all(r.state == "sent" for r in rows) else None

    return wait_until(done, timeout_s, 0.2, f"{len(ids)} messages to be sent")


def test_limit_holds_across_worker_processes(make_stack: Any, producer: Any, outbox: Any, sandbox: Any) -> None:
    rate, burst = 5.0, 1
    outbox.set_limit(BOT_A, utcnow(), rate_per_s=rate, burst=burst, segments_per_s=None)
    # The API sees our pacing through a network: allow it 50 ms of arrival jitter before it
    # calls a request a violation (the window bounds below are checked without any slack).
    sandbox.configure(limits=f"{BOT_A}={rate:g}:{burst}", limit_slack_ms=50)
    make_stack(workers=3, concurrency=4)
    ids = [producer.send(BOT_A, p, "limited") for p in phones(1, 30)]
    rows = wait_sent(outbox, ids, 30)

    times = arrivals(sandbox, BOT_A)
    assert len(times) == 30
    # GCRA bound, measured at the API: any window of length T holds at most rate*T + burst.
    for window_s in (0.5, 1.0, 2.0):
        assert max_in_window(times, window_s) <= rate * window_s + burst, window_s
    stats = sandbox.stats()["chatbots"][BOT_A]
    assert stats["violations"] == 0 and stats["max_1s"] <= rate + burst
    # The whole run took as long as the limit says: 30 messages at 5/s is about 6 s.
    assert times[-1] - times[0] >= (30 - burst) / rate * 0.95
    # Throttling is not failure: every message was sent with exactly one attempt.
    assert all(r.attempts == 1 and r.failures == 0 for r in rows)


def test_a_waiting_backlog_costs_no_writes(make_stack: Any, producer: Any, outbox: Any, sandbox: Any) -> None:
    outbox.set_limit(BOT_A, utcnow(), rate_per_s=2, burst=1, segments_per_s=None)
    make_stack(workers=1, concurrency=4, OAKSEND_DISPATCH_LOOKAHEAD_S=1)
    from oaksend.worker.message.validation import SendRequest

    ids = producer.send_many([SendRequest(BOT_A, p, "backlog") for p in phones(2, 200)])
    time.sleep(3.0)
    rows = [outbox.get(i) for i in ids]
    touched = [r for r in rows if r.updated_at != r.created_at]
    sent = [r for r in rows if r.state == "sent"]
    assert 3 <= len(sent) <= 10  # about 2/s plus the burst
    # Only messages that were sent or are in flight were written; the backlog waited untouched.
    assert len(touched) <= len(sent) + 2 * 1 + 1 + 4, len(touched)


def test_429_pauses_the_whole_chatbot_then_resumes(make_stack: Any, producer: Any, outbox: Any,
                                                   sandbox: Any) -> None:
    outbox.set_limit(BOT_B, utcnow(), rate_per_s=10, burst=1, segments_per_s=None)
    numbers = phones(3, 8)
    sandbox.configure(retry_after=1)
    sandbox.script(numbers[2], ["429"])
    make_stack(workers=2, concurrency=4)
    ids = [producer.send(BOT_B, p, "pause me") for p in numbers]
    rows = wait_sent(outbox, ids, 30)

    records = sorted((r for r in sandbox.requests() if r["serial_number"] == BOT_B), key=lambda r: r["received_at"])
    (throttled,) = [r for r in records if r["status"] == 429]
    after = [r["received_at"] - throttled["received_at"] for r in records if r["received_at"] > throttled["received_at"]]
    # Nothing of that chatbot reached the API during the Retry-After second (a send already
    # under way when the 429 arrived may land within a few milliseconds).
    assert all(gap < 0.05 or gap >= 0.9 for gap in after), after
    assert any(gap >= 0.9 for gap in after)
    by_phone = {r.to_phone: r for r in rows}
    paused = by_phone[numbers[2]]
    assert paused.attempts == 2 and paused.failures == 0  # the 429 did not use the retry budget


def test_401_pauses_the_chatbot_and_operators_see_why(make_stack: Any, producer: Any, outbox: Any,
                                                      sandbox: Any) -> None:
    stack = make_stack()
    numbers = phones(4, 5)
    sandbox.script(numbers[0], ["401"])
    first = producer.send(BOT_B, numbers[0], "auth")
    wait_until(lambda: outbox.get(first).state == "failed", 15, what="the 401")
    rest = [producer.send(BOT_B, p, "auth") for p in numbers[1:]]
    time.sleep(1.0)
    assert all(outbox.get(i).state == "pending" and outbox.get(i).attempts == 0 for i in rest)
    assert sandbox.requests_to(numbers[1]) == []

    cli = [sys.executable, "-m", "oaksend.worker.cli"]
    shown = subprocess.run([*cli, "chatbot", "show", BOT_B], env=stack.env, cwd=ROOT, capture_output=True,
                           text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "True" in shown.stdout and "http_401" in shown.stdout and "NEWOAKS_API_KEY" in shown.stdout

    resumed = subprocess.run([*cli, "chatbot", "resume", BOT_B], env=stack.env, cwd=ROOT, capture_output=True,
                             text=True, timeout=60)
    assert resumed.returncode == 0, resumed.stderr
    wait_sent(outbox, rest, 15)


def test_a_big_backlog_does_not_hold_up_another_chatbot(make_stack: Any, producer: Any, outbox: Any,
                                                        sandbox: Any) -> None:
    from oaksend.worker.message.validation import SendRequest

    now = utcnow()
    outbox.set_limit(BOT_BIG, now, rate_per_s=20, burst=2, segments_per_s=None)
    outbox.set_limit(BOT_SMALL, now, rate_per_s=20, burst=2, segments_per_s=None)
    make_stack(workers=2, concurrency=4)
    producer.send_many([SendRequest(BOT_BIG, p, "backlog") for p in phones(5, 400)])
    time.sleep(1.5)  # the backlog is flowing at its limit
    small_ids = []
    for p in phones(6, 6):
        small_ids.append(producer.send(BOT_SMALL, p, "quick"))
        time.sleep(0.2)
    rows = wait_sent(outbox, small_ids, 15)
    latencies = [(r.sent_at - r.created_at).total_seconds() for r in rows]
    # One dispatch pass plus the call: far below what waiting behind 400 messages at 20/s (20 s) would take.
    assert max(latencies) < 2.0, latencies
    big_pending = outbox.counts().get("pending", 0)
    assert big_pending > 200  # the backlog really was still waiting meanwhile
    assert utcnow() - now < timedelta(seconds=60)
