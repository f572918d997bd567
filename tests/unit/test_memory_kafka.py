"""MemoryKafka (the in-memory cluster behind the client seam) and TestClient."""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

import anyio
import pytest
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaTimeoutError

from asyncconsumer import (
    Backoff,
    ConfigurationError,
    Consumer,
    ConsumerApp,
    DeadLetterError,
    Message,
    Retry,
    TopicPartition,
)
from asyncconsumer._handlers import Ordering
from asyncconsumer._transport import transport_for
from asyncconsumer._transport._memory import MemoryConsumer
from asyncconsumer.testing import MemoryKafka, TestClient

T0, T1 = TopicPartition("t", 0), TopicPartition("t", 1)


def test_memory_bootstrap_selects_the_named_cluster() -> None:
    kafka = MemoryKafka("orders-test")
    assert kafka.bootstrap_servers == "memory://orders-test"
    assert transport_for("memory://orders-test") is kafka
    with pytest.raises(ConfigurationError, match="no MemoryKafka named 'nope'"):
        transport_for("memory://nope")


def test_records_keep_keys_headers_timestamps_and_keyed_partitions() -> None:
    kafka = MemoryKafka(clock=lambda: 1234)
    kafka.create_topic("t", 4)
    first = kafka.publish("t", {"id": 1}, key="c1", headers={"trace": "x"})
    again = kafka.publish("t", "two", key="c1", timestamp_ms=99)
    assert first.partition == again.partition  # a key always goes to one partition
    assert (first.offset, again.offset) == (0, 1)
    one, two = kafka.records("t", first.partition)
    assert (one.key, one.value, one.headers, one.timestamp) == (
        b"c1",
        b'{"id":1}',
        (("trace", b"x"),),
        1234,
    )
    assert (two.value, two.timestamp) == (b"two", 99)
    unkeyed = {kafka.publish("t", b"v").partition for _ in range(4)}
    assert unkeyed == {0, 1, 2, 3}  # round-robin


async def test_a_consumer_iterates_commits_seeks_and_pauses_on_memory(
    memory_kafka: MemoryKafka,
) -> None:
    memory_kafka.create_topic("t", 2)
    for i in range(3):
        memory_kafka.publish("t", b"%d" % i, partition=0)
    async with Consumer(
        "t",
        bootstrap_servers=memory_kafka.bootstrap_servers,
        group_id="g",
        auto_offset_reset="earliest",
    ) as consumer:
        with anyio.fail_after(5):
            seen = [(await anext(consumer)).offset for _ in range(3)]
        assert seen == [0, 1, 2]
        assert await consumer.commit() == {T0: 3}
        assert memory_kafka.committed("g", T0) == 3
        consumer.seek(T0, 1)
        with anyio.fail_after(5):
            assert (await anext(consumer)).offset == 1
        consumer.pause(T0)
        memory_kafka.publish("t", b"x", partition=1)
        with anyio.fail_after(5):
            msg = await anext(consumer)
        assert msg.tp == T1  # t[0] is paused: its records wait
        consumer.resume(T0)
        assert consumer.highwater(T0) == 3
        assert await consumer.position(T0) == 2
    assert memory_kafka.committed("g", T1) == 1  # committed on close


async def test_a_thousand_records_take_well_under_a_second() -> None:
    app = ConsumerApp(bootstrap_servers="127.0.0.1:9092", group_id="g")
    handled: list[int] = []

    @app.handler("orders", value_codec="json")
    async def handle(msg: Message[dict[str, int]]) -> None:
        handled.append(msg.value["id"])

    began = time.perf_counter()
    async with TestClient(app) as kafka:
        for i in range(1000):
            await kafka.publish("orders", {"id": i})
        await kafka.wait_idle()
        assert kafka.committed("orders", 0) == 1000
    took = time.perf_counter() - began
    assert handled == list(range(1000))
    assert took < 1.0, f"{took:.2f}s"


