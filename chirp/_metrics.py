"""Chirp's Prometheus metrics.

Every metric is registered once per process in prometheus-client's default registry,
so an application's own metrics are served beside them. Labels are the same words
everywhere: ``worker``, ``message``, ``operation``, ``outcome``, ``code``.

- ``chirp_messages_handled_total`` (worker, message, outcome): messages a worker
  finished with; outcome is ``ok``, ``retry``, ``dead``, ``duplicate`` or ``refused``.
- ``chirp_handler_seconds`` (worker, message): time in the handler, whatever came of it.
- ``chirp_receive_lag_seconds`` (worker, message): from publish to start of handling.
- ``chirp_worker_pending``, ``chirp_worker_lag``, ``chirp_worker_scheduled``,
  ``chirp_worker_dead_letters`` (worker): entries delivered but not acknowledged, not
  yet delivered, waiting for a retry, and dead; read from Redis at each scrape.
- ``chirp_operation_calls_total`` (operation, code): calls; code is ``OK`` or the
  error code.
- ``chirp_operation_seconds`` (operation): call duration.
- ``chirp_publish_seconds`` (message): publish latency, until the durable write.

Counters and histograms on the hot paths (every handled message, every operation
call) are kept in plain Python numbers and handed to prometheus-client only when it
collects: its own metric objects take a lock per update, which tripled the overhead of
an operation call. Handlers and operations hold their label children, so the hot paths
pay no label lookup either.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import Final

from prometheus_client import REGISTRY, Gauge
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

_BUCKETS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


class LocalCounter:
    """A counter kept in a plain number; read when Prometheus collects."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        """Add `amount`."""
        self.value += amount


class LocalHistogram:
    """A histogram kept in plain numbers; read when Prometheus collects."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(_BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count one observation."""
        self.counts[bisect.bisect_left(_BUCKETS, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        """Return the buckets as Prometheus wants them: cumulative, ending at +Inf."""
        total = 0
        pairs: list[tuple[str, float]] = []
        for bound, count in zip((*_BUCKETS, float("inf")), self.counts, strict=True):
            total += count
            pairs.append(("+Inf" if bound == float("inf") else str(bound), total))
        return pairs


class _Family:
    """One metric name with its label names and a child per label values."""

    def __init__(self, name: str, doc: str, labels: tuple[str, ...], kind: str) -> None:
        self.name = name
        self.doc = doc
        self.label_names = list(labels)
        self.kind = kind
        self.children: dict[tuple[str, ...], LocalCounter | LocalHistogram] = {}

    def child(self, *values: str) -> LocalCounter | LocalHistogram:
        found = self.children.get(values)
        if found is None:
            found = LocalCounter() if self.kind == "counter" else LocalHistogram()
            self.children[values] = found
        return found

    def collect(self) -> Metric:
        if self.kind == "counter":
            counters = CounterMetricFamily(self.name, self.doc, labels=self.label_names)
            for values, child in self.children.items():
                assert isinstance(child, LocalCounter)
                counters.add_metric(list(values), child.value)
            return counters
        histograms = HistogramMetricFamily(self.name, self.doc, labels=self.label_names)
        for values, child in self.children.items():
            assert isinstance(child, LocalHistogram)
            histograms.add_metric(list(values), child.cumulative(), child.sum)
        return histograms


class _ChirpCollector(Collector):
    def __init__(self) -> None:
        self.families: list[_Family] = []

    def family(
        self, name: str, doc: str, labels: tuple[str, ...], kind: str
    ) -> _Family:
        family = _Family(name, doc, labels, kind)
        self.families.append(family)
        return family

    def collect(self) -> Iterator[Metric]:
        for family in self.families:
            yield family.collect()


_collector = _ChirpCollector()
REGISTRY.register(_collector)

HANDLED: Final = _collector.family(
    "chirp_messages_handled",
    "Messages a worker finished with, by outcome.",
    ("worker", "message", "outcome"),
    "counter",
)
HANDLER_SECONDS: Final = _collector.family(
    "chirp_handler_seconds",
    "Time spent in a worker's handler.",
    ("worker", "message"),
    "histogram",
)
RECEIVE_LAG: Final = _collector.family(
    "chirp_receive_lag_seconds",
    "Time from a message's publication to the start of its handling.",
    ("worker", "message"),
    "histogram",
)
OPERATION_CALLS: Final = _collector.family(
    "chirp_operation_calls",
    "Operation calls by outcome: OK or the error code.",
    ("operation", "code"),
    "counter",
)
OPERATION_SECONDS: Final = _collector.family(
    "chirp_operation_seconds",
    "Duration of operation calls.",
    ("operation",),
    "histogram",
)
PUBLISH_SECONDS: Final = _collector.family(
    "chirp_publish_seconds",
    "Publish latency, until the durable write returned.",
    ("message",),
    "histogram",
)
PENDING: Final = Gauge(
    "chirp_worker_pending",
    "Entries delivered to a worker, not acknowledged.",
    ["worker"],
)
LAG: Final = Gauge(
    "chirp_worker_lag", "Entries not yet delivered to a worker.", ["worker"]
)
SCHEDULED: Final = Gauge(
    "chirp_worker_scheduled", "Retries of a worker waiting for their time.", ["worker"]
)
DEAD_LETTERS: Final = Gauge(
    "chirp_worker_dead_letters", "Entries in a worker's dead letters.", ["worker"]
)


def counter(family: _Family, *values: str) -> LocalCounter:
    """Return the counter child of `family` for these label values."""
    child = family.child(*values)
    assert isinstance(child, LocalCounter)
    return child


def histogram(family: _Family, *values: str) -> LocalHistogram:
    """Return the histogram child of `family` for these label values."""
    child = family.child(*values)
    assert isinstance(child, LocalHistogram)
    return child


class WorkerMetrics:
    """The label children of one worker, bound once."""

    __slots__ = (
        "dead",
        "duplicate",
        "handler_seconds",
        "ok",
        "receive_lag",
        "refused",
        "retry",
    )

    def __init__(self, worker: str, message: str) -> None:
        self.ok = counter(HANDLED, worker, message, "ok")
        self.retry = counter(HANDLED, worker, message, "retry")
        self.dead = counter(HANDLED, worker, message, "dead")
        self.duplicate = counter(HANDLED, worker, message, "duplicate")
        self.refused = counter(HANDLED, worker, message, "refused")
        self.handler_seconds = histogram(HANDLER_SECONDS, worker, message)
        self.receive_lag = histogram(RECEIVE_LAG, worker, message)
