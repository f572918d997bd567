"""``delivery="exactly_once"``: a failed attempt that already sent into the open
transaction is not retried in place (its outputs would commit twice, issue 11): the
transaction aborts and its records run again, the retry policy still counting the
failed record's attempts."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

from asyncconsumer import ConsumerApp, Message, ProducerRecord, Retry
from asyncconsumer.testing import MemoryKafka, TestClient

ORDERINGS = ["partition", "key", "none"]
Handle = Callable[[Message[bytes]], Awaitable[bytes]]


def make_app() -> ConsumerApp:
    return ConsumerApp(
        bootstrap_servers="127.0.0.1:9092",
        group_id="g",
        auto_offset_reset="earliest",
        commit_interval=0.05,
    )


def eos_handler(app: ConsumerApp, ordering: str, **options: Any) -> Callable[[Handle], Handle]:
    """The tests' handler registration: "in" to "out", exactly-once, 3 attempts."""
    return app.handler(
        "in",
        ordering=ordering,  # type: ignore[arg-type]
        delivery="exactly_once",
        publish_to="out",
        retry=Retry(attempts=3),
        **options,
    )


async def wait_for(condition: Any, timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.005)


async def run_all(app: ConsumerApp, count: int, *, keyed: bool = False) -> TestClient:
    """Run ``app`` on ``count`` records of "in"[0] (keys k0, k1, ... when ``keyed``:
    under key / none ordering they run concurrently) until all are committed."""
    kafka = MemoryKafka()
    for i in range(count):
        kafka.publish("in", b"v", key=b"k%d" % i if keyed else None, partition=0)
    async with TestClient(app, kafka) as client:
        await wait_for(lambda: client.committed("in", 0) == count)
    return client


@pytest.mark.parametrize("ordering", ORDERINGS)
async def test_an_attempt_that_sent_then_failed_commits_its_outputs_once(ordering: str) -> None:
    app = make_app()
    calls: Counter[int] = Counter()

    @eos_handler(app, ordering)
    async def handle(msg: Message[bytes]) -> bytes:
        calls[msg.offset] += 1
        await app.producer.send("side", b"%d" % msg.offset)
        if msg.offset == 3 and calls[3] == 1:
            raise ValueError("after sending")
        return b"%d" % msg.offset

    client = await run_all(app, 6, keyed=True)

    assert calls[3] == 2  # retried once
    want = {b"%d" % i: 1 for i in range(6)}
    assert Counter(m.value for m in client.records("side")) == want
    assert Counter(m.value for m in client.records("out")) == want
    assert app._counters["in"].retried == 1
    assert app._counters["in"].failed == 0
    assert app._counters["in"].aborted_transactions == 1
    # each record once, as committed (before: the 3 records of the aborted
    # transaction twice, 9)
    assert app._counters["in"].handled == 6


@pytest.mark.parametrize("ordering", ORDERINGS)
async def test_an_attempt_that_sent_nothing_is_retried_in_place(ordering: str) -> None:
    app = make_app()
    calls: Counter[int] = Counter()

    @eos_handler(app, ordering)
    async def handle(msg: Message[bytes]) -> bytes:
        calls[msg.offset] += 1
        if msg.offset == 1 and calls[1] == 1:
            raise ValueError("before sending")
        await app.producer.send("side", b"%d" % msg.offset)
        return b"%d" % msg.offset

    client = await run_all(app, 3, keyed=True)

    assert dict(calls) == {0: 1, 1: 2, 2: 1}  # nothing ran again but the record
    assert app._counters["in"].aborted_transactions == 0
    want = {b"%d" % i: 1 for i in range(3)}
    assert Counter(m.value for m in client.records("side")) == want
    assert Counter(m.value for m in client.records("out")) == want


@pytest.mark.parametrize("ordering", ORDERINGS)
async def test_retries_exhausted_across_aborts_apply_on_failure(ordering: str) -> None:
    app = make_app()
    calls: Counter[int] = Counter()

    @eos_handler(app, ordering, on_failure="dead_letter")
    async def handle(msg: Message[bytes]) -> bytes:
        calls[msg.offset] += 1
        await app.producer.send("side", b"%d" % msg.offset)
        if msg.offset == 2:
            raise ValueError("always")
        return b"%d" % msg.offset

    client = await run_all(app, 5, keyed=True)

    assert calls[2] == 3  # the policy bounds the attempts across the aborts
    want = {b"%d" % i: 1 for i in (0, 1, 3, 4)}
    assert Counter(m.value for m in client.records("side")) == want  # none of offset 2
    assert Counter(m.value for m in client.records("out")) == want
    dead = client.records("in.DLQ")
    assert len(dead) == 1
    headers = dict(dead[0].headers)
    assert headers["dlq.original.offset"] == b"2"
    assert headers["dlq.attempts"] == b"3"
    assert app._counters["in"].dead_lettered == 1


