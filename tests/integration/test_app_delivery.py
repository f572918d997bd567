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

    assert sum(map(len, seen.values())) == total, "a record was handled twice"
    assert len(values) == total
    for tp, offsets in produced.items():
        assert seen[tp] == sorted(offsets), f"{tp}: not every record, or out of order"
    end_offsets = {tp: max(offsets) + 1 for tp, offsets in produced.items()}
    assert await committed_offsets(bootstrap, group, end_offsets) == end_offsets
