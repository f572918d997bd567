"""ConsumerApp failure and stop: nothing past a failed or cancelled record is committed."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest

from asyncconsumer import ConsumerApp, DeserializationError, Message, TopicPartition
from asyncconsumer.testing.pytest_plugin import KafkaTestBroker

from .conftest import Topics, aproduce, committed_offsets, unique, wait_until


class Boom(Exception):
    pass


async def test_handler_error_stops_app_run_raises_it_and_offset_stays(
    kafka_broker: KafkaTestBroker, topics: Topics
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = await topics.create("fail", partitions=2)
    for p in (0, 1):
        await aproduce(bootstrap, topic, [(None, b"x")] * 10, partition=p)
    group = unique("g-fail")
    app = ConsumerApp(
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        commit_interval=0.2,
    )
    handled: dict[int, list[int]] = {0: [], 1: []}

    @app.handler(topic)
    async def handle(msg: Message[bytes]) -> None:
        if msg.partition == 0 and msg.offset == 5:
            raise Boom("cannot handle this one")
        handled[msg.partition].append(msg.offset)

    assert app.state == "idle"
    with anyio.fail_after(60), pytest.raises(Boom) as info:
        await app.run()

    assert f"{topic}[0]@5" in "".join(info.value.__notes__)
    # The lifecycle is the app's: failed, with the error; not live.
    assert (app.state, app.error) == ("failed", info.value)
    assert not app.health().live
    assert handled[0] == [0, 1, 2, 3, 4]
    committed = await committed_offsets(
        bootstrap, group, [TopicPartition(topic, 0), TopicPartition(topic, 1)]
    )
    assert committed[TopicPartition(topic, 0)] == 5  # at the failed record, not past it
    # The other partition's completed records were committed at stop.
    assert committed[TopicPartition(topic, 1)] == (max(handled[1]) + 1 if handled[1] else None)


async def test_undecodable_record_stops_app_with_clear_error_and_is_not_committed(
    kafka_broker: KafkaTestBroker, topics: Topics
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = await topics.create("poison")
    await aproduce(
        bootstrap,
        topic,
        [(None, b'{"n": 0}'), (None, b'{"n": 1}'), (None, b"not json"), (None, b'{"n": 3}')],
    )
    group = unique("g-poison")
    app = ConsumerApp(bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest")
    values: list[object] = []

    @app.handler(topic, value_codec="json")
    async def handle(msg: Message[dict[str, int]]) -> None:
        values.append(msg.value)

    with anyio.fail_after(60), pytest.raises(DeserializationError) as info:
        await app.run()
    error = info.value
    assert (error.topic, error.partition, error.offset, error.field) == (topic, 0, 2, "value")
    assert f"{topic}[0]@2" in str(error)
    assert values == [{"n": 0}, {"n": 1}]
    committed = await committed_offsets(bootstrap, group, [TopicPartition(topic, 0)])
    assert committed[TopicPartition(topic, 0)] == 2


async def test_stop_waits_shutdown_timeout_then_cancels_and_does_not_commit_cancelled(
    kafka_broker: KafkaTestBroker, topics: Topics
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = await topics.create("slow", partitions=2)
    for p in (0, 1):
        await aproduce(bootstrap, topic, [(None, b"x")] * 3, partition=p)
    group = unique("g-slow")
    shutdown_timeout = 1.5
    app = ConsumerApp(
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        shutdown_timeout=shutdown_timeout,
        commit_interval=30.0,
    )
    in_flight = {0: anyio.Event(), 1: anyio.Event()}
    finished: list[tuple[int, int]] = []
    cancelled: list[tuple[int, int]] = []

    @app.handler(topic)
    async def handle(msg: Message[bytes]) -> None:
        if msg.offset == 1:
            in_flight[msg.partition].set()
            # Partition 0 finishes within the timeout; partition 1 would not.
            try:
                await anyio.sleep(0.5 if msg.partition == 0 else 60)
            except anyio.get_cancelled_exc_class():
                cancelled.append((msg.partition, msg.offset))
                raise
        finished.append((msg.partition, msg.offset))

    async with anyio.create_task_group() as tg:
        tg.start_soon(app.run)
        with anyio.fail_after(60):
            await in_flight[0].wait()
            await in_flight[1].wait()
        started = time.monotonic()
        app.stop()
    stopped_after = time.monotonic() - started

    assert stopped_after >= shutdown_timeout - 0.05  # it waited for the slow handler...
    assert stopped_after < shutdown_timeout + 10  # ...then cancelled it rather than waiting 60 s
    assert cancelled == [(1, 1)]
    assert (0, 1) in finished
    assert (1, 1) not in finished
    committed = await committed_offsets(
        bootstrap, group, [TopicPartition(topic, 0), TopicPartition(topic, 1)]
    )
    # Partition 0: its in-flight record finished and was committed (records
    # buffered behind it were not started). Partition 1: the cancelled record
    # is the next one.
    assert committed == {TopicPartition(topic, 0): 2, TopicPartition(topic, 1): 1}


async def test_cancelling_run_stops_gracefully_and_commits(
    kafka_broker: KafkaTestBroker, topics: Topics
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = await topics.create("cancel")
    await aproduce(bootstrap, topic, [(None, b"x")] * 5)
    group = unique("g-cancel")
    app = ConsumerApp(
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        commit_interval=30.0,
    )
    handled: list[int] = []

    @app.handler(topic)
    async def handle(msg: Message[bytes]) -> None:
        handled.append(msg.offset)

    with anyio.move_on_after(60) as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(app.run)
            await wait_until(lambda: len(handled) == 5, what="records handled")
            assert app.state == "running"
            assert app.health().ready
            tg.cancel_scope.cancel()
    assert not scope.cancelled_caught
    assert (app.state, app.error) == ("stopped", None)
    committed = await committed_offsets(bootstrap, group, [TopicPartition(topic, 0)])
    assert committed[TopicPartition(topic, 0)] == 5


async def test_on_assign_error_stops_app_before_any_record_and_lifespan_wraps_run(
    kafka_broker: KafkaTestBroker, topics: Topics
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = await topics.create("hook-fail")
    await aproduce(bootstrap, topic, [(None, b"x")] * 3)
    events: list[str] = []

    @asynccontextmanager
    async def lifespan(app: ConsumerApp) -> AsyncIterator[None]:
        events.append("lifespan enter")
        yield
        events.append("lifespan exit")

    app = ConsumerApp(
        bootstrap_servers=bootstrap,
        group_id=unique("g-hook"),
        auto_offset_reset="earliest",
        lifespan=lifespan,
    )

    @app.handler(topic)
    async def handle(msg: Message[bytes]) -> None:
        events.append(f"handled {msg.offset}")

    @app.on_assign
    async def assigned(partitions: list[TopicPartition]) -> None:
        events.append("on_assign")
        raise LookupError("offset store unavailable")

    @app.on_revoke
    async def revoked(partitions: list[TopicPartition]) -> None:
        events.append("on_revoke")

    with anyio.fail_after(60), pytest.raises(LookupError, match="offset store unavailable"):
        await app.run()
    # No record ran: lanes start only after on_assign returned. The stop still
    # revoked the partitions, inside the lifespan.
    assert events == ["lifespan enter", "on_assign", "on_revoke", "lifespan exit"]


async def test_exactly_once_on_a_broker_without_transactions_stops_with_a_clear_error(
    kafka_broker: KafkaTestBroker, topics: Topics
) -> None:
    if kafka_broker.is_apache_kafka:
        pytest.skip("Apache Kafka has transactions (tests/integration/test_exactly_once.py)")
    from asyncconsumer import AsyncConsumerError

    topic = await topics.create("eos-embedded")
    out = await topics.create("eos-embedded-out")
    app = ConsumerApp(
        bootstrap_servers=kafka_broker.bootstrap_servers, group_id=unique("g-eos-embedded")
    )

    @app.handler(topic, publish_to=out, delivery="exactly_once")
    async def handle(msg: Message[bytes]) -> bytes:
        return msg.value

    with pytest.raises(AsyncConsumerError, match="needs a broker with transactions"):
        with anyio.fail_after(60):
            await app.run()
