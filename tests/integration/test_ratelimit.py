"""RateLimiter on a real Redis: burst, waits, a shared budget across threads and processes, pauses, loss of state."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support import ROOT, private_redis_server
from oaksend.worker.keys import Keys
from oaksend.worker.delivery.ratelimit import Limit, RateLimiter


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    # Every test uses fresh chatbot keys, so db 15 is not flushed: other runs' dispatchers
    # and workers may be using it at the same time.
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


@pytest.fixture
def limiter(client: redis.Redis) -> RateLimiter:
    return RateLimiter(client, Keys())


def chatbot() -> str:
    return f"rl-{uuid.uuid4().hex[:12]}"


# -- one client --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("rate_per_s", "burst"), [(1.0, 1), (2.0, 3), (10.0, 5)])
def test_burst_then_waits_one_interval(limiter: RateLimiter, rate_per_s: float, burst: int) -> None:
    sn, limit = chatbot(), Limit(rate_per_s, burst)
    answers = [limiter.admit(sn, limit) for _ in range(burst)]
    assert all(a.allowed and not a.paused for a in answers)
    refused = limiter.admit(sn, limit)
    assert not refused.allowed and not refused.paused
    interval_s = 1.0 / rate_per_s
    assert 0 < refused.wait_s <= interval_s + 0.002
    # a refusal takes no token: the wait does not grow by asking again
    again = limiter.admit(sn, limit)
    assert not again.allowed and again.wait_s <= refused.wait_s
    time.sleep(again.wait_s + 0.01)
    assert limiter.admit(sn, limit).allowed
    assert not limiter.admit(sn, limit).allowed


def test_chatbots_have_separate_budgets(limiter: RateLimiter) -> None:
    a, b, limit = chatbot(), chatbot(), Limit(1.0, 1)
    assert limiter.admit(a, limit).allowed
    assert not limiter.admit(a, limit).allowed
    assert limiter.admit(b, limit).allowed


def test_idle_time_refills_at_most_the_burst(limiter: RateLimiter) -> None:
    sn, limit = chatbot(), Limit(5.0, 2)
    assert limiter.admit(sn, limit).allowed
    time.sleep(1.0)  # five intervals idle: still only a burst of 2
    assert [limiter.admit(sn, limit).allowed for _ in range(4)] == [True, True, False, False]


def test_reserve_hands_out_future_slots_one_interval_apart(limiter: RateLimiter) -> None:
    sn, limit, interval_s = chatbot(), Limit(10.0, 1), 0.1
    calls = []
    for _ in range(6):
        before = time.monotonic()
        answer = limiter.reserve(sn, limit, max_wait_s=0.35)
        calls.append((before, time.monotonic(), answer))
    assert [a.allowed for _, _, a in calls] == [True, True, True, True, False, False]
    assert calls[0][2].wait_s == 0.0
    # each granted slot (the call's time + its wait) is one interval after the previous one
    for (b0, a0, first), (b1, a1, second) in zip(calls[:4], calls[1:4]):
        gap_s = (b1 + second.wait_s) - (b0 + first.wait_s)
        slack_s = (a0 - b0) + (a1 - b1) + 0.002
        assert interval_s - slack_s <= gap_s <= interval_s + slack_s
    # a refusal reserves nothing: both refused calls point at the same fifth slot
    (b4, a4, fifth), (b5, a5, sixth) = calls[4], calls[5]
    assert fifth.wait_s > 0.35 and sixth.wait_s > 0.0
    assert abs((b5 + sixth.wait_s) - (b4 + fifth.wait_s)) <= (a4 - b4) + (a5 - b5) + 0.002
    ahead_s, hold_s = limiter.ahead(sn)
    assert 0.0 < ahead_s <= 0.4 and hold_s == 0.0


def test_hold_is_seen_by_ahead(limiter: RateLimiter) -> None:
    sn = chatbot()
    assert limiter.ahead(sn) == (0.0, 0.0)
    limiter.hold(sn, 2.0)
    _, hold_s = limiter.ahead(sn)
    assert 1.5 < hold_s <= 2.0


# -- segments ----------------------------------------------------------------------------------------
def test_segments_limit_refuses_when_messages_would_pass(limiter: RateLimiter) -> None:
    sn = chatbot()
    limit = Limit(rate_per_s=1000.0, burst=2, segments_per_s=4.0)  # 250 ms per segment, 2 segments of burst
    assert limiter.admit(sn, limit, segments=2).allowed
    refused = limiter.admit(sn, limit, segments=2)
    assert not refused.allowed
    assert 0.4 <= refused.wait_s <= 0.51  # two more segments: 500 ms


def test_a_message_longer_than_the_burst_passes_alone(limiter: RateLimiter) -> None:
    sn = chatbot()
    limit = Limit(rate_per_s=1000.0, burst=2, segments_per_s=4.0)
    assert limiter.admit(sn, limit, segments=10).allowed
    after = limiter.admit(sn, limit, segments=1)
    assert not after.allowed
    assert after.wait_s > 2.0  # ten segments at 4/s had to be paid for


def test_without_a_segments_limit_segments_do_not_matter(limiter: RateLimiter) -> None:
    sn, limit = chatbot(), Limit(rate_per_s=1000.0, burst=3)
    assert all(limiter.admit(sn, limit, segments=10).allowed for _ in range(3))


# -- pause / resume ----------------------------------------------------------------------------------
def test_pause_refuses_as_paused_and_resume_admits(limiter: RateLimiter) -> None:
    sn, limit = chatbot(), Limit(100.0, 10)
    now = datetime.now(timezone.utc)
    limiter.pause(sn, now + timedelta(seconds=30), now)
    answer = limiter.admit(sn, limit)
    assert answer.paused and not answer.allowed
    assert 25 <= answer.wait_s <= 30
    assert limiter.paused(sn)
    limiter.resume(sn)
    assert not limiter.paused(sn)
    assert limiter.admit(sn, limit).allowed


def test_pause_expires_by_itself(limiter: RateLimiter) -> None:
    sn, limit = chatbot(), Limit(100.0, 10)
    now = datetime.now(timezone.utc)
    limiter.pause(sn, now + timedelta(milliseconds=200), now)
    assert limiter.admit(sn, limit).paused
    time.sleep(0.3)
    assert limiter.admit(sn, limit).allowed


def test_pause_in_the_past_is_ignored(limiter: RateLimiter) -> None:
    sn, limit = chatbot(), Limit(100.0, 10)
    now = datetime.now(timezone.utc)
    limiter.pause(sn, now - timedelta(seconds=1), now)
    assert limiter.admit(sn, limit).allowed


def test_sync_pauses_recreates_future_pauses_only(limiter: RateLimiter) -> None:
    a, b, limit = chatbot(), chatbot(), Limit(100.0, 10)
    now = datetime.now(timezone.utc)
    limiter.sync_pauses({a: now + timedelta(seconds=60), b: now - timedelta(seconds=60)}, now)
    assert limiter.admit(a, limit).paused
    assert limiter.admit(b, limit).allowed


def test_pause_reaches_another_client(redis_url: str, limiter: RateLimiter) -> None:
    sn, limit = chatbot(), Limit(100.0, 10)
    now = datetime.now(timezone.utc)
    other = redis.Redis.from_url(redis_url)
    try:
        RateLimiter(other, Keys()).pause(sn, now + timedelta(seconds=10), now)
        assert limiter.admit(sn, limit).paused
    finally:
        other.close()


# -- a shared budget: threads in this process and two other processes --------------------------------
RATE_PER_S, BURST, WINDOW_S = 40.0, 5, 2.0


def hammer(redis_url: str, serial_number: str, threads: int, start_at: float, stop_at: float) -> dict[str, Any]:
    """Ask for tokens from `threads` threads between start_at and stop_at (wall clock); report admissions."""
    c = redis.Redis.from_url(redis_url)
    limiter = RateLimiter(c, Keys())
    limit = Limit(RATE_PER_S, BURST)
    lock = threading.Lock()
    admitted: list[tuple[float, float]] = []  # (asked at, answered at)
    errors: list[str] = []

    def loop() -> None:
        while time.time() < start_at:
            time.sleep(0.001)
        while True:
            asked = time.time()
            if asked >= stop_at:
                return
            try:
                answer = limiter.admit(serial_number, limit)
            except Exception as exc:  # noqa: BLE001 - reported to the test
                errors.append(repr(exc))
                return
            if answer.allowed:
                with lock:
                    admitted.append((asked, time.time()))
            else:
                time.sleep(min(answer.wait_s, 0.01))

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    c.close()
    return {"admitted": admitted, "errors": errors}


_CHILD = """
import json, sys
from tests.integration.test_ratelimit import hammer
url, sn, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
print("ready", flush=True)
start_at, stop_at = map(float, sys.stdin.readline().split())
print(json.dumps(hammer(url, sn, threads, start_at, stop_at)), flush=True)
"""


def test_shared_budget_across_threads_and_processes(redis_url: str, client: redis.Redis) -> None:
    sn = chatbot()
    children = [
        subprocess.Popen([sys.executable, "-c", _CHILD, redis_url, sn, "3"], cwd=ROOT, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    try:
        for child in children:
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        start_at = time.time() + 0.3
        stop_at = start_at + WINDOW_S
        for child in children:
            assert child.stdin is not None
            child.stdin.write(f"{start_at} {stop_at}\n")
            child.stdin.flush()
        mine = hammer(redis_url, sn, 4, start_at, stop_at)
        results = [mine]
        for child in children:
            out, _ = child.communicate(timeout=30)
            assert child.returncode == 0
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()

    assert all(not r["errors"] for r in results), [r["errors"] for r in results]
    admitted = [tuple(a) for r in results for a in r["admitted"]]
    # every process got a share: they really competed for one budget
    assert all(r["admitted"] for r in results), [len(r["admitted"]) for r in results]
    # Redis's clock admitted each one between the ask and the answer, so all of them
    # fall in this window; GCRA admits at most rate * window + burst in any window.
    window_s = max(answered for _, answered in admitted) - min(asked for asked, _ in admitted)
    assert window_s <= WINDOW_S + 0.25
    assert len(admitted) <= RATE_PER_S * window_s + BURST
    assert len(admitted) <= RATE_PER_S * (WINDOW_S + 0.25) + BURST
    assert len(admitted) >= RATE_PER_S * WINDOW_S * 0.9


# -- state lost: FLUSHALL on a private Redis server ----------------------------------------------------
@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[str]:
    """A Redis server of our own, so FLUSHALL and SCRIPT FLUSH touch nobody else's data."""
    with private_redis_server(tmp_path) as url:
        yield url


def test_flushall_midway_rebuilds_the_bucket(private_redis: str) -> None:
    c = redis.Redis.from_url(private_redis)
    try:
        limiter = RateLimiter(c, Keys())
        sn, limit = chatbot(), Limit(0.5, 2)
        assert [limiter.admit(sn, limit).allowed for _ in range(3)] == [True, True, False]
        now = datetime.now(timezone.utc)
        limiter.pause(sn, now + timedelta(seconds=60), now)
        assert limiter.admit(sn, limit).paused
        c.flushall()
        c.script_flush()  # as after a restart: the Lua script is gone too
        # no error, and an empty Redis means "no recent sends": the burst is back
        assert [limiter.admit(sn, limit).allowed for _ in range(3)] == [True, True, False]
        # the pause was lost with Redis; the database's copy is re-applied by sync_pauses
        now = datetime.now(timezone.utc)
        limiter.sync_pauses({sn: now + timedelta(seconds=60)}, now)
        assert limiter.admit(sn, limit).paused
    finally:
        c.close()
