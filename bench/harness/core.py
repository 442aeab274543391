"""The benchmarks' shared vocabulary: exit codes, the error that stops a run, printing, numbers and texts.

Nothing here starts a process or touches a store; every scenario module uses it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

#: The project's root: every child process runs there.
ROOT = Path(__file__).resolve().parent.parent.parent
#: The sandbox API's key in every benchmark.
API_KEY = "bench-key-5e1f09a2"
#: A message's final states.
TERMINAL = ("sent", "failed", "unknown", "expired", "cancelled")

EXIT_OK, EXIT_CHECK_FAILED, EXIT_UNAVAILABLE, EXIT_INTERRUPTED = 0, 1, 4, 130

#: One correctness check: (name, whether it held, what was seen).
Check = tuple[str, bool, str]


class BenchError(Exception):
    """A one-line reason to stop, and the exit code."""

    def __init__(self, message: str, code: int = EXIT_CHECK_FAILED) -> None:
        super().__init__(message)
        self.code = code


def say(text: str = "") -> None:
    print(text, flush=True)


def phone(i: int) -> str:
    """A distinct, valid US number per message (+1 415 200 0000 onwards)."""
    return f"+1415{2000000 + i:07d}"


def text_of(i: int) -> str:
    return f"oaksend bench {i}: your appointment is tomorrow at 10:00"


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def report_checks(checks: Sequence[Check], logdir: Path) -> int:
    """Print each correctness check; the exit code says whether all held."""
    failed = [c for c in checks if not c[1]]
    for name, passed, detail in checks:
        say(f"check {'ok  ' if passed else 'FAIL'} {name}: {detail}")
    if failed:
        say(f"bench: {len(failed)} check(s) failed; logs kept in {logdir}")
    return EXIT_CHECK_FAILED if failed else EXIT_OK
