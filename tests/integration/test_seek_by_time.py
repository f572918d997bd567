"""Seeking by time (``ListOffsets`` by timestamp) on Apache Kafka: the app, the
Consumer and the CLI's ``--start-at`` land on the first record at or after it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest
from aiokafka import AIOKafkaProducer

from asyncconsumer import Consumer, ConsumerApp, Message, TopicPartition
from asyncconsumer.testing.pytest_plugin import KafkaTestBroker

from .conftest import Topics, committed_offsets, unique, wait_for, wait_until

pytestmark = pytest.mark.apache_kafka  # the embedded broker answers offsets_for_times wrongly

ROOT = Path(__file__).resolve().parents[2]
BASE = 1_763_596_800_000  # 2025-11-20T00:00:00Z: record i of a partition is BASE + i s


async def produce_timed(bootstrap: str, topic: str, counts: dict[int, int]) -> None:
    """``counts[p]`` records to partition ``p``, the i-th stamped BASE + i seconds."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for partition, count in counts.items():
            for i in range(count):
                await producer.send_and_wait(
                    topic, b"v%d" % i, partition=partition, timestamp_ms=BASE + i * 1000
                )
    finally:
        await producer.stop()


async def test_app_seek_to_time_lands_on_the_first_record_at_or_after_it(
    kafka_broker: KafkaTestBroker, topics: Topics
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = await topics.create("by-time", partitions=2)
    await produce_timed(bootstrap, topic, {0: 10, 1: 3})
    group = unique("g-by-time")
    app = ConsumerApp(
        bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest",
        commit_interval=0.2,
    )  # fmt: skip
    handled: list[tuple[int, int]] = []

    @app.on_assign
    async def replay(partitions: list[TopicPartition]) -> None:
        # 4.5 s after BASE: partition 0's record 5; partition 1 has none (its end).
        await app.seek_to_time(datetime.fromtimestamp((BASE + 4500) / 1000, UTC))

    @app.handler(topic)
    async def handle(msg: Message[bytes]) -> None:
        handled.append((msg.partition, msg.offset))

    p0, p1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    async with app:
        await wait_until(lambda: len(handled) >= 5, what="records 5..9 of partition 0")

        async def committed_ends() -> bool:
            return await committed_offsets(bootstrap, group, [p0, p1]) == {p0: 10, p1: 3}

        await wait_for(committed_ends, what="the ends committed")
        await anyio.sleep(0.3)
    assert handled == [(0, o) for o in range(5, 10)]


async def test_consumer_seek_to_time_with_epoch_milliseconds(
    kafka_broker: KafkaTestBroker, topics: Topics
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = await topics.create("by-time-consumer")
    await produce_timed(bootstrap, topic, {0: 10})
    tp = TopicPartition(topic, 0)
    async with Consumer(
        partitions=[tp], bootstrap_servers=bootstrap, auto_offset_reset="earliest"
    ) as consumer:
        await consumer.seek_to_time(BASE + 7000)  # exactly record 7's timestamp
        seen = []
        with anyio.fail_after(20):
            async for msg in consumer:
                seen.append(msg.offset)
                if msg.offset == 9:
                    break
    assert seen == [7, 8, 9]


async def test_cli_start_at_replays_from_a_time_on_the_first_assignment(
    kafka_broker: KafkaTestBroker, topics: Topics, tmp_path: Path
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = await topics.create("by-time-cli")
    await produce_timed(bootstrap, topic, {0: 10})
    log = tmp_path / "handled.log"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "CRASH_LOG": str(log),
        "CRASH_GROUP": unique("g-by-time-cli"),
        "CRASH_TOPIC": topic,
    }
    start_at = datetime.fromtimestamp((BASE + 6000) / 1000, UTC).isoformat().replace("+00:00", "Z")
    async with await anyio.open_process(
        [sys.executable, "-m", "asyncconsumer", "run", "tests.integration.crash_app:app",
         "--bootstrap-servers", bootstrap, "--start-at", start_at],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    ) as proc:  # fmt: skip

        def handled() -> list[int]:
            return [int(line) for line in log.read_text().split()] if log.exists() else []

        await wait_until(lambda: 9 in handled(), timeout=60, what="the replay")
        proc.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            assert await proc.wait() == 0
    assert sorted(handled()) == [6, 7, 8, 9]
