"""ConsumerApp partition assignment: seeking from on_assign, pattern subscriptions."""

from __future__ import annotations

import re

import anyio

from asyncconsumer import ConsumerApp, Message, TopicPartition
from asyncconsumer.testing.pytest_plugin import KafkaTestBroker

from .conftest import Topics, aproduce, committed_offsets, unique, wait_until


async def test_on_assign_seeks_to_offsets_from_an_external_store(
    kafka_broker: KafkaTestBroker, topics: Topics
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = await topics.create("seek", partitions=2)
    for p in (0, 1):
        await aproduce(
            bootstrap, topic, [(None, f"{p}:{i}".encode()) for i in range(10)], partition=p
        )
    store = {TopicPartition(topic, 0): 3, TopicPartition(topic, 1): 7}
    group = unique("g-seek")
    app = ConsumerApp(bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest")
    seen: dict[TopicPartition, list[int]] = {tp: [] for tp in store}

    @app.on_assign
    async def restore(partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            app.seek(tp, store[tp])

    @app.handler(topic)
    async def handle(msg: Message[bytes]) -> None:
        seen[msg.tp].append(msg.offset)
        store[msg.tp] = msg.offset + 1

    async with app:
        await wait_until(lambda: sum(map(len, seen.values())) == 7 + 3, what="records handled")
        await anyio.sleep(0.2)

    assert seen == {
        TopicPartition(topic, 0): list(range(3, 10)),
        TopicPartition(topic, 1): list(range(7, 10)),
    }
    assert await committed_offsets(bootstrap, group, store) == {tp: 10 for tp in store}


async def test_pattern_subscription_picks_up_a_topic_created_after_start(
    kafka_broker: KafkaTestBroker,
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    prefix = unique("audit")
    await kafka_broker.create_topic(f"{prefix}.first")
    await aproduce(bootstrap, f"{prefix}.first", [(None, b"a")] * 5)
    app = ConsumerApp(
        bootstrap_servers=bootstrap,
        group_id=unique("g-pattern"),
        auto_offset_reset="earliest",
        metadata_max_age_ms=500,
        heartbeat_interval_ms=300,
    )
    seen: dict[str, int] = {}

    @app.handler(pattern=rf"^{re.escape(prefix)}\..*", value_codec="str")
    async def handle(msg: Message[str]) -> None:
        seen[msg.topic] = seen.get(msg.topic, 0) + 1

    async with app:
        await wait_until(lambda: seen.get(f"{prefix}.first") == 5, what="first topic handled")
        await kafka_broker.create_topic(f"{prefix}.second", partitions=2)
        await aproduce(bootstrap, f"{prefix}.second", [(str(i).encode(), b"b") for i in range(6)])
        await wait_until(
            lambda: seen.get(f"{prefix}.second") == 6,
            timeout=45,
            what="topic created after start handled",
        )
        assert {tp.topic for tp in app.assignment()} == {f"{prefix}.first", f"{prefix}.second"}
    assert seen == {f"{prefix}.first": 5, f"{prefix}.second": 6}
