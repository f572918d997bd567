"""ConsumerApp across rebalances: drain, commit, then the user's revoke hook."""

from __future__ import annotations

from collections import Counter
from typing import Any

import anyio

from asyncconsumer import ConsumerApp, Message, TopicPartition
from asyncconsumer.testing.pytest_plugin import KafkaTestBroker

from .conftest import Topics, aproduce, unique, wait_until

FAST_GROUP: dict[str, Any] = {"heartbeat_interval_ms": 300, "session_timeout_ms": 6000}


async def test_member_joins_then_leaves_gracefully_no_record_lost_or_twice(
    kafka_broker: KafkaTestBroker, topics: Topics
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = await topics.create("rebalance", partitions=4)
    group = unique("g-rebalance")
    handled: list[tuple[str, TopicPartition, int]] = []
    # (member, partition, committed offset seen inside on_revoke, next unprocessed offset)
    revoke_checks: list[tuple[str, TopicPartition, int | None, int | None]] = []

    def member(name: str) -> ConsumerApp:
        app = ConsumerApp(
            bootstrap_servers=bootstrap,
            group_id=group,
            auto_offset_reset="earliest",
            commit_interval=30.0,
            **FAST_GROUP,
        )
        next_unprocessed: dict[TopicPartition, int | None] = {}

        @app.handler(topic)
        async def handle(msg: Message[bytes]) -> None:
            await anyio.sleep(0.002)  # keep records in flight when a rebalance starts
            handled.append((name, msg.tp, msg.offset))
            next_unprocessed[msg.tp] = msg.offset + 1

        @app.on_assign
        async def assigned(partitions: list[TopicPartition]) -> None:
            for tp in partitions:
                next_unprocessed[tp] = await app.committed(tp)

        @app.on_revoke
        async def revoked(partitions: list[TopicPartition]) -> None:
            for tp in partitions:
                revoke_checks.append((name, tp, await app.committed(tp), next_unprocessed.get(tp)))

        return app

    produced: dict[TopicPartition, list[int]] = {}
    producing = True
    producer_done = anyio.Event()

    async def keep_producing() -> None:
        i = 0
        while producing:
            batch = [(f"k{j % 13}".encode(), f"v{j}".encode()) for j in range(i, i + 40)]
            i += 40
            for tp, offsets in (await aproduce(bootstrap, topic, batch)).items():
                produced.setdefault(tp, []).extend(offsets)
            await anyio.sleep(0.05)
        producer_done.set()

    def count(name: str) -> int:
        return sum(1 for who, _, _ in handled if who == name)

    first, second = member("first"), member("second")
    async with anyio.create_task_group() as tg:
        tg.start_soon(keep_producing)
        async with first:
            await wait_until(
                lambda: count("first") > 200, timeout=30, what="first member consuming"
            )
            async with second:
                await wait_until(
                    lambda: len(second.assignment()) > 0 and count("second") > 100,
                    timeout=40,
                    what="second member consuming",
                )
                assert len(first.assignment()) + len(second.assignment()) == 4
            # The second member left: the first one gets every partition back.
            await wait_until(
                lambda: len(first.assignment()) == 4,
                timeout=40,
                what="first member owning all partitions again",
            )
            producing = False
            await producer_done.wait()
            await wait_until(
                lambda: len(handled) >= sum(map(len, produced.values())),
                timeout=30,
                what="every produced record handled",
            )
            await anyio.sleep(0.3)  # a duplicate would show up now

    total = sum(map(len, produced.values()))
    times = Counter((tp, offset) for _, tp, offset in handled)
    assert len(handled) == total
    assert set(times) == {(tp, o) for tp, offsets in produced.items() for o in offsets}
    assert max(times.values()) == 1, "a record was handled twice"
    # Both members handled records, and both were revoked at least once.
    assert {who for who, _, _ in handled} == {"first", "second"}
    assert {who for who, *_ in revoke_checks} == {"first", "second"}
    # commit_interval is 30 s: only the framework's commit before the revoke
    # can have moved these offsets.
    assert any(expected for *_, expected in revoke_checks)
    for who, tp, committed, expected in revoke_checks:
        assert committed == expected, f"{who}: {tp} committed {committed}, expected {expected}"
