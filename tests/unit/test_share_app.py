"""Share handlers in an app, the parts that run without a broker: running them beside
consumer-group handlers (``run_together``), their statistics, health checks, metrics and
liveness. (MemoryKafka has no share groups: tests/integration/test_share_app.py runs
them on Apache Kafka.)"""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio
import pytest
from anyio.abc import TaskStatus
from prometheus_client.parser import text_string_to_metric_families

from asyncconsumer import (
    ConfigurationError,
    ConsumerApp,
    HandlerStatistics,
    ShareConsumer,
    ShareMessage,
    ShareStatistics,
    TopicPartition,
    TopicStatistics,
)
from asyncconsumer._health import HealthBounds, evaluate
from asyncconsumer._runtime._liveness import LivenessMonitor
from asyncconsumer._runtime._pipeline import CounterMap
from asyncconsumer._runtime._snapshot import with_share
from asyncconsumer._runtime._together import run_together
from asyncconsumer._share._runner import ShareRuntime, _Member, _Record, make_spec
from asyncconsumer.metrics import ConsumerMetrics

from .stats import make_statistics


class Part:
    """A stand-in for the engine or the share runtime: it stops gracefully when asked."""

    def __init__(self, name: str, *, fail_at_start: bool = False) -> None:
        self.name = name
        self.fail_at_start = fail_at_start
        self.started = False
        self.stopped_gracefully = False
        self.stop = anyio.Event()
        self.fail_with: Exception | None = None

    async def run(self, *, task_status: TaskStatus[None]) -> None:
        await anyio.sleep(0.01)
        if self.fail_at_start:
            raise RuntimeError(f"{self.name} cannot start")
        self.started = True
        task_status.started()
        await self.stop.wait()
        self.stopped_gracefully = True
        if self.fail_with is not None:
            raise self.fail_with

    def request_stop(self) -> None:
        self.stop.set()

    def fail(self, exc: Exception) -> None:
        self.fail_with = exc
        self.stop.set()


async def test_parts_start_together_and_a_stop_of_one_stops_all() -> None:
    engine, share = Part("engine"), Part("share")
    async with anyio.create_task_group() as tg:
        await tg.start(run_together, [engine, share])
        assert engine.started  # started() once both are
        assert share.started
        engine.request_stop()
    assert engine.stopped_gracefully
    assert share.stopped_gracefully


async def run(parts: list[Part], errors: list[Exception], *, task_status: TaskStatus[None]) -> None:
    try:
        await run_together(parts, task_status=task_status)
    except Exception as exc:
        errors.append(exc)


async def test_a_failure_of_either_stops_both_gracefully_and_is_raised() -> None:
    for failing in (0, 1):
        parts = [Part("engine"), Part("share")]
        errors: list[Exception] = []
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                await tg.start(run, parts, errors)
                parts[failing].fail(ValueError("boom"))
        assert all(p.stopped_gracefully for p in parts)  # not cancelled: drained
        assert [repr(e) for e in errors] == ["ValueError('boom')"]  # itself, not a group


async def test_a_part_that_cannot_start_stops_the_started_one_and_nothing_is_started() -> None:
    engine, share = Part("engine"), Part("share", fail_at_start=True)
    errors: list[Exception] = []
    started = anyio.Event()

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            try:
                await tg.start(run_together, [engine, share])
            except RuntimeError as exc:  # tg.start raises what the child raised
                errors.append(exc)
                return
            started.set()

    with anyio.fail_after(5):
        await main()
    assert [repr(e) for e in errors] == ["RuntimeError('share cannot start')"]
    assert not started.is_set()
    assert engine.stopped_gracefully


async def test_in_a_mixed_app_the_share_group_needs_an_id_of_its_own() -> None:
    app = ConsumerApp(bootstrap_servers="127.0.0.1:9", group_id="g")

    @app.share_handler("jobs")  # its share group would be "g": the consumer group's id
    async def work(msg: ShareMessage) -> None: ...

    @app.handler("orders")
    async def orders(msg: object) -> None: ...

    with pytest.raises(ConfigurationError, match="group_id of its own"):
        await app.run()  # before connecting
    assert app.state == "failed"


async def test_share_handlers_refuse_aiokafkas_raw_security_options() -> None:
    app = ConsumerApp(bootstrap_servers="127.0.0.1:9", group_id="g", security_protocol="SSL")

    @app.share_handler("jobs")
    async def work(msg: ShareMessage) -> None: ...

    with pytest.raises(ConfigurationError, match="security="):
        await app.run()  # not a plaintext connection to a secured cluster


# -- statistics -------------------------------------------------------------------------------


def member(concurrency: int = 3) -> _Member:
    async def work(msg: ShareMessage) -> None: ...

    spec = make_spec(
        work,
        ("jobs",),
        group_id="workers",
        key_codec="bytes",
        value_codec="bytes",
        concurrency=concurrency,
        retry=None,
        on_failure="stop",
        dead_letter_topic=None,
        publish_to=None,
        auto_offset_reset=None,
        group_configs=None,
    )
    consumer = ShareConsumer("jobs", bootstrap_servers="127.0.0.1:9", group_id="workers")
    return _Member(spec, consumer)


