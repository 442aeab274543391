"""One benchmark run from start to exit: the single-run lock, the services checked, interrupts, cleanup, logs.

Every scenario's `main()` is `run_session(body, ...)`: the body gets a `Session` (its log
directory, the processes it starts, its checks) and returns the exit code; whatever it
started is stopped on the way out, Ctrl-C, SIGTERM and errors included.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from bench.harness.core import EXIT_INTERRUPTED, EXIT_OK, BenchError, Check
from bench.harness.processes import Processes
from bench.harness.services import check_postgres, check_redis


def single_run_lock(stores: str | None = None) -> IO[str]:
    """One benchmark at a time per set of stores: two would flush each other's Redis dbs and database.

    Without `stores` (a scenario on its default stores): the machine-wide lock; with them, a lock of their own."""
    import fcntl

    suffix = "" if stores is None else "-" + hashlib.sha1(stores.encode()).hexdigest()[:8]
    path = Path(tempfile.gettempdir()) / f"oaksend-bench{suffix}.lock"
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise BenchError(f"another benchmark is running on this machine (pid {holder}; lock {path})") from None
    handle.truncate(0)
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def raise_interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


class Session:
    """One run: its log directory, the processes it started, its checks, and what to undo on the way out."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.procs = Processes(logdir)
        self.checks: list[Check] = []
        self.ok = False  #: the body returned EXIT_OK
        self.exits: list[tuple[Callable[[], object], bool]] = []

    def at_exit(self, fn: Callable[[], object], *, if_ok: bool = False) -> None:
        """Call `fn` on the way out, once every process has stopped (the last registered first); with
        `if_ok`, only after a run whose checks all held. Its errors are ignored: a store may be why we leave."""
        self.exits.append((fn, if_ok))

    def close(self) -> None:
        """Stop every process, then run the exit calls."""
        try:
            self.procs.stop()
        finally:
            for fn, if_ok in reversed(self.exits):
                if self.ok or not if_ok:
                    with contextlib.suppress(Exception):
                        fn()


def fail(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def run_session(body: Callable[[Session], int], *, prefix: str, keep_logs: bool, redis_urls: Sequence[str] = (),
                pg_admin_url: str | None = None, lock: str | None = None) -> int:
    """Take the lock (see single_run_lock), check the services, run `body`, clean up; the exit code.

    Process logs go to a fresh temporary directory named `prefix...`, removed after a run whose
    checks all held (unless `keep_logs`), kept and named otherwise."""
    try:
        handle = single_run_lock(lock)
        for url in redis_urls:
            check_redis(url)
        if pg_admin_url is not None:
            check_postgres(pg_admin_url)
    except BenchError as exc:
        fail(str(exc))
        return exc.code
    # Explicitly, so that SIGINT works even where it was ignored at start (a shell's background job).
    signal.signal(signal.SIGTERM, raise_interrupt)
    signal.signal(signal.SIGINT, raise_interrupt)
    session = Session(Path(tempfile.mkdtemp(prefix=prefix)))
    try:
        code = body(session)
        session.ok = code == EXIT_OK
        return code
    except BenchError as exc:
        fail(str(exc))
        return exc.code
    except KeyboardInterrupt:
        fail("interrupted; stopping the processes it started")
        return EXIT_INTERRUPTED
    finally:
        leave(session, keep_logs)
        handle.close()


def leave(session: Session, keep_logs: bool) -> None:
    """Clean up with interrupts ignored (a second Ctrl-C or a TERM must not skip it), then the logs."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        session.close()
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if session.ok and not keep_logs:
        shutil.rmtree(session.logdir, ignore_errors=True)
    elif session.logdir.exists():
        fail(f"process logs kept in {session.logdir}")
