"""ShareConsumer (KIP-932 share groups) on Apache Kafka 4.3."""

from __future__ import annotations

import anyio
import pytest

from asyncconsumer import ShareConsumer, ShareMessage

from .conftest import Topics, aproduce, unique, wait_until

pytestmark = pytest.mark.apache_kafka  # share groups: Apache Kafka 4.2+ only


def share_consumer(bootstrap: str, topic: str, group: str, **options: object) -> ShareConsumer:
    return ShareConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        **options,  # type: ignore[arg-type]
    )


async def take(consumer: ShareConsumer, count: int, timeout: float = 60.0) -> list[ShareMessage]:
    """The next ``count`` records (each accepted when the next one is asked for)."""
    got: list[ShareMessage] = []
    with anyio.fail_after(timeout):
        async for msg in consumer:
            got.append(msg)
            if len(got) == count:
                break
    return got


async def test_records_flow_and_are_accepted_once(kafka_bootstrap: str, topics: Topics) -> None:
    topic = await topics.create("share-flow", partitions=2)
    group = unique("share-flow")
    await aproduce(kafka_bootstrap, topic, [(None, b"r%d" % i) for i in range(200)])
    async with share_consumer(kafka_bootstrap, topic, group) as consumer:
        got = await take(consumer, 200)
    assert sorted(m.value for m in got) == sorted(b"r%d" % i for i in range(200))
    assert {m.delivery_count for m in got} == {1}
    assert {m.partition for m in got} == {0, 1}
    # accepted: a new member of the group gets only what is produced afterwards
    await aproduce(kafka_bootstrap, topic, [(None, b"after")], partition=0)
    async with share_consumer(kafka_bootstrap, topic, group) as consumer:
        (msg,) = await take(consumer, 1)
    assert (msg.value, msg.delivery_count) == (b"after", 1)


async def test_released_record_comes_back_with_delivery_count_2(
    kafka_bootstrap: str, topics: Topics
) -> None:
    topic = await topics.create("share-release")
    await aproduce(kafka_bootstrap, topic, [(None, b"job")])
    async with share_consumer(kafka_bootstrap, topic, unique("share-release")) as consumer:
        async for msg in consumer:
            if msg.delivery_count == 1:
                consumer.release(msg)
                continue
            break
    assert (msg.value, msg.offset, msg.delivery_count) == (b"job", 0, 2)


async def test_rejected_record_is_not_redelivered(kafka_bootstrap: str, topics: Topics) -> None:
    topic = await topics.create("share-reject")
    group = unique("share-reject")
    await aproduce(kafka_bootstrap, topic, [(None, b"poison"), (None, b"good")])
    seen: list[tuple[bytes, int]] = []
    async with share_consumer(kafka_bootstrap, topic, group) as consumer:
        async for msg in consumer:
            seen.append((msg.value, msg.delivery_count))
            if msg.value == b"poison":
                consumer.reject(msg)
            elif msg.value == b"good":
                # the poison pill was rejected before this fetch: a marker produced now
                # must be the next record, not the poison pill again
                await aproduce(kafka_bootstrap, topic, [(None, b"marker")])
            else:
                break
    assert seen == [(b"poison", 1), (b"good", 1), (b"marker", 1)]


async def test_two_members_share_one_partition(kafka_bootstrap: str, topics: Topics) -> None:
    topic = await topics.create("share-two")
    group = unique("share-two")
    total = 2000
    got: dict[str, list[ShareMessage]] = {"a": [], "b": []}
    consumers: list[ShareConsumer] = []
    done = anyio.Event()

    async def member(name: str) -> None:
        async with share_consumer(
            kafka_bootstrap, topic, group, max_records=50, acquire_mode="record_limit"
        ) as consumer:
            consumers.append(consumer)
            async for msg in consumer:
                got[name].append(msg)
                await anyio.sleep(0.002)  # some work: the other member gets its turn
                if len(got["a"]) + len(got["b"]) >= total:
                    done.set()

    with anyio.fail_after(90):
        async with anyio.create_task_group() as tg:
            tg.start_soon(member, "a")
            tg.start_soon(member, "b")
            # both members hold the partition before the records arrive
            await wait_until(lambda: len(consumers) == 2 and all(c.assignment for c in consumers))
            await aproduce(
                kafka_bootstrap, topic, [(None, b"%d" % i) for i in range(total)], partition=0
            )
            await done.wait()
            tg.cancel_scope.cancel()
    offsets = [m.offset for m in got["a"] + got["b"]]
    assert sorted(offsets) == list(range(total)), "every record once, none lost"
    assert got["a"], "both members got records of the one partition"
    assert got["b"], "both members got records of the one partition"


async def test_close_accepts_decided_and_releases_the_rest(
    kafka_bootstrap: str, topics: Topics
) -> None:
    topic = await topics.create("share-close")
    group = unique("share-close")
    await aproduce(kafka_bootstrap, topic, [(None, b"%d" % i) for i in range(20)], partition=0)
    async with share_consumer(kafka_bootstrap, topic, group) as consumer:
        first = await take(consumer, 3)
        consumer.release(first[2])
    # 0 and 1 accepted (the loop went past them), 2 released, 3..19 fetched but
    # never handed out: released on close
    assert [m.offset for m in first] == [0, 1, 2]
    async with share_consumer(kafka_bootstrap, topic, group) as consumer:
        rest = await take(consumer, 18)
    assert [m.offset for m in rest] == list(range(2, 20))
    assert rest[0].delivery_count == 2
