"""Failures on a real broker: retries with backoff, dead-letter topics, poison pills,
stop and restart, at-most-once, middleware, publish_to and on_commit."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import anyio
import pytest

from asyncconsumer import (
    DLQ_HEADERS,
    Backoff,
    CallNext,
    CommitError,
    DeadLetterError,
    Message,
    ProducerRecord,
    Retry,
    TopicPartition,
)
from asyncconsumer.testing.pytest_plugin import KafkaTestBroker

from .conftest import Topics, aproduce, committed_offsets, make_app, read_topic, unique, wait_until


class Boom(Exception):
    pass


async def test_fails_twice_then_succeeds_without_delaying_other_keys(
    kafka_broker: KafkaTestBroker, topics: Topics
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = await topics.create("retry")
    keys = [f"k{i % 5}".encode() for i in range(100)]  # offset 10 has key k0
    await aproduce(bootstrap, topic, [(k, str(i).encode()) for i, k in enumerate(keys)], 0)
    group = unique("g-retry")
    app = make_app(bootstrap, group)
    calls: Counter[int] = Counter()
    done: dict[int, float] = {}
    first_failure = 0.0

    @app.handler(
        topic,
        ordering="key",
        concurrency=10,
        retry=Retry(attempts=3, backoff=Backoff.constant(0.5)),
    )
    async def handle(msg: Message[bytes]) -> None:
        nonlocal first_failure
        calls[msg.offset] += 1
        if msg.offset == 10 and calls[10] <= 2:
            first_failure = first_failure or time.monotonic()
            raise Boom("transient")
        await anyio.sleep(0.002)
        done[msg.offset] = time.monotonic()

    async with app:
        await wait_until(lambda: len(done) == 100, 60, "every record handled")
        stats = app.statistics().topics[topic]
        await wait_until(lambda: app.statistics().committed.get(TopicPartition(topic, 0)) == 100)

    assert calls[10] == 3
    assert all(calls[o] == 1 for o in range(100) if o != 10)
    assert (stats.handled, stats.retried, stats.failed) == (100, 2, 0)
    # Two backoffs of 0.5 s for offset 10 ...
    assert done[10] - first_failure >= 1.0
    # ... while the other keys went on: all of them were done before it succeeded.
    others = [o for o in range(100) if keys[o] != b"k0"]
    assert max(done[o] for o in others) < done[10]
    # ... and its own key kept its order.
    k0 = [o for o in range(100) if keys[o] == b"k0"]
    assert [o for o, _ in sorted(((o, done[o]) for o in k0), key=lambda x: x[1])] == k0
    committed = await committed_offsets(bootstrap, group, [TopicPartition(topic, 0)])
    assert committed[TopicPartition(topic, 0)] == 100


async def test_always_failing_record_is_dead_lettered_and_passed(
    kafka_broker: KafkaTestBroker, topics: Topics
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = await topics.create("dlq", partitions=2)
    await kafka_broker.create_topic(f"{topic}.DLQ", 1)
    for p in (0, 1):
        await aproduce(bootstrap, topic, [(b"key-%d" % i, b"v%d" % i) for i in range(10)], p)
    group = unique("g-dlq")
    app = make_app(bootstrap, group)
    handled: list[tuple[int, int]] = []
    attempts = 0

    @app.handler(
        topic,
        retry=Retry(attempts=3, backoff=Backoff.constant(0.05)),
        on_failure="dead_letter",
    )
    async def handle(msg: Message[bytes]) -> None:
        nonlocal attempts
        if (msg.partition, msg.offset) == (0, 3):
            attempts += 1
            raise Boom(f"cannot handle {msg.value!r}")
        handled.append((msg.partition, msg.offset))

    async with app:
        await wait_until(lambda: len(handled) == 19, 60, "the other records handled")
        await wait_until(
            lambda: (
                app.statistics().committed
                == {TopicPartition(topic, 0): 10, TopicPartition(topic, 1): 10}
            ),
            what="both partitions committed to their end",
        )
        stats = app.statistics().topics[topic]

    assert attempts == 3
    assert sorted(handled) == [(p, o) for p in (0, 1) for o in range(10) if (p, o) != (0, 3)]
    assert (stats.failed, stats.dead_lettered, stats.retried, stats.handled) == (1, 1, 2, 19)
    [dead] = await read_topic(bootstrap, f"{topic}.DLQ", 1)
    assert (dead.key, dead.value) == (b"key-3", b"v3")
    headers = {k: v.decode() for k, v in dead.headers}
    assert set(DLQ_HEADERS) <= set(headers)
    assert headers["dlq.original.topic"] == topic
    assert (headers["dlq.original.partition"], headers["dlq.original.offset"]) == ("0", "3")
    assert int(headers["dlq.original.timestamp"]) > 0
    assert headers["dlq.group"] == group
    assert headers["dlq.exception.type"].endswith("test_app_failures.Boom")
    assert headers["dlq.exception.message"] == "cannot handle b'v3'"
    assert "Boom" in headers["dlq.exception.traceback"]
    assert headers["dlq.attempts"] == "3"
    committed = await committed_offsets(
        bootstrap, group, [TopicPartition(topic, 0), TopicPartition(topic, 1)]
    )
    assert set(committed.values()) == {10}


async def test_undecodable_record_is_dead_lettered_without_retries(
    kafka_broker: KafkaTestBroker, topics: Topics
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = await topics.create("pill")
    dlq = await topics.create("pill-dead")
    values = [b'{"n": 0}', b'{"n": 1}', b"{not json", b'{"n": 3}', b'{"n": 4}']
    await aproduce(bootstrap, topic, [(None, v) for v in values], 0)
    app = make_app(bootstrap, unique("g-pill"))
    seen: list[int] = []

    @app.handler(
        topic,
        value_codec="json",
        retry=Retry(attempts=5),
        on_failure="dead_letter",
        dead_letter_topic=dlq,
    )
    async def handle(msg: Message[dict[str, int]]) -> None:
        seen.append(msg.value["n"])

    async with app:
        await wait_until(lambda: len(seen) == 4, 60, "the decodable records handled")
        await wait_until(lambda: app.statistics().committed.get(TopicPartition(topic, 0)) == 5)
        stats = app.statistics().topics[topic]
    assert seen == [0, 1, 3, 4]
    assert (stats.retried, stats.failed, stats.dead_lettered) == (0, 1, 1)
    [dead] = await read_topic(bootstrap, dlq, 1)
    headers = {k: v.decode() for k, v in dead.headers}
    assert dead.value == b"{not json"
    assert headers["dlq.attempts"] == "0"
    assert headers["dlq.exception.type"] == "asyncconsumer._errors.DeserializationError"
    assert headers["dlq.original.offset"] == "2"


async def test_stop_policy_raises_keeps_the_offset_and_a_restart_handles_it_again(
    kafka_broker: KafkaTestBroker, topics: Topics
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = await topics.create("stop")
    await aproduce(bootstrap, topic, [(None, b"%d" % i) for i in range(6)], 0)
    group = unique("g-stop")
    tp = TopicPartition(topic, 0)

    first = make_app(bootstrap, group)
    attempts = 0

    @first.handler(topic, retry=Retry(attempts=2, backoff=Backoff.constant(0.05)))
    async def fail_at_3(msg: Message[bytes]) -> None:
        nonlocal attempts
        if msg.offset == 3:
            attempts += 1
            raise Boom("still broken")

    with anyio.fail_after(60), pytest.raises(Boom):
        await first.run()
    assert attempts == 2
    assert (await committed_offsets(bootstrap, group, [tp]))[tp] == 3

    second = make_app(bootstrap, group)
    again: list[int] = []

    @second.handler(topic)
    async def handle(msg: Message[bytes]) -> None:
        again.append(msg.offset)

    async with second:
        await wait_until(lambda: len(again) == 3, 60, "the rest handled after the restart")
    assert again == [3, 4, 5]


async def test_at_most_once_commits_before_the_handler_starts(
    kafka_broker: KafkaTestBroker, topics: Topics
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = await topics.create("amo")
    await aproduce(bootstrap, topic, [(None, b"x")] * 20, 0)
    tp = TopicPartition(topic, 0)
    # A long commit interval: only the commit ahead of the handler can explain
    # what the broker says.
    app = make_app(bootstrap, unique("g-amo"), commit_interval=60.0)
    observed: list[tuple[int, int | None]] = []

    @app.handler(topic, delivery="at_most_once")
    async def handle(msg: Message[bytes]) -> None:
        observed.append((msg.offset, await app.committed(tp)))

    async with app:
        await wait_until(lambda: len(observed) == 20, 60, "every record handled")
    for offset, committed in observed:
        assert committed is not None
        assert committed > offset, (offset, committed)


async def test_middleware_order_publish_to_round_trip_and_on_commit(
    kafka_broker: KafkaTestBroker, topics: Topics
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = await topics.create("mw-in")
    out = await topics.create("mw-out")
    await aproduce(bootstrap, topic, [(b"k%d" % i, b"value %d" % i) for i in range(10)], 0)
    trail: list[str] = []

    async def outer(msg: Message[bytes], call_next: CallNext) -> Any:
        trail.append("outer>")
        result = await call_next(msg)
        trail.append("<outer")
        return result

    class Suffix:
        async def __call__(self, msg: Message[bytes], call_next: CallNext) -> Any:
            trail.append("suffix>")
            result = await call_next(msg)
            trail.append("<suffix")
            return result + b"!"

    app = make_app(bootstrap, unique("g-mw"), middleware=[outer, Suffix()])
    commits: list[tuple[dict[TopicPartition, int], CommitError | None]] = []

    @app.on_commit
    async def committed(offsets: dict[TopicPartition, int], error: CommitError | None) -> None:
        commits.append((offsets, error))

    @app.handler(topic, publish_to=out)
    async def shout(msg: Message[bytes]) -> bytes:
        trail.append("handler")
        return msg.value.upper()

    async with app:
        results = await read_topic(bootstrap, out, 10)
        await wait_until(lambda: bool(commits) and commits[-1][0] == {TopicPartition(topic, 0): 10})

    assert [(r.key, r.value) for r in results] == [
        (b"k%d" % i, b"VALUE %d!" % i) for i in range(10)
    ]
    assert trail[:5] == ["outer>", "suffix>", "handler", "<suffix", "<outer"]
    assert len(trail) == 50
    assert all(error is None for _, error in commits)
    reported = [offsets[TopicPartition(topic, 0)] for offsets, _ in commits]
    assert reported == sorted(reported)  # each commit reported once, in order


async def test_a_dead_letter_that_cannot_be_published_stops_without_committing(
    kafka_broker: KafkaTestBroker, topics: Topics
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = await topics.create("dlq-missing")
    await aproduce(bootstrap, topic, [(None, b"x")] * 3, 0)
    group = unique("g-dlq-missing")
    app = make_app(
        bootstrap,
        group,
        producer_options={"request_timeout_ms": 1500, "max_request_size": 100},
    )

    @app.handler(topic, on_failure="dead_letter")
    async def handle(msg: Message[bytes]) -> None:
        if msg.offset == 1:
            raise Boom("to the dead letters")

    # The record (with its provenance headers) is larger than max_request_size:
    # the producer refuses it, whatever the broker.
    with anyio.fail_after(60), pytest.raises(DeadLetterError) as info:
        await app.run()
    assert "Boom" in "".join(info.value.__notes__)
    tp = TopicPartition(topic, 0)
    assert (await committed_offsets(bootstrap, group, [tp]))[tp] == 1


async def test_a_failed_commit_does_not_wedge_the_app_and_reassignment_resumes_from_committed(
    kafka_broker: KafkaTestBroker, topics: Topics
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = await topics.create("commit-fail")
    tp = TopicPartition(topic, 0)
    await aproduce(bootstrap, topic, [(None, b"a")] * 10, 0)
    # A short session: the member id the broker dropped expires sooner.
    group = unique("g-commit-fail")
    app = make_app(bootstrap, group, session_timeout_ms=6000, heartbeat_interval_ms=500)
    handled: list[int] = []
    errors: list[CommitError] = []
    resumed_at: list[tuple[int | None, int]] = []  # (committed at assignment, len(handled))

    @app.on_commit
    async def on_commit(offsets: dict[TopicPartition, int], error: CommitError | None) -> None:
        if error is not None:
            errors.append(error)

    @app.on_assign
    async def assigned(tps: list[TopicPartition]) -> None:
        resumed_at.append((await app.committed(tp), len(handled)))

    @app.handler(topic)
    async def handle(msg: Message[bytes]) -> None:
        handled.append(msg.offset)

    async with app:
        await wait_until(lambda: app.statistics().committed.get(tp) == 10, 60, "first commit")
        # The group's generation as the broker knows it no longer matches: the
        # broker refuses the next commit (ILLEGAL_GENERATION), as after a
        # rebalance this member missed.
        engine = app._engine
        assert engine is not None
        assert engine.client is not None
        client: Any = engine.client  # aiokafka's consumer (the coordinator is private)
        client._coordinator.generation += 1000
        await aproduce(bootstrap, topic, [(None, b"b")] * 10, 0)
        await wait_until(lambda: bool(errors), 30, "a failed commit reported to on_commit")
        await wait_until(lambda: len(resumed_at) >= 2, 30, "the member rejoined")
        await wait_until(lambda: app.statistics().committed.get(tp) == 20, 30, "commits again")
        assert app.running

    assert errors[0].offsets[tp] > 10
    committed_then, handled_before = resumed_at[-1]
    assert committed_then is not None
    # After the reassignment the partition restarted from the committed offset.
    assert handled[handled_before] == committed_then
    assert set(handled) == set(range(20))  # nothing lost
    assert (await committed_offsets(bootstrap, group, [tp]))[tp] == 20


async def test_publish_to_keeps_the_consumed_key_for_a_producer_record_without_one(
    kafka_broker: KafkaTestBroker, topics: Topics
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = await topics.create("pub-key-in")
    out = await topics.create("pub-key-out")
    await aproduce(bootstrap, topic, [(b"c%d" % i, b"%d" % i) for i in range(6)], 0)
    app = make_app(bootstrap, unique("g-pub-key"))

    @app.handler(topic, publish_to=out)
    async def enrich(msg: Message[bytes]) -> ProducerRecord:
        if msg.offset == 5:
            return ProducerRecord(msg.value, key=None)  # no key, on purpose
        return ProducerRecord(msg.value, headers={"enriched": "yes"})

    async with app:
        results = await read_topic(bootstrap, out, 6)
    assert [(r.key, r.value) for r in results] == [(b"c%d" % i, b"%d" % i) for i in range(5)] + [
        (None, b"5")
    ]
    assert all(dict(r.headers) == {"enriched": b"yes"} for r in results[:5])


@pytest.mark.apache_kafka  # the embedded broker does not enforce max.message.bytes
async def test_a_publish_the_broker_refuses_takes_the_failure_path_of_its_record(
    kafka_broker: KafkaTestBroker, topics: Topics
) -> None:
    """publish_to is pipelined: the records after one whose output the broker refuses
    have run already when the refusal arrives. That record still goes through retry
    and on_failure, every later record runs again after it, and the commit covers all."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    bootstrap = kafka_broker.bootstrap_servers
    topic = await topics.create("pipe-in")
    out = unique("pipe-out")
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(out, 1, 1, topic_configs={"max.message.bytes": "20000"})]
        )
    finally:
        await admin.close()
    await aproduce(bootstrap, topic, [(b"k", b"%d" % i) for i in range(10)], 0)
    group = unique("g-pipe")
    app = make_app(bootstrap, group)
    calls: list[int] = []

    @app.handler(
        topic,
        publish_to=out,
        retry=Retry(attempts=2, backoff=Backoff.constant(0.05)),
        on_failure="dead_letter",
    )
    async def handle(msg: Message[bytes]) -> bytes:
        calls.append(msg.offset)
        # larger than the producer's batches (16 KiB): it travels alone, as in production
        return b"x" * 30_000 if msg.offset == 5 else msg.value

    async with app:
        dead = await read_topic(bootstrap, topic + ".DLQ", 1)
        await wait_until(
            lambda: app.statistics().completed.get(TopicPartition(topic, 0)) == 10,
            what="every record completed",
        )
    results = await read_topic(bootstrap, out, 9)
    headers = dict(dead[0].headers)
    assert headers["dlq.original.offset"] == b"5"
    assert b"TooLarge" in headers["dlq.exception.type"]
    assert headers["dlq.attempts"] == b"2"
    assert calls.count(5) == 2
    published = [int(r.value) for r in results]
    # every record but 5 was published, each record's last output after the one before
    assert set(published) == set(range(10)) - {5}
    last = {value: i for i, value in enumerate(published)}
    assert [v for v in sorted(last, key=last.__getitem__)] == [0, 1, 2, 3, 4, 6, 7, 8, 9]
    assert (await committed_offsets(bootstrap, group, [TopicPartition(topic, 0)])) == {
        TopicPartition(topic, 0): 10
    }
