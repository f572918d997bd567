"""``delivery="exactly_once"`` under ``ordering="key"`` / ``"none"`` on MemoryKafka
(``_runtime/_keyed_txn.py``): records complete out of order, and each transaction
commits the partition's committable offset with the completed offsets above it in
the metadata, together with exactly the outputs of the records it records as done."""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from typing import Any

import anyio
import pytest
from aiokafka.errors import KafkaTimeoutError

from asyncconsumer import Backoff, ConsumerApp, Message, Retry, TopicPartition
from asyncconsumer._runtime._offsets import decode_completed
from asyncconsumer._transport._memory import MemoryProducer
from asyncconsumer.testing import MemoryKafka, TestClient

IN0 = TopicPartition("in", 0)


def make_app(**options: Any) -> ConsumerApp:
    return ConsumerApp(
        bootstrap_servers="127.0.0.1:9092",
        group_id="g",
        auto_offset_reset="earliest",  # the records are there before the app starts
        commit_interval=options.pop("commit_interval", 0.05),
        **options,
    )


def done_by(kafka: MemoryKafka) -> set[int]:
    """The offsets of ``in[0]`` that the group's committed offset and metadata record
    as completed."""
    meta = kafka.committed_metadata("g", IN0)
    if meta is None:
        return set()
    return set(range(meta.offset)) | decode_completed(meta.offset, meta.metadata)


async def wait_for(condition: Any, timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.005)


class Commits:
    """Every transaction MemoryKafka commits: what it wrote, and the offsets (with
    metadata) it committed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.seen: list[tuple[list[tuple[Any, ...]], dict[TopicPartition, Any]]] = []
        self.fail_at: set[int] = set()  # which commit calls (1-based) raise
        self.calls = 0
        original = MemoryProducer.commit_transaction
        commits = self

        async def commit_transaction(producer: MemoryProducer) -> None:
            commits.calls += 1
            if commits.calls in commits.fail_at:
                raise KafkaTimeoutError("the commit timed out (injected)")
            sends = list(producer._txn or [])
            offsets = {tp: m for _, sent in producer._txn_offsets for tp, m in sent.items()}
            await original(producer)
            commits.seen.append((sends, offsets))

        monkeypatch.setattr(MemoryProducer, "commit_transaction", commit_transaction)


@pytest.mark.parametrize("ordering", ["key", "none"])
async def test_each_transaction_holds_the_outputs_of_the_records_it_commits_as_done(
    ordering: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twenty workers, random small sleeps, two outputs per record (``publish_to`` and
    a send through ``app.producer``): records complete out of order and transactions
    commit while others run. In every committed transaction, each output belongs to
    a record that the transaction's offset or metadata records as completed, and no
    record counted as done in an earlier transaction has output in a later one."""
    commits = Commits(monkeypatch)
    kafka = MemoryKafka()
    app = make_app(commit_interval=0.02)
    rng = random.Random(7)
    delays = [rng.uniform(0, 0.01) for _ in range(400)]

    @app.handler("in", ordering=ordering, concurrency=20, delivery="exactly_once", publish_to="out")  # type: ignore[arg-type]
    async def handle(msg: Message[bytes]) -> bytes:
        await app.producer.send("side", b"%d" % msg.offset)
        await anyio.sleep(delays[msg.offset])
        return b"%d" % msg.offset

    for i in range(400):
        kafka.publish("in", b"v", key=b"k%d" % (i % 13), partition=0)
    async with TestClient(app, kafka) as client:
        await wait_for(lambda: client.committed("in", 0) == 400)
        stats = app.statistics().topics["in"]

    assert Counter(m.value for m in client.records("out")) == {b"%d" % i: 1 for i in range(400)}
    assert Counter(m.value for m in client.records("side")) == {b"%d" % i: 1 for i in range(400)}
    assert len(commits.seen) == stats.transactions >= 3
    before: set[int] = set()
    out_of_order = 0
    for sends, offsets in commits.seen:
        meta = offsets[IN0]
        above = decode_completed(meta.offset, meta.metadata)
        out_of_order += bool(above)
        done = set(range(meta.offset)) | above
        produced = {int(value) for _, value, *_ in sends}
        assert produced <= done - before  # outputs only of records it completes
        before = done
    if ordering == "key":  # records waiting behind their key leave gaps at a commit
        assert out_of_order  # so commits did carry completed offsets above their own


