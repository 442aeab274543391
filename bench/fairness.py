"""Part 2 of `python -m bench.limits`: fairness. Chatbot E gets a big backlog (Producer.send_many in chunks);
while it drains at E's limit, chatbot D gets a few messages one at a time (Producer.send): D's enqueue-to-sent
latency p50/p99 (goal p99 <= 1 s), and what E sent meanwhile."""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

from bench.harness import BenchError, Check, Processes, dispatcher_passes, log_marks, percentile, say
from bench.limits_stack import Bot, LimitStack, Records, check_bot, count_between, max_in_window, worker_log_counts


def run_fairness(opts: argparse.Namespace, procs: Processes, checks: list[Check]) -> dict[str, Any]:
    big: Bot = opts.big
    small: Bot = opts.small
    say()
    say(f"== part 2: fairness (E {big.rate:g}/s burst {big.burst} with a {opts.backlog:,}-message backlog; "
        f"D {small.rate:g}/s burst {small.burst}, {opts.small_messages} messages {opts.small_gap_s:g} s apart) ==")
    stack = LimitStack(opts, procs, [big, small], "fairness")
    try:
        stack.start()
        records = Records(stack.control)
        marks = log_marks(procs, stack.workers + [stack.dispatcher])
        enqueue_backlog(opts, stack, records, procs)
        ids, d_start_unix = trickle(opts, stack, small)
        counts = stack.wait_terminal(ids, "D's messages", timeout_s=60, progress=True)
        d_end_unix = time.time()
        records.poll()
        fig = d_figures(stack, records, opts, ids, d_start_unix, d_end_unix)

        say("  stopping: dispatcher first, then the workers once nothing is in flight ...")
        left = stack.quiesce()
        checks.append(("part 2: nothing left dispatched or sending after the dispatcher stopped", left == 0,
                       f"{left} in flight"))
        records.poll()
        wlog = worker_log_counts(procs, stack.workers, marks)
        dlog = dispatcher_passes(procs.log_text(stack.dispatcher)[marks[stack.dispatcher]:])
        checks.append(("part 2: D's messages all sent", counts.get("sent", 0) == len(ids), f"{counts}"))
        e_sent = check_bot(stack, records, big, opts.backlog, checks)
        check_bot(stack, records, small, opts.small_messages, checks)
        lat = fig["lat"]
        out = {"p50": percentile(lat, 50), "p99": percentile(lat, 99), "min": lat[0] if lat else math.nan,
               "max": lat[-1] if lat else math.nan, "n": len(lat), "e_during": fig["e_during"],
               "e_span": fig["e_span"]}
        print_fairness(opts, fig, out, e_sent, wlog, dlog)
        return out
    finally:
        procs.stop()
        stack.close()


def enqueue_backlog(opts: argparse.Namespace, stack: LimitStack, records: Records, procs: Processes) -> None:
    """E's backlog, while the workers already drain it; then until E has been sending --settle-s."""
    big: Bot = opts.big
    say(f"  E: enqueuing {opts.backlog:,} messages with Producer.send_many in chunks of {opts.chunk:,} "
        f"(the workers are running: E starts draining at once) ...")
    m0 = time.monotonic()
    last_print = m0
    n_done = 0
    for lo in range(0, opts.backlog, opts.chunk):
        hi = min(opts.backlog, lo + opts.chunk)
        stack.producer.send_many([big.request(i) for i in range(lo, hi)])
        n_done = hi
        now = time.monotonic()
        if now - last_print >= 2.0 or n_done == opts.backlog:
            records.poll()
            say(f"    {now - m0:5.1f} s  enqueued {n_done:,} / {opts.backlog:,} "
                f"({n_done / (now - m0):,.0f} msgs/s); E requests at the API so far {records.count(big.serial):,}")
            last_print = now
        procs.check_alive()
    # Let E's drain settle into its steady state before D starts.
    while True:
        records.poll()
        first = records.first_at.get(big.serial)
        if first is not None and time.time() >= first + opts.settle_s:
            break
        if time.monotonic() - m0 > 120:
            raise BenchError(f"part 2: E sent nothing (logs in {procs.logdir})")
        procs.check_alive()
        time.sleep(0.2)
    t_before = time.time()
    e_before = records.count(big.serial)
    recent = count_between(records.times(big.serial), t_before - 5.0, t_before)
    say(f"  E is draining: {e_before:,} requests at the API so far, {recent / 5.0:.1f}/s over the last 5 s")