def test_a_members_statistics() -> None:
    m = member()
    m.running[1] = _Record("jobs", 0, 7, None, b"v", [], 0, 2)
    m.consumer.lock_expiries = 2
    m.consumer.acknowledgements_dropped = 3
    now = time.monotonic()
    m.consumer.heartbeat_at = now - 4.0
    m.consumer.answered_at = now - 1.5
    # no worker waits for records (all busy): no fetch is due, no stall
    handler, share = m.statistics(now)
    assert handler == HandlerStatistics(partitions=0, in_flight=1, buffered=0)
    assert share.group == "workers"
    assert (share.joined, share.heartbeat_age, share.fetch_age) == (False, 4.0, 0.0)
    assert (share.lock_expiries, share.acknowledgements_dropped) == (2, 3)
    # workers wait for a fetch: its age counts from the last fetch answer ...
    m.waiting, m.waiting_since = 2, now - 9.0
    assert m.statistics(now)[1].fetch_age == pytest.approx(1.5)
    # ... or from when they began to wait, if that came later
    m.waiting_since = now - 0.2
    assert m.statistics(now)[1].fetch_age == pytest.approx(0.2)


def share_stats(**values: Any) -> ShareStatistics:
    fields: dict[str, Any] = {
        "group": "workers",
        "assigned": frozenset({TopicPartition("jobs", 0)}),
        "joined": True,
        "heartbeat_age": 0.5,
        "fetch_age": 0.1,
        "lock_renewals": 1,
        "lock_expiries": 2,
        "acknowledge_errors": 3,
        "acknowledgements_dropped": 4,
    }
    fields.update(values)
    return ShareStatistics(**fields)


def test_share_handlers_are_added_to_the_statistics() -> None:
    counters = CounterMap()
    counters["jobs"].accepted = 5
    counters["orders"].handled = 2
    liveness = LivenessMonitor(list)
    liveness.loop_lag = 0.25
    share_handler = {"w.work": HandlerStatistics(partitions=1, in_flight=2, buffered=3)}
    alone = with_share(None, share_handler, {"w.work": share_stats()}, counters, liveness)
    assert (alone.in_flight, alone.buffered, alone.loop_lag) == (2, 3, 0.25)
    assert alone.topics["jobs"].accepted == 5
    assert alone.assigned == frozenset()  # the consumer group's partitions only
    base = make_statistics(
        in_flight=1,
        buffered=1,
        handlers={"o.orders": HandlerStatistics(1, 1, 1)},
        topics={"orders": TopicStatistics(2, 2, 0, 0, 0, 0)},
    )
    both = with_share(base, share_handler, {"w.work": share_stats()}, counters, liveness)
    assert (both.in_flight, both.buffered) == (3, 4)
    assert set(both.handlers) == {"o.orders", "w.work"}
    assert set(both.share) == {"w.work"}


# -- health ----------------------------------------------------------------------------------

BOUNDS = HealthBounds(max_poll_age=10, max_rebalance=30, max_loop_lag=2, max_unreachable=5)


def checks(health: Any) -> dict[str, tuple[bool, str]]:
    return {c.name: (c.ok, c.detail) for c in health.checks}


def test_a_share_only_app_is_ready_on_its_own_checks() -> None:
    statistics = make_statistics(share={"w.work": share_stats()})
    health = evaluate("running", statistics, bounds=BOUNDS, consumer_group=False)
    assert health.ready
    assert set(checks(health)) == {"started", "share_group", "share_fetch", "event_loop"}
    assert checks(health)["share_group"] == (True, "1 member(s), 1 partitions")


def test_a_dead_share_membership_or_a_stuck_share_fetch_makes_the_app_unready() -> None:
    cases = {
        "share_group": share_stats(heartbeat_age=5.5),
        "share_fetch": share_stats(fetch_age=10.5),
    }
    for check, stats in cases.items():
        statistics = make_statistics(share={"w.work": stats})
        health = evaluate("running", statistics, bounds=BOUNDS, consumer_group=False)
        assert (health.live, health.ready) == (True, False)
        assert [c.name for c in health.checks if not c.ok] == [check]
        assert "w.work" in checks(health)[check][1]
    joining = make_statistics(share={"w.work": share_stats(joined=False, heartbeat_age=1.0)})
    health = evaluate("running", joining, bounds=BOUNDS, consumer_group=False)
    assert not health.ready
    assert "joining share group workers" in checks(health)["share_group"][1]


