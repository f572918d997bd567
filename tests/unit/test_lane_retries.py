"""How lanes wait for retries: a partition lane waits in place, a pooled lane parks
the record and frees its worker; a closing lane abandons a record in backoff."""

import time
from collections import Counter
from typing import Any

import anyio

from asyncconsumer import Backoff, Message, Retry, TopicPartition
from asyncconsumer._message import make_decoder
from asyncconsumer._runtime._concurrent import KeyedLane, WorkerPool
from asyncconsumer._runtime._lanes import BufferBound, PartitionLane
from asyncconsumer._runtime._offsets import PartitionOffsets
from asyncconsumer._runtime._pipeline import Processor

from .test_concurrent import records as keyed_records
from .test_lanes import Owner, records

TP = TopicPartition("t", 0)


def processor(handler: Any, delay: float, attempts: int = 3) -> Processor:
    return Processor(
        handler,
        make_decoder(None, None),
        retry=Retry(attempts=attempts, backoff=Backoff.constant(delay)),
    )


async def wait_for(predicate: Any, within: float = 5.0) -> None:
    with anyio.fail_after(within):
        while not predicate():
            await anyio.sleep(0.005)


async def test_partition_lane_retries_in_place_then_completes() -> None:
    calls: Counter[int] = Counter()
    order: list[int] = []

    async def handler(msg: Message[Any]) -> None:
        calls[msg.offset] += 1
        if msg.offset == 1 and calls[1] < 3:
            raise ValueError("transient")
        order.append(msg.offset)

    offsets = PartitionOffsets()
    lane = PartitionLane(TP, processor(handler, 0.05), offsets, Owner(), bound=BufferBound(10))
    async with anyio.create_task_group() as tg:
        tg.start_soon(lane.run)
        lane.push(records(0, 1, 2))
        await wait_for(lambda: offsets.completed == 3)
        lane.close()
    assert calls == {0: 1, 1: 3, 2: 1}
    assert order == [0, 1, 2]  # the partition waited for its retry


async def test_closing_a_lane_abandons_a_record_in_backoff_at_once() -> None:
    async def handler(msg: Message[Any]) -> None:
        raise ValueError("always")

    owner = Owner()
    offsets = PartitionOffsets()
    lane = PartitionLane(TP, processor(handler, 30.0), offsets, owner, bound=BufferBound(10))
    async with anyio.create_task_group() as tg:
        tg.start_soon(lane.run)
        lane.push(records(0))
        await wait_for(lambda: lane.processor.counters["t"].retried == 1)
        started = time.monotonic()
        lane.close()
        await lane.done.wait()
        assert time.monotonic() - started < 1.0  # not the 30 s backoff
    assert offsets.completed == -1  # not completed, not committed
    assert owner.failures == []  # not a failure either: the next owner runs it


async def test_pooled_retry_frees_the_worker_and_holds_only_its_key() -> None:
    """One worker: while k0's first record waits 0.3 s for its retry, k1's records
    all run; k0's second record waits behind the first; the committable offset
    stays at the record being retried."""
    done_at: dict[int, float] = {}
    calls: Counter[int] = Counter()

    async def handler(msg: Message[Any]) -> None:
        calls[msg.offset] += 1
        if msg.offset == 0 and calls[0] < 3:
            raise ValueError("transient")
        done_at[msg.offset] = time.monotonic()

    pool = WorkerPool(processor(handler, 0.15), 1, "h")
    offsets = PartitionOffsets()
    lane = KeyedLane(TP, pool, offsets, Owner(), by_key=True, bound=BufferBound(100))
    keys = [b"k0", b"k1", b"k1", b"k0", b"k1"]  # offsets 0..4
    async with anyio.create_task_group() as tg:
        pool.start(tg)
        lane.start(tg)
        try:
            started = time.monotonic()
            lane.push(keyed_records(keys))
            await wait_for(lambda: {1, 2, 4} <= set(done_at))
            assert offsets.completed == -1  # held before the record in backoff
            await wait_for(lambda: offsets.completed == 5)
        finally:
            lane.close()
            pool.close()
    assert calls[0] == 3
    assert max(done_at[o] for o in (1, 2, 4)) - started < 0.1  # not delayed by the backoff
    assert done_at[0] - started >= 0.3  # two backoffs of 0.15 s
    assert done_at[3] > done_at[0]  # k0 kept its order


async def test_a_parked_record_is_dropped_when_its_lane_closes() -> None:
    async def handler(msg: Message[Any]) -> None:
        raise ValueError("always")

    pool = WorkerPool(processor(handler, 30.0), 2, "h")
    offsets = PartitionOffsets()
    lane = KeyedLane(TP, pool, offsets, Owner(), by_key=True, bound=BufferBound(100))
    async with anyio.create_task_group() as tg:
        pool.start(tg)
        lane.start(tg)
        try:
            lane.push(keyed_records([b"a"]))
            await wait_for(lambda: bool(lane.attempts))
            lane.close()
            with anyio.fail_after(1):
                await lane.done.wait()
        finally:
            pool.close()
    assert offsets.completed == -1


async def test_a_seek_cuts_a_partition_lanes_retry_backoff_short() -> None:
    calls: list[int] = []

    async def handler(msg: Message[Any]) -> None:
        calls.append(msg.offset)
        if msg.offset == 0:
            raise ValueError("always")

    owner = Owner()
    offsets = PartitionOffsets()
    lane = PartitionLane(TP, processor(handler, 30.0), offsets, owner, bound=BufferBound(10))
    async with anyio.create_task_group() as tg:
        tg.start_soon(lane.run)
        lane.push(records(0))
        await wait_for(lambda: calls == [0])
        lane.seek(5)
        lane.push(records(5, 6))
        await wait_for(lambda: offsets.completed == 7, within=1.0)  # not after 30 s
        lane.close()
    assert calls == [0, 5, 6]  # the record sought away from was abandoned, not retried
    assert owner.failures == []
