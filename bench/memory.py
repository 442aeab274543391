"""The long run of `python -m bench.pipeline --rss-messages N` (`make bench-memory`): worker and dispatcher RSS
after the first tenth of N more messages and at the end, and how much it grew."""

from __future__ import annotations

import argparse
import math
import time

from bench.harness import Check, rss_kb, say
from bench.harness.stack import Stack

#: Messages per round (enqueued, then waited for).
ROUND = 10_000


def run_rss(opts: argparse.Namespace, stack: Stack, checks: list[Check]) -> dict[str, float]:
    """RSS of the worker and dispatcher processes after the first tenth of a long run and at its end."""
    total = opts.rss_messages
    names = [name for name, _, _ in stack.procs.procs if name.startswith(("worker", "dispatcher"))]
    pids = {name: proc.pid for name, proc, _ in stack.procs.procs if name in names}
    say(f"memory: {total:,} more messages in rounds of {ROUND:,}; RSS of {', '.join(names)} ...")
    base = opts.messages + opts.latency_messages + 100
    first: dict[str, int] = {}
    done = 0
    t0 = time.monotonic()
    while done < total:
        k = min(ROUND, total - done)
        ids: list[int] = []
        for i in range(0, k, opts.chunk):
            ids += stack.producer.send_many([stack.request(base + done + j) for j in range(i, min(k, i + opts.chunk))])
        stack.wait_sent(min(ids), max(ids), k, "memory", progress=False)
        done += k
        if not first and done >= total // 10:
            first = {name: rss_kb(pid) for name, pid in pids.items()}
            say("  RSS after " + f"{done:,}: " + ", ".join(f"{n} {v / 1024:.1f} MiB" for n, v in first.items()))
    last = {name: rss_kb(pid) for name, pid in pids.items()}
    elapsed = time.monotonic() - t0
    growth = {name: (last[name] - first[name]) / first[name] * 100.0 if first.get(name) else math.nan
              for name in names}
    say(f"  RSS after {total:,} ({elapsed:.0f} s, {total / elapsed:,.0f} msgs/s): " + ", ".join(
        f"{n} {last[n] / 1024:.1f} MiB ({growth[n]:+.1f}%)" for n in names))
    return {"max_growth_pct": max(growth.values()) if growth else math.nan, "messages": total}
