"""Prometheus metrics for a :class:`~asyncconsumer.ConsumerApp` (the ``prometheus`` extra).

::

    from asyncconsumer.metrics import instrument

    metrics = instrument(app)            # before the app runs
    body = metrics.render()              # the text exposition format

Most values are read when Prometheus scrapes, from :meth:`ConsumerApp.statistics`
(a custom collector): nothing is counted per record for them. Durations are
observations: handler latency is measured by a middleware added to the app,
commit latency and rebalance duration are reported by the runtime.

Every metric has a ``group`` label (the consumer group). The table of names is in
the documentation, docs/services.md ("Metrics").
"""

from __future__ import annotations

import contextlib
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from ._app import ConsumerApp
from ._errors import ConsumerStoppedError
from ._statistics import ShareStatistics, Statistics

__all__ = ["CONTENT_TYPE", "ConsumerMetrics", "HandlerTimer", "instrument"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
"""The ``Content-Type`` of :meth:`ConsumerMetrics.render`."""

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_TOPIC_COUNTERS = (
    ("fetched", "Records fetched and handed to the handler's lanes."),
    ("handled", "Records whose handler returned."),
    ("failed", "Records whose last attempt failed, or that could not be decoded."),
    ("retried", "Failed attempts that were retried."),
    ("dead_lettered", "Failed records published to the dead-letter topic."),
    ("skipped", "Failed records skipped."),
    ("transactions", "Kafka transactions committed (delivery='exactly_once')."),
    ("aborted_transactions", "Kafka transactions aborted (delivery='exactly_once')."),
    ("accepted", "Share handlers: records acknowledged as done."),
    ("released", "Share handlers: records released for redelivery."),
    ("rejected", "Share handlers: records rejected (archived by the broker)."),
    ("redelivered", "Share handlers: records fetched with a delivery count above 1."),
)
_SHARE_COUNTERS = (
    ("lock_renewals", "Acquisition locks renewed for records still running."),
    ("lock_expiries", "Records decided after their acquisition lock expired."),
    ("acknowledge_errors", "Acknowledgements the broker refused."),
    ("acknowledgements_dropped", "Acknowledgements never delivered (redelivered later)."),
)
_SHARE_GAUGES: tuple[tuple[str, str, Callable[[ShareStatistics], float]], ...] = (
    (
        "assigned_partitions",
        "Partitions the share group coordinator gave the member.",
        lambda m: len(m.assigned),
    ),
    (
        "heartbeat_age_seconds",
        "Seconds since the share group coordinator last answered a heartbeat.",
        lambda m: m.heartbeat_age,
    ),
    (
        "fetch_age_seconds",
        "Seconds since a share fetch was last answered (0 while every worker is busy).",
        lambda m: m.fetch_age,
    ),
)


class HandlerTimer:
    """Observes each handler attempt's duration, by topic (the middleware chain
    included; a batch is one observation).

    The app's processors call :meth:`observe` around each attempt when the app is
    instrumented: two clock reads and a call per record, where a middleware layer
    would add a coroutine per record (partition lanes do less: one clock read per
    group of up to 64 back-to-back attempts, which they add to the topic's
    :meth:`series` themselves, exact while a group spans less than the lowest
    bound). It keeps its
    own bucket counts (a list per topic, no lock: only the event loop writes them)
    and the collector turns them into the ``handler_duration_seconds`` histogram at scrape time;
    prometheus_client's ``Histogram.observe`` takes a lock and cost about a third
    of the throughput. An instance is also a middleware (``async (msg,
    call_next)``), for a chain of your own.
    """

    __slots__ = ("_first", "bounds", "by_topic")

    def __init__(self, bounds: Iterable[float] = LATENCY_BUCKETS) -> None:
        self.bounds = tuple(sorted(bounds))
        # The lowest bound: fast handlers' attempts fall below it, without a search.
        self._first = self.bounds[0] if self.bounds else float("inf")
        # topic -> [count per bucket (the last one: above every bound)..., sum]
        self.by_topic: dict[str, list[float]] = {}

    def observe(self, topic: str, seconds: float) -> None:
        counts = self.by_topic.get(topic)
        if counts is None:
            counts = self.series(topic)
        counts[0 if seconds <= self._first else bisect_left(self.bounds, seconds)] += 1
        counts[-1] += seconds

    def series(self, topic: str) -> list[float]:
        counts = self.by_topic.get(topic)
        if counts is None:
            counts = self.by_topic[topic] = [0.0] * (len(self.bounds) + 2)
        return counts

    async def __call__(self, msg: Any, call_next: Any) -> Any:
        topic = msg[0].topic if isinstance(msg, list) else msg.topic
        started = time.perf_counter()
        try:
            return await call_next(msg)
        finally:
            self.observe(topic, time.perf_counter() - started)

    def families(self, name: str, group: str) -> Iterator[Metric]:
        family = HistogramMetricFamily(
            name,
            "Duration of handler attempts (middleware included), by topic.",
            labels=["group", "topic"],
        )
        for topic, counts in sorted(self.by_topic.items()):
            cumulative, buckets = 0.0, []
            for bound, count in zip(self.bounds, counts, strict=False):
                cumulative += count
                buckets.append((repr(float(bound)), cumulative))
            buckets.append(("+Inf", cumulative + counts[-2]))
            family.add_metric([group, topic], buckets, sum_value=counts[-1])
        yield family


class ConsumerMetrics:
    """The Prometheus metrics of one app, in ``registry`` (default: a registry of
    its own, so that several apps or tests never collide)."""

    def __init__(
        self,
        app: ConsumerApp,
        *,
        registry: CollectorRegistry | None = None,
        namespace: str = "asyncconsumer",
        latency_buckets: Iterable[float] = LATENCY_BUCKETS,
    ) -> None:
        self.app = app
        self.registry = registry if registry is not None else CollectorRegistry()
        group = app.settings.group_id or ""
        self._group = group
        buckets = tuple(latency_buckets)
        self.commit_duration = Histogram(
            "commit_duration_seconds",
            "Duration of offset commits (failed ones included).",
            ["group"],
            namespace=namespace,
            registry=self.registry,
            buckets=buckets,
        ).labels(group)
        self.commit_failures = Counter(
            "commit_failures",
            "Offset commits that failed (the offsets are committed later, or redelivered).",
            ["group"],
            namespace=namespace,
            registry=self.registry,
        ).labels(group)
        self.rebalance_duration = Histogram(
            "rebalance_duration_seconds",
            "Duration of rebalances, from the revoke (or the subscription) to the end "
            "of the assignment.",
            ["group"],
            namespace=namespace,
            registry=self.registry,
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
        ).labels(group)
        self.timer = HandlerTimer(buckets)
        self.registry.register(_StatisticsCollector(app, namespace, group, self.timer))
        app._observers.add(self)
        app._observers.timing = self.timer  # read when the app starts

    # -- RuntimeObserver -------------------------------------------------------

    def committed(self, duration: float, error: BaseException | None) -> None:
        self.commit_duration.observe(duration)
        if error is not None:
            self.commit_failures.inc()

    def rebalanced(self, duration: float) -> None:
        self.rebalance_duration.observe(duration)

    # -- exposition ------------------------------------------------------------

    def render(self) -> bytes:
        """Every metric of the registry, in the Prometheus text format."""
        return generate_latest(self.registry)


class _StatisticsCollector(Collector):
    """Reads ``app.statistics()`` at scrape time."""

    def __init__(self, app: ConsumerApp, namespace: str, group: str, timer: HandlerTimer) -> None:
        self._app = app
        self._ns = namespace
        self._group = group
        self._timer = timer

    def describe(self) -> Iterator[Metric]:
        return iter(())  # names are checked for collisions by the histograms above

    def collect(self) -> Iterator[Metric]:
        ns, group = self._ns, self._group
        yield from self._timer.families(f"{ns}_handler_duration_seconds", group)
        running = GaugeMetricFamily(
            f"{ns}_running", "1 while the app runs, else 0.", labels=["group"]
        )
        stats: Statistics | None = None
        with contextlib.suppress(ConsumerStoppedError):
            stats = self._app.statistics()
        running.add_metric([group], 1.0 if stats is not None else 0.0)
        yield running
        if stats is None:
            return
        share_only = bool(self._app._share_specs) and not self._app._registry
        yield from _from_statistics(ns, group, stats, consumer_group=not share_only)
        if stats.share:
            yield from _share_families(ns, group, stats)


def _share_families(ns: str, group: str, s: Statistics) -> Iterator[Metric]:
    """Per share handler: its membership and acknowledgements."""
    labels = ["group", "handler", "share_group"]
    members = sorted(s.share.items())
    for field, doc in _SHARE_COUNTERS:
        family = CounterMetricFamily(f"{ns}_share_{field}", doc, labels=labels)
        for name, m in members:
            family.add_metric([group, name, m.group], getattr(m, field))
        yield family
    for field, doc, value in _SHARE_GAUGES:
        gauge = GaugeMetricFamily(f"{ns}_share_{field}", doc, labels=labels)
        for name, m in members:
            gauge.add_metric([group, name, m.group], value(m))
        yield gauge


def _from_statistics(
    ns: str, group: str, s: Statistics, *, consumer_group: bool = True
) -> Iterator[Metric]:
    topics = sorted(s.topics.items())
    for field, doc in _TOPIC_COUNTERS:
        family = CounterMetricFamily(f"{ns}_records_{field}", doc, labels=["group", "topic"])
        for topic, counts in topics:
            family.add_metric([group, topic], getattr(counts, field))
        yield family

    in_flight = GaugeMetricFamily(
        f"{ns}_in_flight_records", "Records whose handler is running.", labels=["group", "handler"]
    )
    buffered = GaugeMetricFamily(
        f"{ns}_buffered_records",
        "Records fetched and not started yet.",
        labels=["group", "handler"],
    )
    for name, h in sorted(s.handlers.items()):
        in_flight.add_metric([group, name], h.in_flight)
        buffered.add_metric([group, name], h.buffered)
    yield in_flight
    yield buffered

    if consumer_group:
        yield from _consumer_group_families(ns, group, s)
    loop_lag = GaugeMetricFamily(
        f"{ns}_event_loop_lag_seconds",
        "Event-loop lag at the last check (every 0.25 s).",
        labels=["group"],
    )
    loop_lag.add_metric([group], s.loop_lag)
    yield loop_lag
    max_lag = GaugeMetricFamily(
        f"{ns}_event_loop_lag_max_seconds",
        "Largest event-loop lag since the app started.",
        labels=["group"],
    )
    max_lag.add_metric([group], s.max_loop_lag)
    yield max_lag


def _consumer_group_families(ns: str, group: str, s: Statistics) -> Iterator[Metric]:
    assigned = GaugeMetricFamily(
        f"{ns}_assigned_partitions", "Partitions this member handles.", labels=["group"]
    )
    assigned.add_metric([group], len(s.assigned))
    yield assigned
    paused = GaugeMetricFamily(
        f"{ns}_paused_partitions",
        "Partitions whose fetching is paused (buffer full).",
        labels=["group"],
    )
    paused.add_metric([group], len(s.paused))
    yield paused

    labels = ["group", "topic", "partition"]
    lag = GaugeMetricFamily(
        f"{ns}_consumer_lag",
        "Records behind: the fetch high watermark minus the committed offset (before "
        "this member's first commit of the partition, minus its processed position).",
        labels=labels,
    )
    highwater = GaugeMetricFamily(
        f"{ns}_highwater_offset", "The fetch high watermark.", labels=labels
    )
    committed = GaugeMetricFamily(
        f"{ns}_committed_offset", "The offset this member last committed.", labels=labels
    )
    for tp in sorted(s.assigned):
        values = [group, tp.topic, str(tp.partition)]
        mark = s.highwater.get(tp)
        done = s.committed.get(tp)
        if done is not None:
            committed.add_metric(values, done)
        base = done if done is not None else s.completed.get(tp)
        if mark is not None:
            highwater.add_metric(values, mark)
            if base is not None:
                lag.add_metric(values, max(0, mark - base))
    yield lag
    yield highwater
    yield committed

    rebalances = CounterMetricFamily(
        f"{ns}_rebalances",
        "Rebalances completed (the initial join included).",
        labels=["group"],
    )
    rebalances.add_metric([group], s.rebalances)
    yield rebalances
    rebalancing = GaugeMetricFamily(
        f"{ns}_rebalance_in_progress_seconds",
        "How long the rebalance in progress has lasted (0: none).",
        labels=["group"],
    )
    rebalancing.add_metric([group], s.rebalance_age)
    yield rebalancing
    poll_age = GaugeMetricFamily(
        f"{ns}_poll_age_seconds", "Seconds since the fetch loop last polled.", labels=["group"]
    )
    poll_age.add_metric([group], s.poll_age)
    yield poll_age
    unreachable = GaugeMetricFamily(
        f"{ns}_unreachable_seconds",
        "Seconds since a broker last answered, while requests fail (0: a request waits).",
        labels=["group"],
    )
    unreachable.add_metric([group], s.unreachable_for)
    yield unreachable


def instrument(app: ConsumerApp, *, registry: CollectorRegistry | None = None) -> ConsumerMetrics:
    """The :class:`ConsumerMetrics` of ``app``, created on the first call.

    Call it before the app runs (the handler timer is a middleware, read at
    start). The web integrations and ``asyncconsumer run --metrics-port`` call it
    too, and share the same metrics. ``registry`` applies to the first call only;
    pass ``prometheus_client.REGISTRY`` to expose the app's metrics with the
    process's default ones.
    """
    metrics = app._metrics
    if metrics is None:
        metrics = app._metrics = ConsumerMetrics(app, registry=registry)
    elif registry is not None and registry is not metrics.registry:
        raise ValueError("this app is already instrumented with another registry")
    return metrics