async def test_group_members_share_partitions_and_rebalance_eagerly() -> None:
    kafka = MemoryKafka(assignor="roundrobin")
    kafka.create_topic("t", 4)
    calls: list[tuple[str, str, list[int]]] = []

    class Listener:
        def __init__(self, name: str) -> None:
            self.name = name

        async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
            calls.append((self.name, "revoked", sorted(tp.partition for tp in revoked)))

        async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
            calls.append((self.name, "assigned", sorted(tp.partition for tp in assigned)))

    a = MemoryConsumer(kafka, group_id="g", auto_offset_reset="earliest")
    b = MemoryConsumer(kafka, group_id="g", auto_offset_reset="earliest")
    await a.start()
    a.subscribe(["t"], listener=Listener("a"))
    await kafka.rebalance("g", revoke=[])  # waits for the join
    assert a.assignment() == {TopicPartition("t", p) for p in range(4)}
    await b.start()
    b.subscribe(["t"], listener=Listener("b"))
    await kafka.rebalance("g", revoke=[])
    assert sorted(tp.partition for tp in a.assignment()) == [0, 2]
    assert sorted(tp.partition for tp in b.assignment()) == [1, 3]
    # Eager, as aiokafka: a revokes everything before anyone is assigned again.
    assert calls[:4] == [
        ("a", "revoked", []),
        ("a", "assigned", [0, 1, 2, 3]),
        ("a", "revoked", [0, 1, 2, 3]),
        ("b", "revoked", []),
    ]
    calls.clear()
    await kafka.rebalance("g", revoke=[TopicPartition("t", 3)])  # only that one
    assert calls == [("b", "revoked", [3]), ("b", "assigned", [3])]
    await b.stop()  # a leave: a gets everything back
    with anyio.fail_after(5):
        while len(a.assignment()) < 4:
            await anyio.sleep(0.001)
    await a.stop()
    await kafka.aclose()


async def test_commit_failure_and_an_unassigned_partition_raise_what_aiokafka_raises() -> None:
    kafka = MemoryKafka()
    kafka.create_topic("t", 2)
    client = MemoryConsumer(kafka, group_id="g", auto_offset_reset="earliest")
    client.assign([T0])
    kafka.fail_next_commit()
    from aiokafka.structs import OffsetAndMetadata

    with pytest.raises(CommitFailedError, match="fail_next_commit"):
        await client.commit({T0: OffsetAndMetadata(1, "")})
    await client.commit({T0: OffsetAndMetadata(1, "meta")})
    assert kafka.committed_metadata("g", T0) == OffsetAndMetadata(1, "meta")
    with pytest.raises(IllegalStateError):
        await client.commit({T1: OffsetAndMetadata(1, "")})
    with pytest.raises(IllegalStateError):
        client.seek(T1, 0)


# -- TestClient --------------------------------------------------------------------------


