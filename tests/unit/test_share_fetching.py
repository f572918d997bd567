"""How ShareConsumer schedules its ShareFetch requests, against a scripted client (the
protocol itself runs on Apache Kafka in tests/integration/test_share_consumer.py)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import anyio
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from asyncconsumer import ShareConsumer
from asyncconsumer._share import _protocol as proto

TOPIC = "jobs"
TOPIC_ID = uuid.UUID("00112233-4455-6677-8899-aabbccddeeff")


def _batch(first: int, count: int) -> bytes:
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 20,
    )
    for delta in range(count):
        builder.append(delta, timestamp=1000, key=None, value=b"v", headers=[])
    data = bytearray(builder.build())
    data[0:8] = first.to_bytes(8, "big")  # the batch's base offset
    return bytes(data)


def _answer(partition: int, first: int, count: int) -> proto.ShareFetchResult:
    part = proto.ShareFetchPartition(
        TOPIC_ID,
        partition,
        0,
        None,
        0,
        None,
        -1,
        -1,
        _batch(first, count) if count else None,
        [proto.AcquiredRange(first, first + count - 1, 1)] if count else [],
    )
    return proto.ShareFetchResult(0, None, 30_000, [part] if count else [])


class TwoBrokers:
    """Partition 0 led by node 1, which always has 10 more records at once; partition 1
    led by node 2, which has none: its fetch long-polls until ``idle_answers`` is set."""

    def __init__(self) -> None:
        self.fetches = {1: 0, 2: 0}
        self.idle_answers = asyncio.Event()
        self.next_offset = 0

    async def send(self, node: int, call: Any) -> Any:
        self.fetches[node] += 1
        if node == 2:
            await self.idle_answers.wait()
            return _answer(1, 0, 0)
        first, self.next_offset = self.next_offset, self.next_offset + 10
        return _answer(0, first, 10)


def _consumer(client: TwoBrokers) -> ShareConsumer:
    """A ShareConsumer wired to ``client``, both partitions assigned (no group join)."""
    consumer = ShareConsumer(TOPIC, bootstrap_servers="127.0.0.1:9", group_id="g")
    consumer._client = client  # type: ignore[assignment]
    consumer._names[TOPIC_ID] = TOPIC
    consumer._ids[TOPIC] = TOPIC_ID
    consumer._leaders = {(TOPIC_ID, 0): 1, (TOPIC_ID, 1): 2}
    consumer._assigned = {(TOPIC_ID, 0), (TOPIC_ID, 1)}
    return consumer


async def test_a_broker_without_records_does_not_hold_up_the_others() -> None:
    """Regression: fetches went out in rounds, one request per broker, and a round ended
    when its slowest request did; a broker without records for this member long-polls
    (``fetch_max_wait_ms``), so a member whose partitions were on two brokers, one of
    them drained, got at most ``max_records`` per ``fetch_max_wait_ms`` (40 records/s for
    a share handler of concurrency 20: a 60 s drain in the reliability scenario 10)."""
    client = TwoBrokers()
    consumer = _consumer(client)
    got = []
    with anyio.fail_after(5):
        async for msg in consumer:
            got.append(msg.offset)
            if len(got) == 50:
                break
    assert got == list(range(50))
    assert client.fetches[2] == 1, "node 2's long poll was still the first one"
    assert client.fetches[1] >= 5
    client.idle_answers.set()
    consumer._closed = True  # no group to leave: only the fetches in flight end
    await consumer._finish_fetches()
    assert consumer._fetching == {}


class OneBroker:
    """Partition 0 on node 1, 10 more records per fetch, each answer after ``delay``;
    ``overlapped`` counts the fetches sent while the consumer still had records buffered."""

    def __init__(self, consumer_buffer: Any, delay: float) -> None:
        self.buffer = consumer_buffer
        self.delay = delay
        self.fetches = 0
        self.overlapped = 0
        self.next_offset = 0

    async def send(self, node: int, call: Any) -> Any:
        self.fetches += 1
        if self.buffer():
            self.overlapped += 1
        await asyncio.sleep(self.delay)
        first, self.next_offset = self.next_offset, self.next_offset + 10
        return _answer(0, first, 10)


async def _run(delay: float, work: float, count: int) -> OneBroker:
    consumer = _consumer(TwoBrokers())
    consumer._leaders = {(TOPIC_ID, 0): 1}
    consumer._assigned = {(TOPIC_ID, 0)}
    client = OneBroker(lambda: len(consumer._buffer), delay)
    consumer._client = client  # type: ignore[assignment]
    got = []
    with anyio.fail_after(10):
        async for msg in consumer:
            got.append(msg.offset)
            if work:
                await asyncio.sleep(work)
            if len(got) == count:
                break
    assert got == list(range(count))
    consumer._closed = True
    await consumer._finish_fetches()
    return client


async def test_the_next_fetch_goes_out_while_records_are_handled() -> None:
    """Records handed out fast (no await), fetches of 20 ms: after the first two
    fetches (which measure the round trip and the pace), each fetch goes out before the
    buffer runs out."""
    client = await _run(delay=0.02, work=0.0, count=100)
    assert client.overlapped >= client.fetches - 3


async def test_a_slow_loop_fetches_once_its_records_ran_out() -> None:
    """The control: a loop slower per record than two round trips fetches only when the
    buffer is empty, as before (no extra records held locked while it works)."""
    client = await _run(delay=0.0, work=0.02, count=30)
    assert client.overlapped == 0
