"""``delivery="exactly_once"`` on Apache Kafka: what a handler produces and the
offsets it consumed commit in one transaction. A ``read_committed`` reader sees each
output once across stops, failures, SIGKILLs, a second member, and a member frozen
past its session timeout (a zombie: its transaction must not commit)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO

import anyio
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from anyio.abc import Process

from asyncconsumer import Backoff, Message, Retry, TopicPartition
from asyncconsumer.testing.pytest_plugin import KafkaTestBroker

from .conftest import Topics, aproduce, committed_offsets, describe_partitions, make_app, unique

pytestmark = pytest.mark.apache_kafka  # the embedded broker has no transactions

ROOT = Path(__file__).resolve().parents[2]


class Boom(Exception):
    pass


async def read_all(
    bootstrap: str, topic: str, *, committed: bool = True, settle: float = 1.0
) -> list[bytes]:
    """Every record of ``topic`` (read until nothing new comes for ``settle`` seconds),
    as ``read_committed`` or ``read_uncommitted`` sees it."""
    partitions = await describe_partitions(bootstrap, topic)
    client = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        isolation_level="read_committed" if committed else "read_uncommitted",
    )
    await client.start()
    try:
        tps = [TopicPartition(topic, int(p["partition"])) for p in partitions]
        client.assign(tps)
        await client.seek_to_beginning(*tps)
        found: list[bytes] = []
        quiet = 0.0
        while quiet < settle:
            batches = await client.getmany(timeout_ms=200)
            got = [r.value for records in batches.values() for r in records]
            found.extend(v for v in got if v is not None)
            quiet = 0.0 if got else quiet + 0.2
        return found
    finally:
        await client.stop()


async def test_outputs_dead_letters_and_offsets_commit_together(
    kafka_broker: KafkaTestBroker, topics: Topics
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = await topics.create("eos-in", partitions=2)
    out = await topics.create("eos-out", partitions=2)
    produced = await aproduce(bootstrap, topic, [(b"k%d" % i, b"%d" % i) for i in range(300)])
    ends = {tp: max(offsets) + 1 for tp, offsets in produced.items()}
    group = unique("g-eos")
    app = make_app(bootstrap, group)
    commits: list[dict[TopicPartition, int]] = []

    @app.on_commit
    async def committed(offsets: dict[TopicPartition, int], error: object) -> None:
        commits.append(offsets)

    @app.handler(topic, publish_to=out, on_failure="dead_letter", delivery="exactly_once")
    async def handle(msg: Message[bytes]) -> bytes:
        if msg.value == b"7":
            raise Boom("seven")
        await app.producer.send(out, b"extra-" + msg.value)  # joins the transaction too
        return msg.value

    async with app:
        with anyio.fail_after(60):
            while app.statistics().completed != ends:
                await anyio.sleep(0.05)
        stats = app.statistics().topics[topic]

    outputs = Counter(await read_all(bootstrap, out))
    expected = {b"%d" % i for i in range(300)} - {b"7"}
    assert {v for v in outputs if not v.startswith(b"extra-")} == expected
    assert len([v for v in outputs if v.startswith(b"extra-")]) == 299
    assert set(outputs.values()) == {1}
    dead = await read_all(bootstrap, topic + ".DLQ")
    assert dead == [b"7"]
    assert await committed_offsets(bootstrap, group, ends) == ends
    assert stats.transactions >= 2
    assert stats.aborted_transactions == 0
    assert {tp for c in commits for tp in c} == set(ends)


@pytest.mark.parametrize("ordering", ["partition", "key"])
async def test_a_retried_attempt_that_had_sent_commits_its_outputs_once(
    ordering: str, kafka_broker: KafkaTestBroker, topics: Topics
) -> None:
    """Every tenth record's first attempt sends through ``app.producer`` and then
    fails; record 55 fails every time. The transactions those attempts sent into
    abort (a read_uncommitted reader sees their outputs) and their records run
    again: read_committed sees each output once, none of record 55's, which goes to
    the dead-letter topic after its three attempts."""
    bootstrap = kafka_broker.bootstrap_servers
    topic = await topics.create("eos-retry", partitions=2)
    out = await topics.create("eos-retry-out")
    side = await topics.create("eos-retry-side")
    # Created up front: aiokafka's idempotent producer can end in
    # OutOfOrderSequenceNumber after retrying its first sends to a topic the broker
    # is still creating (NotLeaderForPartition).
    dead = await topics.create("eos-retry-dlq")
    produced = await aproduce(bootstrap, topic, [(b"k%d" % i, b"%d" % i) for i in range(200)])
    ends = {tp: max(offsets) + 1 for tp, offsets in produced.items()}
    group = unique("g-eos-retry")
    app = make_app(bootstrap, group)
    calls: Counter[bytes] = Counter()

    @app.handler(
        topic,
        ordering=ordering,  # type: ignore[arg-type]
        publish_to=out,
        delivery="exactly_once",
        retry=Retry(attempts=3, backoff=Backoff(initial=0.01)),
        on_failure="dead_letter",
        dead_letter_topic=dead,
    )
    async def handle(msg: Message[bytes]) -> bytes:
        calls[msg.value] += 1
        await app.producer.send(side, msg.value)
        number = int(msg.value)
        if number == 55 or (number % 10 == 0 and calls[msg.value] == 1):
            raise Boom("after sending")
        return msg.value

    async with app:
        with anyio.fail_after(60):
            while app.statistics().committed != ends:
                await anyio.sleep(0.05)
        stats = app.statistics().topics[topic]

    assert calls[b"55"] == 3
    expected = {b"%d" % i: 1 for i in range(200) if i != 55}
    assert Counter(await read_all(bootstrap, out)) == expected
    assert Counter(await read_all(bootstrap, side)) == expected
    uncommitted = Counter(await read_all(bootstrap, side, committed=False))
    assert uncommitted[b"55"] == 3  # its attempts did send, in aborted transactions
    assert all(uncommitted[b"%d" % i] >= 2 for i in range(0, 200, 10))
    assert await read_all(bootstrap, dead) == [b"55"]
    assert await committed_offsets(bootstrap, group, ends) == ends
    # Record 55's three attempts abort one after another; the tenth records' first
    # attempts may share aborts (under key ordering several fail in one transaction
    # before it aborts: 17 aborts were seen in one run).
    assert stats.aborted_transactions >= 3
    # What became of the records counts as committed, once each, whatever the aborts
    assert (stats.handled, stats.failed, stats.dead_lettered) == (199, 1, 1)


async def test_a_stop_aborts_the_open_transaction(
    kafka_broker: KafkaTestBroker, topics: Topics
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = await topics.create("eos-stop")
    out = await topics.create("eos-stop-out")
    await aproduce(bootstrap, topic, [(b"k", b"%d" % i) for i in range(50)], 0)
    group = unique("g-eos-stop")
    app = make_app(bootstrap, group, commit_interval=30.0)  # one transaction, open

    @app.handler(topic, publish_to=out, delivery="exactly_once")
    async def handle(msg: Message[bytes]) -> bytes:
        if msg.offset == 30:
            raise Boom("stop here")
        return msg.value

    with pytest.raises(Boom):
        with anyio.fail_after(60):
            await app.run()

    # Records 0-29 were published in the transaction the failure aborted: a
    # read_committed reader sees none of them, and their offsets are not committed.
    assert await read_all(bootstrap, out) == []
    assert len(await read_all(bootstrap, out, committed=False)) == 30
    assert await committed_offsets(bootstrap, group, [TopicPartition(topic, 0)]) == {
        TopicPartition(topic, 0): None
    }
    assert app._counters[topic].aborted_transactions == 1


@pytest.fixture
def log(tmp_path: Path) -> Iterator[IO[bytes]]:
    """Where the members' output goes (the zombie test reads it)."""
    with (tmp_path / "members.log").open("wb") as file:
        yield file


