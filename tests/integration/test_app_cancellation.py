"""Cancellation on a real broker: a CancelledError that no cancellation of ours
raised is a failure of the record; stop() after a run does not leak into the next."""

from __future__ import annotations

import asyncio
from collections import Counter

import anyio
import pytest

from asyncconsumer import (
    Backoff,
    HandlerCancelledError,
    Message,
    Retry,
    TopicPartition,
)
from asyncconsumer.testing.pytest_plugin import KafkaTestBroker

from .conftest import Topics, aproduce, committed_offsets, make_app, unique, wait_until


@pytest.mark.parametrize("ordering", ["partition", "key"])
async def test_a_handler_raising_a_stray_cancelled_error_fails_its_record(
    kafka_broker: KafkaTestBroker, topics: Topics, ordering: str
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = await topics.create(f"stray-cancel-{ordering}")
    await aproduce(bootstrap, topic, [(b"k%d" % i, b"v") for i in range(5)], 0)
    group = unique("g-stray-cancel")
    app = make_app(bootstrap, group)
    calls: Counter[int] = Counter()

    @app.handler(
        topic,
        ordering=ordering,  # type: ignore[arg-type]
        retry=Retry(attempts=2, backoff=Backoff.constant(0.1)),
    )
    async def handle(msg: Message[bytes]) -> None:
        calls[msg.offset] += 1
        if msg.offset == 2:
            # Awaiting a task that someone else cancelled raises CancelledError
            # here, though nothing cancelled this handler.
            task = asyncio.create_task(asyncio.sleep(10))
            task.cancel()
            await task

    with anyio.fail_after(60):  # it used to end silently, or hang in the drain
        with pytest.raises(HandlerCancelledError) as info:
            await app.run()
    assert any(f"{topic}[0]@2" in note for note in info.value.__notes__)
    assert calls[2] == 2  # retried like any failure, then on_failure="stop"
    tp = TopicPartition(topic, 0)
    assert (await committed_offsets(bootstrap, group, [tp]))[tp] == 2


async def test_stop_after_a_run_returned_does_not_stop_the_next_run(
    kafka_broker: KafkaTestBroker, topics: Topics
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = await topics.create("stop-after")
    await aproduce(bootstrap, topic, [(None, b"v")] * 3, 0)
    app = make_app(bootstrap, unique("g-stop-after"))
    handled: list[int] = []

    @app.handler(topic)
    async def handle(msg: Message[bytes]) -> None:
        handled.append(msg.offset)

    async with app:
        await wait_until(lambda: len(handled) == 3, what="the first run")
    app.stop()
    app.abort()
    await aproduce(bootstrap, topic, [(None, b"v")] * 2, 0)
    async with app:
        await wait_until(lambda: len(handled) == 5, timeout=30, what="the second run")
    assert handled == [0, 1, 2, 3, 4]
