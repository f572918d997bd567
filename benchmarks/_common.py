"""Shared pieces of the benchmarks: the broker, producing, timing, memory."""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from asyncconsumer import TopicPartition
from asyncconsumer.testing import ApacheKafka, EmbeddedBroker, create_topic

PARTITIONS = 4
FASTSTREAM_TIMEOUT = 600.0


def c_extension_loaded() -> bool:
    """Whether aiokafka decodes records with its C extension (as in production)."""
    try:
        from aiokafka.record import _crecords  # noqa: F401
    except ImportError:
        return False
    return not os.environ.get("AIOKAFKA_NO_EXTENSIONS")


@asynccontextmanager
async def broker(kind: str = "embedded") -> AsyncIterator[str]:
    """$KAFKA_BOOTSTRAP_SERVERS if set, else a fresh broker of that kind:
    ``embedded`` (Tansu) or ``apache-kafka`` (one node, from Maven Central)."""
    address = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if address:
        yield address
        return
    if kind == "apache-kafka":
        async with ApacheKafka(jvm_options=()) as kafka:  # the JVM's defaults: C2, G1
            yield kafka.bootstrap_servers
        return
    async with EmbeddedBroker() as embedded:
        yield embedded.bootstrap_servers


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def partitions(topic: str, count: int = PARTITIONS) -> list[TopicPartition]:
    return [TopicPartition(topic, p) for p in range(count)]


async def make_topic(
    bootstrap: str, prefix: str, count: int, *, size: int = 100, keys: int = 1000
) -> str:
    """A new topic with ``count`` records of ``size`` bytes over ``keys`` keys."""
    topic = unique(prefix)
    await create_topic(bootstrap, topic, PARTITIONS)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        linger_ms=20,
        max_batch_size=512 * 1024,
        max_request_size=8 * 1024 * 1024,
    )
    await producer.start()
    try:
        value = b"x" * size
        pending = []
        for i in range(count):
            pending.append(await producer.send(topic, value, key=b"k%d" % (i % keys)))
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return topic


