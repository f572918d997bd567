"""Fetching on a real broker: a partition with a backlog is fetched as fast as its lane
takes records, whatever the other partitions of the broker do."""

from __future__ import annotations

import time

import anyio
from aiokafka.structs import ConsumerRecord
from confluent_kafka import Producer

from asyncconsumer import ConsumerApp, Message
from asyncconsumer.testing.pytest_plugin import KafkaTestBroker

from .conftest import Topics, aproduce, read_topic, unique, wait_until

LONG_POLL = 5.0  # fetch_max_wait_ms, in seconds: long enough to see a stall behind it


async def test_a_backlog_is_not_held_behind_a_long_poll_of_an_idle_partition(
    kafka_broker: KafkaTestBroker, topics: Topics
) -> None:
    """Partition 0 has a backlog of several fetch responses, partition 1 nothing.

    aiokafka sends one fetch at a time per broker and none for a partition whose
    fetched records were not consumed yet. While partition 0's lane was full, its
    records waited in aiokafka's buffer; after 0.1 s aiokafka fetched partition 1
    alone, a long poll of ``fetch_max_wait_ms``, and partition 0, taken meanwhile,
    waited for it to end: once per response (37 s here instead of 2). Now fetches
    wait only briefly while fetched records are unconsumed (``_transport/_aiokafka.py``).
    """
    bootstrap = kafka_broker.bootstrap_servers
    topic = await topics.create("backlog", partitions=2)
    total, batches = 2_000, 8
    for _ in range(batches):  # a batch (about 25 KiB) a fetch response
        await aproduce(bootstrap, topic, [(None, b"v" * 100)] * (total // batches), partition=0)
    app = ConsumerApp(
        bootstrap_servers=bootstrap,
        group_id=unique("g-backlog"),
        auto_offset_reset="earliest",
        fetch_max_wait_ms=int(LONG_POLL * 1000),
        max_partition_fetch_bytes=16 * 1024,  # one batch a response
        max_buffered_records=100,  # so that a response fills the lane
    )
    times: list[float] = []

    @app.handler(topic)
    async def handle(msg: Message[bytes]) -> None:
        # A response takes longer than aiokafka's prefetch backoff (0.1 s) to go
        # through, as it does for real handlers.
        await anyio.sleep(0.001)
        times.append(time.monotonic())

    async with app:
        await wait_until(lambda: len(times) >= total, timeout=120, what="the backlog handled")
    assert len(times) == total
    # Held behind long polls, the backlog took about (responses - 1) x LONG_POLL
    # (on Apache Kafka; the embedded broker sends it all in one response).
    # Flowing, it takes about 2,000 x 1 ms, well under one long poll.
    span = times[-1] - times[0]
    assert span < LONG_POLL, f"{total} records took {span:.1f}s: fetches stalled"


async def test_fetched_records_are_raw_messages_and_other_clients_keep_theirs(
    kafka_broker: KafkaTestBroker, topics: Topics
) -> None:
    """Our consumers build each record's Message while decoding the fetch response
    (one object per record, not a ConsumerRecord copied into a Message); a plain
    aiokafka consumer in the same process still gets aiokafka's ConsumerRecords."""
    bootstrap = kafka_broker.bootstrap_servers
    topic = await topics.create("raw-messages", partitions=1)
    sent = [(b"k%d" % i, b"v%d" % i) for i in range(5)]
    await aproduce(bootstrap, topic, sent, partition=0)
    await anyio.to_thread.run_sync(lambda: _produce_with_headers(bootstrap, topic))
    app = ConsumerApp(
        bootstrap_servers=bootstrap, group_id=unique("g-raw"), auto_offset_reset="earliest"
    )
    got: list[Message[bytes | None]] = []

    @app.handler(topic)
    async def handle(msg: Message[bytes | None]) -> None:
        got.append(msg)

    async with app:
        await wait_until(lambda: len(got) == 6, timeout=30, what="6 records handled")
    assert all(type(m) is Message for m in got)
    assert [(m.offset, m.key, m.value) for m in got[:5]] == [
        (i, k, v) for i, (k, v) in enumerate(sent)
    ]
    last = got[5]
    assert (last.key, last.value) == (None, None)  # a tombstone without a key
    assert list(last.headers) == [("a", b"1"), ("b", b"")]
    assert last.timestamp > 0
    plain = await read_topic(bootstrap, topic, 6)
    assert [type(r) for r in plain] == [ConsumerRecord] * 6
    assert [(r.offset, r.key, r.value, tuple(r.headers)) for r in plain] == [
        (m.offset, m.key, m.value, tuple(m.headers)) for m in got
    ]


def _produce_with_headers(bootstrap: str, topic: str) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(topic, None, None, 0, headers=[("a", b"1"), ("b", b"")])
    assert producer.flush(30) == 0