async def test_a_commit_waits_for_the_records_running_and_starts_none_meanwhile() -> None:
    """A record that sent an output and still runs when its transaction is due keeps
    the commit waiting (else its output would commit without it), and no record of
    the partition starts until the commit is over."""
    kafka = MemoryKafka()
    app = make_app(commit_interval=0.02)
    release = anyio.Event()
    started: list[int] = []

    @app.handler("in", ordering="none", concurrency=10, delivery="exactly_once", publish_to="out")
    async def handle(msg: Message[bytes]) -> bytes:
        started.append(msg.offset)
        await app.producer.send("side", b"%d" % msg.offset)
        if msg.offset == 0:
            await release.wait()
        return b"%d" % msg.offset

    for _ in range(3):
        kafka.publish("in", b"v", partition=0)
    async with TestClient(app, kafka) as client:
        await wait_for(lambda: len(started) == 3)
        await anyio.sleep(0.2)  # records 1 and 2 completed long ago: a commit is due
        assert client.committed("in", 0) is None
        assert client.records("side") == []  # record 0's output did not commit alone
        for _ in range(3):
            kafka.publish("in", b"v", partition=0)
        await anyio.sleep(0.1)
        assert started == [0, 1, 2]  # held: nothing starts while the commit waits
        release.set()
        await wait_for(lambda: client.committed("in", 0) == 6)
        assert sorted(m.value or b"" for m in client.records("side")) == sorted(
            b"%d" % i for i in range(6)
        )


async def test_an_aborted_transaction_redoes_exactly_the_records_it_completed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Record 0 waits for a retry; records 1-9 complete and commit in a transaction
    (offset 0, metadata 1-9). Records 10-14 complete in the next one, whose commit
    fails: the lane goes back to offset 0 and runs 0 and 10-14 again, never 1-9."""
    commits = Commits(monkeypatch)
    commits.fail_at = {2}
    kafka = MemoryKafka()
    app = make_app()
    calls: Counter[int] = Counter()

    @app.handler(
        "in",
        ordering="key",
        delivery="exactly_once",
        publish_to="out",
        retry=Retry(attempts=2, backoff=Backoff.constant(1.0)),  # long after the first commit
    )
    async def handle(msg: Message[bytes]) -> bytes:
        calls[msg.offset] += 1
        if msg.offset == 0 and calls[0] == 1:
            raise RuntimeError("the first attempt of record 0 fails")
        return b"%d" % msg.offset

    for i in range(10):
        kafka.publish("in", b"v", key=b"k%d" % i, partition=0)
    async with TestClient(app, kafka, backoff_scale=1.0) as client:
        await wait_for(lambda: done_by(kafka) == set(range(1, 10)))
        assert kafka.committed("g", IN0) == 0  # record 0 holds the offset
        for i in range(10, 15):
            kafka.publish("in", b"v", key=b"k%d" % i, partition=0)
        await wait_for(lambda: client.committed("in", 0) == 15)
        stats = app.statistics().topics["in"]

    assert stats.aborted_transactions == 1
    assert commits.calls >= 3
    assert calls == {0: 2, **{i: 1 for i in range(1, 10)}, **{i: 2 for i in range(10, 15)}}
    assert Counter(m.value for m in client.records("out")) == {b"%d" % i: 1 for i in range(15)}


async def test_a_fenced_lane_stops_its_partition_and_the_next_assignment_resumes_exactly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Another producer with the partition's transactional id (a new owner) fences
    the lane's: its open transaction never commits, the member rejoins, and the
    partition resumes from what was committed, with each output once."""
    kafka = MemoryKafka()
    app = make_app(commit_interval=0.2)
    gate = anyio.Event()
    calls: Counter[int] = Counter()

    @app.handler("in", ordering="key", concurrency=5, delivery="exactly_once", publish_to="out")
    async def handle(msg: Message[bytes]) -> bytes:
        calls[msg.offset] += 1
        if msg.offset >= 20:
            await gate.wait()
        await app.producer.send("side", b"%d" % msg.offset)
        return b"%d" % msg.offset

    for i in range(20):
        kafka.publish("in", b"v", key=b"k%d" % (i % 4), partition=0)
    with caplog.at_level(logging.ERROR, logger="asyncconsumer"):
        async with TestClient(app, kafka) as client:
            await wait_for(lambda: client.committed("in", 0) == 20)
            for i in range(20, 40):
                kafka.publish("in", b"v", key=b"k%d" % (i % 4), partition=0)
            zombie_killer = kafka.producer({"transactional_id": "asyncconsumer.g.in.0"})
            await zombie_killer.start()  # fences the lane's producer
            gate.set()
            await wait_for(lambda: client.committed("in", 0) == 40)
            stats = app.statistics().topics["in"]

    assert "fenced" in caplog.text
    assert all(calls[i] == 1 for i in range(20))  # committed before: never again
    assert any(calls[i] == 2 for i in range(20, 40))  # the fenced transaction's ran again
    assert Counter(m.value for m in client.records("out")) == {b"%d" % i: 1 for i in range(40)}
    assert Counter(m.value for m in client.records("side")) == {b"%d" % i: 1 for i in range(40)}
    assert stats.transactions >= 2


