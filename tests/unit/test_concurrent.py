"""KeyedLane and WorkerPool: per-key order, overlap across keys, gaps, skips, cancellation."""

import random
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import anyio
import anyio.lowlevel
from aiokafka.structs import OffsetAndMetadata

from asyncconsumer import Message, TopicPartition
from asyncconsumer._config import ConsumerSettings
from asyncconsumer._handlers import HandlerRegistry
from asyncconsumer._message import make_decoder
from asyncconsumer._runtime._concurrent import KeyedLane, WorkerPool
from asyncconsumer._runtime._engine import Engine
from asyncconsumer._runtime._lanes import BufferBound, Lane, LaneOwner
from asyncconsumer._runtime._offsets import PartitionOffsets, encode_completed
from asyncconsumer._runtime._pipeline import Processor
from asyncconsumer._transport._memory import MemoryConsumer
from asyncconsumer.testing import MemoryKafka

TP = TopicPartition("t", 0)


def records(keys: list[Any], start: int = 0) -> list[Any]:
    return [
        Message(topic="t", partition=0, offset=start + i, key=k, value=b"", headers=(), timestamp=0)
        for i, k in enumerate(keys)
    ]


class Owner(LaneOwner):
    def __init__(self) -> None:
        self.failures: list[int] = []
        self.drained = 0

    def lane_failed(self, lane: Lane, record: Any, exc: Exception) -> None:
        self.failures.append(record.offset)

    def lane_drained(self, lane: Lane) -> None:
        lane.paused = False
        self.drained += 1


def lane_for(
    pool: WorkerPool, owner: Owner, *, by_key: bool = True, low_water: int = 0
) -> KeyedLane:
    return KeyedLane(
        TP,
        pool,
        PartitionOffsets(),
        owner,
        by_key=by_key,
        bound=BufferBound(2 * low_water + 1),
    )


async def wait_for(predicate: Any) -> None:
    with anyio.fail_after(5):
        while not predicate():
            await anyio.sleep(0.005)


async def test_same_key_in_order_different_keys_overlap() -> None:
    rng = random.Random(3)
    seen: dict[bytes, list[int]] = defaultdict(list)
    running: set[bytes] = set()
    max_keys_at_once = 0

    async def handler(msg: Message[Any]) -> None:
        nonlocal max_keys_at_once
        assert msg.key not in running, "two records of one key ran at once"
        running.add(msg.key)
        max_keys_at_once = max(max_keys_at_once, len(running))
        await anyio.sleep(rng.uniform(0, 0.004))
        running.discard(msg.key)
        seen[msg.key].append(msg.offset)

    keys = [f"k{rng.randrange(8)}".encode() for _ in range(400)]
    pool = WorkerPool(Processor(handler, make_decoder(None, None)), 16, "h")
    lane = lane_for(pool, Owner())
    async with anyio.create_task_group() as tg:
        pool.start(tg)
        lane.start(tg)
        lane.push(records(keys[:250]))
        lane.push(records(keys[250:], start=250))
        await wait_for(lambda: lane.offsets.completed == 400)
        pool.close()
    for key, offsets in seen.items():
        assert offsets == [i for i, k in enumerate(keys) if k == key], key
    assert max_keys_at_once > 1  # observed, not assumed: different keys overlapped
    assert lane.buffered == 0


async def test_fast_handlers_run_in_offset_order_with_no_queue_per_key() -> None:
    # The key-ordering fast path: a handler that completes before the next record
    # is taken leaves its key free, so records of a poll (here 1,000 records of 250
    # keys) run and complete in offset order, as in a partition lane; before, the
    # first record of each key ran first and the others queued behind their keys.
    rng = random.Random(5)
    order: list[int] = []

    async def handler(msg: Message[Any]) -> None:
        order.append(msg.offset)

    pool = WorkerPool(Processor(handler, make_decoder(None, None)), 100, "h")
    lane = lane_for(pool, Owner())
    async with anyio.create_task_group() as tg:
        pool.start(tg)
        lane.start(tg)
        await wait_for(lambda: len(pool._idle) == 100)
        lane.push(records([b"k%d" % rng.randrange(250) for _ in range(1000)]))
        await wait_for(lambda: lane.offsets.completed == 1000)
        pool.close()
    assert order == list(range(1000))
    assert not lane.offsets.above  # nothing completed out of order