def produce_with_librdkafka(
    bootstrap: str, topic: str, count: int, *, keys: int = 1000, linger_ms: int = 5
) -> None:
    """``count`` records the way services often produce them: confluent-kafka's
    ``Producer`` (librdkafka) with its defaults and ``linger.ms=5``, a small JSON value
    (about 35 bytes), one header, ``keys`` keys. Blocking: run it in a thread."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": linger_ms})
    headers: list[tuple[str, str | bytes | None]] = [("source", b"checkout")]
    for i in range(count):
        value = b'{"order":%d,"sku":"a-%d","qty":%d}' % (i, i % 97, i % 7)
        while True:
            try:
                producer.produce(topic, value, b"k%d" % (i % keys), headers=headers)
                break
            except BufferError:
                producer.poll(0.05)
        if not i % 10_000:
            producer.poll(0)
    if producer.flush(60):
        raise RuntimeError(f"could not produce every record to {topic}")


async def make_librdkafka_topic(
    bootstrap: str, prefix: str, count: int, *, partitions: int = PARTITIONS
) -> str:
    """A new topic of ``partitions`` partitions with :func:`produce_with_librdkafka`."""
    topic = unique(prefix)
    await create_topic(bootstrap, topic, partitions)
    await anyio.to_thread.run_sync(lambda: produce_with_librdkafka(bootstrap, topic, count))
    return topic


@asynccontextmanager
async def raw_client(
    bootstrap: str, topic: str, count: int = PARTITIONS
) -> AsyncIterator[AIOKafkaConsumer]:
    """A plain aiokafka consumer, every partition assigned by hand, no commits."""
    client = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await client.start()
    client.assign(partitions(topic, count))
    try:
        yield client
    finally:
        await client.stop()


async def run_faststream(
    bootstrap: str,
    topic: str,
    handler: Callable[..., Awaitable[None]],
    done: anyio.Event,
    **subscriber_options: Any,
) -> None:
    """Run ``handler`` as a FastStream subscriber of ``topic`` (its own group, logger
    off) until ``done`` is set.

    The handler gets each record's value as bytes (a batch: a list of them), as the
    other contenders do: FastStream's own decoder parses a value without a content
    type as JSON, and a ``bytes`` parameter then fails validation on every record
    of the JSON shapes, silently with the logger off (the contender never ended).
    A run that has not ended after ``FASTSTREAM_TIMEOUT`` seconds fails instead of
    hanging."""
    from faststream.kafka import KafkaBroker

    async def raw_value(msg: Any) -> Any:
        return msg.body

    logging.getLogger("faststream").setLevel(logging.CRITICAL)
    broker = KafkaBroker(bootstrap, logger=None)
    broker.subscriber(
        topic,
        group_id=unique("bench-fs"),
        auto_offset_reset="earliest",
        decoder=raw_value,
        **subscriber_options,
    )(handler)
    await broker.start()
    try:
        with anyio.fail_after(FASTSTREAM_TIMEOUT):
            await done.wait()
    finally:
        await broker.stop()


class Clock:
    """First-to-last record timing, so that group joins are not counted.

    The records handed over with the first tick arrived at the starting instant:
    they are not counted in the rate (for batch-wise contenders that matters).
    """

    __slots__ = ("count", "cpu_first", "cpu_last", "first", "head", "last", "target")

    def __init__(self, target: int) -> None:
        self.target = target
        self.count = 0
        self.head = 0
        self.first = 0.0
        self.last = 0.0
        self.cpu_first = 0.0
        self.cpu_last = 0.0

    def tick(self, n: int = 1) -> bool:
        """Count ``n`` records; True once the target is reached."""
        if not self.count:
            self.first = time.perf_counter()
            self.cpu_first = time.process_time()
            self.head = n
        self.count += n
        if self.count >= self.target:
            self.last = time.perf_counter()
            self.cpu_last = time.process_time()
            return True
        return False

    @property
    def cpu_share(self) -> float:
        """This process's CPU seconds per wall second while records flowed (1.0 = a core)."""
        span = self.last - self.first
        return (self.cpu_last - self.cpu_first) / span if span > 0 else 0.0

    @property
    def cpu_per_million(self) -> float:
        """This process's CPU seconds per million records (all threads, e.g. librdkafka's)."""
        counted = self.count - self.head
        return (self.cpu_last - self.cpu_first) / counted * 1e6 if counted > 0 else 0.0

    @property
    def rate(self) -> float:
        span = self.last - self.first
        return (self.count - self.head) / span if span > 0 else 0.0


def print_round(
    attempt: int, repeat: int, name: str, clock: Clock, started: float, width: int = 40
) -> None:
    """One contender's round, as it ends: its rate, CPU s per million records, wall time
    since ``started`` (``time.perf_counter()``)."""
    print(
        f"  [{attempt + 1}/{repeat}] {name:<{width}} {clock.rate:>10,.0f} rec/s "
        f"{clock.cpu_per_million:>6.2f} CPU s/M "
        f"({time.perf_counter() - started:.1f}s wall)",
        flush=True,
    )


def machine_steadiness(slices: int = 200) -> dict[str, float]:
    """CPU milliseconds of the same fixed Python work, ``slices`` times in a row (about
    10 ms each on these machines): how steady the machine's speed is.

    On the shared VMs this project is measured on, it flips between two speeds about
    1.8x apart in phases of 0.1-0.5 s, whatever runs in the process: the same scale as a
    200,000-record round of scenario 1 (0.3-0.5 s), which is why the published runs use
    1,000,000 records per round. Printed at the start of a run and kept in its results.
    """

    def work() -> None:
        table: dict[int, tuple[int, str]] = {}
        for i in range(60_000):
            table[i & 1023] = (i, str(i))

    took = []
    for _ in range(slices):
        started = time.process_time()
        work()
        took.append((time.process_time() - started) * 1000)
    took.sort()
    return {
        "min_ms": took[0],
        "median_ms": took[len(took) // 2],
        "p90_ms": took[int(len(took) * 0.9)],
        "max_ms": took[-1],
        "slow_share": sum(t > 1.4 * took[0] for t in took) / len(took),
    }


def rss_bytes(pid: int | None = None) -> int:
    with open(f"/proc/{pid or 'self'}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0
