"""Prometheus metrics: what a scrape reads from the statistics, and the observations."""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

import anyio
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from asyncconsumer import (
    Backoff,
    CommitError,
    ConsumerApp,
    HandlerStatistics,
    Message,
    Retry,
    TopicPartition,
    TopicStatistics,
)
from asyncconsumer._runtime import _lanes
from asyncconsumer._runtime._lanes import TIMING_GROUP, LaneTiming
from asyncconsumer.metrics import ConsumerMetrics, HandlerTimer, instrument
from asyncconsumer.testing import MemoryKafka, TestClient

from .stats import make_statistics

GROUP = "billing"


def app() -> ConsumerApp:
    return ConsumerApp(bootstrap_servers="127.0.0.1:9", group_id=GROUP)


def scrape(metrics: ConsumerMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = metrics.render().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset({"group": GROUP, **labels}.items())


def test_a_stopped_app_exports_running_0_and_no_runtime_values() -> None:
    values = scrape(ConsumerMetrics(app()))
    assert values[key("asyncconsumer_running")] == 0
    assert not [k for k in values if k[0] == "asyncconsumer_assigned_partitions"]


def test_values_are_read_from_the_statistics_at_scrape_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a = app()
    metrics = ConsumerMetrics(a)
    t0, t1, t2 = (TopicPartition("orders", p) for p in range(3))
    counts = TopicStatistics(
        fetched=120, handled=100, failed=3, retried=5, dead_lettered=2, skipped=1
    )
    statistics = make_statistics(
        assigned=frozenset({t0, t1, t2}),
        paused=frozenset({t2}),
        completed={t0: 90, t1: 40},
        committed={t0: 80},
        highwater={t0: 100, t1: 50, t2: 7},
        rebalances=2,
        rebalance_age=0.0,
        poll_age=0.2,
        loop_lag=0.01,
        max_loop_lag=0.7,
        handlers={"svc.handle": HandlerStatistics(partitions=3, in_flight=2, buffered=30)},
        topics={"orders": counts},
        unreachable_for=2.5,
    )
    monkeypatch.setattr(a, "statistics", lambda: statistics)
    values = scrape(metrics)
    assert values[key("asyncconsumer_running")] == 1
    for field, expected in counts._asdict().items():
        assert values[key(f"asyncconsumer_records_{field}_total", topic="orders")] == expected
    assert values[key("asyncconsumer_in_flight_records", handler="svc.handle")] == 2
    assert values[key("asyncconsumer_buffered_records", handler="svc.handle")] == 30
    assert values[key("asyncconsumer_assigned_partitions")] == 3
    assert values[key("asyncconsumer_paused_partitions")] == 1
    lag = "asyncconsumer_consumer_lag"
    assert values[key(lag, topic="orders", partition="0")] == 20  # highwater - committed
    assert values[key(lag, topic="orders", partition="1")] == 10  # - completed: none committed
    assert key(lag, topic="orders", partition="2") not in values  # nothing to count from
    assert values[key("asyncconsumer_committed_offset", topic="orders", partition="0")] == 80
    assert values[key("asyncconsumer_highwater_offset", topic="orders", partition="2")] == 7
    assert values[key("asyncconsumer_rebalances_total")] == 2
    assert values[key("asyncconsumer_rebalance_in_progress_seconds")] == 0
    assert values[key("asyncconsumer_poll_age_seconds")] == 0.2
    assert values[key("asyncconsumer_event_loop_lag_seconds")] == 0.01
    assert values[key("asyncconsumer_event_loop_lag_max_seconds")] == 0.7
    assert values[key("asyncconsumer_unreachable_seconds")] == 2.5


def test_commits_and_rebalances_are_observed() -> None:
    a = app()
    metrics = ConsumerMetrics(a)
    a._observers.committed(0.02, None)
    a._observers.committed(0.5, CommitError("refused"))
    a._observers.rebalanced(3.0)
    values = scrape(metrics)
    assert values[key("asyncconsumer_commit_duration_seconds_count")] == 2
    assert values[key("asyncconsumer_commit_duration_seconds_sum")] == pytest.approx(0.52)
    assert values[key("asyncconsumer_commit_failures_total")] == 1
    assert values[key("asyncconsumer_rebalance_duration_seconds_count")] == 1
    assert values[key("asyncconsumer_rebalance_duration_seconds_bucket", le="5.0")] == 1
    assert values[key("asyncconsumer_rebalance_duration_seconds_bucket", le="2.5")] == 0


async def test_the_handler_timer_observes_every_attempt_by_topic() -> None:
    metrics = ConsumerMetrics(app())
    msg: Message[bytes] = Message("orders", 0, 1, None, b"x", [], 0)

    async def ok(m: Any) -> str:
        return "result"

    async def fails(m: Any) -> None:
        raise ValueError("no")

    assert await metrics.timer(msg, ok) == "result"
    with pytest.raises(ValueError, match="no"):
        await metrics.timer(msg, fails)
    await metrics.timer([msg, msg], ok)  # a batch: one observation
    values = scrape(metrics)
    assert values[key("asyncconsumer_handler_duration_seconds_count", topic="orders")] == 3
    bucket = "asyncconsumer_handler_duration_seconds_bucket"
    assert values[key(bucket, topic="orders", le="+Inf")] == 3
    assert values[key(bucket, topic="orders", le="0.001")] == 3  # instant handlers
    assert 0 < values[key("asyncconsumer_handler_duration_seconds_sum", topic="orders")] < 0.003


async def test_handler_buckets_are_cumulative_and_bounds_inclusive() -> None:
    timer = HandlerTimer((0.1, 1.0))
    timer.by_topic["t"] = [0.0, 0.0, 0.0, 0.0]
    counts = timer.by_topic["t"]
    for elapsed in (0.05, 0.1, 0.5, 3.0):  # as __call__ files them
        counts[bisect_left(timer.bounds, elapsed)] += 1
        counts[-1] += elapsed
    [family] = list(timer.families("h", "g"))
    samples = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert samples[("h_bucket", "0.1")] == 2  # 0.05 and 0.1 (le is inclusive)
    assert samples[("h_bucket", "1.0")] == 3
    assert samples[("h_bucket", "+Inf")] == 4
    assert samples[("h_count", None)] == 4
    assert samples[("h_sum", None)] == pytest.approx(3.65)


async def test_a_partition_lane_times_each_record_and_not_its_waits() -> None:
    """A partition lane times back-to-back records (a record starts when the one
    before it ended): a wait for records, a failed attempt's handling or a retry
    backoff between two records must not count in the next record's duration."""
    kafka = MemoryKafka()
    a = ConsumerApp(bootstrap_servers=kafka.bootstrap_servers, group_id=GROUP)
    failed: set[int] = set()

    @a.handler("orders", retry=Retry(attempts=2, backoff=Backoff(initial=0.3)))
    async def handle(msg: Message[bytes]) -> None:
        if msg.value == b"slow":
            await anyio.sleep(0.03)
        elif msg.value == b"fails once" and msg.offset not in failed:
            failed.add(msg.offset)
            raise ValueError("once")

    metrics = instrument(a)
    async with TestClient(a, kafka, backoff_scale=1.0) as client:
        for value in (b"a", b"b", b"slow", b"c"):
            await client.publish("orders", value, partition=0)
        await client.wait_idle()
        # (a lane adds its fast records to the histogram when it waits: a scrape now
        # sees them all)
        idle = scrape(metrics)
        assert idle[key("asyncconsumer_handler_duration_seconds_count", topic="orders")] == 4
        assert (
            idle[key("asyncconsumer_handler_duration_seconds_bucket", topic="orders", le="0.001")]
            == 3
        )
        assert (
            0.03 <= idle[key("asyncconsumer_handler_duration_seconds_sum", topic="orders")] < 0.045
        )
        await anyio.sleep(0.2)  # the lane waits for records
        await client.publish("orders", b"fails once", partition=0)  # then 0.3 s backoff
        await client.publish("orders", b"d", partition=0)
        await client.wait_idle()
    values = scrape(metrics)
    bucket = "asyncconsumer_handler_duration_seconds_bucket"
    assert values[key(bucket, topic="orders", le="+Inf")] == 7  # 6 records, a retry
    assert values[key(bucket, topic="orders", le="0.025")] == 6  # all but the slow one
    assert values[key(bucket, topic="orders", le="0.05")] == 7
    total = values[key("asyncconsumer_handler_duration_seconds_sum", topic="orders")]
    assert 0.03 <= total < 0.045  # the slow record, not the 0.2 s wait or the backoff


async def test_a_busy_partition_lane_adds_its_timings_every_64_records() -> None:
    """A lane that never waits (a backlog) still shows its fast records to a scrape,
    within TIMING_GROUP records: here while record 150 of 200 awaits."""
    kafka = MemoryKafka()
    a = ConsumerApp(
        bootstrap_servers=kafka.bootstrap_servers, group_id=GROUP, auto_offset_reset="earliest"
    )
    reached, release = anyio.Event(), anyio.Event()

    @a.handler("orders")
    async def handle(msg: Message[bytes]) -> None:
        if msg.offset == 150:
            reached.set()
            await release.wait()

    metrics = instrument(a)
    for i in range(200):  # before the app starts: one poll takes them all
        kafka.publish("orders", b"%d" % i, partition=0)
    async with TestClient(a, kafka) as client:
        with anyio.fail_after(5):
            await reached.wait()
        busy = scrape(metrics)
        release.set()
        await client.wait_idle()
    count = "asyncconsumer_handler_duration_seconds_count"
    assert 150 - TIMING_GROUP < busy[key(count, topic="orders")] <= 150
    assert scrape(metrics)[key(count, topic="orders")] == 200


class Attempts:
    """Drives a LaneTiming as a partition lane's loop does, on a clock of its own:
    each attempt advances the clock by its duration."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, bounds: tuple[float, ...]) -> None:
        self.now, self.reads = 1.0, 0
        monkeypatch.setattr(_lanes, "perf_counter", self.clock)
        self.timer = HandlerTimer(bounds)
        self.timing = LaneTiming(self.timer, "t")
        self.left = self.timing.resume()

    def clock(self) -> float:
        self.reads += 1
        return self.now

    def run(self, *durations: float) -> None:
        for seconds in durations:
            self.now += seconds
            self.left -= 1
            if not self.left:
                self.left = self.timing.lap()

    def filed(self) -> list[float]:
        self.timing.close(self.left)
        self.left = self.timing.resume()
        return self.timer.by_topic["t"]


BOUNDS = (0.001, 0.0025, 0.005, 0.01)


def test_fast_attempts_are_filed_exactly_with_one_clock_read_per_group(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    attempts = Attempts(monkeypatch, BOUNDS)
    attempts.run(*[0.000001] * 1000)
    counts = attempts.filed()
    assert counts[:-1] == [1000, 0, 0, 0, 0]
    assert counts[-1] == pytest.approx(0.001)
    assert attempts.timing.size == TIMING_GROUP
    assert attempts.reads < 1000 / TIMING_GROUP + 10  # 1,000 attempts: 23 reads


def test_a_slow_attempt_among_fast_ones_is_filed_in_its_own_bucket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A group of fast attempts that one slow attempt takes over the lowest bound:
    the slow one gets what the others did not take at their mean (here 4 ms: the
    (2.5 ms, 5 ms] bucket), not the group's mean; the sum stays exact; the next
    attempts are timed one by one again."""
    attempts = Attempts(monkeypatch, BOUNDS)
    attempts.run(*[0.00001] * 200, 0.004, *[0.00001] * 99)
    counts = attempts.filed()
    assert counts[:-1] == [299, 0, 1, 0, 0]
    assert counts[-1] == pytest.approx(0.004 + 299 * 0.00001)


def test_a_handler_slower_than_the_lowest_bound_is_timed_attempt_by_attempt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    attempts = Attempts(monkeypatch, BOUNDS)
    attempts.run(*[0.002, 0.007, 0.02] * 10)
    assert attempts.timing.size == 1
    assert attempts.filed()[:-1] == [0, 10, 0, 10, 10]


def test_groups_of_steady_attempts_stay_under_half_the_lowest_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Attempts of 40 us: groups grow to 8 (320 us) and no group passes the bound,
    so every attempt's bucket is exact. When they slow down to 300 us, the group of 8
    that passes the bound is filed as one slow attempt (2.12 ms: what the other 7
    did not take at 40 us), the only attempt out of its bucket; from then on, one
    attempt per group, exact."""
    attempts = Attempts(monkeypatch, BOUNDS)
    attempts.run(*[0.00004] * 500)
    assert attempts.timing.size == 8
    assert attempts.filed()[:-1] == [500, 0, 0, 0, 0]
    attempts.run(*[0.0003] * 50)
    assert attempts.timing.size == 1
    counts = attempts.filed()
    assert counts[:-1] == [549, 1, 0, 0, 0]
    assert counts[-1] == pytest.approx(500 * 0.00004 + 50 * 0.0003)


async def test_a_partition_lane_files_slow_records_among_fast_ones_in_their_buckets() -> None:
    """Records 100, 200 and 300 of 400, run back to back, take 4 ms each: the
    histogram has them above 2.5 ms and the others under the lowest bound."""
    kafka = MemoryKafka()
    a = ConsumerApp(
        bootstrap_servers=kafka.bootstrap_servers, group_id=GROUP, auto_offset_reset="earliest"
    )

    @a.handler("orders")
    async def handle(msg: Message[bytes]) -> None:
        if msg.offset and not msg.offset % 100:
            await anyio.sleep(0.004)

    metrics = instrument(a)
    for i in range(400):  # before the app starts: one poll takes them all
        kafka.publish("orders", b"%d" % i, partition=0)
    async with TestClient(a, kafka) as client:
        await client.wait_idle()
    values = scrape(metrics)
    bucket = "asyncconsumer_handler_duration_seconds_bucket"
    slow = (
        values[key(bucket, topic="orders", le="+Inf")]
        - values[key(bucket, topic="orders", le="0.0025")]
    )
    assert values[key(bucket, topic="orders", le="+Inf")] == 400
    assert 3 <= slow <= 5  # (a stall of the machine may make a record slow)
    assert values[key(bucket, topic="orders", le="0.001")] >= 394
    assert values[key("asyncconsumer_handler_duration_seconds_sum", topic="orders")] >= 0.012


def test_instrument_returns_one_metrics_object_per_app() -> None:
    a = app()
    registry = CollectorRegistry()
    metrics = instrument(a, registry=registry)
    assert instrument(a) is metrics
    assert metrics.registry is registry
    with pytest.raises(ValueError, match="another registry"):
        instrument(a, registry=CollectorRegistry())
    assert instrument(app()) is not metrics