async def spawn(env: dict[str, str], log: IO[bytes]) -> Process:
    """A member: ``asyncconsumer run tests.integration.txn_app:app``."""
    return await anyio.open_process(
        [sys.executable, "-m", "asyncconsumer", "run", "tests.integration.txn_app:app"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


@asynccontextmanager
async def member(env: dict[str, str], log: IO[bytes]) -> AsyncIterator[Process]:
    """A member the block stops (signals and waits for); one still running when the
    block fails is killed, so that a failed check fails the test instead of leaving
    it waiting for a process that nobody told to stop."""
    proc = await spawn(env, log)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        with anyio.CancelScope(shield=True), anyio.move_on_after(30):
            await proc.aclose()


async def group_members(bootstrap: str, group: str) -> int:
    """How many members the group has once stable (0 while it rebalances)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [described] = await admin.describe_consumer_groups([group])
        _, _, state, _, _, members, *_ = described.groups[0]
        return len(members) if state == "Stable" else 0
    finally:
        await admin.close()


# ordering: (records, seconds per record, distinct keys). Under key / none ordering
# twenty records run at once and take 0-2x the time at random, so they complete out
# of order (and, with few keys, wait behind their key). About 400-2,000 records/s, so
# that every kill lands mid-stream (checked: a member that finished the stream
# before its kill would test nothing).
CRASH_RUNS = {
    "partition": (8000, "0.0005", 8000),  # about 2,000 records/s
    "key": (2000, "0.05", 40),  # about 400 records/s (outputs are not awaited per record)
    "none": (2000, "0.05", 2000),
}


@pytest.mark.parametrize("ordering", list(CRASH_RUNS))
async def test_sigkills_and_a_second_member_leave_exactly_one_output_per_record(
    kafka_broker: KafkaTestBroker, topics: Topics, log: IO[bytes], ordering: str
) -> None:
    records, slow, keys = CRASH_RUNS[ordering]
    bootstrap = kafka_broker.bootstrap_servers
    topic = await topics.create("eos-kill", partitions=4)
    out = await topics.create("eos-kill-out", partitions=4)
    produced = await aproduce(
        bootstrap, topic, [(b"k%d" % (i % keys), b"v") for i in range(records)]
    )
    ends = {tp: max(offsets) + 1 for tp, offsets in produced.items()}
    group = unique("g-eos-kill")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "TXN_GROUP": group,
        "TXN_TOPIC": topic,
        "TXN_OUT": out,
        "TXN_SLOW": slow,
        "TXN_ORDERING": ordering,
        "TXN_CONCURRENCY": "20",
        # A killed member holds its partitions until its session expires: short, so
        # that each restart takes about 3 s rather than 10 s.
        "TXN_SESSION_TIMEOUT_MS": "3000",
    }

    async def committed_total() -> int:
        found = await committed_offsets(bootstrap, group, ends)
        return sum(offset or 0 for offset in found.values())

    async def wait_committed(at_least: int, timeout: float = 60) -> None:
        with anyio.fail_after(timeout):
            while await committed_total() < at_least:
                await anyio.sleep(0.1)

    async def mid_stream() -> None:
        assert await committed_total() < records, "the stream ended first: slow the handler"

    for kill_at in (records // 8, records // 4, records // 2):
        async with member(env, log) as proc:
            # at least one transaction of this member's, and the next one open
            await wait_committed(max(kill_at, await committed_total() + 1))
            await anyio.sleep(0.15)
            await mid_stream()
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
    # Two members share the partitions, then one leaves (a rebalance mid-stream).
    async with member(env, log) as first, member(env, log) as second:
        with anyio.fail_after(60):
            while await group_members(bootstrap, group) != 2:
                await anyio.sleep(0.1)
        await wait_committed(records * 3 // 4)
        await mid_stream()
        second.send_signal(signal.SIGTERM)
        with anyio.fail_after(60):
            assert await second.wait() == 0
        await wait_committed(records, timeout=120)
        first.send_signal(signal.SIGTERM)
        with anyio.fail_after(60):
            assert await first.wait() == 0

    outputs = Counter(await read_all(bootstrap, out))
    expected = {b"%d:%d" % (tp.partition, o) for tp, end in ends.items() for o in range(end)}
    assert set(outputs) == expected  # none lost
    assert set(outputs.values()) == {1}  # none twice
    assert await committed_offsets(bootstrap, group, ends) == ends
    # The kills aborted open transactions: read_uncommitted sees their outputs too
    # (so the test did catch transactions open, and they did not count).
    assert len(await read_all(bootstrap, out, committed=False)) > records


# ordering: (seconds per record, records at once): about 50 records a second.
ZOMBIE_RUNS = {"partition": ("0.02", "1"), "key": ("0.08", "4"), "none": ("0.08", "4")}


@pytest.mark.parametrize("ordering", list(ZOMBIE_RUNS))
async def test_a_frozen_member_cannot_commit_its_transaction_after_the_takeover(
    kafka_broker: KafkaTestBroker, topics: Topics, log: IO[bytes], tmp_path: Path, ordering: str
) -> None:
    records = 200
    slow, concurrency = ZOMBIE_RUNS[ordering]
    bootstrap = kafka_broker.bootstrap_servers
    topic = await topics.create("eos-zombie")
    out = await topics.create("eos-zombie-out")
    await aproduce(bootstrap, topic, [(b"k%d" % (i % 10), b"v") for i in range(records)], 0)
    tp = TopicPartition(topic, 0)
    group = unique("g-eos-zombie")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "TXN_GROUP": group,
        "TXN_TOPIC": topic,
        "TXN_OUT": out,
        "TXN_SLOW": slow,
        "TXN_ORDERING": ordering,
        "TXN_CONCURRENCY": concurrency,
        "TXN_COMMIT_INTERVAL": "1.0",  # transactions of about 50 records
        "TXN_SESSION_TIMEOUT_MS": "3000",
    }
    async with member(env, log) as zombie:
        with anyio.fail_after(60):
            while ((await committed_offsets(bootstrap, group, [tp]))[tp] or 0) < 50:
                await anyio.sleep(0.05)
        await anyio.sleep(0.3)  # a transaction is open, with records in it
        zombie.send_signal(signal.SIGSTOP)
        try:
            async with member(env, log) as heir:
                # the heir joins once the zombie's session expired, fences it, and
                # finishes the partition
                with anyio.fail_after(90):
                    while (await committed_offsets(bootstrap, group, [tp]))[tp] != records:
                        await anyio.sleep(0.1)
                zombie.send_signal(signal.SIGCONT)
                await anyio.sleep(5)  # the zombie wakes with its transaction open
                heir.send_signal(signal.SIGTERM)
                with anyio.fail_after(60):
                    assert await heir.wait() == 0
        finally:
            zombie.send_signal(signal.SIGCONT)
            zombie.send_signal(signal.SIGTERM)
            with anyio.fail_after(60):
                await zombie.wait()

    outputs = Counter(await read_all(bootstrap, out))
    assert set(outputs) == {b"0:%d" % o for o in range(records)}
    assert set(outputs.values()) == {1}
    assert (await committed_offsets(bootstrap, group, [tp]))[tp] == records
    log.flush()
    text = (tmp_path / "members.log").read_text()
    assert "fenced" in text  # the zombie's producer found out
