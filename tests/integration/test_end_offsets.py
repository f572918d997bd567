"""End offsets from ListOffsets: ``seek_to_end``, ``auto_offset_reset="latest"``,
end offsets against the fetch high watermark. The embedded broker answers the
latest offset wrongly once records are batched (see docs/brokers.md), so these
run on Apache Kafka. Records are produced in batches of many records on purpose."""

from __future__ import annotations

import anyio
import pytest

from asyncconsumer import Consumer, ConsumerApp, Message, TopicPartition
from asyncconsumer.testing.pytest_plugin import KafkaTestBroker

from .conftest import Topics, aproduce, committed_offsets, end_offsets, unique, wait_until

pytestmark = pytest.mark.apache_kafka

RECORDS = 1000


async def _filled(kafka_broker: KafkaTestBroker, topics: Topics, prefix: str) -> TopicPartition:
    topic = await topics.create(prefix)
    records = [(None, b"old-%d" % i) for i in range(RECORDS)]
    await aproduce(kafka_broker.bootstrap_servers, topic, records, partition=0)
    return TopicPartition(topic, 0)


async def test_end_offsets_equal_the_fetch_high_watermark(
    kafka_broker: KafkaTestBroker, topics: Topics
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    tp = await _filled(kafka_broker, topics, "ends")
    assert await end_offsets(bootstrap, [tp]) == {tp: RECORDS}
    with anyio.fail_after(30):
        async with Consumer(
            partitions=[tp], bootstrap_servers=bootstrap, auto_offset_reset="earliest"
        ) as consumer:
            await anext(consumer)
            assert consumer.highwater(tp) == RECORDS


async def test_consumer_seek_to_end_lands_at_the_end_offset(
    kafka_broker: KafkaTestBroker, topics: Topics
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    tp = await _filled(kafka_broker, topics, "seek-end")
    with anyio.fail_after(30):
        async with Consumer(
            partitions=[tp], bootstrap_servers=bootstrap, auto_offset_reset="earliest"
        ) as consumer:
            await consumer.seek_to_end(tp)
            assert await consumer.position(tp) == RECORDS
            await aproduce(bootstrap, tp.topic, [(None, b"new-%d" % i) for i in range(3)], 0)
            got = [await anext(consumer) for _ in range(3)]
    assert [(m.offset, m.value) for m in got] == [(RECORDS + i, b"new-%d" % i) for i in range(3)]


async def test_app_seek_to_end_in_on_assign_skips_the_backlog(
    kafka_broker: KafkaTestBroker, topics: Topics
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    tp = await _filled(kafka_broker, topics, "app-seek-end")
    group = unique("g-app-seek-end")
    app = ConsumerApp(
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        commit_interval=0.2,
    )
    seen: list[int] = []
    assigned = anyio.Event()

    @app.on_assign
    async def skip_backlog(partitions: list[TopicPartition]) -> None:
        await app.seek_to_end(*partitions)
        assigned.set()

    @app.handler(tp.topic)
    async def handle(msg: Message[bytes]) -> None:
        seen.append(msg.offset)

    async with app:
        with anyio.fail_after(30):
            await assigned.wait()
        await aproduce(bootstrap, tp.topic, [(None, b"new")] * 2, 0)
        await wait_until(lambda: len(seen) >= 2, what="the new records handled")
        await anyio.sleep(0.3)
    assert seen == [RECORDS, RECORDS + 1]
    assert await committed_offsets(bootstrap, group, [tp]) == {tp: RECORDS + 2}


async def test_consumer_latest_reads_only_what_is_produced_after_joining(
    kafka_broker: KafkaTestBroker, topics: Topics
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    tp = await _filled(kafka_broker, topics, "latest")
    with anyio.fail_after(60):
        async with Consumer(
            tp.topic, bootstrap_servers=bootstrap, group_id=unique("g-latest")
        ) as consumer:  # auto_offset_reset="latest" is the default
            while not consumer.assignment():
                await anyio.sleep(0.05)
            assert await consumer.position(tp) == RECORDS
            await aproduce(bootstrap, tp.topic, [(None, b"new-%d" % i) for i in range(3)], 0)
            got = [await anext(consumer) for _ in range(3)]
    assert [(m.offset, m.value) for m in got] == [(RECORDS + i, b"new-%d" % i) for i in range(3)]


async def test_app_latest_handles_only_what_is_produced_after_joining(
    kafka_broker: KafkaTestBroker, topics: Topics
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    tp = await _filled(kafka_broker, topics, "app-latest")
    group = unique("g-app-latest")
    app = ConsumerApp(bootstrap_servers=bootstrap, group_id=group, commit_interval=0.2)
    seen: list[int] = []

    @app.handler(tp.topic)
    async def handle(msg: Message[bytes]) -> None:
        seen.append(msg.offset)

    async with app:
        await wait_until(lambda: bool(app.assignment()), what="the assignment")
        # A fetch answered (its high watermark is known): the position was reset first.
        await wait_until(lambda: tp in app.statistics().highwater, what="a fetch response")
        await aproduce(bootstrap, tp.topic, [(None, b"new")] * 3, 0)
        await wait_until(lambda: len(seen) >= 3, what="the new records handled")
        await anyio.sleep(0.3)
    assert seen == [RECORDS, RECORDS + 1, RECORDS + 2]
    assert await committed_offsets(bootstrap, group, [tp]) == {tp: RECORDS + 3}