async def test_a_failure_that_stops_the_app_aborts_the_open_transaction() -> None:
    kafka = MemoryKafka()
    app = make_app(commit_interval=30.0)  # one transaction, open
    fail = True
    returned: list[int] = []

    @app.handler("in", ordering="none", concurrency=4, delivery="exactly_once", publish_to="out")
    async def handle(msg: Message[bytes]) -> bytes:
        await app.producer.send("side", b"%d" % msg.offset)
        if msg.offset == 7 and fail:
            await anyio.sleep(0.05)  # the others completed by then
            raise ValueError("stop here")
        if not fail:
            returned.append(msg.offset)
        return b"%d" % msg.offset

    for _ in range(10):
        kafka.publish("in", b"v", partition=0)
    with pytest.raises(ValueError, match="stop here"):
        async with TestClient(app, kafka):
            await anyio.sleep(1)
    # What the transaction held, the outputs of records that completed included,
    # vanished with it: a reader sees nothing and the offsets are not committed.
    assert kafka.records("out") == []
    assert kafka.records("side") == []
    assert kafka.committed("g", IN0) is None
    assert app._counters["in"].aborted_transactions == 1
    fail = False
    async with TestClient(app, kafka) as client:  # the stop commits the transaction
        await wait_for(lambda: len(returned) == 10)
    assert client.committed("in", 0) == 10
    assert sorted(m.value or b"" for m in client.records("out")) == sorted(
        b"%d" % i for i in range(10)
    )


async def test_a_new_owner_skips_what_the_committed_metadata_lists() -> None:
    """The next assignment (here: a restart) honours the completed offsets that the
    last transaction wrote into the metadata: only the records it did not complete
    run again."""
    kafka = MemoryKafka()
    app = make_app()
    calls: Counter[int] = Counter()
    stuck = True

    @app.handler(
        "in",
        ordering="key",
        delivery="exactly_once",
        publish_to="out",
        retry=Retry(attempts=100, backoff=Backoff.constant(0.05)),
    )
    async def handle(msg: Message[bytes]) -> bytes:
        calls[msg.offset] += 1
        if msg.offset == 2 and stuck:
            raise RuntimeError("not yet")
        return b"%d" % msg.offset

    for i in range(8):
        kafka.publish("in", b"v", key=b"k%d" % i, partition=0)
    async with TestClient(app, kafka, backoff_scale=1.0):
        await wait_for(lambda: done_by(kafka) == {0, 1, 3, 4, 5, 6, 7})
    assert kafka.committed("g", IN0) == 2
    stuck = False
    calls.clear()
    async with TestClient(app, kafka) as client:
        await wait_for(lambda: client.committed("in", 0) == 8)
    assert calls == {2: 1}
    assert Counter(m.value for m in client.records("out")) == {b"%d" % i: 1 for i in range(8)}


async def test_a_send_refused_by_a_producer_out_of_its_transaction_aborts_and_redoes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """aiokafka refuses sends once its producer left the transaction (a failed send
    put it in an abortable state): ``IllegalOperation``. That is no failure of the
    record: the transaction aborts and its records run again. Before, when the
    record was the last one running while the lane was held for the commit, the
    commit waited for it forever."""
    from aiokafka.errors import IllegalOperation

    kafka = MemoryKafka()
    app = make_app()
    gate = anyio.Event()
    calls: Counter[int] = Counter()

    @app.handler("in", ordering="none", delivery="exactly_once", publish_to="out")
    async def handle(msg: Message[bytes]) -> bytes:
        calls[msg.offset] += 1
        if msg.offset == 1:
            await gate.wait()
        return b"%d" % msg.offset

    for _ in range(2):
        kafka.publish("in", b"v", partition=0)
    async with TestClient(app, kafka) as client:
        await wait_for(lambda: calls[1] == 1)
        await anyio.sleep(0.2)  # record 0 completed: the lane is held for the commit
        original = MemoryProducer.send
        refused = [IllegalOperation("Can't send messages while not in transaction")]

        async def send(producer: MemoryProducer, *args: Any, **kwargs: Any) -> Any:
            if refused:
                raise refused.pop()  # as aiokafka's send() does, before any future
            return await original(producer, *args, **kwargs)

        monkeypatch.setattr(MemoryProducer, "send", send)
        gate.set()
        await wait_for(lambda: client.committed("in", 0) == 2)
        stats = app.statistics().topics["in"]
    assert stats.aborted_transactions == 1
    assert calls == {0: 2, 1: 2}
    assert Counter(m.value for m in client.records("out")) == {b"0": 1, b"1": 1}


