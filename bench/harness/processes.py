"""The processes a benchmark starts: each logging to a file, checked while it runs, stopped on the way out.

Also what every scenario starts the same way: the child environment, the sandbox API,
`oaksend` commands run to completion, and the dispatcher's log read back.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from bench.harness.core import ROOT, BenchError, say


class Processes:
    """Every subprocess the benchmark starts, each logging to a file in `logdir`."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.procs: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str], *, stdout_pipe: bool = False) -> subprocess.Popen[bytes]:
        log = open(self.logdir / f"{name}.log", "ab")
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout_pipe else log,
            stderr=log if stdout_pipe else subprocess.STDOUT,
        )
        self.procs.append((name, proc, log))
        return proc

    def log_path(self, name: str) -> Path:
        return self.logdir / f"{name}.log"

    def log_text(self, name: str) -> str:
        path = self.log_path(name)
        return path.read_text(errors="replace") if path.exists() else ""

    def check_alive(self) -> None:
        for name, proc, _ in self.procs:
            if proc.poll() is not None:
                tail = self.log_text(name).strip().splitlines()[-1:] or ["(no output)"]
                raise BenchError(f"{name} exited with code {proc.returncode}: {tail[0][:200]} "
                                 f"(log: {self.log_path(name)})")

    def wait_for_log(self, names: Sequence[str], needle: str | Callable[[str], bool], timeout_s: float) -> None:
        test = needle if callable(needle) else (lambda text: needle in text)
        deadline = time.monotonic() + timeout_s
        while True:
            self.check_alive()
            if all(test(self.log_text(n)) for n in names):
                return
            if time.monotonic() > deadline:
                raise BenchError(f"{', '.join(names)} not ready after {timeout_s:.0f} s (logs in {self.logdir})")
            time.sleep(0.1)

    def stop(self, names: Sequence[str] | None = None) -> None:
        """SIGTERM, then wait up to 15 s each, then SIGKILL. Only our own children, by pid."""
        chosen = [p for p in self.procs if names is None or p[0] in names]
        for _, proc, _ in chosen:
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for name, proc, log in chosen:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                say(f"  {name} (pid {proc.pid}) did not stop in 15 s; killing it")
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
            log.close()
        self.procs = [p for p in self.procs if p not in chosen]


def child_env(**pinned: str) -> dict[str, str]:
    """The environment of a child: ours, minus what would point it elsewhere, plus `pinned`."""
    drop = ("NEWOAKS_", "SANDBOX_", "DATABASE_URL", "REDIS_URL", "OAKSEND_DATABASE_URL", "OAKSEND_REDIS_URL",
            "OAKSEND_QUEUE_NAME", "BENCH_NOOP_", "BENCH_NAIVE_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(pinned)
    return env


def start_sandbox(procs: Processes, name: str, args: Sequence[str]) -> str:
    """Start `python -m oaksend.sandbox ARGS` as `name`; its URL, once it says it is listening (15 s at most)."""
    proc = procs.start(name, [sys.executable, "-m", "oaksend.sandbox", *args], child_env(), stdout_pipe=True)
    assert proc.stdout is not None
    first: list[bytes] = []
    reader = threading.Thread(target=lambda: first.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(15)
    line = first[0].decode(errors="replace").strip() if first else ""
    if "listening on" not in line:
        raise BenchError(f"the sandbox did not start: {line or 'no output in 15 s'!r} "
                         f"(log: {procs.log_path(name)})")

    def drain() -> None:  # anything else it prints must not fill the pipe
        try:
            for _ in iter(proc.stdout.readline, b""):  # type: ignore[union-attr]
                pass
        except (ValueError, OSError):
            pass

    threading.Thread(target=drain, daemon=True).start()
    return line.rsplit(" ", 1)[-1]


def oaksend_cli(args: list[str], env: dict[str, str]) -> str:
    """Run `oaksend ARGS` (as `python -m oaksend.worker.cli`) to completion; its stdout, or BenchError."""
    done = subprocess.run([sys.executable, "-m", "oaksend.worker.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise BenchError(f"`oaksend {' '.join(args)}` failed ({done.returncode}): {last}")
    return done.stdout


def log_marks(procs: Processes, names: list[str]) -> dict[str, int]:
    """How long each log is now: read from there on to see only what comes next."""
    return {n: len(procs.log_text(n)) for n in names}


def dispatcher_passes(log: str) -> dict[str, int]:
    """Totals of the dispatcher's INFO pass lines: passes that dispatched, leases, tasks, leases rescued."""
    out = {"passes": 0, "dispatched": 0, "tasks": 0, "rescued": 0}
    # "rescued {}" on passes that did not look for lost leases.
    for m in re.finditer(r"pass: dispatched (\d+) in (\d+) tasks, rescued \{(?:'dispatched': (\d+))?", log):
        out["passes"] += 1
        out["dispatched"] += int(m.group(1))
        out["tasks"] += int(m.group(2))
        out["rescued"] += int(m.group(3) or 0)
    return out
