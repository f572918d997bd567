"""ConsumerApp delivery on a real broker: every record once, in order, committed."""

from __future__ import annotations

import anyio

from asyncconsumer import ConsumerApp, Message, TopicPartition
from asyncconsumer.testing.pytest_plugin import KafkaTestBroker

from .conftest import Topics, aproduce, committed_offsets, unique, wait_until


async def test_every_record_once_in_partition_order_and_committed(
    kafka_broker: KafkaTestBroker, topics: Topics
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    names = [await topics.create(f"delivery{i}", partitions=4) for i in range(3)]
    produced: dict[TopicPartition, list[int]] = {}
    total = 10_000
    for t, name in enumerate(names):
        count = total // 3 + (1 if t < total % 3 else 0)
        records = [(f"key-{i % 97}".encode(), f"{name}:{i}".encode()) for i in range(count)]
        produced.update(await aproduce(bootstrap, name, records))
    assert sum(len(v) for v in produced.values()) == total
    assert len(produced) == 12  # keyed records spread over every partition

    group = unique("g-delivery")
    app = ConsumerApp(
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        commit_interval=0.5,
    )
    seen: dict[TopicPartition, list[int]] = {}
    values: set[bytes] = set()

    @app.handler(*names)
    async def handle(msg: Message[bytes]) -> None:
        seen.setdefault(msg.tp, []).append(msg.offset)
        values.add(msg.value)

    async with app:
        await wait_until(
            lambda: sum(map(len, seen.values())) >= total, timeout=60, what="all records handled"
        )
        await anyio.sleep(0.3)  # anything extra would show up now
        stats = app.statistics()
        assert stats.assigned == set(produced)
        assert (stats.in_flight, stats.buffered, stats.paused) == (0, 0, frozenset())
        assert stats.completed == {tp: max(offsets) + 1 for tp, offsets in produced.items()}

    assert sum(map(len, seen.values())) == total, "a record was handled twice"
    assert len(values) == total
    for tp, offsets in produced.items():
        assert seen[tp] == sorted(offsets), f"{tp}: not every record, or out of order"
    end_offsets = {tp: max(offsets) + 1 for tp, offsets in produced.items()}
    assert await committed_offsets(bootstrap, group, end_offsets) == end_offsets


async def test_a_full_partition_buffer_pauses_fetching_until_the_handler_catches_up(
    kafka_broker: KafkaTestBroker, topics: Topics
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = await topics.create("backpressure", partitions=2)
    for p in (0, 1):
        await aproduce(bootstrap, topic, [(None, b"x" * 100)] * 500, partition=p)
    app = ConsumerApp(
        bootstrap_servers=bootstrap,
        group_id=unique("g-bp"),
        auto_offset_reset="earliest",
        max_buffered_records=50,
        max_poll_records=20,
    )
    stalled = TopicPartition(topic, 0)
    release = anyio.Event()
    handled = {0: 0, 1: 0}

    @app.handler(topic)
    async def handle(msg: Message[bytes]) -> None:
        if msg.partition == 0:
            await release.wait()
        handled[msg.partition] += 1

    async with app:
        await wait_until(lambda: stalled in app.statistics().paused, what="partition 0 paused")
        # The other partition is not held up by the stalled one.
        await wait_until(lambda: handled[1] == 500, what="partition 1 handled")
        stats = app.statistics()
        assert handled[0] == 0
        assert stats.paused == {stalled}
        assert stats.in_flight == 1
        assert 50 <= stats.buffered <= 50 + 20  # bounded, not the 500-record backlog
        release.set()
        await wait_until(lambda: handled[0] == 500, what="partition 0 resumed and drained")
        assert app.statistics().paused == frozenset()