def app_with_hooks(events: list[str], **options: Any) -> ConsumerApp:
    app = ConsumerApp(bootstrap_servers="127.0.0.1:9092", group_id="g", **options)

    @app.on_revoke
    async def revoked(partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            events.append(
                f"on_revoke {tp.topic}[{tp.partition}]: committed {await app.committed(tp)}"
            )

    @app.on_assign
    async def assigned(partitions: list[TopicPartition]) -> None:
        events.extend(f"on_assign {tp.topic}[{tp.partition}]" for tp in partitions)

    return app


async def test_rebalance_runs_the_real_revoke_path() -> None:
    events: list[str] = []
    app = app_with_hooks(events)
    running = anyio.Event()

    @app.handler("orders")
    async def handle(msg: Message[bytes]) -> None:
        running.set()
        await anyio.sleep(0.05)  # in flight when the revoke begins
        events.append(f"handled {msg.offset}")

    async with TestClient(app) as kafka:
        events.clear()
        await kafka.publish("orders", b"x")
        await running.wait()
        await kafka.rebalance(revoke=[("orders", 0)])
        # drained, committed, then on_revoke; then assigned back
        assert events == ["handled 0", "on_revoke orders[0]: committed 1", "on_assign orders[0]"]
        assert kafka.committed("orders", 0) == 1


async def test_a_failed_commit_goes_through_the_runtimes_path_and_is_retried() -> None:
    app = ConsumerApp(bootstrap_servers="127.0.0.1:9092", group_id="g")
    errors: list[Exception | None] = []

    @app.handler("orders")
    async def handle(msg: Message[bytes]) -> None:
        pass

    @app.on_commit
    async def committed(offsets: dict[TopicPartition, int], error: Exception | None) -> None:
        errors.append(error)

    async with TestClient(app) as kafka:
        await kafka.publish("orders", b"x")
        kafka.fail_next_commit()
        await kafka.wait_idle()
        assert kafka.committed("orders", 0) is None
        assert type(errors[-1]).__name__ == "CommitError"
        await kafka.wait_idle()  # the offsets stayed pending
        assert kafka.committed("orders", 0) == 1
        assert errors[-1] is None


async def test_retries_are_immediate_and_dead_letters_carry_headers() -> None:
    app = ConsumerApp(bootstrap_servers="127.0.0.1:9092", group_id="g")
    attempts = 0

    @app.handler(
        "orders",
        retry=Retry(attempts=3, backoff=Backoff.constant(10.0)),
        on_failure="dead_letter",
    )
    async def handle(msg: Message[bytes]) -> None:
        nonlocal attempts
        attempts += 1
        raise ValueError("bad")

    began = time.perf_counter()
    async with TestClient(app) as kafka:  # backoff_scale=0: not 2 x 10 s of backoff
        await kafka.publish("orders", b"x", key="k", headers={"trace": "1"})
        await kafka.wait_idle()
        (dead,) = kafka.records("orders.DLQ")
        assert kafka.committed("orders", 0) == 1
    assert attempts == 3
    assert time.perf_counter() - began < 5
    headers = dict(dead.headers)
    assert (dead.key, dead.value, headers["trace"]) == (b"k", b"x", b"1")
    assert headers["dlq.attempts"] == b"3"


async def test_a_failed_send_stops_the_app_without_committing() -> None:
    app = ConsumerApp(bootstrap_servers="127.0.0.1:9092", group_id="g")

    @app.handler("orders", on_failure="dead_letter")
    async def handle(msg: Message[bytes]) -> None:
        raise ValueError("bad")

    async def send_fails() -> None:
        async with TestClient(app) as kafka:
            kafka.fail_next_send()
            await kafka.publish("orders", b"x")
            with pytest.raises(RuntimeError, match="stopped on DeadLetterError"):
                await kafka.wait_idle()
            assert kafka.committed("orders", 0) is None
            assert kafka.records("orders.DLQ") == []

    with pytest.raises(DeadLetterError) as info:  # leaving TestClient raises the app's error
        await send_fails()
    assert isinstance(info.value.__cause__, KafkaTimeoutError)


async def test_wait_idle_says_what_is_pending() -> None:
    app = ConsumerApp(bootstrap_servers="127.0.0.1:9092", group_id="g")
    release = anyio.Event()

    @app.handler("orders")
    async def handle(msg: Message[bytes]) -> None:
        await release.wait()

    async with TestClient(app, timeout=0.1) as kafka:
        await kafka.publish("orders", b"x")
        with pytest.raises(TimeoutError, match=r"orders\[0\]: end 1, .*running \[0\]"):
            await kafka.wait_idle()
        release.set()
        await kafka.wait_idle()


async def test_exactly_once_outputs_and_offsets_commit_together_in_memory() -> None:
    kafka = MemoryKafka()
    app = ConsumerApp(
        bootstrap_servers="127.0.0.1:9092",
        group_id="g",
        auto_offset_reset="earliest",  # the records are there before the app starts
        commit_interval=0.05,
    )
    fail = True

    @app.handler("in", delivery="exactly_once", publish_to="out")
    async def handle(msg: Message[bytes]) -> bytes:
        if msg.offset == 3 and fail:
            raise ValueError("stops the app: the open transaction aborts")
        return msg.value + b"!"

    for i in range(5):
        kafka.publish("in", b"%d" % i)
    with pytest.raises(ValueError, match="aborts"):
        async with TestClient(app, kafka):
            await anyio.sleep(1)  # the app stops on offset 3 first
    assert kafka.committed("g", TopicPartition("in", 0)) in (None, 1, 2, 3)
    fail = False
    async with TestClient(app, kafka) as client:
        with anyio.fail_after(5):
            while client.committed("in", 0) != 5:
                await anyio.sleep(0.005)
        outputs = [m.value for m in client.records("out")]
    # Each output once: those of the aborted transaction never appeared.
    assert outputs == [b"0!", b"1!", b"2!", b"3!", b"4!"]


async def test_a_new_transactional_producer_fences_the_previous_one() -> None:
    from aiokafka.errors import ProducerFenced

    kafka = MemoryKafka()
    old = kafka.producer({"transactional_id": "t"})
    new = kafka.producer({"transactional_id": "t"})
    await old.start()
    await old.begin_transaction()
    await old.send("out", b"zombie")
    await new.start()
    with pytest.raises(ProducerFenced):
        await old.commit_transaction()
    assert kafka.records("out") == []


async def test_a_transactional_producer_that_cannot_abort_is_replaced_and_the_records_redone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """aiokafka's idempotent producer can end in OutOfOrderSequenceNumber after it
    retried a send (a new topic whose leader was not elected yet): a fatal state in
    which it cannot even abort. The lane then starts a new producer (which aborts the
    open transaction) and runs the transaction's records again. Before, the failed
    abort stopped the app."""
    from aiokafka.errors import OutOfOrderSequenceNumber

    from asyncconsumer._transport._memory import MemoryProducer

    kafka = MemoryKafka()
    app = ConsumerApp(
        bootstrap_servers="127.0.0.1:9092",
        group_id="g",
        auto_offset_reset="earliest",
        commit_interval=0.05,
    )

    @app.handler("in", delivery="exactly_once", publish_to="out")
    async def handle(msg: Message[bytes]) -> bytes:
        return msg.value + b"!"

    original = MemoryProducer.abort_transaction
    broken = [True]

    async def abort_transaction(self: MemoryProducer) -> None:
        if broken:
            broken.clear()
            raise AssertionError("Invalid state transition FATAL_ERROR -> ABORTING")
        await original(self)

    monkeypatch.setattr(MemoryProducer, "abort_transaction", abort_transaction)
    for i in range(5):
        kafka.publish("in", b"%d" % i)
    kafka.fail_next_send(OutOfOrderSequenceNumber())
    async with TestClient(app, kafka) as client:
        with anyio.fail_after(5):
            while client.committed("in", 0) != 5:
                await anyio.sleep(0.005)
        outputs = [m.value for m in client.records("out")]
        stats = app.statistics().topics["in"]
    assert not broken  # the abort did fail once
    assert outputs == [b"0!", b"1!", b"2!", b"3!", b"4!"]
    assert stats.aborted_transactions == 1


@pytest.mark.parametrize("ordering", ["partition", "key"])
async def test_a_transactional_producer_whose_output_was_refused_is_replaced(
    ordering: Ordering, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An output refused (here NotLeaderForPartition: a dead-letter topic created by
    its first record, whose leader was not elected yet) leaves aiokafka's idempotent
    producer with a sequence number the broker never wrote: it aborts fine, and each
    later transaction fails with OutOfOrderSequenceNumber (Java's producer bumps its
    epoch on abort; aiokafka does not). The producer is replaced after the abort, and
    the records run again on the new one. Before, the same producer went on, and the
    third abort in a row stopped the app (seen on Apache Kafka under load); and the
    refused outputs after the first went unretrieved (asyncio logged each at ERROR)."""
    from aiokafka.errors import NotLeaderForPartitionError, OutOfOrderSequenceNumber

    from asyncconsumer._transport._memory import MemoryProducer

    original = MemoryProducer.send
    broken: set[int] = set()  # producers a refused send left out of sequence

    async def send(self: MemoryProducer, topic: str, *args: Any, **kwargs: Any) -> Any:
        if id(self) in broken:
            future = asyncio.get_running_loop().create_future()
            future.set_exception(OutOfOrderSequenceNumber())
            return future
        future = await original(self, topic, *args, **kwargs)
        if future.done() and future.exception() is not None:
            broken.add(id(self))
        return future

    monkeypatch.setattr(MemoryProducer, "send", send)
    kafka = MemoryKafka()
    app = ConsumerApp(
        bootstrap_servers="127.0.0.1:9092",
        group_id="g",
        auto_offset_reset="earliest",
        commit_interval=0.05,
    )

    @app.handler("in", delivery="exactly_once", publish_to="out", ordering=ordering)
    async def handle(msg: Message[bytes]) -> bytes:
        return msg.value + b"!"

    for i in range(5):
        kafka.publish("in", b"%d" % i, key=b"k")
    kafka.fail_next_send(NotLeaderForPartitionError())
    async with TestClient(app, kafka) as client:
        with anyio.fail_after(5):
            while client.committed("in", 0) != 5:
                if app.error is not None:
                    raise app.error
                await anyio.sleep(0.005)
        outputs = [m.value for m in client.records("out")]
        stats = app.statistics().topics["in"]
    assert len(broken) == 1  # the first producer; its replacement sent every output
    assert outputs == [b"0!", b"1!", b"2!", b"3!", b"4!"]
    assert stats.aborted_transactions == 1
    assert stats.handled == 5
    gc.collect()  # an unretrieved future's error is logged when it is freed
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


async def test_a_transactional_producer_that_cannot_start_stops_the_app_with_its_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before, the error came out of the task group that starts the producers as an
    ExceptionGroup."""
    from asyncconsumer import AuthenticationError
    from asyncconsumer._transport._memory import MemoryProducer

    original = MemoryProducer.start

    async def start(self: MemoryProducer) -> None:
        if self.transactional_id is not None:
            raise AuthenticationError("b:1", "SASL authentication failed")
        await original(self)

    monkeypatch.setattr(MemoryProducer, "start", start)
    kafka = MemoryKafka()
    app = ConsumerApp(bootstrap_servers="127.0.0.1:9092", group_id="g")

    @app.handler("in", delivery="exactly_once", publish_to="out")
    async def handle(msg: Message[bytes]) -> bytes:
        return msg.value

    with pytest.raises(AuthenticationError, match="SASL authentication failed"):
        async with TestClient(app, kafka):
            await anyio.sleep(1)


async def test_a_consumer_decodes_at_most_max_poll_records_per_poll(
    memory_kafka: MemoryKafka,
) -> None:
    # Without a bound, one poll took all a client had buffered (up to fetch_max_bytes:
    # 80,000 small records at once on the benchmark's topic).
    memory_kafka.create_topic("t", 1)
    for _ in range(2500):
        memory_kafka.publish("t", b"v", partition=0)
    for bound in (1000, 300):
        options: dict[str, Any] = {} if bound == 1000 else {"max_poll_records": bound}
        async with Consumer(
            "t",
            bootstrap_servers=memory_kafka.bootstrap_servers,
            group_id=f"g{bound}",
            auto_offset_reset="earliest",
            **options,
        ) as consumer:
            with anyio.fail_after(5):
                await anext(consumer)
            polled = len(consumer._batch) + sum(len(r) for _, r in consumer._pending)
            assert polled == bound
            with anyio.fail_after(5):
                offsets = [(await anext(consumer)).offset for _ in range(2499)]
            assert offsets == list(range(1, 2500))


@pytest.mark.parametrize("ordering", ["partition", "key"])
async def test_exactly_once_a_failed_app_producer_send_aborts_and_redoes_the_transaction(
    ordering: str,
) -> None:
    # A handler's own sends through app.producer join the partition's transaction;
    # aiokafka commits a transaction even when one of its records was refused, so
    # the commit must check those acknowledgements too (it checked only publish_to
    # and dead letters: the refused output was lost and its input counted done).
    kafka = MemoryKafka()
    app = ConsumerApp(
        bootstrap_servers="memory://eos", group_id="g", auto_offset_reset="earliest",
        commit_interval=0.05,
    )  # fmt: skip

    refused: list[int] = []

    @app.handler("in", delivery="exactly_once", ordering=ordering)  # type: ignore[arg-type]
    async def handle(msg: Message[bytes]) -> None:
        if msg.offset == 2 and not refused:
            refused.append(msg.offset)
            kafka.fail_next_send()  # refused by the broker, after the send returned
        await app.producer.send("out", msg.value + b"!", key=msg.key)

    kafka.create_topic("out", 1)
    for i in range(5):
        kafka.publish("in", b"%d" % i, key=b"k%d" % i)
    async with TestClient(app, kafka) as client:
        with anyio.fail_after(5):
            while client.committed("in", 0) != 5:
                await anyio.sleep(0.005)
        outputs = sorted(m.value or b"" for m in client.records("out"))
    assert outputs == [b"0!", b"1!", b"2!", b"3!", b"4!"]
    assert refused == [2]


@pytest.mark.parametrize("shape", ["partition", "key", "none", "batch"])
async def test_exactly_once_an_idle_partition_commits_without_waiting_for_commit_interval(
    shape: str,
) -> None:
    # Its outputs are invisible to read_committed readers until the transaction
    # commits, and nothing more would join it: it commits once the partition has had
    # nothing to run for IDLE_COMMIT_DELAY (it waited out commit_interval, here 30 s).
    kafka = MemoryKafka()
    app = ConsumerApp(
        bootstrap_servers="memory://eos", group_id="g", auto_offset_reset="earliest",
        commit_interval=30.0,
    )  # fmt: skip

    if shape == "batch":

        @app.batch_handler("in", publish_to="out", delivery="exactly_once", max_wait=0)
        async def handle_batch(msgs: list[Message[bytes]]) -> list[bytes]:
            return [m.value for m in msgs]

    else:

        @app.handler("in", publish_to="out", delivery="exactly_once", ordering=shape)  # type: ignore[arg-type]
        async def handle(msg: Message[bytes]) -> bytes:
            return msg.value

    kafka.create_topic("out", 1)
    for i in range(5):
        kafka.publish("in", b"%d" % i, key=b"k%d" % i)
    async with TestClient(app, kafka) as client:
        with anyio.fail_after(3):
            while client.committed("in", 0) != 5:
                await anyio.sleep(0.005)
        assert sorted(m.value or b"" for m in client.records("out")) == [
            b"%d" % i for i in range(5)
        ]
        kafka.publish("in", b"5", key=b"k5")  # and again after the next record
        with anyio.fail_after(3):
            while client.committed("in", 0) != 6:
                await anyio.sleep(0.005)
        stats = app.statistics().topics["in"]
        assert (stats.transactions, stats.handled) == (2, 6)


@pytest.mark.parametrize("ordering", ["partition", "key", "none"])
async def test_exactly_once_a_refused_publish_to_output_aborts_and_redoes_the_transaction(
    ordering: str,
) -> None:
    # The acknowledgement of a publish_to output is checked when its transaction
    # commits (under key / none ordering too: the record does not await it): a
    # refused one aborts the transaction and its records run again, each output once.
    kafka = MemoryKafka()
    app = ConsumerApp(
        bootstrap_servers="memory://eos", group_id="g", auto_offset_reset="earliest",
        commit_interval=0.05,
    )  # fmt: skip
    refused: list[int] = []

    @app.handler("in", publish_to="out", delivery="exactly_once", ordering=ordering)  # type: ignore[arg-type]
    async def handle(msg: Message[bytes]) -> bytes:
        if msg.offset == 2 and not refused:
            refused.append(msg.offset)
            kafka.fail_next_send()  # refused by the broker, after the send returned
        return msg.value + b"!"

    kafka.create_topic("out", 1)
    for i in range(5):
        kafka.publish("in", b"%d" % i, key=b"k%d" % i)
    async with TestClient(app, kafka) as client:
        with anyio.fail_after(5):
            while client.committed("in", 0) != 5:
                await anyio.sleep(0.005)
        stats = app.statistics().topics["in"]
        outputs = sorted(m.value or b"" for m in client.records("out"))
    assert outputs == [b"0!", b"1!", b"2!", b"3!", b"4!"]
    assert refused == [2]
    assert stats.aborted_transactions == 1
    assert stats.handled >= 5
