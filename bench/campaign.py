"""`python -m bench.campaign` (`make bench-campaign`): a 100,000-recipient campaign, as figures.

On the real services of this machine, in a fresh PostgreSQL database of its own:

1. scheduling: a CSV of N recipients (default 100,000; UTF-8 with a BOM, a
   quoted column with commas) is turned into reminders by `oaksend campaign
   create --before appointment_at:OFFSETS` run as a child process; the figures
   are the command's wall time until it exits (every reminder committed, i.e.
   durably scheduled) and its peak resident memory (from wait4's rusage);
   then the reminders in the database are counted. Baseline, same run: the
   same rows sent through the producer's ordinary bulk path
   (`Producer.send_many`, 5,000 a call) by a child process, into a fresh database;
3. update (after the latency run): the same CSV with 10% of the appointments moved a
   day later and 1% of the rows removed, through `oaksend campaign update` as a child
   process: its wall time and peak memory, and its counts checked;
2. latency: a dispatcher, a worker and the sandbox API run, and unrelated
   messages are sent one at a time at a steady rate to the same chatbot with
   Producer.send; enqueue-to-sent (sent_at - created_at) p50/p99, first with an
   empty outbox (the baseline), then with the reminders waiting (due in days).

It asserts no speed. It exits 1 when a correctness check fails (reminders
missing, latency messages not sent once each), 4 when Redis or PostgreSQL is
unreachable, 130 when interrupted. Every process it starts is stopped on the way out.

    python -m bench.campaign [--recipients N] [--offsets 2h] [--latency-messages N]
                             [--redis-url URL] [--pg-admin-url URL] [--keep-logs]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from bench.harness import (
    API_KEY,
    ROOT,
    BenchError,
    Check,
    Processes,
    Session,
    child_env,
    drop_postgres,
    flush_redis,
    fresh_postgres,
    oaksend_cli,
    percentile,
    report_checks,
    run_session,
    say,
    start_sandbox,
)

CHATBOT = "c0ffee00c5e6f708192a3b4c5d6e7f80"
QUEUE = "oaksend-bench-campaign"
PG_DATABASE = "oaksend_bench_campaign"


def write_audience(path: Path, n: int, now: datetime) -> None:
    """N recipients with appointments 2 to 6 days ahead between 10:00 and 18:00 (no zone in the cell: the
    recipient's, from the number), so that no reminder falls in quiet hours."""
    day0 = now.date() + timedelta(days=2)
    with open(path, "w", encoding="utf-8-sig", newline="") as f:
        f.write("booking,phone,first_name,appointment_at\n")
        for i in range(n):
            slot = (i * 7) % (4 * 8 * 60)  # minutes into four 8-hour working days
            day = day0 + timedelta(days=slot // 480)
            appt = f"{day.isoformat()}T{10 + (slot % 480) // 60:02d}:{slot % 60:02d}"
            f.write(f'bk{i},+1415{2000000 + i:07d},"Pat {i}, Jr.",{appt}\n')


def run_child(argv: list[str], env: dict[str, str], log: Path) -> tuple[int, float, float, str]:
    """Run a child to completion: (exit code, wall seconds, peak RSS in MB, stdout)."""
    out_path = log.with_suffix(".out")
    with open(out_path, "wb") as out, open(log, "ab") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, elapsed, usage.ru_maxrss / 1024.0, out_path.read_text(errors="replace")


def baseline_child(csv_path: str) -> int:
    """The baseline's child: the same rows through Producer.send_many (no campaign, no zones, no template)."""
    import csv

    from oaksend.worker.enqueue import Producer
    from oaksend.worker.settings import load_settings
    from oaksend.worker.message.validation import SendRequest

    producer = Producer(load_settings())
    now = datetime.now(timezone.utc)
    batch: list[SendRequest] = []
    with open(csv_path, encoding="utf-8-sig", newline="") as f:
        for row in csv.DictReader(f):
            at = datetime.fromisoformat(row["appointment_at"]).replace(tzinfo=timezone.utc)
            batch.append(SendRequest(CHATBOT, row["phone"], f"Hi {row['first_name']}, a reminder of your visit on "
                                     f"{at:%a %d %b at %H:%M}. Reply STOP to opt out.",
                                     idempotency_key=f"baseline:{row['booking']}",
                                     send_at=max(now, at - timedelta(hours=2)), deadline=at))
            if len(batch) == 5000:
                producer.send_many(batch)
                batch = []
    if batch:
        producer.send_many(batch)
    producer.close()
    return 0


def run(opts: argparse.Namespace, procs: Processes, checks: list[Check]) -> dict[str, float]:
    now = datetime.now(timezone.utc)
    csv_path = procs.logdir / "audience.csv"
    write_audience(csv_path, opts.recipients, now)
    offsets = [o for o in opts.offsets.split(",") if o]
    expected = opts.recipients * len(offsets)
    figures: dict[str, float] = {}
    if not opts.skip_baseline:
        base_url = fresh_postgres(opts.pg_admin_url, PG_DATABASE + "_base")
        base_env = child_env(DATABASE_URL=base_url, REDIS_URL=opts.redis_url)
        oaksend_cli(["migrate"], base_env)
        say(f"baseline: the same {opts.recipients:,} rows through Producer.send_many (5,000 a call) ...")
        code, base_s, base_mb, _ = run_child([sys.executable, "-m", "bench.campaign", "--baseline-child",
                                              str(csv_path)], base_env, procs.log_path("baseline"))
        if code != 0:
            raise BenchError(f"the baseline failed ({code}); see {procs.log_path('baseline')}")
        say(f"baseline: {opts.recipients:,} messages committed in {base_s:.2f} s, peak memory {base_mb:.0f} MB")
        figures.update({"baseline_schedule_s": base_s, "baseline_peak_mb": base_mb})
        drop_postgres(opts.pg_admin_url, PG_DATABASE + "_base")
    database_url = fresh_postgres(opts.pg_admin_url, PG_DATABASE)
    flush_redis(opts.redis_url)
    env = child_env(DATABASE_URL=database_url, REDIS_URL=opts.redis_url, NEWOAKS_API_KEY=API_KEY,
                    OAKSEND_QUEUE_NAME=QUEUE, OAKSEND_DEFAULT_RATE_PER_S="1000", OAKSEND_DEFAULT_BURST="100")
    say(f"campaign: database {PG_DATABASE} (fresh), Redis {opts.redis_url} (flushed); migrating ...")
    oaksend_cli(["migrate"], env)
    stack = LatencyStack(opts, procs, env, database_url, checks)
    try:
        if not opts.skip_baseline:
            say(f"latency baseline: {opts.latency_messages} messages at {opts.latency_rate:g}/s, empty outbox ...")
            p50, p99 = stack.measure(0)
            figures.update({"baseline_p50_ms": p50, "baseline_p99_ms": p99})
        stack.control.reset()
        say(f"scheduling: {opts.recipients:,} recipients ({csv_path.stat().st_size / 1e6:.1f} MB CSV) x "
            f"{len(offsets)} offset(s) = {expected:,} reminders with `oaksend campaign create` ...")
        code, wall_s, rss_mb, out = run_child(
            [sys.executable, "-m", "oaksend.worker.cli", "campaign", "create", "--name", "bench", "--chatbot", CHATBOT,
             "--audience", str(csv_path), "--key-column", "booking", "--template",
             "Hi {first_name}, a reminder of your visit on {appointment_at:%a %d %b at %H:%M}. Reply STOP to opt out.",
             "--before", f"appointment_at:{opts.offsets}", "--tz", "America/New_York", "--json"],
            env, procs.log_path("create"))
        if code != 0:
            raise BenchError(f"campaign create failed ({code}); see {procs.log_path('create')}")
        result = json.loads(out)
        stored = stack.pending(result["id"])
        skipped = sum(result["skipped"].values())
        checks.append(("every reminder scheduled", stored + skipped == expected,
                       f"{stored:,} pending + {skipped:,} skipped of {expected:,}"))
        ratio = (f", {wall_s / figures['baseline_schedule_s']:.2f} x the baseline"
                 if "baseline_schedule_s" in figures else "")
        say(f"scheduling: {stored:,} reminders durably scheduled in {wall_s:.2f} s{ratio} "
            f"({stored / wall_s:,.0f} reminders/s), peak memory of the command {rss_mb:.0f} MB")
        figures.update({"schedule_s": wall_s, "peak_mb": rss_mb, "reminders": float(stored)})
        say(f"latency: {opts.latency_messages} unrelated messages to the same chatbot at {opts.latency_rate:g}/s "
            f"while {stored:,} reminders wait ...")
        p50, p99 = stack.measure(opts.latency_messages)
        figures.update({"p50_ms": p50, "p99_ms": p99})
        requests = stack.control.stats().get("total", 0)
        checks.append(("the API saw only the latency messages (no reminder early)",
                       requests == opts.latency_messages, f"{requests} requests"))
        figures.update(measure_update(opts, procs, env, csv_path, result["id"], checks))
    finally:
        stack.close()
    return figures


def write_update(path: Path, source: Path) -> tuple[int, int]:
    """The audience again, every 10th appointment a day later and every 100th row (offset 1) gone:
    (moved, removed)."""
    lines = source.read_text(encoding="utf-8-sig").splitlines()
    out, moved, removed = [lines[0]], 0, 0
    for i, line in enumerate(lines[1:]):
        if i % 100 == 1:
            removed += 1
            continue
        if i % 10 == 0:
            head, appt = line.rsplit(",", 1)
            line = f"{head},{(datetime.fromisoformat(appt) + timedelta(days=1)).isoformat(timespec='minutes')}"
            moved += 1
        out.append(line)
    path.write_text("\n".join(out) + "\n", encoding="utf-8")
    return moved, removed


def measure_update(opts: argparse.Namespace, procs: Processes, env: dict[str, str], csv_path: Path, campaign_id: int,
                   checks: list[Check]) -> dict[str, float]:
    """`oaksend campaign update` of the whole audience with 10% moved and 1% removed, as figures."""
    new_path = procs.logdir / "audience-update.csv"
    moved, removed = write_update(new_path, csv_path)
    say(f"update: {moved:,} appointments moved, {removed:,} rows removed, with `oaksend campaign update` ...")
    code, wall_s, rss_mb, out = run_child(
        [sys.executable, "-m", "oaksend.worker.cli", "campaign", "update", str(campaign_id), "--audience",
         str(new_path), "--json"], env, procs.log_path("update"))
    if code != 0:
        raise BenchError(f"campaign update failed ({code}); see {procs.log_path('update')}")
    result = json.loads(out)
    people = result["recipients"]
    checks.append(("the update moved and removed what the file says",
                   (people["changed"], people["removed"], people["added"]) == (moved, removed, 0),
                   f"recipients {people}, reminders added {result['added']:,}, cancelled {result['cancelled']:,}"))
    say(f"update: {opts.recipients:,} recipients diffed in {wall_s:.2f} s, peak memory {rss_mb:.0f} MB "
        f"({result['added']:,} reminders added, {result['cancelled']:,} cancelled)")
    return {"update_s": wall_s, "update_peak_mb": rss_mb}


class LatencyStack:
    """The sandbox, a dispatcher and a worker on the benchmark's database, and a producer."""

    def __init__(self, opts: argparse.Namespace, procs: Processes, env: dict[str, str], database_url: str,
                 checks: list[Check]) -> None:
        from oaksend.models.db import make_engine
        from oaksend.sandbox.control import SandboxControl
        from oaksend.worker.enqueue import Producer
        from oaksend.worker.settings import load_settings

        self.opts, self.checks = opts, checks
        url = start_sandbox(procs, "sandbox", ["--port", "0", "--api-key", API_KEY])
        env = {**env, "NEWOAKS_BASE_URL": url}
        procs.start("dispatcher", [sys.executable, "-m", "oaksend.worker.cli", "dispatcher"], env)
        procs.start("worker", [sys.executable, "-m", "oaksend.worker.cli", "worker", "--concurrency", "8",
                               "-n", "benchcampaign@%h"], env)
        procs.wait_for_log(["worker"], " ready.", 60)
        procs.wait_for_log(["dispatcher"], "is now active", 30)
        self.producer = Producer(load_settings(database_url=database_url, redis_url=opts.redis_url))
        self.control = SandboxControl(url, API_KEY)
        self.engine = make_engine(database_url, pool_size=2)

    def pending(self, campaign_id: int) -> int:
        from sqlalchemy import func, select

        from oaksend.models.tables import Message

        with self.engine.connect() as conn:
            return conn.scalar(select(func.count()).select_from(Message).where(
                Message.campaign_id == campaign_id, Message.state == "pending")) or 0

    def measure(self, first: int) -> tuple[float, float]:
        """Send the latency messages one at a time; their enqueue -> sent p50 and p99 (ms)."""
        from sqlalchemy import select

        from oaksend.models.tables import Message

        k, per_s = self.opts.latency_messages, self.opts.latency_rate
        time.sleep(1.5)  # the dispatcher settles into its idle wait
        ids = []
        start = time.monotonic()
        for i in range(k):
            delay = start + i / per_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            ids.append(self.producer.send(CHATBOT, f"+1212{3000000 + first + i:07d}", f"Your code is {1000 + i}"))
        deadline = time.monotonic() + 60
        rows: list[Any] = []
        while time.monotonic() < deadline:
            with self.engine.connect() as conn:
                rows = list(conn.execute(select(Message.state, Message.created_at, Message.sent_at)
                                         .where(Message.id.in_(ids))))
            if sum(r[0] == "sent" for r in rows) == k:
                break
            time.sleep(0.2)
        lat = sorted((r[2] - r[1]).total_seconds() * 1000.0 for r in rows if r[0] == "sent")
        self.checks.append((f"latency messages all sent (run from {first})", len(lat) == k, f"{len(lat)} of {k}"))
        p50, p99 = percentile(lat, 50), percentile(lat, 99)
        say(f"  enqueue -> sent p50 {p50:.1f} ms, p99 {p99:.1f} ms (max {lat[-1] if lat else float('nan'):.1f})")
        return p50, p99

    def close(self) -> None:
        self.producer.close()
        self.engine.dispose()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.campaign", description="A 100,000-recipient campaign, as figures.")
    p.add_argument("--recipients", type=int, default=100_000, help="rows of the CSV (100,000)")
    p.add_argument("--offsets", default="2h", help="reminders per recipient, as --before offsets (2h)")
    p.add_argument("--latency-messages", type=int, default=200, help="unrelated messages of the latency run (200)")
    p.add_argument("--latency-rate", type=float, default=10.0, help="their rate, messages/s (10)")
    p.add_argument("--redis-url", default=os.environ.get("BENCH_CAMPAIGN_REDIS_URL", "redis://127.0.0.1:6379/11"),
                   help="a Redis db of the benchmark's own, flushed (redis://127.0.0.1:6379/11)")
    p.add_argument("--pg-admin-url",
                   default=os.environ.get("BENCH_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
                   help=f"an existing database to connect to for dropping/creating {PG_DATABASE}")
    p.add_argument("--skip-baseline", action="store_true", help="measure the campaign only")
    p.add_argument("--baseline-child", help=argparse.SUPPRESS)  # the baseline's own process
    p.add_argument("--keep-logs", action="store_true")
    opts = p.parse_args(argv)
    if opts.recipients < 1 or opts.latency_messages < 1 or opts.latency_rate <= 0:
        p.error("--recipients and --latency-messages must be at least 1, --latency-rate above 0")
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    if opts.baseline_child:
        return baseline_child(opts.baseline_child)

    def body(session: Session) -> int:
        figures = run(opts, session.procs, session.checks)
        say("figures: " + ", ".join(f"{k} {v:,.2f}" for k, v in figures.items()))
        return report_checks(session.checks, session.logdir)

    return run_session(body, prefix="oaksend-bench-campaign-", keep_logs=opts.keep_logs, redis_urls=[opts.redis_url],
                       pg_admin_url=opts.pg_admin_url)


if __name__ == "__main__":
    sys.exit(main())
