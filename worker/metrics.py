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

Cardinality is bounded: no series carries a chatbot by default (a deployment
may have tens of thousands; per-chatbot figures come from `oaksend stats` and
the database). `OAKSEND_METRICS_CHATBOTS=N` opts in to `oaksend_chatbot_*`
series for at most N chatbots, the busiest seen at the scrapes, plus `other`
for the rest (see `ChatbotCounter`).

Gauges read from the database (messages per state, oldest due age, paused
chatbots) are sampled by each dispatcher process every `SAMPLE_EVERY_S`;
every dispatcher reports the same numbers, so take `max` over them.

The exporter answers in its own thread; callers make one-line calls
(`observe_send`, `observe_throttle`, ...); nothing here raises into the send path.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, disable_created_metrics, start_http_server
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

#: How often a dispatcher process refreshes the gauges read from the database.
SAMPLE_EVERY_S = 5.0
#: The label value of the chatbots beyond the opted-in ones.
OTHER = "other"


class ChatbotCounter(Collector):
    """A counter per chatbot for at most `limit` chatbots, the rest summed under `other`.

    Which chatbots get their own series is decided at each scrape: while fewer than
    `limit` are labelled, the busiest of the others (by their counts so far) are
    added. A labelled chatbot keeps its label until the process restarts and its
    series counts from the scrape that labelled it (what it counted before stays in
    `other`), so every series only ever goes up. With `limit` 0 (the default) it
    counts nothing and exports nothing.
    """

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...] = ()) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, labelnames
        self.limit = 0
        self._lock = threading.Lock()
        self._labelled: dict[str, dict[tuple[str, ...], float]] = {}
        self._other: dict[tuple[str, ...], float] = {}
        self._volume: dict[str, float] = {}  # counts of unlabelled chatbots while there is room; else empty

    def configure(self, limit: int) -> None:
        """Start over with room for `limit` chatbots (0: off)."""
        with self._lock:
            self.limit = max(0, limit)
            self._labelled, self._other, self._volume = {}, {}, {}

    def inc(self, chatbot: str, values: tuple[str, ...] = (), amount: float = 1.0) -> None:
        if self.limit <= 0:
            return
        with self._lock:
            per = self._labelled.get(chatbot)
            if per is not None:
                per[values] = per.get(values, 0.0) + amount
                return
            self._other[values] = self._other.get(values, 0.0) + amount
            if len(self._labelled) < self.limit:
                self._volume[chatbot] = self._volume.get(chatbot, 0.0) + amount

    def _admit(self) -> None:
        """Label the busiest unlabelled chatbots while there is room (chosen outside the lock: sends go on)."""
        with self._lock:
            room = self.limit - len(self._labelled)
            volume = dict(self._volume) if room > 0 else {}
        if not volume:
            return
        chosen = heapq.nlargest(room, volume, key=volume.__getitem__)
        with self._lock:
            for chatbot in chosen:  # a scrape at the same time may have taken some of the room
                if len(self._labelled) < self.limit:
                    self._labelled.setdefault(chatbot, {})
            self._volume = {} if len(self._labelled) >= self.limit else {
                sn: n for sn, n in self._volume.items() if sn not in self._labelled}

    def describe(self) -> list[Any]:
        return []  # names are fixed and distinct from the plain metrics; nothing to check at registration

    def collect(self) -> Iterator[CounterMetricFamily]:
        if self.limit <= 0:
            return
        family = CounterMetricFamily(self.name, self.documentation, labels=["chatbot", *self.labelnames])
        self._admit()
        with self._lock:
            rows = [(sn, v, n) for sn, per in self._labelled.items() for v, n in per.items()]
            rows += [(OTHER, v, n) for v, n in self._other.items()]
        for chatbot, values, n in rows:
            family.add_metric([chatbot, *values], n)
        yield family


SENDS = Counter("oaksend_sends", "Calls to SendTwilioMessage, by verdict (sent, retry, final, ambiguous)",
                ["verdict"])
API_LATENCY = Histogram("oaksend_api_latency_seconds", "Time from request to classified answer of each API call",
                        buckets=(0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 20.0))
THROTTLES = Counter("oaksend_throttles", "Messages handed back to wait for their chatbot's rate or pause")
PAUSES = Counter("oaksend_pauses", "Chatbot pauses started by an API answer (429, rate codes, 401/403)")
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
PAUSED = Gauge("oaksend_chatbots_paused", "Chatbots paused now (sampled by the dispatcher; which ones: "
               "`oaksend chatbot show`)")
SAMPLED_AT = Gauge("oaksend_sampled_timestamp_seconds", "When the database gauges were last refreshed")

# Opt-in (OAKSEND_METRICS_CHATBOTS): the same counts for a bounded set of chatbots plus `other`.
CHATBOT_SENDS = ChatbotCounter("oaksend_chatbot_sends", "Calls to SendTwilioMessage by chatbot (the busiest "
                               "OAKSEND_METRICS_CHATBOTS, the rest as `other`) and verdict", ("verdict",))
CHATBOT_THROTTLES = ChatbotCounter("oaksend_chatbot_throttles", "Messages handed back to wait, by chatbot "
                                   "(bounded, the rest as `other`)")
CHATBOT_PAUSES = ChatbotCounter("oaksend_chatbot_pauses", "Pauses started by an API answer, by chatbot "
                                "(bounded, the rest as `other`)")
for _collector in (CHATBOT_SENDS, CHATBOT_THROTTLES, CHATBOT_PAUSES):
    REGISTRY.register(_collector)

_STATES = ("pending", "dispatched", "sending", "sent", "failed", "unknown", "expired", "cancelled")


def _value(verdict: Any) -> str:
    return str(getattr(verdict, "value", verdict))


def configure(chatbots: int = 0) -> None:
    """How many chatbots get series of their own (`OAKSEND_METRICS_CHATBOTS`; 0: none)."""
    for collector in (CHATBOT_SENDS, CHATBOT_THROTTLES, CHATBOT_PAUSES):
        collector.configure(chatbots)


# -- one-line hooks -----------------------------------------------------------------------------
def observe_send(verdict: Any, chatbot: str, latency_s: float | None) -> None:
    """One API call's verdict and latency (the send task calls this after classifying)."""
    value = _value(verdict)
    SENDS.labels(value).inc()
    CHATBOT_SENDS.inc(chatbot, (value,))
    if latency_s is not None:
        API_LATENCY.observe(latency_s)


def observe_throttle(chatbot: str, count: int = 1) -> None:
    THROTTLES.inc(count)
    CHATBOT_THROTTLES.inc(chatbot, (), count)


def observe_pause(chatbot: str) -> None:
    PAUSES.inc()
    CHATBOT_PAUSES.inc(chatbot)


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
    PAUSED.set(len(paused))
    SAMPLED_AT.set(time.time())


# -- serving ------------------------------------------------------------------------------------
def serve(port: int | None, host: str = "127.0.0.1", chatbots: int = 0) -> int | None:
    """Start this process's exporter on `port` (0 picks a free one) in its own thread; returns the port,
    or None when unset. `chatbots`: how many chatbots get series of their own (0: none)."""
    if port is None:
        return None
    configure(chatbots)
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