async def test_a_poll_wakes_a_few_workers_not_the_whole_pool() -> None:
    # With 100 idle workers and 1,000 records, waking one worker per record woke
    # all 100: the first ran every record (its handler never suspends) and the
    # 99 others woke for nothing. Now the poll wakes one, which wakes two more.
    idle_seen: list[int] = []

    async def handler(msg: Message[Any]) -> None:
        idle_seen.append(len(pool._idle))

    pool = WorkerPool(Processor(handler, make_decoder(None, None)), 100, "h")
    lane = lane_for(pool, Owner(), by_key=False)
    async with anyio.create_task_group() as tg:
        pool.start(tg)
        lane.start(tg)
        try:
            await wait_for(lambda: len(pool._idle) == 100)
            lane.push(records([None] * 1000))
            assert len(pool._idle) == 99
            await wait_for(lambda: lane.offsets.completed == 1000)
        finally:
            pool.close()
    assert len(idle_seen) == 1000
    assert min(idle_seen) == 97  # one woken by the poll, two by the first worker


async def test_handlers_that_wait_still_run_the_whole_pool_at_once() -> None:
    gate = anyio.Event()
    started: list[int] = []

    async def handler(msg: Message[Any]) -> None:
        started.append(msg.offset)
        await gate.wait()

    pool = WorkerPool(Processor(handler, make_decoder(None, None)), 8, "h")
    lane = lane_for(pool, Owner())
    async with anyio.create_task_group() as tg:
        pool.start(tg)
        lane.start(tg)
        await wait_for(lambda: len(pool._idle) == 8)
        lane.push(records([b"a", b"a"] + [b"k%d" % i for i in range(20)]))
        await wait_for(lambda: len(started) == 8)
        await anyio.sleep(0.01)
        assert sorted(started) == [0, *range(2, 9)]  # offset 1 waits behind key a
        gate.set()
        await wait_for(lambda: lane.offsets.completed == 22)
        pool.close()


async def test_unordered_runs_up_to_concurrency_and_a_slow_record_holds_the_commit() -> None:
    release = anyio.Event()
    started: list[int] = []

    async def handler(msg: Message[Any]) -> None:
        started.append(msg.offset)
        if msg.offset == 2:
            await release.wait()

    pool = WorkerPool(Processor(handler, make_decoder(None, None)), 4, "h")
    lane = lane_for(pool, Owner(), by_key=False)
    async with anyio.create_task_group() as tg:
        pool.start(tg)
        lane.start(tg)
        lane.push(records([None] * 10))
        await wait_for(lambda: len(started) == 10)
        await anyio.sleep(0.01)
        assert lane.offsets.completed == 2  # 3..9 completed, 2 still runs
        assert lane.offsets.above == set(range(3, 10))
        assert lane.running() == [2]
        release.set()
        await wait_for(lambda: lane.offsets.completed == 10)
        pool.close()


async def test_records_without_key_share_one_lane() -> None:
    order: list[int] = []

    async def handler(msg: Message[Any]) -> None:
        await anyio.sleep(0.001 * (5 - msg.offset % 5))
        order.append(msg.offset)

    pool = WorkerPool(Processor(handler, make_decoder(None, None)), 8, "h")
    lane = lane_for(pool, Owner())
    async with anyio.create_task_group() as tg:
        pool.start(tg)
        lane.start(tg)
        lane.push(records([None] * 10))
        await wait_for(lambda: lane.offsets.completed == 10)
        pool.close()
    assert order == list(range(10))


