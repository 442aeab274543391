"""Prometheus metrics and JSON logs of real worker and dispatcher processes after real sends."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from oaksend.worker.cli import main
from tests.support import API_KEY, CHATBOT, Sandbox, Stack, flush_redis, free_port, stack_env, wait_until

_SAMPLE_RE = re.compile(r'^(?P<name>[a-z_:]+)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$')


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exporter: (name, labels) -> value."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    out = {}
    for line in text.splitlines():
        m = _SAMPLE_RE.match(line)
        if m and m.group("name").startswith("oaksend_"):
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group("labels") or ""))
            out[(m.group("name"), labels)] = float(m.group("value"))
    return out


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.mark.slow
def test_metrics_move_after_real_sends_and_logs_are_json(database_url: str, sandbox: Sandbox, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    flush_redis()
    env = stack_env(database_url, sandbox, queue=f"oaksend-metrics-{uuid.uuid4().hex[:8]}")
    stack = Stack(env, tmp_path)
    d_port, w_port = free_port(), free_port()
    try:
        stack._start("dispatcher", ["dispatcher", "--metrics-port", str(d_port), "--log-format", "json"])
        stack._start("worker0", ["worker", "--concurrency", "4", "--metrics-port", str(w_port), "--log-format", "json",
                                 "-n", f"metrics-{uuid.uuid4().hex[:6]}@%h"])
        stack.wait_ready()
        before = scrape(w_port)
        assert value(before, "oaksend_sends_total", verdict="sent") == 0

        sandbox.script("+14155550171", ["503"])  # retry, then sent
        sandbox.script("+14155550172", ["400"])  # final
        phones = [f"+1415555017{i}" for i in range(1, 6)]
        ids = []
        for i, phone in enumerate(phones):
            capsys.readouterr()
            assert main(["--database-url", database_url, "--redis-url", env["REDIS_URL"], "send", "--chatbot", CHATBOT,
                         "--to", phone, "--text", f"secret body {i}"]) == 0
            ids.append(int(capsys.readouterr().out.strip()))

        def settled() -> bool:
            s = scrape(w_port)
            return (value(s, "oaksend_sends_total", verdict="sent") == 4
                    and value(s, "oaksend_sends_total", verdict="final") == 1)

        wait_until(settled, 30, 0.2, "the worker's send counters")
        w = scrape(w_port)
        assert value(w, "oaksend_sends_total", verdict="retry") == 1
        assert value(w, "oaksend_api_latency_seconds_count") == 6  # one observation per API call
        assert not any(("chatbot", CHATBOT) in labels for _name, labels in w)  # no chatbot label by default
        assert value(w, "oaksend_api_latency_seconds_sum") > 0
        assert len(sandbox.requests()) == 6

        def dispatcher_sampled() -> bool:
            s = scrape(d_port)
            return value(s, "oaksend_messages", state="sent") == 4 and value(s, "oaksend_messages", state="failed") == 1

        wait_until(dispatcher_sampled, 20, 0.5, "the dispatcher's outbox gauges")
        d = scrape(d_port)
        assert value(d, "oaksend_dispatched_total") >= 6
        assert value(d, "oaksend_dispatcher_pass_seconds_count") > 0
        assert value(d, "oaksend_oldest_due_age_seconds") == 0
        assert value(d, "oaksend_messages", state="pending") == 0

        # `oaksend stats` tells the same story from the database.
        stats = subprocess.run([sys.executable, "-m", "oaksend.worker.cli", "stats", "--json"], env=env,
                               capture_output=True, text=True, timeout=60)
        assert stats.returncode == 0, stats.stderr
        data = json.loads(stats.stdout)
        assert data["by_state"] == {"sent": 4, "failed": 1}
        assert data["by_chatbot"] == {CHATBOT: {"sent": 4, "failed": 1}}
        assert {(a["verdict"], a["code"]): a["attempts"] for a in data["attempts"]} == {
            ("sent", 200): 4, ("retry", 503): 1, ("final", 400): 1}
        assert all(data["latency_ms"][p] > 0 for p in ("p50", "p95", "p99"))
        assert data["sent_last_hour"] == 4 and len(data["sent_per_minute"]) >= 60
        assert data["oldest_due_age_s"] is None
    finally:
        stack.stop()

    # JSON logs: one object per line with the send's fields; never the key, the text or a whole number.
    logged = [json.loads(line) for line in stack.log_of("worker0").splitlines() if line.startswith("{")]
    sends = [r for r in logged if "message_id" in r]
    assert {r["message_id"] for r in sends} == set(ids)
    by_id = {}
    for r in sends:
        by_id.setdefault(r["message_id"], []).append(r)
    retried = by_id[ids[0]]
    assert [(r["verdict"], r["attempt"]) for r in retried] == [("retry", 1), ("sent", 2)]
    assert all(r["chatbot"] == CHATBOT and r["to"] == "+1415****17" + r["to"][-1] for r in sends)
    assert by_id[ids[1]][0]["verdict"] == "final"
    everything = stack.log_of("worker0") + stack.log_of("dispatcher")
    assert API_KEY not in everything and "secret body" not in everything
    for phone in phones:
        assert phone not in everything


@pytest.mark.slow
def test_throttles_and_pauses_are_counted(pg_database: str, sandbox: Sandbox, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from oaksend.migrations.runner import upgrade
    from tests.support import reset_pg

    reset_pg(pg_database)
    upgrade(pg_database)
    flush_redis()
    # A slow chatbot: 1 message/s, so a burst of 4 waits for its rate; a 429 pauses it.
    env = stack_env(pg_database, sandbox, queue=f"oaksend-metrics-{uuid.uuid4().hex[:8]}",
                    OAKSEND_DEFAULT_RATE_PER_S="2", OAKSEND_DEFAULT_BURST="1", OAKSEND_MAX_TOKEN_WAIT_S="0.1",
                    OAKSEND_DISPATCH_LOOKAHEAD_S="2", OAKSEND_METRICS_CHATBOTS="5")
    stack = Stack(env, tmp_path)
    w_port = free_port()
    try:
        stack._start("dispatcher", ["dispatcher"])
        stack._start("worker0", ["worker", "--concurrency", "4", "--metrics-port", str(w_port),
                                 "-n", f"metrics-{uuid.uuid4().hex[:6]}@%h"])
        stack.wait_ready()
        sandbox.script("+14155550181", ["429"])
        for i in range(1, 5):
            capsys.readouterr()
            assert main(["--database-url", pg_database, "--redis-url", env["REDIS_URL"], "send", "--chatbot", CHATBOT,
                         "--to", f"+1415555018{i}", "--text", "x"]) == 0

        def done() -> bool:
            s = scrape(w_port)
            return value(s, "oaksend_sends_total", verdict="sent") == 4

        wait_until(done, 40, 0.3, "four messages sent")
        s = scrape(w_port)
        assert value(s, "oaksend_pauses_total") == 1
        assert value(s, "oaksend_throttles_total") >= 1
        # The opt-in per-chatbot series (OAKSEND_METRICS_CHATBOTS): the chatbot, or `other` before a scrape chose it.
        assert value(s, "oaksend_chatbot_pauses_total", chatbot=CHATBOT) + value(
            s, "oaksend_chatbot_pauses_total", chatbot="other") == 1
    finally:
        stack.stop()


def test_a_forking_pool_refuses_a_metrics_port(tmp_path: Path) -> None:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("OAKSEND_", "NEWOAKS_"))}
    env.update(NEWOAKS_API_KEY=API_KEY, DATABASE_URL=f"sqlite:///{tmp_path}/x.db")
    out = subprocess.run([sys.executable, "-m", "oaksend.worker.cli", "worker", "--pool", "prefork", "--metrics-port",
                          str(free_port())], env=env, capture_output=True, text=True, timeout=60,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("oaksend: metrics-port: needs --pool threads")
    assert API_KEY not in out.stdout + out.stderr
