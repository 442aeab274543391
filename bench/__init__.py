"""Benchmarks that print figures (`make bench` and the other `make bench-*` targets). They assert no speed.

Entry points (`python -m bench.NAME`): pipeline, limits, recovery, scale, campaign, enqueue; bench.noop is the
bare Celery app of pipeline's baseline. What they share (processes, services, the run's scaffolding, the
pipeline's oaksend stack) is in bench.harness; the other modules are parts of one scenario each.
"""