def trickle(opts: argparse.Namespace, stack: LimitStack, small: Bot) -> tuple[list[int], float]:
    """D's messages one at a time, --small-gap-s apart; (their ids, when the first was sent: Unix time)."""
    say(f"  D: {opts.small_messages} messages one at a time, {opts.small_gap_s:g} s apart, with Producer.send ...")
    ids: list[int] = []
    d_start_unix = time.time()
    d_start = time.monotonic()
    for i in range(opts.small_messages):
        delay = d_start + i * opts.small_gap_s - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        req = small.request(i)
        ids.append(stack.producer.send(req.serial_number, req.to, req.text))
    return ids, d_start_unix


def d_figures(stack: LimitStack, records: Records, opts: argparse.Namespace, ids: list[int], d_start_unix: float,
              d_end_unix: float) -> dict[str, Any]:
    """D's latencies and their parts, and E's requests from D's first enqueue to D's last sent."""
    from sqlalchemy import select

    from oaksend.models.tables import Attempt, Message

    big: Bot = opts.big
    with stack.reader.connect() as conn:
        d_rows = list(conn.execute(select(Message.id, Message.created_at, Message.sent_at, Message.attempts)
                                   .where(Message.id.in_(ids))))
        d_parts = list(conn.execute(
            select(Message.created_at, Attempt.started_at, Attempt.latency_ms)
            .join(Attempt, Attempt.message_id == Message.id).where(Message.id.in_(ids))))
    last_sent = max((s for _, _c, s, _a in d_rows if s is not None), default=None)
    d_window_end = last_sent.timestamp() if last_sent is not None else d_end_unix
    e_times = records.times(big.serial)
    return {
        "lat": sorted((s - c).total_seconds() * 1000.0 for _, c, s, _a in d_rows if s is not None),
        "attempts": sorted({a for *_x, a in d_rows}),
        "e_times": e_times, "d_times": records.times(opts.small.serial),
        "e_during": count_between(e_times, d_start_unix, d_window_end), "e_span": d_window_end - d_start_unix,
        "stats": stack.control.stats().get("chatbots", {}),
        "wait_parts": sorted((st - c).total_seconds() * 1000.0 for c, st, _ in d_parts),
        "http_parts": sorted(ms for _c, _st, ms in d_parts if ms is not None),
    }


def print_fairness(opts: argparse.Namespace, fig: dict[str, Any], out: dict[str, Any], e_sent: int,
                   wlog: dict[str, int], dlog: dict[str, int]) -> None:
    big: Bot = opts.big
    small: Bot = opts.small
    e_times, e_during, e_span = fig["e_times"], fig["e_during"], fig["e_span"]
    wait_parts, http_parts = fig["wait_parts"], fig["http_parts"]
    e_total_s = (e_times[-1] - e_times[0]) if len(e_times) > 1 else math.nan
    say()
    say("part 2 results:")
    say(f"  D enqueue -> sent (messages.sent_at - created_at) over {out['n']} messages: p50 {out['p50']:.0f} ms, "
        f"p99 {out['p99']:.0f} ms (min {out['min']:.0f}, max {out['max']:.0f}); goal p99 <= 1000 ms")
    if wait_parts:
        say(f"    parts p50 / p99: enqueue -> call started {percentile(wait_parts, 50):.0f} / "
            f"{percentile(wait_parts, 99):.0f} ms, HTTP call {percentile(http_parts, 50):.1f} / "
            f"{percentile(http_parts, 99):.1f} ms; attempts per D message {fig['attempts']}")
    say(f"  E meanwhile: {e_during:,} requests at the API in the {e_span:.1f} s from D's first enqueue to its "
        f"last sent ({e_during / e_span if e_span > 0 else math.nan:.1f}/s, limit {big.rate:g}/s); "
        f"E until then: {len(e_times):,} requests over {e_total_s:.1f} s; when stopped: {e_sent:,} sent, "
        f"{opts.backlog - e_sent:,} still waiting")
    for bot in (big, small):
        st = fig["stats"].get(bot.serial, {})
        times = e_times if bot is big else fig["d_times"]
        say(f"  {bot.letter}: sandbox max_1s {st.get('max_1s')} (sliding from records {max_in_window(times)}; "
            f"limit + burst {bot.rate + bot.burst:g}), violations {st.get('violations')}, "
            f"by status {st.get('by_status')}")
    say(f"  workers: {wlog.get('tasks', 0):,} tasks, {wlog.get('calls', 0):,} API calls, "
        f"{wlog.get('throttled', 0):,} throttled give-backs; dispatcher: {dlog['passes']:,} passes that "
        f"dispatched, {dlog['dispatched']:,} leases in {dlog['tasks']:,} tasks, {dlog['rescued']:,} rescued")
