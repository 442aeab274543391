"""Prometheus metrics of oaksend, all named `oaksend_*`.

One exporter per process. Each `oaksend worker` is a single process whose
sends run in threads (the `threads` pool), and prometheus_client's metrics are
thread-safe, so every worker process and every dispatcher serves its own
registry on its own port (`OAKSEND_METRICS_PORT` / `--metrics-port`; under
`oaksend run` the dispatcher takes the port and worker i the port + 1 + i) and
Prometheus scrapes each as a target. Counters are summed over targets in
PromQL (`sum by (verdict) (rate(oaksend_sends_total[5m]))`). The
multiprocess mode of prometheus_client (a shared directory of mmap files) is
not used: it is only needed when one port fronts forked children, which
oaksend does not do (a worker started with `--pool prefork` refuses a metrics
port rather than export a fraction of its sends).

Gauges read from the database (messages per state, oldest due age, paused
chatbots) are sampled by each dispatcher process every `SAMPLE_EVERY_S`;
every dispatcher reports the same numbers, so take `max` over them.

Callers make one-line calls (`observe_send`, `observe_throttle`, ...); nothing
here raises into the send path.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics, start_http_server

log = logging.getLogger(__name__)

#: How often a dispatcher process refreshes the gauges read from the database.
SAMPLE_EVERY_S = 5.0

SENDS = Counter("oaksend_sends", "Calls to SendTwilioMessage, by verdict (sent, retry, final, ambiguous) "
                "and chatbot", ["verdict", "chatbot"])
API_LATENCY = Histogram("oaksend_api_latency_seconds", "Time from request to classified answer of each API call",
                        buckets=(0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 20.0))
THROTTLES = Counter("oaksend_throttles", "Messages handed back to wait for their chatbot's rate or pause",
                    ["chatbot"])
PAUSES = Counter("oaksend_pauses", "Chatbot pauses started by an API answer (429, rate codes, 401/403)",
                 ["chatbot"])
RESCUES = Counter("oaksend_rescues", "Leases taken back by the dispatcher: `dispatched` (task lost), `unstarted` "
                  "(dispatched when a worker stopped beating), `uncalled` (claimed by a dead worker, not called) or "
                  "`sending` (worker lost mid-call, recorded ambiguous)", ["kind"])
EXPIRED = Counter("oaksend_expired", "Messages expired by the dispatcher (deadline passed before sending)")
DISPATCHED = Counter("oaksend_dispatched", "Messages leased and published to the broker")
PASS_TIME = Histogram("oaksend_dispatcher_pass_seconds", "Duration of one active dispatcher pass",
                      buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0))
MESSAGES = Gauge("oaksend_messages", "Messages in the outbox per state (sampled by the dispatcher)", ["state"])
OLDEST_DUE = Gauge("oaksend_oldest_due_age_seconds", "How long the oldest due message (pending or dispatched) "
                   "has been waiting; 0 when none is due")
PAUSED = Gauge("oaksend_chatbot_paused", "1 while a chatbot is paused (sampled by the dispatcher)", ["chatbot"])
SAMPLED_AT = Gauge("oaksend_sampled_timestamp_seconds", "When the database gauges were last refreshed")

_STATES = ("pending", "dispatched", "sending", "sent", "failed", "unknown", "expired", "cancelled")


def _value(verdict: Any) -> str:
    return str(getattr(verdict, "value", verdict))


# -- one-line hooks -----------------------------------------------------------------------------
def observe_send(verdict: Any, chatbot: str, latency_s: float | None) -> None:
    """One API call's verdict and latency (the send task calls this after classifying)."""
    SENDS.labels(_value(verdict), chatbot).inc()
    if latency_s is not None:
        API_LATENCY.observe(latency_s)


def observe_throttle(chatbot: str, count: int = 1) -> None:
    THROTTLES.labels(chatbot).inc(count)


def observe_pause(chatbot: str) -> None:
    PAUSES.labels(chatbot).inc()


def observe_pass(stats: Any, seconds: float) -> None:
    """One dispatcher pass: its duration, what it dispatched, rescued and expired."""
    PASS_TIME.observe(seconds)
    if getattr(stats, "dispatched", 0):
        DISPATCHED.inc(stats.dispatched)
    for kind, n in (getattr(stats, "rescued", None) or {}).items():
        if n:
            RESCUES.labels(kind).inc(n)
    if getattr(stats, "expired", 0):
        EXPIRED.inc(stats.expired)


def set_outbox_gauges(counts: Mapping[str, int], oldest_due_at: datetime | None,
                      paused: Mapping[str, Any], now: datetime) -> None:
    """Refresh the gauges read from the database."""
    for state in _STATES:
        MESSAGES.labels(state).set(counts.get(state, 0))
    OLDEST_DUE.set(max(0.0, (now - oldest_due_at).total_seconds()) if oldest_due_at else 0.0)
    for labels in list(PAUSED._metrics):  # chatbots resumed since the last sample
        if labels[0] not in paused:
            PAUSED.remove(*labels)
    for sn in paused:
        PAUSED.labels(sn).set(1)
    SAMPLED_AT.set(time.time())


# -- serving ------------------------------------------------------------------------------------
def serve(port: int | None, host: str = "127.0.0.1") -> int | None:
    """Start this process's exporter on `port` (0 picks a free one); returns the port, or None when unset."""
    if port is None:
        return None
    disable_created_metrics()  # the `_created` series double every counter for no alert's use
    server, _thread = start_http_server(port, addr=host)
    bound = int(server.server_address[1])
    log.info("metrics on http://%s:%d/metrics", host, bound)
    return bound


class OutboxSampler:
    """A daemon thread that refreshes the database gauges every `SAMPLE_EVERY_S` until stopped."""

    def __init__(self, outbox: Any, stop: threading.Event, clock: Any, every_s: float = SAMPLE_EVERY_S) -> None:
        self.outbox, self.stop, self.clock, self.every_s = outbox, stop, clock, every_s
        self.thread = threading.Thread(target=self._run, name="oaksend-metrics-sampler", daemon=True)

    def start(self) -> OutboxSampler:
        self.thread.start()
        return self

    def sample(self) -> None:
        now = self.clock()
        set_outbox_gauges(self.outbox.counts(), self.outbox.oldest_due_at(now), self.outbox.paused_chatbots(now), now)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self.sample()
            except Exception as exc:  # noqa: BLE001 - an outage must not end the sampler
                log.debug("metrics sample failed: %s", type(exc).__name__)
            self.stop.wait(self.every_s)
