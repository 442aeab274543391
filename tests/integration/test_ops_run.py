"""`oaksend run` supervises real processes (dispatcher, workers, scheduler): they send, a dead child is restarted,
SIGTERM stops all cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.support import CHATBOT, Sandbox, flush_redis, stack_env, wait_until


def children(pid: int) -> dict[int, str]:
    """Direct children of `pid` and their command lines (from /proc)."""
    out = {}
    try:
        listed = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except FileNotFoundError:
        return {}
    for child in map(int, listed):
        try:
            out[child] = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except FileNotFoundError:
            pass
    return out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def oaksend(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "oaksend.worker.cli", *args], env=env, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)


@pytest.mark.slow
def test_run_supervises_restarts_and_stops_cleanly(pg_database: str, sandbox: Sandbox, tmp_path: Path) -> None:
    from oaksend.migrations.runner import upgrade
    from tests.support import reset_pg

    reset_pg(pg_database)
    upgrade(pg_database)
    flush_redis()
    env = stack_env(pg_database, sandbox, queue=f"oaksend-run-{uuid.uuid4().hex[:8]}",
                    OAKSEND_WORKER_HEARTBEAT_TTL_S="3")
    log = open(tmp_path / "run.log", "wb")
    run = subprocess.Popen([sys.executable, "-m", "oaksend.worker.cli", "run", "--workers", "2", "--concurrency", "2",
                            "--grace", "20"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        def healthy() -> bool:
            result = oaksend(env, "health", "--json", "--only", "database,redis,dispatcher,workers")
            return result.returncode == 0 and json.loads(result.stdout)["checks"]["workers"]["detail"] == "2 alive"

        wait_until(healthy, 60, 0.5, "`oaksend run` to bring up a dispatcher and two workers")
        kids = children(run.pid)
        assert sum(" worker " in c for c in kids.values()) == 2
        assert sum(" dispatcher" in c for c in kids.values()) == 1
        assert sum(" scheduler" in c for c in kids.values()) == 1  # this oaksend has the command

        sent = oaksend(env, "send", "--chatbot", CHATBOT, "--to", "+14155550191", "--text", "via run")
        assert sent.returncode == 0, sent.stderr
        wait_until(lambda: len(sandbox.requests_to("+14155550191")) == 1, 30, what="the message to be sent")

        # A worker dies: it is started again, and the pair of workers is whole again.
        victim = next(pid for pid, c in kids.items() if " worker " in c)
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: victim not in children(run.pid)
                   and sum(" worker " in c for c in children(run.pid).values()) == 2, 30, 0.2,
                   "the dead worker to be replaced")
        wait_until(healthy, 60, 0.5, "health with the restarted worker")
        sent = oaksend(env, "send", "--chatbot", CHATBOT, "--to", "+14155550192", "--text", "after restart")
        assert sent.returncode == 0
        wait_until(lambda: len(sandbox.requests_to("+14155550192")) == 1, 30, what="a send after the restart")

        # SIGTERM: every child stops, nothing is killed, and `run` exits 0.
        current = list(children(run.pid))
        run.send_signal(signal.SIGTERM)
        assert run.wait(40) == 0
        for pid in current:
            wait_until(lambda pid=pid: not alive(pid), 10, what=f"child {pid} to exit")
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        log.close()
    text = (tmp_path / "run.log").read_text(errors="replace")
    assert "exited with -9; restarting" in text
    assert "did not stop" not in text
    after = oaksend(env, "health", "--json", "--only", "workers")
    assert after.returncode == 1  # clean stops removed every worker's beat
