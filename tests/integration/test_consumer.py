"""``async for msg in Consumer(...)`` on a real broker."""

from __future__ import annotations

import anyio
import pytest

from asyncconsumer import Consumer, ConsumerStoppedError, DeserializationError, TopicPartition
from asyncconsumer.testing.pytest_plugin import KafkaTestBroker

from .conftest import Topics, aproduce, committed_offsets, unique


async def test_break_after_n_then_a_new_member_starts_at_n_plus_one(
    kafka_broker: KafkaTestBroker, topics: Topics
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = await topics.create("iter")
    await aproduce(bootstrap, topic, [(None, f"r{i}".encode()) for i in range(20)])
    group = unique("g-iter")
    n = 7
    got: list[int] = []
    with anyio.fail_after(60):
        async with Consumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=group,
            auto_offset_reset="earliest",
            value_codec="str",
        ) as consumer:
            async for msg in consumer:
                got.append(msg.offset)
                assert msg.value == f"r{msg.offset}"
                if len(got) == n:
                    break
        assert got == list(range(n))
        async with Consumer(
            topic, bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest"
        ) as consumer:
            first = await anext(consumer)
    assert first.offset == n  # record N+1


async def test_leaving_by_an_exception_does_not_commit_the_record_in_hand(
    kafka_broker: KafkaTestBroker, topics: Topics
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = await topics.create("iter-exc")
    await aproduce(bootstrap, topic, [(None, b"x")] * 10)
    tp = TopicPartition(topic, 0)
    group = unique("g-iter-exc")
    with pytest.raises(RuntimeError, match="failed on 4"):  # noqa: PT012
        # partitions= assigns by hand (no group join); group_id is where offsets go.
        async with Consumer(
            partitions=[tp],
            bootstrap_servers=bootstrap,
            group_id=group,
            auto_offset_reset="earliest",
        ) as consumer:
            async for msg in consumer:
                if msg.offset == 4:
                    raise RuntimeError("failed on 4")
    assert await committed_offsets(bootstrap, group, [tp]) == {tp: 4}


async def test_manual_assignment_seek_pause_resume_and_commit(
    kafka_broker: KafkaTestBroker, topics: Topics
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = await topics.create("manual", partitions=2)
    for p in (0, 1):
        await aproduce(
            bootstrap, topic, [(None, f"{p}-{i}".encode()) for i in range(10)], partition=p
        )
    tp0, tp1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    group = unique("g-manual")
    with anyio.fail_after(60):
        async with Consumer(
            partitions=[tp0, tp1],
            bootstrap_servers=bootstrap,
            group_id=group,
            auto_offset_reset="earliest",
        ) as consumer:
            assert consumer.assignment() == {tp0, tp1}
            consumer.seek(tp1, 6)
            consumer.pause(tp0)
            got = [(m.partition, m.offset) for m in [await anext(consumer) for _ in range(4)]]
            assert got == [(1, 6), (1, 7), (1, 8), (1, 9)]  # nothing from the paused partition
            assert consumer.paused() == {tp0}
            consumer.resume(tp0)
            got = [(m.partition, m.offset) for m in [await anext(consumer) for _ in range(3)]]
            assert got == [(0, 0), (0, 1), (0, 2)]
            # Pausing with records already fetched: they come again after resume.
            consumer.pause(tp0)
            consumer.resume(tp0)
            assert (await anext(consumer)).offset == 3
            assert await consumer.commit() == {tp0: 4, tp1: 10}
            assert consumer.highwater(tp1) == 10
    assert await committed_offsets(bootstrap, group, [tp0, tp1]) == {tp0: 4, tp1: 10}


async def test_undecodable_record_raises_and_is_not_skipped(
    kafka_broker: KafkaTestBroker, topics: Topics
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = await topics.create("iter-poison")
    await aproduce(bootstrap, topic, [(None, b"1"), (None, b"{bad"), (None, b"3")])
    tp = TopicPartition(topic, 0)
    with anyio.fail_after(60):
        async with Consumer(
            partitions=[tp],
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest",
            value_codec="json",
        ) as consumer:
            assert (await anext(consumer)).value == 1
            for _ in range(2):  # asking again does not move past it
                with pytest.raises(DeserializationError) as info:
                    await anext(consumer)
                assert (info.value.partition, info.value.offset) == (0, 1)
            consumer.seek(tp, info.value.offset + 1)  # the caller decides to skip it
            assert (await anext(consumer)).value == 3


async def test_stop_from_another_task_ends_the_loop(
    kafka_broker: KafkaTestBroker, topics: Topics
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = await topics.create("iter-stop")
    await aproduce(bootstrap, topic, [(None, b"x")] * 3)
    tp = TopicPartition(topic, 0)
    got: list[int] = []
    consumer = Consumer(partitions=[tp], bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    with anyio.fail_after(30):
        async with consumer, anyio.create_task_group() as tg:

            async def iterate() -> None:
                async for msg in consumer:  # waits in getmany after the third record
                    got.append(msg.offset)

            tg.start_soon(iterate)
            while len(got) < 3:
                await anyio.sleep(0.02)
            await consumer.stop()
    assert got == [0, 1, 2]
    with pytest.raises(StopAsyncIteration):
        await anext(consumer)


async def test_group_rebalance_waits_for_the_loop_body_and_commits_before_revoke(
    kafka_broker: KafkaTestBroker, topics: Topics
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = await topics.create("iter-group", partitions=2)
    for p in (0, 1):
        await aproduce(bootstrap, topic, [(None, b"x")] * 60, partition=p)
    group = unique("g-iter-group")
    handled: list[tuple[str, TopicPartition, int]] = []
    next_unprocessed: dict[str, dict[TopicPartition, int]] = {"a": {}, "b": {}}
    revoke_checks: list[tuple[str, TopicPartition, int | None, int | None]] = []
    members: dict[str, Consumer] = {}

    async def member(name: str) -> None:
        async def on_revoke(partitions: list[TopicPartition]) -> None:
            for tp in partitions:
                committed = await members[name].committed(tp)
                revoke_checks.append((name, tp, committed, next_unprocessed[name].get(tp)))

        async def on_assign(partitions: list[TopicPartition]) -> None:
            for tp in partitions:
                next_unprocessed[name].pop(tp, None)

        async with Consumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=group,
            auto_offset_reset="earliest",
            commit_interval=60,
            heartbeat_interval_ms=300,
            on_revoke=on_revoke,
            on_assign=on_assign,
        ) as consumer:
            members[name] = consumer
            async for msg in consumer:
                await anyio.sleep(0.05)  # the body holds the record when B joins
                handled.append((name, msg.tp, msg.offset))
                next_unprocessed[name][msg.tp] = msg.offset + 1

    with anyio.fail_after(90):
        async with anyio.create_task_group() as tg:
            tg.start_soon(member, "a")
            while not handled:
                await anyio.sleep(0.05)
            tg.start_soon(member, "b")
            while len(handled) < 120:
                await anyio.sleep(0.05)
            await anyio.sleep(0.3)
            await members["b"].stop()
            await members["a"].stop()

    offsets = [(tp, offset) for _, tp, offset in handled]
    assert len(offsets) == 120
    assert len(set(offsets)) == 120, "a record was handled twice"
    assert {name for name, _, _ in handled} == {"a", "b"}
    # A was revoked when B joined: its loop body finished the record in hand,
    # and that record's offset was committed before on_revoke ran.
    assert any(name == "a" and expected for name, _, _, expected in revoke_checks)
    for name, tp, committed, expected in revoke_checks:
        if expected is not None:
            assert committed == expected, f"{name}: {tp} committed {committed}, not {expected}"


async def test_getmany_hands_out_batches_and_counts_them_processed_on_the_next_call(
    kafka_broker: KafkaTestBroker, topics: Topics
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = await topics.create("iter-many", partitions=2)
    for p in (0, 1):
        await aproduce(
            bootstrap, topic, [(None, f"{p}-{i}".encode()) for i in range(30)], partition=p
        )
    tp0, tp1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    group = unique("g-iter-many")
    got: list[tuple[int, int]] = []
    checked = False
    with anyio.fail_after(60):
        async with Consumer(
            partitions=[tp0, tp1],
            bootstrap_servers=bootstrap,
            group_id=group,
            auto_offset_reset="earliest",
            commit_interval=60,
        ) as consumer:
            while len(got) < 60:
                batch = await consumer.getmany(max_records=7, max_wait=2)
                assert 1 <= len(batch) <= 7
                got.extend((m.partition, m.offset) for m in batch)
                if len(got) >= 20 and not checked:
                    checked = True
                    committed = {tp: await consumer.committed(tp) for tp in (tp0, tp1)}
                    assert committed == {tp0: None, tp1: None}  # nothing before commit()
                    # commit() counts the batch in hand too: up to the last record seen.
                    seen = {q for q, _ in got}
                    expected = {
                        TopicPartition(topic, p): max(o for q, o in got if q == p) + 1 for p in seen
                    }
                    assert await consumer.commit() == expected
            assert await consumer.getmany(max_wait=0.3) == []  # nothing more: empty after the wait
    assert checked
    for p in (0, 1):
        assert [o for q, o in got if q == p] == list(range(30))  # each partition in order
    # Leaving normally counts the last batch as processed.
    assert await committed_offsets(bootstrap, group, [tp0, tp1]) == {tp0: 30, tp1: 30}


async def test_getmany_stops_before_an_undecodable_record_and_never_skips_it(
    kafka_broker: KafkaTestBroker, topics: Topics
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = await topics.create("many-poison")
    await aproduce(bootstrap, topic, [(None, b"1"), (None, b"2"), (None, b"{bad"), (None, b"4")])
    tp = TopicPartition(topic, 0)
    group = unique("g-many-poison")
    with anyio.fail_after(60), pytest.raises(DeserializationError):  # noqa: PT012
        async with Consumer(
            partitions=[tp],
            bootstrap_servers=bootstrap,
            group_id=group,
            auto_offset_reset="earliest",
            value_codec="json",
        ) as consumer:
            first = await consumer.getmany(max_records=10)
            assert [m.value for m in first] == [1, 2]
            await consumer.getmany(max_records=10)  # raises for offset 2
    # The two good records were counted at the failing call; the bad one was not.
    assert await committed_offsets(bootstrap, group, [tp]) == {tp: 2}


async def test_getmany_batch_in_hand_is_not_committed_when_leaving_by_an_exception(
    kafka_broker: KafkaTestBroker, topics: Topics
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = await topics.create("many-exc")
    await aproduce(bootstrap, topic, [(None, b"x")] * 10)
    tp = TopicPartition(topic, 0)
    group = unique("g-many-exc")
    with anyio.fail_after(60), pytest.raises(RuntimeError, match="batch failed"):  # noqa: PT012
        async with Consumer(
            partitions=[tp],
            bootstrap_servers=bootstrap,
            group_id=group,
            auto_offset_reset="earliest",
        ) as consumer:
            assert [m.offset for m in await consumer.getmany(max_records=3)] == [0, 1, 2]
            assert [m.offset for m in await consumer.getmany(max_records=3)] == [3, 4, 5]
            raise RuntimeError("batch failed")
    # The first batch was processed (the second call says so); the second was not.
    assert await committed_offsets(bootstrap, group, [tp]) == {tp: 3}


async def test_cancelling_the_iterating_task_commits_what_was_processed_and_closes(
    kafka_broker: KafkaTestBroker, topics: Topics
) -> None:
    """Ctrl-C under ``asyncio.run`` (or a signal that cancels a scope) cancels the task
    in the loop: waiting for records, or in the loop body. Either way the consumer
    commits what was processed (not the record in hand) and stops its client."""
    bootstrap = kafka_broker.bootstrap_servers
    topic = await topics.create("iter-cancel")
    await aproduce(bootstrap, topic, [(None, b"x")] * 10)
    tp = TopicPartition(topic, 0)
    group = unique("g-iter-cancel")
    got: list[int] = []
    consumers: list[Consumer] = []

    async def consume(hold_at: int | None) -> None:
        if hold_at is None:
            consumer = Consumer(
                topic, bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest"
            )
        else:
            # Assigned by hand, in a group of its own: no second join (on the embedded
            # broker a member of a group's first generation does not leave it, and the
            # group would refuse commits from others until its session expired).
            consumer = Consumer(
                partitions=[tp],
                bootstrap_servers=bootstrap,
                group_id=f"{group}-2",
                auto_offset_reset="earliest",
            )
        async with consumer:
            consumers.append(consumer)
            async for msg in consumer:
                got.append(msg.offset)
                if msg.offset == hold_at:
                    await anyio.sleep_forever()  # cancelled with this record in hand

    # 1. Waiting for more records after the last one: all ten count as processed.
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume, None)
            while len(got) < 10:
                await anyio.sleep(0.05)
            await anyio.sleep(0.3)  # in getmany(), waiting
            tg.cancel_scope.cancel()
    assert got == list(range(10))
    assert await committed_offsets(bootstrap, group, [tp]) == {tp: 10}
    with pytest.raises(ConsumerStoppedError):
        consumers[0].assignment()  # its client was stopped

    # 2. In the loop body: the record in hand is not committed.
    got.clear()
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume, 2)
            while 2 not in got:
                await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
    assert got == [0, 1, 2]
    assert await committed_offsets(bootstrap, f"{group}-2", [tp]) == {tp: 2}
    with pytest.raises(ConsumerStoppedError):
        consumers[1].assignment()
