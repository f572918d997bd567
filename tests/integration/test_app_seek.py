"""Seeks on a real broker: every seek moves the committed position, in every
ordering mode, and records running during a seek never undo it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable

import anyio
import pytest

from asyncconsumer import ConsumerApp, Message, TopicPartition
from asyncconsumer.testing.pytest_plugin import KafkaTestBroker

from .conftest import Topics, aproduce, committed_offsets, unique, wait_for, wait_until


async def produce_one_by_one(bootstrap: str, topic: str, count: int) -> None:
    """One record per produce request, so that even the embedded broker's end
    offsets (it counts record batches) are right."""
    for i in range(count):
        await aproduce(bootstrap, topic, [(b"k%d" % (i % 4), b"v%d" % i)], 0)


def committed_is(
    bootstrap: str, group: str, tp: TopicPartition, offset: int
) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return (await committed_offsets(bootstrap, group, [tp]))[tp] == offset

    return check


@pytest.mark.parametrize("ordering", ["partition", "key"])
async def test_seek_to_end_while_a_record_runs_commits_the_end(
    kafka_broker: KafkaTestBroker, topics: Topics, ordering: str
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = await topics.create(f"seek-end-{ordering}")
    await produce_one_by_one(bootstrap, topic, 10)
    tp = TopicPartition(topic, 0)
    group = unique("g-seek-end")
    app = ConsumerApp(
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        commit_interval=0.2,
    )
    running = anyio.Event()
    release = anyio.Event()
    handled: list[int] = []

    @app.handler(topic, ordering=ordering)  # type: ignore[arg-type]
    async def handle(msg: Message[bytes]) -> None:
        if msg.offset == 5:
            running.set()
            await release.wait()
        handled.append(msg.offset)

    async with app:
        with anyio.fail_after(30):
            await running.wait()
        await app.seek_to_end(tp)
        release.set()  # offset 5 completes after the seek: it must not undo it
        await wait_for(committed_is(bootstrap, group, tp, 10), what="the end committed")
        await anyio.sleep(0.5)
        assert app.statistics().completed[tp] == 10
    if ordering == "partition":
        assert handled == [0, 1, 2, 3, 4, 5]  # 6..9 were sought over
    assert (await committed_offsets(bootstrap, group, [tp]))[tp] == 10


async def test_seek_to_beginning_commits_the_beginning_as_the_position(
    kafka_broker: KafkaTestBroker, topics: Topics
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = await topics.create("seek-begin")
    await aproduce(bootstrap, topic, [(None, b"v")] * 10, 0)
    tp = TopicPartition(topic, 0)
    group = unique("g-seek-begin")
    app = ConsumerApp(
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        commit_interval=0.2,
        shutdown_timeout=0.5,
    )
    handled: list[int] = []
    replaying = False

    @app.handler(topic)
    async def handle(msg: Message[bytes]) -> None:
        if replaying:
            await anyio.sleep_forever()  # the replay never completes a record
        handled.append(msg.offset)

    async with app:
        await wait_for(committed_is(bootstrap, group, tp, 10), what="10 committed")
        replaying = True
        await app.seek_to_beginning(tp)
        # Like seek(tp, 0): the new position is what gets committed, so a restart
        # replays what the user chose to replay.
        await wait_for(committed_is(bootstrap, group, tp, 0), what="0 committed")
    assert handled == list(range(10))
    assert (await committed_offsets(bootstrap, group, [tp]))[tp] == 0


async def test_seeking_back_under_key_ordering_while_a_record_runs_is_safe(
    kafka_broker: KafkaTestBroker, topics: Topics
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = await topics.create("seek-keyed")
    keys = [b"k%d" % (i % 4) for i in range(20)]
    await aproduce(bootstrap, topic, [(k, b"v") for k in keys], 0)
    tp = TopicPartition(topic, 0)
    group = unique("g-seek-keyed")
    app = ConsumerApp(
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        commit_interval=0.2,
    )
    running = anyio.Event()
    release = anyio.Event()
    keys_running: set[bytes] = set()
    runs: list[int] = []

    @app.handler(topic, ordering="key", concurrency=8)
    async def handle(msg: Message[bytes]) -> None:
        assert msg.key not in keys_running, f"two records of key {msg.key!r} ran at once"
        keys_running.add(msg.key)
        try:
            if msg.offset == 6 and not release.is_set():
                running.set()
                await release.wait()
            await anyio.sleep(0.001)
        finally:
            keys_running.discard(msg.key)
        runs.append(msg.offset)

    async with app:
        with anyio.fail_after(30):
            await running.wait()
        # All but key k2's 6 (running) and 10, 14, 18 (waiting behind it).
        await wait_until(lambda: len(runs) == 16, what="the other keys handled")
        app.seek(tp, 0)  # replay from 0 while offset 6 still runs
        await wait_until(lambda: runs.count(5) == 2, what="the replay of other keys")
        assert 6 not in runs
        assert app.statistics().in_flight >= 1  # the obsolete run is still seen
        release.set()
        await wait_for(committed_is(bootstrap, group, tp, 20), what="20 committed")
    counts = Counter(runs)
    assert set(counts) == set(range(20))
    # Key k2: 2, then 6 (held, made obsolete by the seek), then the replay, whose
    # first record waited for the obsolete one.
    assert [o for o in runs if o % 4 == 2] == [2, 6, 2, 6, 10, 14, 18]
