"""`oaksend run`: one command for a single machine that supervises every oaksend process.

It starts a dispatcher, `workers` worker processes and, when this oaksend has
the `scheduler` command, the scheduler; restarts a child that dies (after a
backoff that grows while it keeps dying); and on SIGTERM or SIGINT asks every
child to stop (SIGTERM: workers finish the send in hand), waits up to the
grace period, and kills what is left. Children are ordinary `oaksend`
processes, so their logs, settings and metrics are the same as when run apart.

Settings reach the children by environment, never on their command line (which
`ps` shows to every user): `--database-url` / `--redis-url` become
`DATABASE_URL` / `REDIS_URL`, and the `OAKSEND_ENV_FILE` file is read here and
its values passed on. Only the workers get the API key (`NEWOAKS_API_KEY`,
`NEWOAKS_API_KEY_FILE`): the dispatcher and the scheduler never call the API.
On Linux every child asks the kernel for SIGTERM when `oaksend run` dies, even
by SIGKILL (PR_SET_PDEATHSIG), so none is left running without its supervisor.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from oaksend.worker.sources import ENV_FILE_VAR  # read by the parent; a child gets its values, not the file

log = logging.getLogger(__name__)

#: First wait before restarting a child that died; doubles while it keeps dying, up to the cap.
RESTART_BACKOFF_S = 1.0
RESTART_BACKOFF_CAP_S = 30.0
#: A child that ran this long is considered healthy again: its backoff resets.
STABLE_AFTER_S = 60.0


#: The variables that hold the API key: only workers inherit them.
API_KEY_VARS = frozenset({"NEWOAKS_API_KEY", "NEWOAKS_API_KEY_FILE"})
#: linux/prctl.h
_PR_SET_PDEATHSIG = 1


def children_environ(environ: Mapping[str, str], env_file: Mapping[str, str | None], *,
                     database_url: str | None = None, redis_url: str | None = None) -> dict[str, str]:
    """Pure: the environment the children start from. The env file's values under the environment's
    (settings read the environment first), `OAKSEND_ENV_FILE` dropped, the URLs given on the command line
    as `DATABASE_URL` / `REDIS_URL` (in place of any other spelling of them)."""
    present = {name.upper() for name in environ}
    env = {name.upper(): value for name, value in env_file.items() if value is not None and name.upper() not in present}
    env.update((name, value) for name, value in environ.items() if name.upper() != ENV_FILE_VAR)
    for var, url in (("DATABASE_URL", database_url), ("REDIS_URL", redis_url)):
        if url:
            for name in [n for n in env if n.upper() in (var, f"OAKSEND_{var}")]:
                del env[name]
            env[var] = url
    return env


def child_environ(base: Mapping[str, str], *, api_key: bool) -> dict[str, str]:
    """Pure: one child's environment: `base`, without the API key unless the child is a worker."""
    return {k: v for k, v in base.items() if api_key or k.upper() not in API_KEY_VARS}


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` that has the kernel send the child SIGTERM when this process dies (Linux); else None."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # loaded before the fork: the child only makes the call
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the call: nothing would signal this child
            os._exit(1)

    return preexec


@dataclass
class Child:
    """One supervised process and its restart bookkeeping."""

    name: str
    argv: list[str]
    env: dict[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff_s: float = RESTART_BACKOFF_S
    restart_at: float | None = None
    history: list[int] = field(default_factory=list)  # exit codes of past runs


def child_commands(*, workers: int, concurrency: int, metrics_port: int | None, log_format: str | None,
                   log_level: str, scheduler: bool) -> list[tuple[str, list[str]]]:
    """Pure: the name and `oaksend` arguments of each child (no setting that could hold a secret)."""
    common = ["--log-level", log_level] + (["--log-format", log_format] if log_format else [])
    out = [("dispatcher", ["dispatcher", *common,
                           *(["--metrics-port", str(metrics_port)] if metrics_port is not None else [])])]
    for i in range(workers):
        port = ["--metrics-port", str(metrics_port + 1 + i)] if metrics_port is not None else []
        out.append((f"worker{i}", ["worker", "--concurrency", str(concurrency), *common, *port,
                                   "-n", f"worker{i}@%h"]))
    if scheduler:
        out.append(("scheduler", ["scheduler", *common]))
    return out


class Supervisor:
    """Keeps its children running until stopped."""

    def __init__(self, commands: list[tuple[str, list[str]]], *, grace_s: float,
                 python: str = sys.executable, environ: Mapping[str, str] | None = None) -> None:
        base = dict(os.environ if environ is None else environ)
        self.children = [Child(name, [python, "-m", "oaksend.worker.cli", *args],
                               child_environ(base, api_key=name.startswith("worker"))) for name, args in commands]
        self.preexec = die_with_parent()
        self.grace_s = grace_s
        self.stop = threading.Event()

    def install_signals(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop.set())

    def _start(self, child: Child) -> None:
        child.proc = subprocess.Popen(child.argv, env=child.env, preexec_fn=self.preexec)
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