async def test_completed_under_a_previous_owner_are_skipped() -> None:
    handled: list[int] = []

    async def handler(msg: Message[Any]) -> None:
        handled.append(msg.offset)

    pool = WorkerPool(Processor(handler, make_decoder(None, None)), 4, "h")
    lane = lane_for(pool, Owner(), by_key=False)
    lane.skip_completed({12, 13, 15})
    async with anyio.create_task_group() as tg:
        pool.start(tg)
        lane.start(tg)
        lane.push(records([None] * 8, start=10))
        await wait_for(lambda: lane.offsets.completed == 18)
        pool.close()
    assert sorted(handled) == [10, 11, 14, 16, 17]


async def test_failure_closes_the_lane_and_holds_the_offset() -> None:
    async def handler(msg: Message[Any]) -> None:
        if msg.offset == 3:
            raise ValueError("bad")

    owner = Owner()
    pool = WorkerPool(Processor(handler, make_decoder(None, None)), 1, "h")
    lane = lane_for(pool, owner, by_key=False)
    async with anyio.create_task_group() as tg:
        pool.start(tg)
        lane.start(tg)
        lane.push(records([None] * 6))
        await wait_for(lambda: owner.failures)
        await wait_for(lane.done.is_set)
        pool.close()
    assert owner.failures == [3]
    assert lane.offsets.completed == 3
    assert lane.buffered == 0


async def test_drain_waits_then_cancel_stops_only_this_lanes_records() -> None:
    cancelled: list[int] = []
    finished: list[tuple[int, int]] = []

    async def handler(msg: Message[Any]) -> None:
        try:
            await anyio.sleep(60 if msg.partition == 0 else 0.01)
        except anyio.get_cancelled_exc_class():
            cancelled.append(msg.offset)
            raise
        finished.append((msg.partition, msg.offset))

    pool = WorkerPool(Processor(handler, make_decoder(None, None)), 4, "h")
    slow = lane_for(pool, Owner(), by_key=False)
    other = KeyedLane(
        TopicPartition("t", 1),
        pool,
        PartitionOffsets(),
        Owner(),
        by_key=False,
        bound=BufferBound(1),
    )
    async with anyio.create_task_group() as tg:
        pool.start(tg)
        slow.start(tg)
        other.start(tg)
        slow.push(records([None] * 2))
        await wait_for(lambda: len(slow.running()) == 2)
        slow.close()
        assert not slow.done.is_set()  # still running
        slow.cancel()
        await wait_for(slow.done.is_set)
        # The pool keeps serving other partitions with the same workers.
        other.push(
            [
                Message(
                    topic="t", partition=1, offset=o, key=None, value=b"", headers=(), timestamp=0
                )
                for o in range(3)
            ]
        )
        await wait_for(lambda: other.offsets.completed == 3)
        pool.close()
    assert sorted(cancelled) == [0, 1]
    assert slow.offsets.completed == -1  # nothing of the cancelled records committed
    assert sorted(finished) == [(1, 0), (1, 1), (1, 2)]


async def test_buffer_drains_to_low_water_resumes() -> None:
    gate = anyio.Event()

    async def handler(msg: Message[Any]) -> None:
        await gate.wait()

    owner = Owner()
    pool = WorkerPool(Processor(handler, make_decoder(None, None)), 2, "h")
    lane = lane_for(pool, owner, by_key=False, low_water=3)
    async with anyio.create_task_group() as tg:
        pool.start(tg)
        lane.start(tg)
        assert lane.push(records([None] * 10))  # full: 10 > 2 * 3 + 1
        await anyio.lowlevel.checkpoint()
        await wait_for(lambda: lane.buffered == 8)
        lane.paused = True
        gate.set()
        await wait_for(lambda: lane.offsets.completed == 10)
        pool.close()
    assert owner.drained == 1


