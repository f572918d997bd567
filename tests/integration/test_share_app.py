"""Share handlers beside consumer-group handlers in one app, and what the app tells about
them: statistics, Prometheus metrics, health, tracing (Apache Kafka 4.3)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from aiokafka import AIOKafkaProducer
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families

from asyncconsumer import ConsumerApp, Message, Retry, ShareConsumer, ShareMessage, TopicPartition
from asyncconsumer._health import HealthBounds
from asyncconsumer.integrations.opentelemetry import TracingMiddleware
from asyncconsumer.metrics import instrument

from .conftest import Topics, aproduce, committed_offsets, make_app, unique, wait_until

pytestmark = pytest.mark.apache_kafka  # share groups: Apache Kafka 4.2+ only


class Flaky(Exception):
    pass


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def accepted_everything(bootstrap: str, topic: str, group: str) -> None:
    """A new member of ``group`` gets only a record produced now: everything before it
    was accepted (none released, none left locked)."""
    await aproduce(bootstrap, topic, [(None, b"marker")], partition=0)
    async with ShareConsumer(topic, bootstrap_servers=bootstrap, group_id=group) as consumer:
        with anyio.fail_after(30):
            msg = await anext(aiter(consumer))
    assert (msg.value, msg.delivery_count) == (b"marker", 1)


async def test_one_app_runs_both_kinds_of_handlers_and_a_stop_drains_both(
    kafka_bootstrap: str, topics: Topics
) -> None:
    orders = await topics.create("mixed-orders", partitions=2)
    jobs = await topics.create("mixed-jobs", partitions=2)
    group, share_group = unique("mixed"), unique("mixed-share")
    records = [(b"k%d" % (i % 7), b"%d" % i) for i in range(40)] + [(b"slow", b"slow")]
    await aproduce(kafka_bootstrap, orders, records)
    await aproduce(kafka_bootstrap, jobs, records)
    app = make_app(kafka_bootstrap, group)
    metrics = instrument(app)
    done: dict[str, list[bytes]] = {"orders": [], "jobs": []}
    started: set[str] = set()

    async def work(kind: str, value: bytes) -> None:
        if value == b"slow":
            started.add(kind)
            await wait_until(lambda: len(started) == 2, what="both slow records running")
            await anyio.sleep(0.5)  # still running when the app is asked to stop
        done[kind].append(value)

    @app.handler(orders, ordering="key")
    async def handle(msg: Message[bytes]) -> None:
        await work("orders", msg.value)

    @app.share_handler(jobs, group_id=share_group, concurrency=5, auto_offset_reset="earliest")
    async def run_job(msg: ShareMessage) -> None:
        await work("jobs", msg.value)

    with anyio.fail_after(90):
        async with app:
            assert app.state == "running"
            await wait_until(lambda: started == {"orders", "jobs"}, timeout=60, what="both")
            statistics = app.statistics()
            health = app.health()
            text = metrics.render().decode()
        # exited: a graceful stop of both; the slow records finished
    assert sorted(done["orders"]) == sorted(v for _, v in records)
    assert sorted(done["jobs"]) == sorted(v for _, v in records)
    names = {c.name for c in health.checks}
    assert {"assignment", "fetch_loop", "share_group", "share_fetch", "event_loop"} <= names
    assert health.ready, health.as_dict()
    assert sorted(name.rsplit(".", 1)[1] for name in statistics.handlers) == [
        "handle",
        "run_job",
    ]
    (member,) = statistics.share.values()
    assert member.group == share_group
    assert member.assigned == {TopicPartition(jobs, 0), TopicPartition(jobs, 1)}
    assert statistics.assigned == {TopicPartition(orders, 0), TopicPartition(orders, 1)}
    assert statistics.in_flight >= 2  # one slow record of each kind
    assert f'asyncconsumer_consumer_lag{{group="{group}",partition="0",topic="{orders}"}}' in text
    assert "asyncconsumer_share_heartbeat_age_seconds{" in text
    tps = [TopicPartition(orders, 0), TopicPartition(orders, 1)]
    committed = await committed_offsets(kafka_bootstrap, group, tps)
    assert sum(o or 0 for o in committed.values()) == len(records)
    await accepted_everything(kafka_bootstrap, jobs, share_group)


@pytest.mark.parametrize("failing", ["share", "group"])
async def test_an_error_in_either_kind_of_handler_stops_the_whole_app_with_it(
    kafka_bootstrap: str, topics: Topics, failing: str
) -> None:
    orders = await topics.create("mixed-fail-orders")
    jobs = await topics.create("mixed-fail-jobs")
    group, share_group = unique("mixed-fail"), unique("mixed-fail-share")
    await aproduce(kafka_bootstrap, orders, [(None, b"%d" % i) for i in range(10)])
    await aproduce(kafka_bootstrap, jobs, [(None, b"%d" % i) for i in range(10)])
    app = make_app(kafka_bootstrap, group)
    handled: dict[str, list[bytes]] = {"group": [], "share": []}

    async def work(kind: str, value: bytes) -> None:
        if kind == failing and value == b"5":
            # the other kind has handled records by now: a stop is not a failed start
            await wait_until(lambda: len(handled[other]) > 0, what="the other kind")
            raise Flaky(value)
        handled[kind].append(value)

    other = "group" if failing == "share" else "share"

    @app.handler(orders)
    async def handle(msg: Message[bytes]) -> None:
        await work("group", msg.value)

    @app.share_handler(jobs, group_id=share_group, auto_offset_reset="earliest")
    async def run_job(msg: ShareMessage) -> None:
        await work("share", msg.value)

    with anyio.fail_after(90), pytest.raises(Flaky):
        await app.run()
    assert app.state == "failed"
    assert isinstance(app.error, Flaky)
    # a graceful stop of both, not a cancellation: the consumer group committed what it
    # handled (in order: one partition), the share group accepted what it handled and
    # released the rest, which comes back
    tp = TopicPartition(orders, 0)
    committed = await committed_offsets(kafka_bootstrap, group, [tp])
    assert committed[tp] == len(handled["group"])
    assert handled["group"] == [b"%d" % i for i in range(len(handled["group"]))]
    rest = {b"%d" % i for i in range(10)} - set(handled["share"])
    if failing == "share":
        assert b"5" in rest, "the failed record is released, not accepted"
    if rest:
        assert set(await take(kafka_bootstrap, jobs, share_group, len(rest))) == rest
    await accepted_everything(kafka_bootstrap, jobs, share_group)


async def take(bootstrap: str, topic: str, group: str, count: int) -> list[bytes]:
    """The values of the next ``count`` records a new member of ``group`` gets."""
    got: list[bytes] = []
    async with ShareConsumer(topic, bootstrap_servers=bootstrap, group_id=group) as consumer:
        with anyio.fail_after(30):
            async for msg in consumer:
                got.append(msg.value)
                if len(got) == count:
                    break
    return got


async def test_share_statistics_and_metrics_count_every_outcome(
    kafka_bootstrap: str, topics: Topics
) -> None:
    """100 records: 85 handled at once, 10 failing their first delivery (released once,
    then handled), 5 failing every time (released once, then rejected)."""
    topic = await topics.create("share-figures", partitions=2)
    await aproduce(
        kafka_bootstrap,
        topic,
        [(b"ok", b"%d" % i) for i in range(85)]
        + [(b"flaky", b"f%d" % i) for i in range(10)]
        + [(b"poison", b"p%d" % i) for i in range(5)],
    )
    group = unique("share-figures")
    app = ConsumerApp(bootstrap_servers=kafka_bootstrap, group_id=group)
    metrics = instrument(app)

    @app.share_handler(
        topic,
        concurrency=10,
        retry=Retry(attempts=2),
        on_failure="skip",
        auto_offset_reset="earliest",
    )
    async def work(msg: ShareMessage) -> None:
        if msg.key == b"poison" or (msg.key == b"flaky" and msg.delivery_count == 1):
            raise Flaky(msg.value)

    def settled() -> int:
        counts = app.statistics().topics.get(topic)
        return 0 if counts is None else counts.accepted + counts.rejected

    with anyio.fail_after(90):
        async with app:
            await wait_until(lambda: settled() == 100, timeout=60, what="100 records settled")
            await anyio.sleep(1.0)  # a record delivered again, if any, has time to show
            statistics = app.statistics()
            health = app.health()
            text = metrics.render().decode()
    counts = statistics.topics[topic]
    assert counts.fetched == 115  # 100 first deliveries, 15 second ones
    assert (counts.handled, counts.failed, counts.retried, counts.skipped) == (95, 5, 15, 5)
    assert (counts.accepted, counts.released, counts.rejected) == (95, 15, 5)
    assert counts.redelivered == 15
    assert counts.dead_lettered == 0
    (name,) = statistics.share
    assert name.endswith(".work")
    assert statistics.handlers[name].in_flight == 0
    member = statistics.share[name]
    assert member.joined
    assert (member.lock_expiries, member.acknowledge_errors) == (0, 0)
    assert member.acknowledgements_dropped == 0
    assert health.ready, health.as_dict()
    assert {c.name for c in health.checks} == {
        "started",
        "share_group",
        "share_fetch",
        "event_loop",
    }
    scraped = samples(text)
    labels = frozenset({("group", group), ("topic", topic)})
    for field, value in (
        ("fetched", 115),
        ("handled", 95),
        ("retried", 15),
        ("skipped", 5),
        ("accepted", 95),
        ("released", 15),
        ("rejected", 5),
        ("redelivered", 15),
    ):
        assert scraped[(f"asyncconsumer_records_{field}_total", labels)] == value, field
    # every attempt timed (the handler's duration histogram covers share handlers)
    assert scraped[("asyncconsumer_handler_duration_seconds_count", labels)] == 115
    member_labels = frozenset({("group", group), ("handler", name), ("share_group", member.group)})
    assert scraped[("asyncconsumer_share_assigned_partitions", member_labels)] == 2
    assert ("asyncconsumer_consumer_lag", labels) not in scraped  # no consumer group


async def test_health_reports_a_dead_share_membership_and_a_stuck_share_fetch(
    kafka_bootstrap: str, topics: Topics
) -> None:
    topic = await topics.create("share-health")
    app = ConsumerApp(bootstrap_servers=kafka_bootstrap, group_id=unique("share-health"))
    bounds = HealthBounds(max_poll_age=2.0, max_unreachable=2.5)

    @app.share_handler(topic, auto_offset_reset="earliest")
    async def work(msg: ShareMessage) -> None: ...

    def failing() -> list[str]:
        return [c.name for c in app.health(bounds).checks if not c.ok]

    with anyio.fail_after(60):
        async with app:
            await wait_until(lambda: app.health(bounds).ready, what="ready")
            with pytest.raises(RuntimeError, match="already running"):
                await app.run()
            await anyio.sleep(1.0)  # idle: empty fetches are answered, heartbeats too
            assert app.health(bounds).ready, app.health(bounds).as_dict()
            consumer = app._share_runtime._members[0].consumer  # type: ignore[union-attr]

            async def stuck(*args: object) -> int:
                await anyio.sleep_forever()
                return 0

            consumer._fetch_from = stuck  # type: ignore[method-assign]
            await wait_until(lambda: failing() == ["share_fetch"], what="stuck fetch seen")
            assert consumer._heartbeats is not None
            consumer._heartbeats.cancel()  # the membership dies: no more heartbeats
            await wait_until(
                lambda: failing() == ["share_group", "share_fetch"], what="dead membership"
            )
            detail = app.health(bounds).as_dict()["checks"]["share_group"]["detail"]
            assert "no heartbeat answer from share group" in detail
            assert app.health(bounds).live  # not ready; the app has not failed
            app.abort()  # the fetch never returns


async def test_share_handlers_get_middleware_and_tracing_spans(
    kafka_bootstrap: str, topics: Topics
) -> None:
    topic = await topics.create("share-traced")
    trace_id = 0x4BF92F3577B34DA6A3CE929D0E0E4736
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        for i in range(3):
            traceparent = f"00-{trace_id:032x}-{i + 1:016x}-01".encode()
            await producer.send_and_wait(topic, b"v", headers=[("traceparent", traceparent)])
    finally:
        await producer.stop()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    share_group = unique("share-traced")
    seen: list[Any] = []

    async def outer(msg: Any, call_next: Any) -> Any:
        seen.append(type(msg).__name__)
        return await call_next(msg)

    app = ConsumerApp(
        bootstrap_servers=kafka_bootstrap,
        group_id=share_group,
        middleware=[outer, TracingMiddleware(group_id=share_group, tracer_provider=provider)],
    )
    handled: list[int] = []

    @app.share_handler(topic, auto_offset_reset="earliest")
    async def work(msg: ShareMessage) -> None:
        handled.append(msg.offset)

    with anyio.fail_after(60):
        async with app:
            await wait_until(lambda: len(handled) == 3, what="three records handled")
    assert seen == ["ShareMessage"] * 3
    spans = sorted(
        exporter.get_finished_spans(),
        key=lambda span: int(str(dict(span.attributes or {})["messaging.kafka.offset"])),
    )
    assert [span.name for span in spans] == [f"{topic} process"] * 3
    for i, span in enumerate(spans):
        assert span.kind == SpanKind.CONSUMER
        assert span.parent is not None
        assert (span.parent.trace_id, span.parent.span_id) == (trace_id, i + 1)
        attributes = dict(span.attributes or {})
        assert attributes["messaging.consumer.group.name"] == share_group
        assert attributes["messaging.destination.name"] == topic
