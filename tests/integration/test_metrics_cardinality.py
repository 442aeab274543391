"""Metrics stay small however many chatbots there are: a worker process that has seen 50,000 chatbots
serves a scrape under 100 KB in under 50 ms, without delaying its other threads; the opt-in per-chatbot
series are the busiest N plus `other`, and only ever go up."""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
import textwrap
import time

import httpx
import pytest

from oaksend.worker.metrics import OTHER, ChatbotCounter

CHATBOTS = 50_000
SCRAPES = 20

#: A worker process's metrics after sends, throttles and pauses of CHATBOTS chatbots; a thread standing for the
#: send loop wakes every 5 ms and records how late it woke, before the scrapes (quiet) and during them.
WORKER = textwrap.dedent("""
    import json, sys, threading, time
    from oaksend.worker import metrics

    chatbots, top = int(sys.argv[1]), int(sys.argv[2])
    port = metrics.serve(0, chatbots=top)
    for i in range(chatbots):
        serial = f"{i:032x}"
        metrics.observe_send("sent", serial, 0.2)
        metrics.observe_send("retry", serial, 0.3)
        metrics.observe_throttle(serial)
        metrics.observe_pause(serial)
    late = {"quiet": [], "scrapes": []}
    phase = ["quiet"]
    stop = threading.Event()

    def send_loop():
        while not stop.is_set():
            t = time.perf_counter()
            time.sleep(0.005)
            late[phase[0]].append(time.perf_counter() - t - 0.005)

    thread = threading.Thread(target=send_loop)
    thread.start()
    time.sleep(1.0)
    phase[0] = "scrapes"
    print(port, flush=True)
    sys.stdin.readline()
    stop.set()
    thread.join()
    print(json.dumps({k: max(v) * 1000 for k, v in late.items()}), flush=True)
""")


def _worker_with(chatbots: int, top: int) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, "-c", WORKER, str(chatbots), str(top)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip().isdigit(), f"the worker did not start: {line!r}"
    return proc, int(line)


@pytest.mark.parametrize("top", [0, 20])
def test_a_scrape_at_50000_chatbots_is_small_fast_and_does_not_delay_the_send_loop(top: int) -> None:
    proc, port = _worker_with(CHATBOTS, top)
    try:
        sizes, times = [], []
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            for _ in range(SCRAPES):
                start = time.perf_counter()
                body = client.get("/metrics").text
                times.append(time.perf_counter() - start)
                sizes.append(len(body.encode()))
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("\n")
        proc.stdin.flush()
        late = json.loads(proc.stdout.readline())
    finally:
        proc.kill()
        proc.communicate()
    series = [line for line in body.splitlines() if line.startswith("oaksend_")]
    median_ms, max_ms = statistics.median(times) * 1000, max(times) * 1000
    print(f"\n{CHATBOTS} chatbots, top {top}: {max(sizes)} bytes, {len(series)} series, scrape median "
          f"{median_ms:.1f} ms, max {max_ms:.1f} ms; send loop late at most {late['scrapes']:.1f} ms during "
          f"the scrapes ({late['quiet']:.1f} ms before)")
    assert max(sizes) < 100_000
    assert median_ms < 50
    # At most the chatbots labelled at the first scrape (their series start with their next event), and `other`.
    labelled = {m for line in series for m in re.findall(r'chatbot="([^"]*)"', line)}
    assert labelled == set() if top == 0 else (OTHER in labelled and len(labelled) <= top + 1)
    assert ('oaksend_sends_total{verdict="sent"} 50000.0' in series)
    assert 'oaksend_throttles_total 50000.0' in series and 'oaksend_pauses_total 50000.0' in series
    # Before the bound, one scrape at 50,000 chatbots kept the send loop 238 ms late; a loaded machine
    # can delay a sleeping thread by itself, so the quiet second before the scrapes sets the floor.
    assert late["scrapes"] < max(50.0, 2 * late["quiet"])


def _samples(counter: ChatbotCounter) -> dict[tuple[str, ...], float]:
    return {tuple(s.labels.values()): s.value for family in counter.collect() for s in family.samples}


def test_the_opt_in_labels_the_busiest_chatbots_and_sums_the_rest_as_other() -> None:
    counter = ChatbotCounter("oaksend_test_sends", "test", ("verdict",))
    counter.inc("A", ("sent",))
    assert _samples(counter) == {}  # off by default: counts nothing, exports nothing
    counter.configure(2)
    for serial, n in (("A", 5), ("B", 1), ("C", 9), ("D", 2)):
        for _ in range(n):
            counter.inc(serial, ("sent",))
    # The first scrape labels the two busiest (C, A); until then everything counted is `other`'s.
    assert _samples(counter) == {(OTHER, "sent"): 17}
    for serial in "ABCD":
        counter.inc(serial, ("sent",))
    counter.inc("C", ("final",))
    assert _samples(counter) == {("C", "sent"): 1, ("C", "final"): 1, ("A", "sent"): 1, (OTHER, "sent"): 19}
    # A newcomer busier than everyone does not displace a labelled chatbot: series only go up.
    for _ in range(50):
        counter.inc("E", ("sent",))
    after = _samples(counter)
    assert after[(OTHER, "sent")] == 69 and ("E", "sent") not in after
    assert all(after[k] >= v for k, v in _samples(counter).items())


def test_room_left_is_filled_by_volume_at_a_later_scrape() -> None:
    counter = ChatbotCounter("oaksend_test_throttles", "test")
    counter.configure(3)
    counter.inc("A", (), 4)
    assert _samples(counter) == {(OTHER,): 4}  # A labelled; two places left
    for serial, n in (("B", 1), ("C", 7), ("D", 3)):
        counter.inc(serial, (), n)
    _samples(counter)  # C and D (busiest) take the places; B stays in `other`
    for serial in "ABCD":
        counter.inc(serial)
    assert _samples(counter) == {("A",): 1, ("C",): 1, ("D",): 1, (OTHER,): 4 + 11 + 1}