@pytest.mark.parametrize("ordering", ORDERINGS)
async def test_what_became_of_records_counts_once_when_their_transaction_commits(
    ordering: str,
) -> None:
    """Offset 1 is dead-lettered in the transaction that offset 3 then aborts (it
    sent, then failed): all of it runs again. The totals count each record once, as
    the committed transaction has it (before: offset 1 dead-lettered twice, and the
    records before offset 3 handled twice)."""
    app = make_app()
    calls: Counter[int] = Counter()

    @eos_handler(app, ordering, on_failure="dead_letter")
    async def handle(msg: Message[bytes]) -> bytes:
        calls[msg.offset] += 1
        if msg.offset == 1:
            raise ValueError("never")  # sends nothing: retried in place, then dead-lettered
        await app.producer.send("side", b"%d" % msg.offset)
        if msg.offset == 3 and calls[3] == 1:
            await wait_for(lambda: calls[1] == 3)  # (under key: in the same transaction)
            raise ValueError("after sending")
        return b"%d" % msg.offset

    client = await run_all(app, 5, keyed=True)

    assert calls[1] == 6  # 3 attempts, twice: the abort ran it again
    assert len(client.records("in.DLQ")) == 1
    counters = app._counters["in"]
    assert counters.aborted_transactions == 1
    assert (counters.handled, counters.failed, counters.dead_lettered) == (4, 1, 1)


async def test_a_batch_transaction_counts_its_records_once() -> None:
    """Two batches of two in one transaction; the second sends, then fails once: the
    transaction aborts and both batches run again, counted once (before: 6)."""
    app = make_app()
    calls: Counter[int] = Counter()

    @app.batch_handler(
        "in",
        publish_to="out",
        delivery="exactly_once",
        max_records=2,
        max_wait=0,
        retry=Retry(attempts=3),
    )
    async def handle(msgs: list[Message[bytes]]) -> list[bytes]:
        first = msgs[0].offset
        calls[first] += 1
        for msg in msgs:
            await app.producer.send("side", b"%d" % msg.offset)
        if first == 2 and calls[first] == 1:
            raise ValueError("after sending")
        return [b"%d" % m.offset for m in msgs]

    await run_all(app, 4)

    assert calls == {0: 2, 2: 2}
    assert app._counters["in"].aborted_transactions == 1
    assert app._counters["in"].handled == 4


async def test_a_batch_out_of_attempts_across_aborts_is_dead_lettered_once() -> None:
    """Every attempt of the batch sends, then fails: each aborts the transaction; once
    out of attempts the batch is dead-lettered in the next one, and nothing it sent
    is committed."""
    app = make_app()
    calls = 0

    @app.batch_handler(
        "in",
        publish_to="out",
        delivery="exactly_once",
        max_wait=0,
        retry=Retry(attempts=2),
        on_failure="dead_letter",
    )
    async def handle(msgs: list[Message[bytes]]) -> list[bytes]:
        nonlocal calls
        calls += 1
        for msg in msgs:
            await app.producer.send("side", b"%d" % msg.offset)
        raise ValueError("always")

    client = await run_all(app, 3)

    assert calls == 2  # the policy bounds the attempts across the aborts
    assert client.records("side") == []
    assert client.records("out") == []
    dead = client.records("in.DLQ")
    assert sorted(dict(m.headers)["dlq.original.offset"] for m in dead) == [b"0", b"1", b"2"]
    assert {dict(m.headers)["dlq.attempts"] for m in dead} == {b"2"}
    counters = app._counters["in"]
    assert counters.aborted_transactions == 2
    assert (counters.handled, counters.failed, counters.dead_lettered) == (0, 3, 3)


async def test_a_publish_that_failed_partway_is_not_committed_twice() -> None:
    """A batch handler returns an output per record; the second cannot be sent (its
    value does not encode: the send fails synchronously) after the first joined the
    transaction. The retry publishes them all; the first attempt's one vanishes."""
    app = make_app()
    calls = 0

    @app.batch_handler(
        "in", publish_to="out", delivery="exactly_once", max_wait=0, retry=Retry(attempts=2)
    )
    async def handle(msgs: list[Message[bytes]]) -> list[object]:
        nonlocal calls
        calls += 1
        outputs: list[object] = [ProducerRecord(b"%d" % m.offset) for m in msgs]
        if calls == 1:
            outputs[1] = object()  # not JSON: its send raises TypeError
        return outputs

    client = await run_all(app, 3)

    assert calls == 2
    assert Counter(m.value for m in client.records("out")) == {b"%d" % i: 1 for i in range(3)}


async def test_a_batch_that_sent_then_failed_commits_its_outputs_once() -> None:
    app = make_app()
    calls = 0

    @app.batch_handler(
        "in", publish_to="out", delivery="exactly_once", max_wait=0, retry=Retry(attempts=3)
    )
    async def handle(msgs: list[Message[bytes]]) -> list[bytes]:
        nonlocal calls
        calls += 1
        for msg in msgs:
            await app.producer.send("side", b"%d" % msg.offset)
        if calls == 1:
            raise ValueError("after sending")
        return [b"%d" % m.offset for m in msgs]

    client = await run_all(app, 4)

    assert calls >= 2
    want = {b"%d" % i: 1 for i in range(4)}
    assert Counter(m.value for m in client.records("side")) == want
    assert Counter(m.value for m in client.records("out")) == want