async def committed_with_metadata(kafka: MemoryKafka) -> MemoryConsumer:
    """A member of group "g" of ``kafka``, which has committed offset 40 of TP with
    41 and 44 completed above it (in the commit metadata, as a previous owner would)."""
    client = MemoryConsumer(kafka, group_id="g", auto_offset_reset="earliest")
    kafka.create_topic(TP.topic, TP.partition + 1)
    await client.commit({TP: OffsetAndMetadata(40, encode_completed(40, {41, 44}))}, revoking=True)
    return client


async def test_engine_reads_completed_offsets_from_commit_metadata_on_assign() -> None:
    kafka = MemoryKafka()
    engine = Engine(
        ConsumerSettings(kafka.bootstrap_servers),
        HandlerRegistry(),
        [],
        [],
        max_buffered_records=10,
    )
    engine.client = await committed_with_metadata(kafka)
    handled: list[int] = []

    async def handler(msg: Message[Any]) -> None:
        handled.append(msg.offset)

    pool = WorkerPool(Processor(handler, make_decoder(None, None)), 2, "h")
    lane = lane_for(pool, Owner(), by_key=False)
    await engine._skip_completed([lane])
    async with anyio.create_task_group() as tg:
        pool.start(tg)
        lane.start(tg)
        lane.push(records([None] * 6, start=40))
        await wait_for(lambda: lane.offsets.completed == 46)
        pool.close()
    assert sorted(handled) == [40, 42, 43, 45]


# -- seeks while records run -------------------------------------------------------


async def test_a_seek_back_while_a_record_runs_replays_it_safely_in_key_order() -> None:
    gate = anyio.Event()
    running: set[bytes] = set()
    runs: list[int] = []

    async def handler(msg: Message[Any]) -> None:
        assert msg.key not in running, f"two records of key {msg.key!r} ran at once"
        running.add(msg.key)
        try:
            if msg.offset == 2 and not gate.is_set():
                await gate.wait()
            else:
                await anyio.sleep(0.001)
        finally:
            running.discard(msg.key)
        runs.append(msg.offset)

    owner = Owner()
    pool = WorkerPool(Processor(handler, make_decoder(None, None)), 4, "h")
    lane = lane_for(pool, owner)
    keys = [b"a", b"b", b"a", b"c"]
    async with anyio.create_task_group() as tg:
        pool.start(tg)
        lane.start(tg)
        lane.push(records(keys))
        await wait_for(lambda: sorted(runs) == [0, 1, 3] and lane.running() == [2])
        lane.seek(0)
        lane.push(records(keys))  # the replay, fetched from offset 0
        await wait_for(lambda: len(runs) == 5)  # b@1 and c@3 again; a@0 waits for a@2
        assert lane.running() == [2]  # the obsolete run is still seen (by a drain)
        assert lane.offsets.completed == 0
        gate.set()
        await wait_for(lambda: lane.offsets.completed == 4)
        pool.close()
    assert owner.failures == []
    assert sorted(runs) == [0, 0, 1, 1, 2, 2, 3, 3]
    # Key a: 0, then 2 (gated: made obsolete by the seek), then the replay 0 and 2,
    # which waited for the obsolete run to finish.
    assert [o for o in runs if o in (0, 2)] == [0, 2, 0, 2]


async def test_a_record_made_obsolete_by_a_seek_never_moves_the_offset_and_is_drained() -> None:
    gate = anyio.Event()

    async def handler(msg: Message[Any]) -> None:
        if msg.offset == 2:
            await gate.wait()

    owner = Owner()
    pool = WorkerPool(Processor(handler, make_decoder(None, None)), 4, "h")
    lane = lane_for(pool, owner, by_key=False)
    async with anyio.create_task_group() as tg:
        pool.start(tg)
        lane.start(tg)
        lane.push(records([None] * 4))
        await wait_for(lambda: lane.running() == [2] and not lane.buffered)
        lane.seek(10)
        assert lane.offsets.completed == 10
        lane.close()
        await anyio.sleep(0.02)
        assert not lane.done.is_set()  # the drain waits for the obsolete run
        gate.set()
        await wait_for(lane.done.is_set)
        pool.close()
    assert lane.offsets.completed == 10  # not 3: the obsolete record completed nothing
    assert owner.failures == []


