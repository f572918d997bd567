"""``publish_to`` under partition ordering and batch handlers is pipelined: the lane
runs the next record while the broker acknowledges what the previous ones published,
and a record completes only when it and every record before it are acknowledged."""

import asyncio
from typing import Any, cast

import anyio
import pytest

from asyncconsumer import Backoff, Message, Retry, TopicPartition
from asyncconsumer._message import make_decoder
from asyncconsumer._producer import Producer
from asyncconsumer._retry import FailurePolicy
from asyncconsumer._runtime._lanes import BatchLane, BufferBound, Lane, LaneOwner, PartitionLane
from asyncconsumer._runtime._offsets import PartitionOffsets
from asyncconsumer._runtime._pipeline import Processor

TP = TopicPartition("t", 0)


def records(*offsets: int) -> list[Any]:
    return [
        Message(
            topic="t",
            partition=0,
            offset=o,
            key=b"k",
            value=str(o).encode(),
            headers=(),
            timestamp=0,
        )
        for o in offsets
    ]


class HeldClient:
    """A producer client whose acknowledgements wait until the test gives them."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, asyncio.Future[None]]] = []

    async def send(self, topic: str, value: bytes, key: Any = None, **kw: Any) -> Any:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.sent.append((topic, value, future))
        return future

    def values(self, topic: str = "out") -> list[bytes]:
        return [value for t, value, _ in self.sent if t == topic]

    def ack(self, index: int, error: Exception | None = None) -> None:
        future = self.sent[index][2]
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)

    def ack_all(self) -> None:
        for _, _, future in self.sent:
            if not future.done():
                future.set_result(None)


class Owner(LaneOwner):
    def __init__(self) -> None:
        self.failures: list[tuple[int, Exception]] = []

    def lane_failed(self, lane: Lane, record: Any, exc: Exception) -> None:
        self.failures.append((record.offset, exc))

    def lane_drained(self, lane: Lane) -> None:
        lane.paused = False


def processor(
    handler: Any,
    client: HeldClient,
    *,
    retry: Retry | None = None,
    on_failure: FailurePolicy = "stop",
) -> Processor:
    producer = Producer("127.0.0.1:1")
    producer._client = cast(Any, client)  # a ProducerClient whose acks the test holds
    return Processor(
        handler,
        make_decoder(None, None),
        retry=retry or Retry(attempts=1),
        on_failure=on_failure,
        publish_to="out",
        producer=producer,
    )


def lane_for(proc: Processor, owner: Owner, window: int = 100) -> PartitionLane:
    return PartitionLane(
        TP, proc, PartitionOffsets(), owner, bound=BufferBound(1000, window=window)
    )


async def until(condition: Any) -> None:
    with anyio.fail_after(5):
        while not condition():
            await anyio.sleep(0.005)


async def echo(msg: Message[Any]) -> bytes:
    return msg.value  # type: ignore[no-any-return]


async def test_the_next_record_starts_before_the_acknowledgement_and_completion_waits_for_it() -> (
    None
):
    client, owner = HeldClient(), Owner()
    proc = processor(echo, client)
    lane = lane_for(proc, owner)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lane.run)
        lane.push(records(0, 1, 2))
        await until(lambda: len(client.sent) == 3)  # all three ran, nothing acknowledged
        assert lane.offsets.completed == -1
        assert sorted(lane.running()) == [0, 1, 2]
        client.ack(1)  # out of order: record 0 still waits, so nothing completes
        client.ack(2)
        await anyio.sleep(0.02)
        assert lane.offsets.completed == -1
        assert proc.counters["t"].handled == 0
        client.ack(0)
        await until(lambda: lane.offsets.completed == 3)
        assert proc.counters["t"].handled == 3
        assert lane.running() == ()
        lane.close()
    assert client.values() == [b"0", b"1", b"2"]
    assert owner.failures == []


async def test_the_window_bounds_the_records_waiting_for_acknowledgements() -> None:
    client, owner = HeldClient(), Owner()
    lane = lane_for(processor(echo, client), owner, window=2)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lane.run)
        lane.push(records(0, 1, 2, 3, 4))
        await until(lambda: len(client.sent) == 2)
        await anyio.sleep(0.05)
        assert len(client.sent) == 2  # the third waits for room
        client.ack(0)
        client.ack(1)  # down to the low-water mark (1): the lane goes on
        await until(lambda: len(client.sent) == 4)
        client.ack_all()
        await until(lambda: len(client.sent) == 5)
        client.ack_all()
        await until(lambda: lane.offsets.completed == 5)
        lane.close()


async def test_a_failed_acknowledgement_retries_that_record_then_runs_the_later_ones_again() -> (
    None
):
    client, owner = HeldClient(), Owner()
    calls: list[int] = []

    async def handler(msg: Message[Any]) -> bytes:
        calls.append(msg.offset)
        return msg.value  # type: ignore[no-any-return]

    proc = processor(handler, client, retry=Retry(attempts=3, backoff=Backoff(initial=0.0)))
    lane = lane_for(proc, owner)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lane.run)
        lane.push(records(0, 1, 2))
        await until(lambda: len(client.sent) == 3)
        client.ack(0)
        client.ack(1, RuntimeError("not leader"))
        client.ack(2)
        # record 1 again (its second attempt), then record 2 again: in offset order
        await until(lambda: len(client.sent) == 5)
        assert calls == [0, 1, 2, 1, 2]
        assert lane.offsets.completed == 1  # record 0 only: 1 and 2 wait for the new acks
        client.ack_all()
        await until(lambda: lane.offsets.completed == 3)
        lane.close()
    assert client.values() == [b"0", b"1", b"2", b"1", b"2"]
    assert proc.counters["t"].retried == 1
    assert proc.counters["t"].handled == 3
    assert owner.failures == []


async def test_a_failed_acknowledgement_without_retries_stops_at_that_record() -> None:
    client, owner = HeldClient(), Owner()
    lane = lane_for(processor(echo, client), owner)
    error = RuntimeError("record too large")
    async with anyio.create_task_group() as tg:
        tg.start_soon(lane.run)
        lane.push(records(0, 1, 2))
        await until(lambda: len(client.sent) == 3)
        client.ack(0)
        client.ack(1, error)
        client.ack(2)
        await until(lambda: owner.failures != [])
    assert owner.failures == [(1, error)]
    assert lane.offsets.completed == 1  # never past the record whose publish failed


async def test_a_failed_acknowledgement_can_dead_letter_the_record() -> None:
    client, owner = HeldClient(), Owner()
    proc = processor(echo, client, on_failure="dead_letter")
    lane = lane_for(proc, owner)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lane.run)
        lane.push(records(0, 1))
        await until(lambda: len(client.sent) == 2)
        client.ack(0, RuntimeError("no"))
        client.ack(1)
        await until(lambda: len(client.values("t.DLQ")) == 1)
        client.ack_all()  # the dead letter (awaited in the handler's path)
        await until(lambda: len(client.values()) == 3)  # record 1 published again
        client.ack_all()
        await until(lambda: lane.offsets.completed == 2)
        lane.close()
    assert proc.counters["t"].dead_lettered == 1
    assert proc.counters["t"].handled == 1


async def test_a_close_waits_for_the_acknowledgements_before_the_lane_is_done() -> None:
    client, owner = HeldClient(), Owner()
    lane = lane_for(processor(echo, client), owner)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lane.run)
        lane.push(records(0, 1))
        await until(lambda: len(client.sent) == 2)
        lane.close()
        await anyio.sleep(0.05)
        assert not lane.done.is_set()  # a revoke's commit must include these
        client.ack_all()
        with anyio.fail_after(5):
            await lane.done.wait()
    assert lane.offsets.completed == 2


async def test_a_seek_forgets_the_records_waiting_for_acknowledgements() -> None:
    client, owner = HeldClient(), Owner()
    lane = lane_for(processor(echo, client), owner)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lane.run)
        lane.push(records(0, 1))
        await until(lambda: len(client.sent) == 2)
        lane.seek(50)
        client.ack_all()
        await anyio.sleep(0.05)
        assert lane.offsets.completed == 50
        lane.close()


async def test_records_without_output_complete_in_order_behind_those_with_output() -> None:
    client, owner = HeldClient(), Owner()

    async def odd_only(msg: Message[Any]) -> bytes | None:
        return msg.value if msg.offset % 2 else None

    lane = lane_for(processor(odd_only, client), owner)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lane.run)
        lane.push(records(0, 1, 2))
        await until(lambda: lane.offsets.completed == 1 and len(client.sent) == 1)
        await anyio.sleep(0.02)
        assert lane.offsets.completed == 1  # record 2 waits behind record 1's ack
        client.ack_all()
        await until(lambda: lane.offsets.completed == 3)
        lane.close()


@pytest.mark.parametrize("fail", [False, True])
async def test_a_batch_lane_pipelines_and_redoes_a_batch_whose_publish_failed(fail: bool) -> None:
    client, owner = HeldClient(), Owner()

    async def handler(msgs: list[Message[Any]]) -> list[bytes]:
        return [m.value for m in msgs]

    proc = processor(handler, client, retry=Retry(attempts=2, backoff=Backoff(initial=0.0)))
    lane = BatchLane(
        TP,
        proc,
        PartitionOffsets(),
        owner,
        bound=BufferBound(1000),
        max_records=2,
        max_wait=0.0,
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(lane.run)
        lane.push(records(0, 1, 2, 3))
        await until(lambda: len(client.sent) == 4)  # the second batch ran before any ack
        client.ack(0)
        client.ack(1, RuntimeError("no") if fail else None)
        client.ack(2)
        client.ack(3)
        if fail:
            await until(lambda: len(client.sent) == 8)
            assert lane.offsets.completed == -1
            client.ack_all()
        await until(lambda: lane.offsets.completed == 4)
        lane.close()
    expected = [b"0", b"1", b"2", b"3"]
    assert client.values() == (expected * 2 if fail else expected)
    assert proc.counters["t"].handled == 4


async def test_in_flight_counts_the_records_waiting_for_acknowledgements() -> None:
    client, owner = HeldClient(), Owner()
    lane = lane_for(processor(echo, client), owner)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lane.run)
        lane.push(records(0, 1, 2))
        await until(lambda: len(client.sent) == 3)
        assert lane.in_flight() == len(lane.running()) == 3
        client.ack(0)
        await until(lambda: lane.in_flight() == 2)
        client.ack_all()
        await until(lambda: lane.in_flight() == 0)
        lane.close()