async def test_a_producer_out_of_its_transaction_that_cannot_abort_rejoins_instead_of_replacing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A producer that refuses sends (``IllegalOperation``) and then cannot abort may
    have been fenced by a new owner without knowing it yet: a new producer with the
    same transactional id would fence that owner in turn. The member rejoins instead,
    and the partition resumes under a producer of the new assignment."""
    from aiokafka.errors import IllegalOperation

    kafka = MemoryKafka()
    app = make_app()
    calls: Counter[int] = Counter()
    starts: list[str] = []
    original_start = MemoryProducer.start
    original_abort = MemoryProducer.abort_transaction

    async def start(producer: MemoryProducer) -> None:
        starts.append(str(producer.transactional_id))
        await original_start(producer)

    async def abort_transaction(producer: MemoryProducer) -> None:
        if calls[1] == 1:
            raise AssertionError("Invalid state transition FATAL_ERROR -> ABORTING")
        await original_abort(producer)

    monkeypatch.setattr(MemoryProducer, "start", start)
    monkeypatch.setattr(MemoryProducer, "abort_transaction", abort_transaction)

    @app.handler("in", ordering="none", delivery="exactly_once", publish_to="out")
    async def handle(msg: Message[bytes]) -> bytes:
        calls[msg.offset] += 1
        return b"%d" % msg.offset

    kafka.publish("in", b"v", partition=0)
    kafka.fail_next_send(IllegalOperation("Can't send messages while not in transaction"))
    kafka.publish("in", b"v", partition=0)
    async with TestClient(app, kafka) as client:
        await wait_for(lambda: client.committed("in", 0) == 2)
        rebalances = app.statistics().rebalances
    assert rebalances == 2  # rejoined
    assert starts.count("asyncconsumer.g.in.0") == 2  # one per assignment, none in between
    assert Counter(m.value for m in client.records("out")) == {b"0": 1, b"1": 1}


@pytest.mark.parametrize("ordering", ["key", "none"])
async def test_a_record_hands_its_outputs_acknowledgements_to_its_transaction(
    ordering: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record does not await the acknowledgement of what it published: its
    transaction checks it before committing. With one worker and the first output's
    acknowledgement held back by the broker, the other records still run, and
    nothing commits until it arrives (a record awaited it, and the worker stood
    still: under key / none ordering exactly_once ran at a third of at-least-once)."""
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    original = MemoryProducer.send
    held: list[asyncio.Future[Any]] = []

    async def send(producer: MemoryProducer, *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        future = await original(producer, *args, **kwargs)
        if held or producer.transactional_id is None:
            return future
        late: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        gate.add_done_callback(lambda _: late.set_result(future.result()))
        held.append(late)
        return late

    monkeypatch.setattr(MemoryProducer, "send", send)
    kafka = MemoryKafka()
    app = make_app(commit_interval=0.02)
    ran: list[int] = []

    @app.handler("in", ordering=ordering, concurrency=1, delivery="exactly_once", publish_to="out")  # type: ignore[arg-type]
    async def handle(msg: Message[bytes]) -> bytes:
        ran.append(msg.offset)
        return b"%d" % msg.offset

    for _ in range(5):
        kafka.publish("in", b"v", key=b"k", partition=0)
    async with TestClient(app, kafka) as client:
        await wait_for(lambda: len(ran) == 5, timeout=2)
        await anyio.sleep(0.1)  # the transaction is due, and waits for the acknowledgement
        assert client.committed("in", 0) is None
        assert client.records("out") == []
        assert app.statistics().topics["in"].handled == 0  # (counted when it commits)
        gate.set_result(None)
        await wait_for(lambda: client.committed("in", 0) == 5)
        assert [m.value for m in client.records("out")] == [b"%d" % i for i in range(5)]
        assert app.statistics().topics["in"].handled == 5
    assert ran == [0, 1, 2, 3, 4]
