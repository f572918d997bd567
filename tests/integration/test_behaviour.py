"""One set of behaviour tests, run on MemoryKafka and on the session's real broker.

The same test bodies, the same ConsumerApp, two transports: ``memory`` (a
``MemoryKafka``, no network) and ``broker`` (the plugin's broker: Apache Kafka in
``make test``, the embedded one in ``make integration-embedded``). What differs
between them is stated where a test depends on it, and tested:

- how records are batched: MemoryKafka hands a poll everything published so far
  (up to ``max_poll_records``); a broker answers with what its fetch response holds.
  ``at_most_once`` commits a poll's records before they run, so how many records a
  failure loses is "the rest of its poll" on both, but the poll differs
  (``test_at_most_once_commits_before_running``);
- rebalance timing: a second member's join takes seconds on a broker (group
  protocol round trips) and one scheduling step in memory; the sequence (drain,
  commit, ``on_revoke``, then the new assignment) is the same.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import anyio
import pytest

from asyncconsumer import Backoff, ConsumerApp, Message, Retry, TopicPartition
from asyncconsumer.testing import MemoryKafka
from asyncconsumer.testing.pytest_plugin import KafkaTestBroker

from .conftest import aproduce, committed_offsets, read_topic, unique, wait_until

FAST_GROUP: dict[str, Any] = {"heartbeat_interval_ms": 300, "session_timeout_ms": 6000}


class Backend:
    """Topics, records in and out, and committed offsets, on one transport."""

    def __init__(self, kind: Literal["memory", "broker"], bootstrap: str) -> None:
        self.kind = kind
        self.bootstrap = bootstrap
        self.memory: MemoryKafka | None = None
        self.broker: KafkaTestBroker | None = None

    async def topic(self, prefix: str, partitions: int = 1) -> str:
        name = unique(prefix)
        if self.memory is not None:
            self.memory.create_topic(name, partitions)
        else:
            assert self.broker is not None
            await self.broker.create_topic(name, partitions)
        return name

    async def publish(
        self, topic: str, records: list[tuple[bytes | None, bytes]], partition: int | None = None
    ) -> None:
        if self.memory is not None:
            for key, value in records:
                self.memory.publish(topic, value, key=key, partition=partition)
        else:
            await aproduce(self.bootstrap, topic, records, partition)

    async def committed(self, group: str, tp: TopicPartition) -> int | None:
        if self.memory is not None:
            return self.memory.committed(group, tp)
        return (await committed_offsets(self.bootstrap, group, [tp]))[tp]

    async def records(self, topic: str, count: int) -> list[Message[bytes]]:
        """The first ``count`` records of ``topic``, by partition then offset."""
        if self.memory is not None:
            found = self.memory.records(topic)
        else:
            found = await read_topic(self.bootstrap, topic, count)
        return [
            Message(r.topic, r.partition, r.offset, r.key, r.value, list(r.headers), r.timestamp)
            for r in found[:count]
        ]

    def app(self, group: str, **options: Any) -> ConsumerApp:
        settings: dict[str, Any] = {
            "auto_offset_reset": "earliest",
            "commit_interval": 0.1,
            **FAST_GROUP,
            **options,
        }
        return ConsumerApp(bootstrap_servers=self.bootstrap, group_id=group, **settings)


@pytest.fixture(params=["memory", "broker"])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "memory":
        kafka: MemoryKafka = request.getfixturevalue("memory_kafka")
        backend = Backend("memory", kafka.bootstrap_servers)
        backend.memory = kafka
    else:
        broker: KafkaTestBroker = request.getfixturevalue("kafka_broker")
        backend = Backend("broker", broker.bootstrap_servers)
        backend.broker = broker
    return backend


@asynccontextmanager
async def running(app: ConsumerApp) -> AsyncIterator[ConsumerApp]:
    with anyio.fail_after(60):
        async with app:
            yield app


async def wait_committed(backend: Backend, group: str, tp: TopicPartition, offset: int) -> None:
    deadline = time.monotonic() + 30
    while (found := await backend.committed(group, tp)) != offset:
        assert time.monotonic() < deadline, f"{tp} committed {found}, expected {offset}"
        await anyio.sleep(0.05)


# -- commits ---------------------------------------------------------------------------


async def test_commits_after_success(backend: Backend) -> None:
    topic = await backend.topic("b-success")
    group = unique("g-b-success")
    await backend.publish(topic, [(None, b"%d" % i) for i in range(5)], partition=0)
    app = backend.app(group)
    handled: list[int] = []

    @app.handler(topic)
    async def handle(msg: Message[bytes]) -> None:
        handled.append(msg.offset)

    async with running(app):
        await wait_until(lambda: len(handled) == 5, what="5 records handled")
        await wait_committed(backend, group, TopicPartition(topic, 0), 5)
    assert handled == [0, 1, 2, 3, 4]


async def test_a_failed_record_is_not_committed_and_stops_the_app(backend: Backend) -> None:
    topic = await backend.topic("b-failure")
    group = unique("g-b-failure")
    await backend.publish(topic, [(None, b"%d" % i) for i in range(5)], partition=0)
    app = backend.app(group)

    @app.handler(topic)
    async def handle(msg: Message[bytes]) -> None:
        if msg.offset == 2:
            raise ValueError("no")

    with anyio.fail_after(60), pytest.raises(ValueError, match="no"):
        await app.run()
    assert await backend.committed(group, TopicPartition(topic, 0)) == 2


async def test_a_cancelled_record_is_not_committed(backend: Backend) -> None:
    topic = await backend.topic("b-cancel")
    group = unique("g-b-cancel")
    await backend.publish(topic, [(None, b"%d" % i) for i in range(3)], partition=0)
    app = backend.app(group, shutdown_timeout=0.2)
    started = anyio.Event()

    @app.handler(topic)
    async def handle(msg: Message[bytes]) -> None:
        if msg.offset == 1:
            started.set()
            await anyio.sleep_forever()  # cancelled by the stop's deadline

    async with running(app):
        await started.wait()
    # The stop waited 0.2 s for offset 1, cancelled it, and committed up to it.
    assert await backend.committed(group, TopicPartition(topic, 0)) == 1


# -- rebalances ------------------------------------------------------------------------


async def test_a_revoke_drains_in_flight_records_then_commits_then_runs_on_revoke(
    backend: Backend,
) -> None:
    topic = await backend.topic("b-revoke", partitions=2)
    group = unique("g-b-revoke")
    await backend.publish(topic, [(None, b"v")] * 4, partition=0)
    await backend.publish(topic, [(None, b"v")] * 4, partition=1)
    events: list[str] = []
    in_flight = anyio.Event()
    first = backend.app(group)

    @first.handler(topic)
    async def handle(msg: Message[bytes]) -> None:
        if msg.offset == 3 and not in_flight.is_set():
            in_flight.set()
            with anyio.fail_after(30):  # still running when the revoke begins
                while first.statistics().rebalance_age == 0.0:
                    await anyio.sleep(0.01)
            await anyio.sleep(0.1)
            events.append(f"finished {msg.partition}@3")

    @first.on_revoke
    async def revoked(partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            events.append(f"on_revoke {tp.partition}: committed {await first.committed(tp)}")

    second = backend.app(group)

    @second.handler(topic)
    async def handle_second(msg: Message[bytes]) -> None:
        pass

    async with running(first):
        await in_flight.wait()
        async with running(second):
            await wait_until(
                lambda: len(second.assignment()) == 1, timeout=40, what="the second member's share"
            )
            assert len(first.assignment()) == 1
    slow = next(e for e in events if e.startswith("finished")).split()[1].split("@")[0]
    # The record in flight finished before the revoke's commit, which included it:
    # on_revoke saw its offset + 1 committed.
    assert events.index(f"finished {slow}@3") < events.index(f"on_revoke {slow}: committed 4"), (
        events
    )


# -- failures ----------------------------------------------------------------------------


async def test_retries_then_dead_letter_with_provenance(backend: Backend) -> None:
    topic = await backend.topic("b-dlq")
    dlq = await backend.topic("b-dlq-out")
    group = unique("g-b-dlq")
    await backend.publish(topic, [(b"k", b"bad"), (b"k", b"good")], partition=0)
    app = backend.app(group)
    attempts: list[int] = []

    @app.handler(
        topic,
        retry=Retry(attempts=3, backoff=Backoff.constant(0.01)),
        on_failure="dead_letter",
        dead_letter_topic=dlq,
    )
    async def handle(msg: Message[bytes]) -> None:
        if msg.value == b"bad":
            attempts.append(msg.offset)
            raise ValueError("bad record")

    async with running(app):
        await wait_committed(backend, group, TopicPartition(topic, 0), 2)
    assert attempts == [0, 0, 0]
    (dead,) = await backend.records(dlq, 1)
    headers = dict(dead.headers)
    assert (dead.key, dead.value) == (b"k", b"bad")
    assert headers["dlq.original.topic"] == topic.encode()
    assert headers["dlq.original.offset"] == b"0"
    assert headers["dlq.attempts"] == b"3"
    assert headers["dlq.exception.type"] == b"ValueError"


async def test_key_order_under_concurrency(backend: Backend) -> None:
    topic = await backend.topic("b-keys", partitions=2)
    group = unique("g-b-keys")
    records: list[tuple[bytes | None, bytes]] = [(b"k%d" % (i % 5), b"%d" % i) for i in range(200)]
    await backend.publish(topic, records)
    app = backend.app(group)
    running_keys: set[bytes] = set()
    seen: dict[bytes, list[int]] = {}
    overlap: list[bytes] = []
    at_once = 0
    peak = 0

    @app.handler(topic, ordering="key", concurrency=10)
    async def handle(msg: Message[bytes]) -> None:
        nonlocal at_once, peak
        if msg.key in running_keys:
            overlap.append(msg.key)
        running_keys.add(msg.key)
        at_once += 1
        peak = max(peak, at_once)
        await anyio.sleep(0.001)
        at_once -= 1
        running_keys.discard(msg.key)
        seen.setdefault(msg.key, []).append(int(msg.value))

    async with running(app):
        await wait_until(lambda: sum(map(len, seen.values())) == 200, what="every record")
    assert overlap == []
    assert peak > 1  # keys did run at once
    for key, values in seen.items():
        assert values == sorted(values), f"key {key!r} out of order"
    assert sum(map(len, seen.values())) == 200


async def test_at_most_once_commits_before_running(backend: Backend) -> None:
    topic = await backend.topic("b-amo")
    group = unique("g-b-amo")
    await backend.publish(topic, [(None, b"%d" % i) for i in range(10)], partition=0)
    app = backend.app(group)

    @app.handler(topic, delivery="at_most_once")
    async def handle(msg: Message[bytes]) -> None:
        if msg.offset == 3:
            raise ValueError("lost, by choice")

    with anyio.fail_after(60), pytest.raises(ValueError, match="by choice"):
        await app.run()
    committed = await backend.committed(group, TopicPartition(topic, 0))
    # The failed record's offset was committed before it ran: it is not run again.
    # How far past it depends on the poll that brought it (everything published,
    # in memory: 10; a broker's fetch response: at least 4).
    assert committed is not None
    assert committed >= 4
    if backend.kind == "memory":
        assert committed == 10


async def test_publish_to_carries_the_key_downstream(backend: Backend) -> None:
    topic = await backend.topic("b-publish")
    out = await backend.topic("b-publish-out")
    group = unique("g-b-publish")
    await backend.publish(topic, [(b"c%d" % i, b"%d" % i) for i in range(3)], partition=0)
    app = backend.app(group)

    @app.handler(topic, publish_to=out)
    async def handle(msg: Message[bytes]) -> bytes:
        return msg.value + b"!"

    async with running(app):
        await wait_committed(backend, group, TopicPartition(topic, 0), 3)
    produced = await backend.records(out, 3)
    assert sorted((m.key, m.value) for m in produced) == [
        (b"c0", b"0!"),
        (b"c1", b"1!"),
        (b"c2", b"2!"),
    ]