def test_a_mixed_app_needs_both_kinds_of_checks() -> None:
    group_ok = {"assigned": frozenset({TopicPartition("orders", 0)}), "rebalances": 1}
    ready = make_statistics(**group_ok, share={"w.work": share_stats()})
    health = evaluate("running", ready, bounds=BOUNDS)
    assert health.ready
    assert {"assignment", "fetch_loop", "share_group", "share_fetch"} <= set(checks(health))
    stale = make_statistics(**group_ok, share={"w.work": share_stats(heartbeat_age=9.0)})
    assert not evaluate("running", stale, bounds=BOUNDS).ready
    waiting = make_statistics(share={"w.work": share_stats()})  # no assignment yet
    assert not evaluate("running", waiting, bounds=BOUNDS).ready


# -- metrics ---------------------------------------------------------------------------------


def scrape(app: ConsumerApp, statistics: Any, monkeypatch: pytest.MonkeyPatch) -> dict[Any, float]:
    metrics = ConsumerMetrics(app)
    monkeypatch.setattr(app, "statistics", lambda: statistics)
    text = metrics.render().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def share_app() -> ConsumerApp:
    app = ConsumerApp(bootstrap_servers="127.0.0.1:9", group_id="billing")

    @app.share_handler("jobs", group_id="workers")
    async def work(msg: ShareMessage) -> None: ...

    return app


def test_share_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    topics = {"jobs": TopicStatistics(110, 95, 5, 15, 0, 5, 0, 0, 95, 15, 5, 15)}
    statistics = make_statistics(
        topics=topics,
        handlers={"w.work": HandlerStatistics(1, 2, 3)},
        share={"w.work": share_stats()},
    )
    samples = scrape(share_app(), statistics, monkeypatch)
    topic = frozenset({("group", "billing"), ("topic", "jobs")})
    for name, value in (
        ("accepted", 95),
        ("released", 15),
        ("rejected", 5),
        ("redelivered", 15),
        ("handled", 95),
        ("retried", 15),
    ):
        assert samples[(f"asyncconsumer_records_{name}_total", topic)] == value
    member = frozenset({("group", "billing"), ("handler", "w.work"), ("share_group", "workers")})
    figures: tuple[tuple[str, float], ...] = (
        ("share_lock_renewals_total", 1),
        ("share_lock_expiries_total", 2),
        ("share_acknowledge_errors_total", 3),
        ("share_acknowledgements_dropped_total", 4),
        ("share_assigned_partitions", 1),
        ("share_heartbeat_age_seconds", 0.5),
        ("share_fetch_age_seconds", 0.1),
    )
    for name, figure in figures:
        assert samples[(f"asyncconsumer_{name}", member)] == figure
    in_flight = frozenset({("group", "billing"), ("handler", "w.work")})
    assert samples[("asyncconsumer_in_flight_records", in_flight)] == 2
    # a share-only app has no consumer group: none of its gauges
    assert not any(name.startswith("asyncconsumer_consumer_lag") for name, _ in samples)
    assert ("asyncconsumer_poll_age_seconds", frozenset({("group", "billing")})) not in samples
    assert ("asyncconsumer_event_loop_lag_seconds", frozenset({("group", "billing")})) in samples


# -- liveness --------------------------------------------------------------------------------


async def test_a_blocked_loop_names_the_share_records_running(
    caplog: pytest.LogCaptureFixture,
) -> None:
    monitor = LivenessMonitor(lambda: ["orders.handle on orders[0]@3"], interval=0.02, warn_lag=0.2)
    runtime = ShareRuntime(
        [member().spec],
        bootstrap_servers="127.0.0.1:9",
        group_id="g",
        middleware=(),
        producer=None,
        counters=CounterMap(),
        shutdown_timeout=1.0,
        liveness=monitor,
    )
    m = member()
    m.running[0] = _Record("jobs", 1, 9, None, b"", [], 0, 1)
    runtime._members.append(m)
    caplog.set_level(logging.WARNING, logger="asyncconsumer")
    async with anyio.create_task_group() as tg:
        tg.start_soon(monitor.run)
        await anyio.sleep(0.05)
        time.sleep(0.4)  # noqa: ASYNC251 (blocks the loop on purpose)
        await anyio.sleep(0.1)
        tg.cancel_scope.cancel()
    (line,) = [r.getMessage() for r in caplog.records if "blocked" in r.getMessage()]
    assert "orders.handle on orders[0]@3" in line
    assert "work on jobs[1]@9" in line


async def test_a_share_only_runtime_warns_when_heartbeats_are_no_longer_answered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runtime = ShareRuntime(
        [member().spec],
        bootstrap_servers="127.0.0.1:9",
        group_id="g",
        middleware=(),
        producer=None,
        counters=CounterMap(),
        shutdown_timeout=1.0,
    )
    answered, silent = member(), member()
    silent.consumer.heartbeat_at = time.monotonic() - 20.0
    runtime._members += [answered, silent]
    monitor = runtime.liveness
    monitor.interval = 0.01
    caplog.set_level(logging.WARNING, logger="asyncconsumer")
    with anyio.move_on_after(0.1):
        await monitor.run()
    assert any("no broker has answered for 2" in r.getMessage() for r in caplog.records)
