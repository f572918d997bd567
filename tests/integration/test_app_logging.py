"""What a run logs: one INFO line at start, one at stop."""

from __future__ import annotations

import logging

import pytest

from asyncconsumer import ConsumerApp, Message
from asyncconsumer.testing.pytest_plugin import KafkaTestBroker

from .conftest import Topics, aproduce, unique, wait_until


async def test_one_line_at_start_and_one_at_stop(
    kafka_broker: KafkaTestBroker, topics: Topics, caplog: pytest.LogCaptureFixture
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    orders = await topics.create("log-orders", partitions=2)
    payments = await topics.create("log-payments")
    await kafka_broker.create_topic(f"{payments}.DLQ", 1)
    offsets = await aproduce(bootstrap, orders, [(f"k{i}".encode(), b"o") for i in range(10)])
    await aproduce(bootstrap, payments, [(b"a", b"ok")] * 4 + [(b"b", b"bad")])
    group = unique("g-log")
    app = ConsumerApp(bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest")
    done: list[str] = []

    @app.handler(orders)
    async def take_order(msg: Message[bytes]) -> None:
        done.append(msg.topic)

    @app.handler(payments, ordering="key", concurrency=8, on_failure="dead_letter")
    async def take_payment(msg: Message[bytes]) -> None:
        done.append(msg.topic)
        if msg.value == b"bad":
            raise ValueError("bad payment")

    with caplog.at_level(logging.INFO, logger="asyncconsumer"):
        async with app:
            await wait_until(lambda: len(done) == 15, timeout=60, what="every record")
            await wait_until(
                lambda: app.statistics().topics[payments].dead_lettered == 1, what="dead letter"
            )
    lines = [r.getMessage() for r in caplog.records if r.name == "asyncconsumer"]
    start = [line for line in lines if line.startswith("consuming as group")]
    assert start == [
        f"consuming as group {group!r} from {bootstrap}; handlers: "
        f"{take_order.__module__}.{take_order.__qualname__} on {orders} (ordering=partition); "
        f"{take_payment.__module__}.{take_payment.__qualname__} on {payments} "
        "(ordering=key, concurrency 8)"
    ]
    stop = [line for line in lines if line.startswith("stopped group")]
    assert len(stop) == 1, lines
    committed = ", ".join(
        f"{tp.topic}[{tp.partition}]@{max(o) + 1}" for tp, o in sorted(offsets.items())
    )
    assert "after " in stop[0]
    assert "14 records handled, 1 failed, 1 dead-lettered" in stop[0]
    assert f"committed offsets: {committed}, {payments}[0]@5; drain took " in stop[0]
