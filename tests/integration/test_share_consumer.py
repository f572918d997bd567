"""ShareConsumer (KIP-932 share groups) on Apache Kafka 4.3."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

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
    # Each half to a partition of its own: keyless records go to the partitions whose
    # leader the producer knows, only one of them at times right after the creation.
    for partition in (0, 1):
        records = [(None, b"r%d" % i) for i in range(partition * 100, partition * 100 + 100)]
        await aproduce(kafka_bootstrap, topic, records, partition=partition)
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


async def test_a_record_that_cannot_be_decoded_raises_and_is_released(
    kafka_bootstrap: str, topics: Topics
) -> None:
    from asyncconsumer import DeserializationError

    topic = await topics.create("share-undecodable")
    await aproduce(kafka_bootstrap, topic, [(None, b"not json"), (None, b'{"ok": 1}')])
    consumer = share_consumer(
        kafka_bootstrap, topic, unique("share-undecodable"), value_codec="json"
    )
    async with consumer:
        with anyio.fail_after(60), pytest.raises(DeserializationError):
            await anext(consumer)  # released at once, not held (not skipped either)
        with anyio.fail_after(15):  # well within the 30 s lock: released, not expired
            ok = await anext(consumer)
            assert ok.value == {"ok": 1}
            # the released record comes back (nothing else is left to come)
            with pytest.raises(DeserializationError) as again:
                await anext(consumer)
            assert again.value.offset == 0


async def test_delivery_count_limit_archives_a_record_released_every_time(
    kafka_bootstrap: str, topics: Topics
) -> None:
    topic = await topics.create("share-limit")
    await aproduce(kafka_bootstrap, topic, [(None, b"flaky"), (None, b"broken")])
    seen: list[tuple[bytes, int]] = []
    async with share_consumer(
        kafka_bootstrap,
        topic,
        unique("share-limit"),
        group_configs={"share.delivery.count.limit": "3"},
    ) as consumer:
        async for msg in consumer:
            seen.append((msg.value, msg.delivery_count))
            if msg.value == b"marker":
                break
            if msg.value == b"broken" or msg.delivery_count < 3:
                consumer.release(msg)  # "flaky" fails twice, "broken" every time
            if msg.value == b"broken" and msg.delivery_count == 3:
                # its last delivery: released now, it is archived, never delivered again
                await aproduce(kafka_bootstrap, topic, [(None, b"marker")])
    assert sorted(c for v, c in seen if v == b"flaky") == [1, 2, 3]
    assert sorted(c for v, c in seen if v == b"broken") == [1, 2, 3]
    assert seen[-1] == (b"marker", 1)


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


# -- several processes ---------------------------------------------------------------------

MEMBER = Path(__file__).with_name("share_member.py")


class Member:
    """A share_member.py process; a thread collects what it prints."""

    def __init__(self, bootstrap: str, topic: str, group: str, sleep: float, lock_ms: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(MEMBER), bootstrap, topic, group, str(sleep), str(lock_ms)],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.ready = threading.Event()
        self.records: list[tuple[int, int, int]] = []  # (partition, offset, delivery count)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if not line.endswith("\n"):
                break  # a SIGKILLed member's last line, cut short (the record was not
                # reported finished: it is not in the member's records)
            if line.strip() == "ready":
                self.ready.set()
            elif line.strip():
                p, o, c = line.split()
                self.records.append((int(p), int(o), int(c)))

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def start_members(
    bootstrap: str, topic: str, group: str, sleep: float, lock_ms: int
) -> list[Member]:
    members = [Member(bootstrap, topic, group, sleep, lock_ms) for _ in range(3)]
    for member in members:
        assert member.ready.wait(60), "a member did not start"
    return members


async def test_three_processes_accept_every_record_once(
    kafka_bootstrap: str, topics: Topics
) -> None:
    topic = await topics.create("share-procs", partitions=2)
    total = 20_000
    # 1 ms per record: the drain takes seconds, not the fraction of a second in which
    # two fast members could take every record before the third's first fetch returns
    # (it got none of 20,000 once, on a quiet machine)
    members = start_members(kafka_bootstrap, topic, unique("share-procs"), 0.001, 30_000)
    try:
        await anyio.sleep(3)  # the members get their assignments (heartbeats every second)
        await aproduce(kafka_bootstrap, topic, [(None, b"x%d" % i) for i in range(total)])
        await wait_until(
            lambda: sum(len(m.records) for m in members) >= total, timeout=120, what="all records"
        )
        await anyio.sleep(1)  # a duplicate, if any, has time to show
    finally:
        for member in members:
            member.stop()
    seen = [(p, o) for m in members for p, o, _ in m.records]
    assert len(seen) == total, "no record handled twice"
    assert len(set(seen)) == total
    assert {c for m in members for _, _, c in m.records} == {1}
    counts = [len(m.records) for m in members]
    assert all(counts), f"the work spreads over all three members (more than partitions): {counts}"


async def test_sigkilled_members_records_come_back_to_the_others(
    kafka_bootstrap: str, topics: Topics
) -> None:
    topic = await topics.create("share-kill", partitions=2)
    total = 3000
    members = start_members(kafka_bootstrap, topic, unique("share-kill"), 0.002, 2000)
    try:
        await anyio.sleep(3)
        await aproduce(kafka_bootstrap, topic, [(None, b"x%d" % i) for i in range(total)])
        # The first member to be busy is killed: which members the broker gives
        # records first depends on when each one's heartbeat got its assignment (under
        # load, two members once took all 3,000 records before the third got any).
        busy: list[Member] = []

        def one_busy() -> bool:
            busy[:] = [m for m in members if len(m.records) >= 200]
            return bool(busy)

        await wait_until(one_busy, timeout=60, what="a member busy")
        victim = busy[0]
        victim.stop(signal.SIGKILL)  # mid-stream: it holds acquired records
        killed = {(p, o) for p, o, _ in victim.records}
        survivors = [m for m in members if m is not victim]

        def covered() -> bool:
            done = killed | {(p, o) for m in survivors for p, o, _ in m.records}
            return len(done) == total

        await wait_until(covered, timeout=90, what="every record handled")
    finally:
        for member in members:
            member.stop()
    handled = [(p, o) for m in survivors for p, o, _ in m.records]
    assert len(handled) == len(set(handled)), "the survivors handled no record twice"
    assert len(killed | set(handled)) == total, "no record lost"
    again = [(p, o) for m in survivors for p, o, c in m.records if c >= 2]
    assert again, "the killed member's acquired records came back after the lock expired"


@pytest.mark.parametrize("renew", [True, False])
async def test_locks_of_slow_records_are_renewed(
    kafka_bootstrap: str, topics: Topics, renew: bool
) -> None:
    topic = await topics.create("share-renew")
    group = unique("share-renew")
    await aproduce(kafka_bootstrap, topic, [(None, b"slow")])
    lock = {"share.record.lock.duration.ms": "2000"}
    async with (
        share_consumer(kafka_bootstrap, topic, group, group_configs=lock, renew_locks=renew) as a,
        share_consumer(kafka_bootstrap, topic, group) as b,
    ):
        (msg,) = await take(a, 1)
        others: list[ShareMessage] = []
        with anyio.move_on_after(6):  # three lock durations
            async for other in b:
                others.append(other)
        a.accept(msg)
        await a.commit()
    if renew:
        assert others == [], "the renewed record went to no other member"
        assert a.lock_renewals >= 3
        assert a.lock_expiries == 0
    else:  # the control: without renewal the lock expires
        assert [(m.value, m.delivery_count) for m in others] == [(b"slow", 2)]
        assert a.lock_expiries == 1


async def test_a_cancelled_loop_leaves_async_with_only_once_the_consumer_closed(
    kafka_bootstrap: str, topics: Topics
) -> None:
    """Under an anyio cancellation (a task group's, a timeout) the acknowledgements are
    sent and the group left before ``async with`` is left, not in the background."""
    topic = await topics.create("share-cancelled")
    group = unique("share-cancelled")
    await aproduce(kafka_bootstrap, topic, [(None, b"one")])
    got: list[bytes] = []
    with anyio.move_on_after(30) as timeout:
        async with share_consumer(kafka_bootstrap, topic, group) as consumer:
            async for msg in consumer:  # the loop then waits for more: cancelled there
                got.append(msg.value)
                timeout.deadline = anyio.current_time() + 1.0
    assert got == [b"one"]
    assert consumer._client is None, "closed when async with was left"
    # "one" was accepted before the loop waited: a new member gets only what comes now
    await aproduce(kafka_bootstrap, topic, [(None, b"two")])
    async with share_consumer(kafka_bootstrap, topic, group) as consumer:
        (msg,) = await take(consumer, 1)
    assert (msg.value, msg.delivery_count) == (b"two", 1)
