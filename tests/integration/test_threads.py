"""Blocking handlers: the lag monitor names a handler that blocks the loop, and
plain ``def`` handlers run in threads without holding up other partitions."""

from __future__ import annotations

import logging
import threading
import time

import anyio
import pytest

from asyncconsumer import ConsumerApp, Message, TopicPartition
from asyncconsumer.testing.pytest_plugin import KafkaTestBroker

from .conftest import aproduce, committed_offsets, unique, wait_until


async def test_a_handler_blocking_the_loop_for_a_second_is_reported(
    kafka_broker: KafkaTestBroker, caplog: pytest.LogCaptureFixture
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = unique("blocking")
    await kafka_broker.create_topic(topic, 1)
    await aproduce(bootstrap, topic, [(None, b"fast"), (None, b"block"), (None, b"fast")])
    app = ConsumerApp(
        bootstrap_servers=bootstrap, group_id=unique("g-blocking"), auto_offset_reset="earliest"
    )
    handled: list[int] = []

    @app.handler(topic)
    async def crunch(msg: Message[bytes]) -> None:
        if msg.value == b"block":
            time.sleep(1.0)  # noqa: ASYNC251 -- blocking the event loop, on purpose
        handled.append(msg.offset)

    with caplog.at_level(logging.WARNING, logger="asyncconsumer"):
        async with app:
            await wait_until(lambda: len(handled) == 3, what="three records handled")
            await anyio.sleep(0.3)  # the monitor's next check after the block
            assert app.statistics().max_loop_lag >= 0.5
    warnings = [
        r.getMessage() for r in caplog.records if "event loop was blocked" in r.getMessage()
    ]
    assert len(warnings) == 1, warnings
    assert f"<locals>.crunch on {topic}[0]@1)" in warnings[0]  # the record that blocked


async def test_def_handlers_run_in_threads_and_do_not_block_other_partitions(
    kafka_broker: KafkaTestBroker,
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic, group = unique("threads"), unique("g-threads")
    await kafka_broker.create_topic(topic, 2)
    for partition in (0, 1):
        await aproduce(bootstrap, topic, [(None, b"x")] * 20, partition=partition)
    release = threading.Event()
    loop_thread = threading.get_ident()
    threads: set[int] = set()
    handled: dict[int, list[int]] = {0: [], 1: []}

    app = ConsumerApp(
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        commit_interval=0.2,
    )

    @app.handler(topic)
    def store(msg: Message[bytes]) -> None:  # a blocking client, say
        threads.add(threading.get_ident())
        if msg.partition == 0 and msg.offset == 0:
            assert release.wait(30), "never released"
        handled[msg.partition].append(msg.offset)

    tp0, tp1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    async with app:
        # Partition 0's first record blocks its thread; partition 1 goes on.
        await wait_until(lambda: len(handled[1]) == 20, what="partition 1 handled")
        assert handled[0] == []
        stats = app.statistics()
        assert stats.in_flight == 1
        await wait_until(
            lambda: app.statistics().committed.get(tp1) == 20, what="partition 1 committed"
        )
        assert app.statistics().committed.get(tp0) is None
        release.set()
        await wait_until(lambda: len(handled[0]) == 20, what="partition 0 handled")
    assert handled == {0: list(range(20)), 1: list(range(20))}
    assert loop_thread not in threads
    assert await committed_offsets(bootstrap, group, [tp0, tp1]) == {tp0: 20, tp1: 20}
