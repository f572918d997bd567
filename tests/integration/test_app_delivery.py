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


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def test_a_full_partition_buffer_pauses_fetching_and_memory_stays_bounded(
    kafka_broker: KafkaTestBroker, topics: Topics
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = await topics.create("backpressure", partitions=2)
    backlog = 40_000  # x 1 KiB = 40 MiB waiting on partition 0
    chunk = [(None, b"x" * 1024)] * 5_000
    for _ in range(backlog // len(chunk)):
        await aproduce(bootstrap, topic, chunk, partition=0)
    await aproduce(bootstrap, topic, [(None, b"x" * 1024)] * 500, partition=1)
    app = ConsumerApp(
        bootstrap_servers=bootstrap,
        group_id=unique("g-bp"),
        auto_offset_reset="earliest",
        max_buffered_records=200,
        max_partition_fetch_bytes=256 * 1024,
    )
    stalled = TopicPartition(topic, 0)
    release = anyio.Event()
    handled = {0: 0, 1: 0}

    @app.handler(topic)
    async def handle(msg: Message[bytes]) -> None:
        if msg.partition == 0:
            await release.wait()
        handled[msg.partition] += 1

    before = rss_bytes()
    async with app:
        await wait_until(lambda: stalled in app.statistics().paused, what="partition 0 paused")
        # The other partition is not held up by the stalled one.
        await wait_until(lambda: handled[1] == 500, what="partition 1 handled")
        for _ in range(10):  # polling goes on while paused: nothing piles up
            await anyio.sleep(0.1)
            stats = app.statistics()
            assert stats.paused == {stalled}
            assert stats.in_flight == 1
            # bounded by max_buffered_records plus one poll, not the 40,000 backlog
            assert stats.buffered <= 2 * 200
        grown = rss_bytes() - before
        assert handled[0] == 0
        assert grown < 20 * 1024 * 1024, f"RSS grew by {grown / 2**20:.1f} MiB"
        release.set()
        await wait_until(
            lambda: handled[0] == backlog, timeout=60, what="partition 0 resumed and drained"
        )
        assert app.statistics().paused == frozenset()


async def test_with_every_partition_full_the_member_keeps_polling(
    kafka_broker: KafkaTestBroker, topics: Topics
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = await topics.create("bp-all")
    await aproduce(bootstrap, topic, [(None, b"x")] * 2_000)
    app = ConsumerApp(
        bootstrap_servers=bootstrap,
        group_id=unique("g-bp-all"),
        auto_offset_reset="earliest",
        max_buffered_records=50,
    )
    release = anyio.Event()
    handled = 0

    @app.handler(topic)
    async def handle(msg: Message[bytes]) -> None:
        nonlocal handled
        await release.wait()
        handled += 1

    async with app:
        tp = TopicPartition(topic, 0)
        await wait_until(lambda: tp in app.statistics().paused, what="the only partition full")
        for _ in range(15):
            await anyio.sleep(0.1)
            stats = app.statistics()
            assert stats.poll_age < 1.5  # still polling: max_poll_interval is not at risk
            assert stats.buffered <= 100
        release.set()
        await wait_until(lambda: handled == 2_000, what="every record handled after release")
