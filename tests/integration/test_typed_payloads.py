"""``Message[Model]`` handlers: payloads validated by pydantic; an invalid one is a poison pill."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from asyncconsumer import ConsumerApp, DeserializationError, Message, Retry, TopicPartition
from asyncconsumer.testing.pytest_plugin import KafkaTestBroker

from .conftest import aproduce, committed_offsets, unique, wait_until


class Order(BaseModel):
    id: int
    amount: float


async def test_valid_payloads_arrive_typed_and_an_invalid_one_stops_as_a_poison_pill(
    kafka_broker: KafkaTestBroker,
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic, group = unique("typed"), unique("g-typed")
    await kafka_broker.create_topic(topic, 1)
    payloads = [
        b'{"id": 1, "amount": 9.5}',
        b'{"id": 2, "amount": "3"}',  # pydantic's lax mode: "3" -> 3.0
        b'{"id": 3, "amount": 1}',
        b'{"id": "not a number", "amount": 1}',  # offset 3: does not validate
        b'{"id": 5, "amount": 2}',
    ]
    await aproduce(bootstrap, topic, [(None, p) for p in payloads])
    app = ConsumerApp(bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest")
    received: list[Order] = []

    @app.handler(topic)
    async def handle(msg: Message[Order]) -> None:
        received.append(msg.value)

    with pytest.raises(DeserializationError) as caught:
        await app.run()
    assert (caught.value.topic, caught.value.offset, caught.value.field) == (topic, 3, "value")
    assert "validation error" in str(caught.value.__cause__)
    assert received == [Order(id=1, amount=9.5), Order(id=2, amount=3.0), Order(id=3, amount=1)]
    assert all(type(order) is Order for order in received)
    tp = TopicPartition(topic, 0)
    assert await committed_offsets(bootstrap, group, [tp]) == {tp: 3}  # the pill is not


async def test_an_invalid_payload_takes_the_dead_letter_path_without_retries(
    kafka_broker: KafkaTestBroker,
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic, group = unique("typed-dlq"), unique("g-typed-dlq")
    dlq = f"{topic}.DLQ"
    await kafka_broker.create_topic(topic, 1)
    await kafka_broker.create_topic(dlq, 1)
    payloads = [b'{"id": 1, "amount": 1}', b'{"amount": 2}', b'{"id": 3, "amount": 3}']
    await aproduce(bootstrap, topic, [(None, p) for p in payloads])
    app = ConsumerApp(
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        commit_interval=0.2,
    )
    received: list[Order] = []

    @app.handler(topic, on_failure="dead_letter", retry=Retry(attempts=3))
    async def handle(msg: Message[Order]) -> None:
        received.append(msg.value)

    tp = TopicPartition(topic, 0)
    async with app:
        await wait_until(lambda: app.statistics().committed.get(tp) == 3, what="all committed")
        counts = app.statistics().topics[topic]
    assert [order.id for order in received] == [1, 3]
    assert (counts.handled, counts.failed, counts.retried, counts.dead_lettered) == (2, 1, 0, 1)