# -- the completion window -----------------------------------------------------------


async def test_the_completion_window_holds_a_partition_back_until_it_shrinks() -> None:
    gate = anyio.Event()

    async def handler(msg: Message[Any]) -> None:
        if msg.offset == 0:
            await gate.wait()

    owner = Owner()
    pool = WorkerPool(Processor(handler, make_decoder(None, None)), 8, "h")
    lane = KeyedLane(
        TP, pool, PartitionOffsets(), owner, by_key=False, bound=BufferBound(1000, window=50)
    )
    async with anyio.create_task_group() as tg:
        pool.start(tg)
        lane.start(tg)
        assert not lane.push(records([None] * 40))
        await wait_for(lambda: len(lane.offsets.above or ()) == 39)
        assert lane.push(records([None] * 20, start=40))  # 60 beyond the watermark: full
        lane.paused = True  # what the engine does with a full lane
        await wait_for(lambda: len(lane.offsets.above or ()) == 59)
        await anyio.sleep(0.02)
        assert lane.buffered == 0
        assert owner.drained == 0  # nothing buffered, but the window is still full
        gate.set()
        await wait_for(lambda: lane.offsets.completed == 60)
        await wait_for(lambda: owner.drained == 1)
        pool.close()


async def test_a_lane_paused_for_its_buffer_resumes_though_its_window_stays_open() -> None:
    gate = anyio.Event()

    async def handler(msg: Message[Any]) -> None:
        if msg.offset == 0:
            await gate.wait()

    owner = Owner()
    pool = WorkerPool(Processor(handler, make_decoder(None, None)), 8, "h")
    lane = KeyedLane(
        TP, pool, PartitionOffsets(), owner, by_key=False, bound=BufferBound(10, window=100)
    )
    async with anyio.create_task_group() as tg:
        pool.start(tg)
        lane.start(tg)
        try:
            assert lane.push(records([None] * 60))  # full: 60 buffered >= 10; window 60 < 100
            lane.paused = True
            await wait_for(lambda: len(lane.offsets.above or ()) == 59)
            # The buffer drained; the window (60, above its half) cannot shrink while
            # offset 0 is stuck, and must not keep the partition paused.
            await wait_for(lambda: owner.drained == 1)
            gate.set()
            await wait_for(lambda: lane.offsets.completed == 60)
        finally:
            gate.set()
            pool.close()


# -- a lane takes no record before its skip set is known -----------------------------


async def test_a_lane_holds_records_until_its_skip_set_is_known() -> None:
    handled: list[int] = []

    async def handler(msg: Message[Any]) -> None:
        handled.append(msg.offset)

    pool = WorkerPool(Processor(handler, make_decoder(None, None)), 4, "h")
    lane = KeyedLane(
        TP,
        pool,
        PartitionOffsets(),
        Owner(),
        by_key=False,
        bound=BufferBound(100),
        wait_for_skip=True,
    )
    async with anyio.create_task_group() as tg:
        pool.start(tg)
        lane.start(tg)
        lane.push(records([None] * 8, start=10))
        assert lane.buffered == 8
        await anyio.sleep(0.02)
        assert handled == []
        lane.skip_completed({12, 13, 15})
        await wait_for(lambda: lane.offsets.completed == 18)
        pool.close()
    assert sorted(handled) == [10, 11, 14, 16, 17]


