from typing import Any

import anyio
import anyio.lowlevel

from asyncconsumer import Message, TopicPartition
from asyncconsumer._message import make_decoder
from asyncconsumer._runtime._lanes import BufferBound, Lane, LaneOwner, PartitionLane
from asyncconsumer._runtime._offsets import PartitionOffsets
from asyncconsumer._runtime._pipeline import Processor

TP = TopicPartition("t", 0)


def records(*offsets: int) -> list[Any]:
    return [
        Message(topic="t", partition=0, offset=o, key=None, value=b"", headers=(), timestamp=0)
        for o in offsets
    ]


class Owner(LaneOwner):
    def __init__(self) -> None:
        self.failures: list[tuple[int, Exception]] = []
        self.drained = 0

    def lane_failed(self, lane: Lane, record: Any, exc: Exception) -> None:
        self.failures.append((record.offset, exc))

    def lane_drained(self, lane: Lane) -> None:
        lane.paused = False
        self.drained += 1


def make_lane(handler: Any, owner: Owner, low_water: int = 0) -> PartitionLane:
    """A lane whose bound drains at ``low_water`` records."""
    return PartitionLane(
        TP,
        Processor(handler, make_decoder(None, None)),
        PartitionOffsets(),
        owner,
        bound=BufferBound(2 * low_water + 1),
    )


async def test_runs_in_offset_order_and_completes_past_each_record() -> None:
    seen: list[int] = []
    owner = Owner()

    async def handler(msg: Message[Any]) -> None:
        await anyio.lowlevel.checkpoint()
        seen.append(msg.offset)

    lane = make_lane(handler, owner)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lane.run)
        lane.push(records(0, 1, 2))
        lane.push(records(3))
        with anyio.fail_after(5):
            while lane.offsets.completed != 4:
                await anyio.sleep(0.01)
        lane.close()
    assert seen == [0, 1, 2, 3]
    assert lane.done.is_set()


async def test_failure_is_reported_and_offset_not_passed() -> None:
    owner = Owner()
    boom = ValueError("boom")

    async def handler(msg: Message[Any]) -> None:
        if msg.offset == 11:
            raise boom

    lane = make_lane(handler, owner)
    lane.push(records(10, 11, 12))
    with anyio.fail_after(5):
        await lane.run()
    assert owner.failures == [(11, boom)]
    assert lane.offsets.completed == 11  # the failed record is next, never skipped


async def test_close_drops_buffered_records_but_lets_the_running_one_finish() -> None:
    owner = Owner()
    release = anyio.Event()
    seen: list[int] = []

    async def handler(msg: Message[Any]) -> None:
        await release.wait()
        seen.append(msg.offset)

    lane = make_lane(handler, owner)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lane.run)
        lane.push(records(0, 1, 2))
        await anyio.sleep(0.01)
        lane.close()
        release.set()
    assert seen == [0]
    assert lane.offsets.completed == 1


async def test_seek_while_a_record_runs_wins_over_its_completion() -> None:
    owner = Owner()
    release = anyio.Event()

    async def handler(msg: Message[Any]) -> None:
        await release.wait()

    lane = make_lane(handler, owner)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lane.run)
        lane.push(records(5, 6))
        await anyio.sleep(0.01)
        lane.seek(2)
        release.set()
        await anyio.sleep(0.01)
        lane.close()
    assert lane.offsets.completed == 2


async def test_paused_lane_asks_to_resume_at_low_water() -> None:
    owner = Owner()

    async def handler(msg: Message[Any]) -> None:
        await anyio.lowlevel.checkpoint()

    lane = make_lane(handler, owner, low_water=2)
    lane.paused = True
    lane.push(records(*range(6)))
    async with anyio.create_task_group() as tg:
        tg.start_soon(lane.run)
        with anyio.fail_after(5):
            while lane.offsets.completed != 6:
                await anyio.sleep(0.01)
        lane.close()
    assert owner.drained == 1
    assert not lane.paused


async def test_unstarted_lane_closes_at_once() -> None:
    lane = make_lane(None, Owner())
    lane.push(records(1))
    lane.close()
    assert lane.done.is_set()
    assert lane.buffered == 0


async def test_batch_lane_hands_over_lists_in_order_and_completes_per_batch() -> None:
    from asyncconsumer._runtime._lanes import BatchLane

    batches: list[list[int]] = []

    async def handler(msgs: list[Message[Any]]) -> None:
        batches.append([m.offset for m in msgs])

    lane = BatchLane(
        TP,
        Processor(handler, make_decoder(None, None)),
        PartitionOffsets(),
        Owner(),
        bound=BufferBound(1),
        max_records=4,
        max_wait=0.05,
    )
    async with anyio.create_task_group() as tg:
        lane.start(tg)
        lane.push(records(0, 1, 2, 3, 4, 5))
        await anyio.sleep(0.01)
        lane.push(records(6))
        with anyio.fail_after(5):
            while lane.offsets.completed != 7:
                await anyio.sleep(0.01)
        lane.close()
    assert batches == [[0, 1, 2, 3], [4, 5, 6]]  # the short batch waited for 6 to arrive


async def test_batch_failure_holds_the_offset_at_the_batch_start() -> None:
    from asyncconsumer._runtime._lanes import BatchLane

    async def handler(msgs: list[Message[Any]]) -> None:
        if msgs[0].offset >= 2:
            raise ValueError("bad batch")

    owner = Owner()
    lane = BatchLane(
        TP,
        Processor(handler, make_decoder(None, None)),
        PartitionOffsets(),
        owner,
        bound=BufferBound(1),
        max_records=2,
        max_wait=0,
    )
    lane.push(records(0, 1, 2, 3, 4))
    with anyio.fail_after(5):
        await lane.run()
    assert [offset for offset, _ in owner.failures] == [2]
    assert lane.offsets.completed == 2


async def test_bytes_bound_fills_and_drains_with_the_record_sizes() -> None:
    def sized(*offsets: int, size: int) -> list[Any]:
        return [
            Message(
                topic="t",
                partition=0,
                offset=o,
                key=b"k",
                value=b"v" * size,
                headers=(),
                timestamp=0,
            )
            for o in offsets
        ]

    gate = anyio.Event()

    async def handler(msg: Message[Any]) -> None:
        await gate.wait()

    owner = Owner()
    lane = PartitionLane(
        TP,
        Processor(handler, make_decoder(None, None)),
        PartitionOffsets(),
        owner,
        bound=BufferBound(records=1000, bytes=10_000),
    )
    assert not lane.push(sized(0, 1, 2, size=2_999))  # 9,000 bytes: under the bound
    assert lane.push(sized(3, size=1_999))  # 11,000 bytes: full, with few records
    lane.paused = True
    async with anyio.create_task_group() as tg:
        lane.start(tg)
        gate.set()
        with anyio.fail_after(5):
            while lane.offsets.completed != 4:
                await anyio.sleep(0.01)
        lane.close()
    assert owner.drained == 1  # resumed once it was down to half the bytes
    assert lane.buffered_bytes == 0
