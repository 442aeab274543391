"""Measurement 2 of `python -m bench.pipeline`: oaksend end to end. N messages bulk-enqueued with
Producer.send_many; messages/s from the first enqueue to the last `sent`, checked against the database
and the sandbox's records, with where the time and CPU went."""

from __future__ import annotations

import argparse
import math
import time

from bench.harness import Check, cpu_report, cpu_snapshot, cpu_used, dispatcher_passes, percentile, phone, say
from bench.harness.stack import Stack


def run_throughput(opts: argparse.Namespace, stack: Stack, checks: list[Check]) -> dict[str, float]:
    from oaksend.worker.clock import utcnow

    n = opts.messages
    requests = [stack.request(i) for i in range(n)]
    chunk = opts.chunk
    say(f"oaksend: enqueuing {n:,} messages with Producer.send_many in chunks of {chunk:,} ...")
    ids: list[int] = []
    cpu0 = cpu_snapshot(stack.procs)
    log_mark = len(stack.procs.log_text("dispatcher"))
    t0 = utcnow()
    m0 = time.monotonic()
    for i in range(0, n, chunk):
        ids.extend(stack.producer.send_many(requests[i : i + chunk]))
    enqueue_s = time.monotonic() - m0
    say(f"  enqueued {n:,} in {enqueue_s:.2f} s ({n / enqueue_s:,.0f} msgs/s)")
    lo, hi = min(ids), max(ids)
    counts = stack.wait_sent(lo, hi, n, "oaksend", t0=m0)
    cpu1 = cpu_snapshot(stack.procs)
    cpu = cpu_report(cpu0, cpu1, time.monotonic() - m0)
    worker_cpu_s = sum(v for k, v in cpu_used(cpu0, cpu1).items() if k.startswith("worker"))
    rows = stack.sent_rows(lo, hi)
    sent = [r for r in rows if r[3] == "sent" and r[2] is not None]
    last_sent = max(r[2] for r in sent) if sent else t0  # type: ignore[type-var]
    first_sent = min(r[2] for r in sent) if sent else t0  # type: ignore[type-var]
    elapsed = (last_sent - t0).total_seconds()
    rate = len(sent) / elapsed if elapsed > 0 else math.nan
    say(f"oaksend: {len(sent):,} messages sent in {elapsed:.2f} s: {rate:,.0f} msgs/s "
        f"(first sent {(first_sent - t0).total_seconds() * 1000:.0f} ms after the first enqueue)")

    checks.append(("all messages sent", len(sent) == n and len(ids) == n and len(rows) == n,
                   f"{len(sent):,} of {n:,} sent; states {counts}"))
    latencies = check_requests(stack, n, lo, hi, checks)
    # Where the time goes, roughly: worker-thread time per message vs the HTTP call inside it.
    if latencies and sent:
        say(f"  HTTP call (attempts.latency_ms): mean {sum(latencies) / len(latencies):.1f} ms, "
            f"p50 {percentile(latencies, 50):.1f} ms, p99 {percentile(latencies, 99):.1f} ms")
    if cpu:
        say(f"  CPU (% of one core; * = machine-wide): {cpu}")
        say(f"  worker CPU per message: {worker_cpu_s * 1000.0 / n:.2f} ms (one process holds one GIL: "
            f"at most ~{n / worker_cpu_s if worker_cpu_s else math.nan:,.0f} msgs/s per worker process)")
    churn = dispatcher_passes(stack.procs.log_text("dispatcher")[log_mark:])
    if churn["tasks"]:
        say(f"  dispatcher: {churn['tasks']:,} tasks published for {churn['dispatched']:,} leases; "
            f"{churn['rescued']:,} leases ran out before a worker claimed them and were dispatched again")
    return {"rate": rate, "elapsed_s": elapsed, "enqueue_rate": n / enqueue_s}


def check_requests(stack: Stack, n: int, lo: int, hi: int, checks: list[Check]) -> list[float]:
    """Every message requested exactly once, as far as the sandbox and the attempts tell; the attempts'
    HTTP call latencies (ms, ascending)."""
    stats = stack.control.stats()
    checks.append(("sandbox recorded exactly N requests", stats.get("total") == n,
                   f"sandbox total {stats.get('total'):,}, by status {stats.get('by_status')}"))
    records = stack.control.requests()
    phones = [r.get("to_phone_number") for r in records]
    expected = {phone(i) for i in range(n)}
    checks.append(("each number requested once", len(set(phones)) == len(phones) and set(phones) == expected,
                   f"{len(phones):,} requests to {len(set(phones)):,} distinct numbers"))
    latencies = sorted(stack.attempt_latencies_ms(lo, hi))
    checks.append(("one attempt per message", len(latencies) == n, f"{len(latencies):,} attempts"))
    return latencies