async def test_the_engine_runs_no_record_before_the_commit_metadata_is_read() -> None:
    release = anyio.Event()

    class Slow(MemoryConsumer):
        async def committed_metadata(
            self, partitions: Sequence[TopicPartition]
        ) -> dict[TopicPartition, OffsetAndMetadata]:
            await release.wait()  # the fetch loop goes on meanwhile
            return await super().committed_metadata(partitions)

    kafka = MemoryKafka()
    client = await committed_with_metadata(kafka)
    slow = Slow(kafka, group_id="g", auto_offset_reset="earliest")

    handled: list[int] = []

    async def handler(msg: Message[Any]) -> None:
        handled.append(msg.offset)

    registry = HandlerRegistry()
    registry.add(handler, ("t",), None, None, None, ordering="none")
    engine = Engine(
        ConsumerSettings(kafka.bootstrap_servers), registry, [], [], max_buffered_records=10
    )
    assert client.kafka is slow.kafka
    engine.client = slow
    async with anyio.create_task_group() as tg:
        engine._tg = tg
        tg.start_soon(engine._on_assigned, [TP])
        await wait_for(lambda: TP in engine._lanes)
        engine._push(engine._lanes[TP], records([None] * 6, start=40))  # as the fetch loop does
        await anyio.sleep(0.02)
        assert handled == []
        release.set()
        await wait_for(lambda: engine._lanes[TP].offsets.completed == 46)
        for pool in engine._pools.values():
            pool.close()
    assert sorted(handled) == [40, 42, 43, 45]


# -- the pool's idle workers ---------------------------------------------------------


async def test_a_worker_cancelled_while_idle_leaves_no_stale_idle_marker() -> None:
    gate = anyio.Event()
    started: list[int] = []

    async def handler(msg: Message[Any]) -> None:
        started.append(msg.offset)
        if msg.offset == 0:
            await gate.wait()

    pool = WorkerPool(Processor(handler, make_decoder(None, None)), 2, "h")
    lane = lane_for(pool, Owner(), by_key=False)
    async with anyio.create_task_group() as tg:
        pool.start(tg)
        lane.start(tg)
        await wait_for(lambda: len(pool._idle) == 2)
        pool._workers[1].scope.cancel()  # e.g. a drain's cancel that found it idle
        await anyio.sleep(0.01)
        lane.push(records([None]))  # one worker takes it and blocks
        await wait_for(lambda: started == [0])
        lane.push(records([None], start=1))  # the other worker is idle: it must run this
        await wait_for(lambda: started == [0, 1])
        gate.set()
        await wait_for(lambda: lane.offsets.completed == 2)
        pool.close()


async def test_a_drains_cancel_that_misses_its_record_does_not_hit_the_next_one() -> None:
    import asyncio

    finish_a: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    handled: list[tuple[int, int]] = []

    async def handler(msg: Message[Any]) -> None:
        if msg.partition == 0:
            await finish_a
        else:
            await anyio.sleep(0.05)
        handled.append((msg.partition, msg.offset))

    pool = WorkerPool(Processor(handler, make_decoder(None, None)), 1, "h")
    a = lane_for(pool, Owner(), by_key=False)
    b = KeyedLane(
        TopicPartition("t", 1), pool, PartitionOffsets(), Owner(), by_key=False,
        bound=BufferBound(10),
    )  # fmt: skip
    async with anyio.create_task_group() as tg:
        pool.start(tg)
        a.start(tg)
        b.start(tg)
        a.push(records([None]))
        await wait_for(lambda: a.running() == [0])
        b.push([Message(topic="t", partition=1, offset=0, key=None, value=b"",
                                headers=(), timestamp=0)])  # fmt: skip
        # A's record finishes in the same step as a drain cancels A: the cancel
        # cannot reach it any more, and must not reach B's record instead.
        finish_a.set_result(None)
        a.close()
        a.cancel()
        try:
            await wait_for(lambda: b.offsets.completed == 1)
        finally:
            pool.close()
    assert handled == [(0, 0), (1, 0)]
