"""Measurement 4 of `python -m bench.pipeline`: latency at low load. With the stack idle, messages are sent one
at a time at a steady rate with Producer.send; enqueue-to-sent (sent_at - created_at) p50/p99, and its parts."""

from __future__ import annotations

import argparse
import math
import time

from bench.harness import Check, percentile, say
from bench.harness.stack import Stack


def run_latency(opts: argparse.Namespace, stack: Stack, checks: list[Check]) -> dict[str, float]:
    k, per_s = opts.latency_messages, opts.latency_rate
    time.sleep(1.5)  # let the dispatcher settle into its idle wait
    say(f"latency: {k} messages one at a time at {per_s:g}/s with Producer.send ...")
    before = stack.control.stats().get("total", 0)
    ids: list[int] = []
    start = time.monotonic()
    for i in range(k):
        delay = start + i / per_s - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        req = stack.request(opts.messages + i)
        ids.append(stack.producer.send(req.serial_number, req.to, req.text))
    stack.wait_sent(min(ids), max(ids), k, "latency", progress=False)
    wanted = set(ids)
    rows = [r for r in stack.sent_rows(min(ids), max(ids)) if r[0] in wanted]
    lat = sorted((r[2] - r[1]).total_seconds() * 1000.0 for r in rows if r[3] == "sent" and r[2] is not None)
    checks.append(("latency messages all sent", len(lat) == k, f"{len(lat)} of {k} sent"))
    total = stack.control.stats().get("total", 0)
    checks.append(("sandbox saw each latency message once", total - before == k, f"{total - before} requests"))
    p50, p99 = percentile(lat, 50), percentile(lat, 99)
    say(f"latency: enqueue -> sent over {len(lat)} messages: p50 {p50:.1f} ms, p99 {p99:.1f} ms "
        f"(min {lat[0] if lat else math.nan:.1f}, max {lat[-1] if lat else math.nan:.1f})")
    # The parts: enqueue -> HTTP call started (wake, dispatch pass, broker, claim), and the call itself.
    parts = stack.latency_parts(min(ids), max(ids), wanted)
    if parts:
        say("  parts (p50 / p99 ms): " + ", ".join(
            f"{name} {percentile(sorted(v), 50):.1f} / {percentile(sorted(v), 99):.1f}" for name, v in parts.items()))
    return {"p50_ms": p50, "p99_ms": p99}
