"""What every benchmark shares, once: `from bench.harness import ...`.

- core: exit codes, BenchError, say, phone/text_of, percentile, report_checks;
- processes: Processes (started, logged, stopped), child_env, start_sandbox, oaksend_cli, dispatcher log totals;
- services: Redis and PostgreSQL checked, flushed, created fresh, dropped;
- cpu: CPU seconds and RSS from /proc;
- session: run_session, the one `main()` scaffolding (lock, service checks, interrupts, cleanup, logs);
- stack: the oaksend stack of bench.pipeline and bench.recovery (import it from bench.harness.stack).
"""

from bench.harness.core import (
    API_KEY,
    EXIT_CHECK_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    ROOT,
    TERMINAL,
    BenchError,
    Check,
    percentile,
    phone,
    report_checks,
    say,
    text_of,
)
from bench.harness.cpu import cpu_report, cpu_snapshot, cpu_used, proc_cpu_s, rss_kb
from bench.harness.processes import (
    Processes,
    child_env,
    dispatcher_passes,
    log_marks,
    oaksend_cli,
    start_sandbox,
)
from bench.harness.services import (
    check_postgres,
    check_redis,
    drop_postgres,
    flush_redis,
    fresh_postgres,
    pg_engine,
)
from bench.harness.session import Session, run_session, single_run_lock

__all__ = [
    "API_KEY", "EXIT_CHECK_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_UNAVAILABLE", "ROOT", "TERMINAL",
    "BenchError", "Check", "Processes", "Session", "check_postgres", "check_redis", "child_env", "cpu_report",
    "cpu_snapshot", "cpu_used", "dispatcher_passes", "drop_postgres", "flush_redis", "fresh_postgres", "log_marks",
    "oaksend_cli", "percentile", "pg_engine", "phone", "proc_cpu_s", "report_checks", "rss_kb", "run_session",
    "say", "single_run_lock", "start_sandbox", "text_of",
]
