"""Ordered concurrency on a real broker: per-key order, gaps, batches, crashes."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import anyio
import pytest

from asyncconsumer import ConsumerApp, Message, TopicPartition
from asyncconsumer.testing.pytest_plugin import KafkaTestBroker

from .conftest import Topics, aproduce, committed_offsets, unique, wait_for, wait_until

ROOT = Path(__file__).resolve().parents[2]


async def test_key_order_kept_under_concurrency_and_keys_overlap(
    kafka_broker: KafkaTestBroker, topics: Topics
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = await topics.create("keyed", partitions=2)
    rng = random.Random(11)
    records = [(f"k{rng.randrange(40)}".encode(), b"v") for _ in range(2000)]
    produced = await aproduce(bootstrap, topic, records)
    group = unique("g-keyed")
    app = ConsumerApp(
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        commit_interval=0.5,
    )
    seen: dict[tuple[TopicPartition, bytes], list[int]] = defaultdict(list)
    running: Counter[TopicPartition] = Counter()
    overlap: Counter[TopicPartition] = Counter()
    keys_running: set[tuple[TopicPartition, bytes]] = set()

    @app.handler(topic, ordering="key", concurrency=32)
    async def handle(msg: Message[bytes]) -> None:
        slot = (msg.tp, msg.key)
        assert slot not in keys_running, "two records of one key ran at once"
        keys_running.add(slot)
        running[msg.tp] += 1
        overlap[msg.tp] = max(overlap[msg.tp], running[msg.tp])
        await anyio.sleep(rng.uniform(0, 0.003))
        running[msg.tp] -= 1
        keys_running.discard(slot)
        seen[slot].append(msg.offset)

    async with app:
        await wait_until(
            lambda: sum(map(len, seen.values())) >= 2000, timeout=60, what="all records handled"
        )
        await anyio.sleep(0.2)

    assert sum(map(len, seen.values())) == 2000
    for (tp, key), offsets in seen.items():
        assert offsets == sorted(offsets), f"{tp} key {key!r} out of order"
    # Different keys of one partition really ran at the same time.
    assert all(overlap[tp] > 1 for tp in produced), overlap
    ends = {tp: max(offsets) + 1 for tp, offsets in produced.items()}
    assert await committed_offsets(bootstrap, group, ends) == ends


async def test_a_slow_record_holds_the_commit_while_later_ones_complete(
    kafka_broker: KafkaTestBroker, topics: Topics
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = await topics.create("gap")
    await aproduce(bootstrap, topic, [(f"k{i}".encode(), b"v") for i in range(50)])
    tp = TopicPartition(topic, 0)
    group = unique("g-gap")
    app = ConsumerApp(
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        commit_interval=0.1,
    )
    release = anyio.Event()
    done: set[int] = set()

    @app.handler(topic, ordering="none", concurrency=10)
    async def handle(msg: Message[bytes]) -> None:
        if msg.offset == 10:
            await release.wait()
        done.add(msg.offset)

    async def committed() -> int | None:
        return (await committed_offsets(bootstrap, group, [tp]))[tp]

    async with app:
        await wait_until(lambda: len(done) == 49, what="every record but the slow one")

        async def at_gap() -> bool:
            return await committed() == 10

        await wait_for(at_gap, what="the commit at the slow record")
        await anyio.sleep(0.5)  # several more commit intervals pass...
        assert await committed() == 10  # ...and the commit stays at the gap
        stats = app.statistics()
        assert stats.completed == {tp: 10}
        assert stats.in_flight == 1
        release.set()

        async def past_all() -> bool:
            return await committed() == 50

        await wait_for(past_all, what="the commit past every record")


async def test_batch_handler_gets_ordered_batches_of_one_partition(
    kafka_broker: KafkaTestBroker, topics: Topics
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = await topics.create("batches", partitions=2)
    produced = await aproduce(bootstrap, topic, [(str(i).encode(), b"v") for i in range(1500)])
    group = unique("g-batches")
    app = ConsumerApp(bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest")
    batches: list[list[Message[bytes]]] = []

    @app.batch_handler(topic, max_records=100, max_wait=0.02)
    async def handle(msgs: list[Message[bytes]]) -> None:
        batches.append(msgs)

    async with app:
        await wait_until(lambda: sum(map(len, batches)) >= 1500, what="all records handled")
        await anyio.sleep(0.2)

    assert all(1 <= len(b) <= 100 for b in batches)
    assert all(len({m.partition for m in b}) == 1 for b in batches)
    per_partition: dict[int, list[int]] = defaultdict(list)
    for batch in batches:
        per_partition[batch[0].partition].extend(m.offset for m in batch)
    for tp, offsets in produced.items():
        assert per_partition[tp.partition] == sorted(offsets)
    ends = {tp: max(offsets) + 1 for tp, offsets in produced.items()}
    assert await committed_offsets(bootstrap, group, ends) == ends


async def _crash_and_restart(
    kafka_broker: KafkaTestBroker, tmp_path: Path
) -> tuple[list[int], list[int], int, int]:
    """Run crash_app in a subprocess with the b"slow" key blocked, SIGKILL it once
    everything else completed and was committed, restart it unblocked.

    Returns the offsets handled by each run, the total, and the committed offset
    at the time of the kill (the first slow record)."""
    bootstrap = kafka_broker.bootstrap_servers
    topic = unique("crash")
    await kafka_broker.create_topic(topic, 1)
    keys = [b"slow" if i % 25 == 5 else f"k{i % 7}".encode() for i in range(300)]
    await aproduce(bootstrap, topic, [(k, b"v") for k in keys])
    group = unique("g-crash")
    logs = [tmp_path / "run1.log", tmp_path / "run2.log"]
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "CRASH_GROUP": group,
        "CRASH_TOPIC": topic,
    }
    cmd = [
        sys.executable,
        "-m",
        "asyncconsumer",
        "--log-level",
        "WARNING",
        "run",
        "tests.integration.crash_app:app",
    ]
    slow = [i for i, k in enumerate(keys) if k == b"slow"]
    tp = TopicPartition(topic, 0)

    def handled(path: Path) -> list[int]:
        return [int(line) for line in path.read_text().split()] if path.exists() else []

    with anyio.fail_after(90):
        proc = await anyio.open_process(
            cmd,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            env={**env, "CRASH_LOG": str(logs[0]), "CRASH_BLOCK_SLOW": "1"},
        )
        await wait_until(
            lambda: len(handled(logs[0])) == 300 - len(slow),
            timeout=60,
            what="every record but the slow key handled",
        )

        async def committed_at_gap() -> bool:
            return (await committed_offsets(bootstrap, group, [tp]))[tp] == slow[0]

        await wait_for(committed_at_gap, what="the commit at the first slow record")
        await anyio.sleep(1.0)  # commits with the completed offsets above it
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        proc = await anyio.open_process(
            cmd, cwd=ROOT, stdout=subprocess.DEVNULL, env={**env, "CRASH_LOG": str(logs[1])}
        )
        await wait_until(
            lambda: set(slow) <= set(handled(logs[1])),
            timeout=60,
            what="the restarted consumer handling the slow key",
        )
        proc.send_signal(signal.SIGTERM)
        assert await proc.wait() == 0
    return handled(logs[0]), handled(logs[1]), 300, slow[0]


async def test_sigkill_mid_stream_then_restart_handles_every_record_at_least_once(
    kafka_broker: KafkaTestBroker, tmp_path: Path
) -> None:
    first, second, total, watermark = await _crash_and_restart(kafka_broker, tmp_path)
    assert set(first) | set(second) == set(range(total))
    assert len(first) == len(set(first))  # nothing twice within a run
    # Nothing below the committed offset ran again.
    assert min(second) >= watermark


@pytest.mark.apache_kafka  # the embedded broker drops commit metadata
async def test_sigkill_restart_does_not_rerun_records_completed_above_the_commit(
    kafka_broker: KafkaTestBroker, tmp_path: Path
) -> None:
    first, second, total, _ = await _crash_and_restart(kafka_broker, tmp_path)
    assert set(first) | set(second) == set(range(total))
    # Only the slow records (in flight or waiting behind it at the kill) run in
    # the second run: what had completed was in the commit metadata.
    assert not set(first) & set(second)
