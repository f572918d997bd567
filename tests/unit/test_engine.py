"""Engine glue without a broker: abort, the drain, records that arrive before their lane."""

from typing import Any

import anyio

from asyncconsumer import ConsumerApp, Message, TopicPartition
from asyncconsumer._config import ConsumerSettings
from asyncconsumer._handlers import HandlerRegistry
from asyncconsumer._message import make_decoder
from asyncconsumer._runtime._engine import Engine
from asyncconsumer._runtime._lanes import BufferBound, PartitionLane
from asyncconsumer._runtime._offsets import PartitionOffsets
from asyncconsumer._runtime._pipeline import Processor
from asyncconsumer.testing import MemoryKafka, TestClient

from .test_lanes import TP, records


async def test_abort_reaches_lanes_that_a_revoke_is_draining() -> None:
    started = anyio.Event()

    async def handler(msg: Message[Any]) -> None:
        started.set()
        await anyio.sleep_forever()

    engine = Engine(
        ConsumerSettings("127.0.0.1:9"), HandlerRegistry(), [], [], max_buffered_records=10
    )
    lane = PartitionLane(
        TP, Processor(handler, make_decoder(None, None)), PartitionOffsets(), engine,
        bound=BufferBound(10),
    )  # fmt: skip
    async with anyio.create_task_group() as tg:
        tg.start_soon(lane.run)
        lane.push(records(0))
        await started.wait()
        try:
            # A revoke took the lane out of the assignment and drains it (60 s grace).
            with anyio.fail_after(2):
                async with anyio.create_task_group() as revoke:
                    revoke.start_soon(engine._drain, [lane], 60.0)
                    await anyio.sleep(0.05)
                    engine.abort()
        finally:
            lane.cancel()  # so that a failure ends the test instead of hanging it
    assert lane.done.is_set()
    assert lane.offsets.completed == -1  # cancelled, not committed


async def test_records_of_a_new_partition_fetched_before_its_lane_exists_are_not_lost() -> None:
    """The client makes a newly assigned partition fetchable before it calls the
    assignment callback (aiokafka does too), and the engine's callback waits for the
    lock, here held by a commit whose on_commit hook is slow. The fetch loop gets the
    partition's records meanwhile. They used to be dropped as "revoked meanwhile"
    while the client's position moved past them: a later record's commit skipped
    them. Now the partition is sought back to them and paused until its lane exists.
    """
    kafka = MemoryKafka()
    kafka.create_topic("t", 1)
    app = ConsumerApp(
        bootstrap_servers=kafka.bootstrap_servers,
        group_id="g",
        auto_offset_reset="earliest",
        commit_interval=0.01,
    )
    handled: list[tuple[int, int]] = []
    hold = anyio.Event()
    holding = anyio.Event()
    release = anyio.Event()

    @app.handler("t")
    async def handle(msg: Message[bytes]) -> None:
        handled.append((msg.partition, msg.offset))

    @app.on_commit
    async def slow(offsets: dict[TopicPartition, int], error: Exception | None) -> None:
        if hold.is_set() and not release.is_set():
            holding.set()
            await release.wait()  # the commit loop holds the engine's lock meanwhile

    new = TopicPartition("t", 1)
    async with TestClient(app, kafka, timeout=5) as client, anyio.create_task_group() as tg:
        await client.publish("t", b"a", partition=0)
        await client.wait_idle()
        kafka.add_partitions("t", 2)  # seen by the group at its next rebalance
        for value in (b"b0", b"b1", b"b2"):
            await client.publish("t", value, partition=1)
        hold.set()
        await client.publish("t", b"a", partition=0)  # handled, then committed: the hook holds
        with anyio.fail_after(5):
            await holding.wait()
        tg.start_soon(client.rebalance, [])  # revokes nothing, assigns t[1]
        with anyio.fail_after(5):
            while kafka.fetched(new) < 3:  # the fetch loop got t[1]'s records
                await anyio.sleep(0.001)
        assert new not in app.assignment()  # and t[1] has no lane yet
        release.set()
        await client.publish("t", b"b3", partition=1)
        await client.wait_idle()
        assert [offset for partition, offset in handled if partition == 1] == [0, 1, 2, 3]
        assert client.committed("t", 1) == 4
