"""`oaksend run`: one command for a single machine that supervises every oaksend process.

It starts a dispatcher, `workers` worker processes and, when this oaksend has
the `scheduler` command, the scheduler; restarts a child that dies (after a
backoff that grows while it keeps dying); and on SIGTERM or SIGINT asks every
child to stop (SIGTERM: workers finish the send in hand), waits up to the
grace period, and kills what is left. Children are ordinary `oaksend`
processes, so their logs, settings and metrics are the same as when run apart.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

#: First wait before restarting a child that died; doubles while it keeps dying, up to the cap.
RESTART_BACKOFF_S = 1.0
RESTART_BACKOFF_CAP_S = 30.0
#: A child that ran this long is considered healthy again: its backoff resets.
STABLE_AFTER_S = 60.0


@dataclass
class Child:
    """One supervised process and its restart bookkeeping."""

    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff_s: float = RESTART_BACKOFF_S
    restart_at: float | None = None
    history: list[int] = field(default_factory=list)  # exit codes of past runs


def child_commands(*, workers: int, concurrency: int, metrics_port: int | None, log_format: str | None,
                   log_level: str, scheduler: bool, global_args: list[str]) -> list[tuple[str, list[str]]]:
    """Pure: the name and `oaksend` arguments of each child."""
    common = ["--log-level", log_level] + (["--log-format", log_format] if log_format else [])
    out = [("dispatcher", [*global_args, "dispatcher", *common,
                           *(["--metrics-port", str(metrics_port)] if metrics_port is not None else [])])]
    for i in range(workers):
        port = ["--metrics-port", str(metrics_port + 1 + i)] if metrics_port is not None else []
        out.append((f"worker{i}", [*global_args, "worker", "--concurrency", str(concurrency), *common, *port,
                                   "-n", f"worker{i}@%h"]))
    if scheduler:
        out.append(("scheduler", [*global_args, "scheduler", "--log-level", log_level]))
    return out


class Supervisor:
    """Keeps its children running until stopped."""

    def __init__(self, commands: list[tuple[str, list[str]]], *, grace_s: float,
                 python: str = sys.executable) -> None:
        self.children = [Child(name, [python, "-m", "oaksend.worker.cli", *args]) for name, args in commands]
        self.grace_s = grace_s
        self.stop = threading.Event()

    def install_signals(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop.set())

    def _start(self, child: Child) -> None:
        child.proc = subprocess.Popen(child.argv)
        child.started_at = time.monotonic()
        child.restart_at = None
        log.info("run: started %s (pid %d)", child.name, child.proc.pid)

    def run(self) -> int:
        """Supervise until stopped; returns the exit code of `oaksend run` (0 after a clean stop)."""
        for child in self.children:
            self._start(child)
        while not self.stop.wait(0.2):
            now = time.monotonic()
            for child in self.children:
                if child.proc is not None and child.restart_at is None:
                    code = child.proc.poll()
                    if code is None:
                        continue
                    child.history.append(code)
                    if now - child.started_at >= STABLE_AFTER_S:
                        child.backoff_s = RESTART_BACKOFF_S
                    child.restart_at = now + child.backoff_s
                    log.warning("run: %s (pid %d) exited with %d; restarting in %.0fs", child.name, child.proc.pid,
                                code, child.backoff_s)
                    child.backoff_s = min(RESTART_BACKOFF_CAP_S, child.backoff_s * 2)
                elif child.restart_at is not None and now >= child.restart_at:
                    child.restarts += 1
                    self._start(child)
        return self.shutdown()

    def shutdown(self) -> int:
        """SIGTERM every child, wait up to the grace period, then SIGKILL what is left."""
        running = [(c.name, c.proc) for c in self.children if c.proc is not None and c.proc.poll() is None]
        log.info("run: stopping %d processes (grace %.0fs)", len(running), self.grace_s)
        for _name, proc in running:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        killed = 0
        for name, proc in running:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("run: %s did not stop within %.0fs; killing it", name, self.grace_s)
                proc.kill()
                proc.wait()
                killed += 1
        log.info("run: stopped")
        return 1 if killed else 0
