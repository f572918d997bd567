"""Retry/Backoff policies, the middleware chain and the Processor's failure paths."""

import asyncio
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError

from asyncconsumer import (
    DLQ_HEADERS,
    Backoff,
    CallNext,
    ConfigurationError,
    DeadLetterError,
    DeserializationError,
    Message,
    ProducerRecord,
    Retry,
    encode,
)
from asyncconsumer._message import make_decoder
from asyncconsumer._producer import Producer, check_producer_options
from asyncconsumer._runtime._pipeline import Processor, compose
from asyncconsumer.testing import MemoryKafka


def record(offset: int = 0, value: bytes = b"v", key: bytes | None = b"k") -> Any:
    return Message(
        topic="t",
        partition=2,
        offset=offset,
        key=key,
        value=value,
        headers=[("trace", b"1"), ("dlq.attempts", b"9")],
        timestamp=1234,
    )


async def producer(kafka: MemoryKafka) -> Producer:
    """The app's producer, started, on ``kafka`` (what it produced: ``sent(kafka, topic)``)."""
    p = Producer(kafka.bootstrap_servers)
    await p.start()
    return p


def sent(kafka: MemoryKafka, *topics: str) -> list[Message[bytes]]:
    """What was produced to ``topics``, topic by topic, in offset order."""
    return [
        Message(r.topic, r.partition, r.offset, r.key, r.value, list(r.headers), r.timestamp)
        for topic in topics
        for r in kafka.records(topic)
    ]


# -- policies ----------------------------------------------------------------------


def test_exponential_backoff_grows_to_its_maximum() -> None:
    b = Backoff.exponential(initial=0.1, maximum=1.0, jitter=False)
    assert [b.delay(n) for n in (1, 2, 3, 4, 5, 9)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert Backoff.constant(0.5).delay(7) == 0.5


def test_jitter_stays_between_half_and_the_full_delay() -> None:
    b = Backoff.exponential(initial=1.0, maximum=8.0)
    delays = [b.delay(3) for _ in range(500)]
    assert all(2.0 <= d <= 4.0 for d in delays)
    assert max(delays) - min(delays) > 1.0  # actually spread


@pytest.mark.parametrize(
    "make",
    [
        lambda: Retry(attempts=0),
        lambda: Retry(on=(KeyboardInterrupt,)),  # type: ignore[arg-type]
        lambda: Retry(on=()),
        lambda: Backoff(initial=-1),
        lambda: Backoff(initial=2, maximum=1),
        lambda: Backoff(multiplier=0.5),
    ],
)
def test_bad_policies_are_configuration_errors(make: Any) -> None:
    with pytest.raises(ConfigurationError):
        make()


def test_retry_counts_attempts_and_filters_errors() -> None:
    retry = Retry(attempts=3, on=ValueError)
    assert retry.on == (ValueError,)
    assert retry.allows(ValueError(), 1)
    assert retry.allows(ValueError(), 2)
    assert not retry.allows(ValueError(), 3)  # three attempts in all
    assert not retry.allows(TypeError(), 1)


def test_producer_options_are_checked_and_acks_default_to_all() -> None:
    assert check_producer_options({"linger_ms": 5}) == {"acks": "all", "linger_ms": 5}
    assert check_producer_options({"acks": 1})["acks"] == 1
    for bad in ({"value_serializer": str}, {"lingerms": 5}):
        with pytest.raises(ConfigurationError):
            check_producer_options(bad)


def test_encode_by_type() -> None:
    assert encode(b"x") == b"x"
    assert encode(bytearray(b"y")) == b"y"
    assert encode("é") == "é".encode()
    assert encode(None) is None
    assert encode({"a": [1, 2]}) == b'{"a":[1,2]}'
    with pytest.raises(TypeError):
        encode(object())


# -- middleware ----------------------------------------------------------------------


async def test_middleware_runs_first_outermost_and_sees_the_result() -> None:
    trail: list[str] = []

    def layer(name: str) -> Any:
        async def mw(msg: Any, call_next: CallNext) -> Any:
            trail.append(f"{name} in")
            result = await call_next(msg)
            trail.append(f"{name} out {result}")
            return f"{name}({result})"

        return mw

    async def handler(msg: Any) -> str:
        trail.append("handler")
        return "r"

    call = compose(handler, [layer("a"), layer("b")])
    assert await call(None) == "a(b(r))"
    assert trail == ["a in", "b in", "handler", "b out r", "a out b(r)"]


# -- the processor ---------------------------------------------------------------------


async def test_a_failure_asks_for_a_retry_until_the_last_attempt_then_stops() -> None:
    async def handler(msg: Message[Any]) -> None:
        raise ValueError("boom")

    p = Processor(
        handler,
        make_decoder(None, None),
        retry=Retry(attempts=3, backoff=Backoff.constant(0.25)),
    )
    assert await p.process(record(), 1) == 0.25
    assert await p.process(record(), 2) == 0.25
    with pytest.raises(ValueError, match="boom"):
        await p.process(record(), 3)
    c = p.counters["t"]
    assert (c.retried, c.failed, c.handled) == (2, 1, 0)


async def test_errors_outside_retry_on_fail_at_once() -> None:
    async def handler(msg: Message[Any]) -> None:
        raise KeyError("no")

    p = Processor(
        handler, make_decoder(None, None), retry=Retry(attempts=5, on=ValueError), on_failure="skip"
    )
    assert await p.process(record(), 1) is None
    c = p.counters["t"]
    assert (c.retried, c.failed, c.skipped) == (0, 1, 1)


async def test_dead_letter_keeps_key_value_and_headers_and_adds_provenance() -> None:
    async def handler(msg: Message[Any]) -> None:
        raise ValueError("x" * 5000)

    kafka = MemoryKafka()
    p = Processor(
        handler,
        make_decoder(None, None),
        name="svc.handle",
        on_failure="dead_letter",
        producer=await producer(kafka),
        group_id="g1",
        retry=Retry(attempts=2, backoff=Backoff.constant(0)),
    )
    assert await p.process(record(7), 1) == 0
    assert await p.process(record(7), 2) is None
    [dead] = sent(kafka, "t.DLQ")
    assert (dead.value, dead.key) == (b"v", b"k")
    headers = dict(dead.headers)
    assert set(DLQ_HEADERS) <= set(headers)
    assert headers["trace"] == b"1"
    assert [k for k, _ in dead.headers].count("dlq.attempts") == 1  # old one replaced
    assert headers["dlq.original.topic"] == b"t"
    assert headers["dlq.original.partition"] == b"2"
    assert headers["dlq.original.offset"] == b"7"
    assert headers["dlq.original.timestamp"] == b"1234"
    assert headers["dlq.group"] == b"g1"
    assert headers["dlq.handler"] == b"svc.handle"
    assert headers["dlq.exception.type"] == b"ValueError"
    assert len(headers["dlq.exception.message"]) == 1000
    assert b"Traceback" in headers["dlq.exception.traceback"]
    assert headers["dlq.attempts"] == b"2"
    assert p.counters["t"].dead_lettered == 1


async def test_an_undecodable_record_is_not_retried() -> None:
    calls = 0

    async def handler(msg: Message[Any]) -> None:
        nonlocal calls
        calls += 1

    kafka = MemoryKafka()
    p = Processor(
        handler,
        make_decoder(None, lambda b: b.decode("ascii")),
        on_failure="dead_letter",
        dead_letter_topic="poison",
        producer=await producer(kafka),
        retry=Retry(attempts=5),
    )
    assert await p.process(record(value=b"\xff"), 1) is None
    assert calls == 0
    [dead] = sent(kafka, "poison")
    headers = dict(dead.headers)
    assert headers["dlq.attempts"] == b"0"
    assert headers["dlq.exception.type"] == b"asyncconsumer._errors.DeserializationError"


async def test_an_undecodable_record_stops_by_default() -> None:
    async def handler(msg: Message[Any]) -> None:
        pass

    p = Processor(handler, make_decoder(None, lambda b: b.decode("ascii")))
    with pytest.raises(DeserializationError):
        await p.process(record(value=b"\xff"), 1)


async def test_a_dead_letter_that_cannot_be_published_stops_with_both_errors() -> None:
    async def handler(msg: Message[Any]) -> None:
        raise ValueError("original")

    kafka = MemoryKafka()
    kafka.fail_next_send()  # the broker does not acknowledge it in time
    p = Processor(
        handler,
        make_decoder(None, None),
        on_failure="dead_letter",
        producer=await producer(kafka),
    )
    with pytest.raises(DeadLetterError) as info:
        await p.process(record(), 1)
    assert isinstance(info.value.__cause__, KafkaTimeoutError)
    assert sent(kafka, "t.DLQ") == []
    assert any("original" in note for note in info.value.__notes__)


async def test_publish_to_keeps_the_key_or_takes_a_producer_record() -> None:
    results: list[Any] = ["text", None, ProducerRecord({"n": 1}, key="k2", topic="other")]

    async def handler(msg: Message[Any]) -> Any:
        return results.pop(0)

    kafka = MemoryKafka()
    p = Processor(
        handler, make_decoder(None, None), publish_to="out", producer=await producer(kafka)
    )
    for i in range(3):
        assert await p.process(record(i), 1) is None
    assert [(m.topic, m.value, m.key) for m in sent(kafka, "out", "other")] == [
        ("out", b"text", b"k"),
        ("other", b'{"n":1}', b"k2"),
    ]
    assert p.counters["t"].handled == 3


async def test_a_batch_leaves_out_its_poison_pills_and_fails_as_a_whole() -> None:
    seen: list[list[int]] = []

    async def handler(msgs: list[Message[Any]]) -> None:
        seen.append([m.offset for m in msgs])
        raise ValueError("batch")

    kafka = MemoryKafka()
    p = Processor(
        handler,
        make_decoder(None, lambda b: b.decode("ascii")),
        on_failure="dead_letter",
        producer=await producer(kafka),
    )
    batch = [record(0), record(1, value=b"\xff"), record(2)]
    msgs = await p.decode_batch(batch)
    assert [m.offset for m in msgs] == [0, 2]
    assert [dict(m.headers)["dlq.original.offset"] for m in sent(kafka, "t.DLQ")] == [b"1"]
    assert await p.process_batch(batch, msgs, 1) is None
    assert seen == [[0, 2]]
    offsets = [dict(m.headers)["dlq.original.offset"] for m in sent(kafka, "t.DLQ")]
    assert offsets == [b"1", b"0", b"2"]
    c = p.counters["t"]
    assert (c.failed, c.dead_lettered, c.handled) == (3, 3, 0)


async def test_a_timing_observes_every_attempt_and_a_batch_once() -> None:
    observed: list[tuple[str, float]] = []

    class Timing:
        bounds: tuple[float, ...] = (1.0,)

        def observe(self, topic: str, seconds: float) -> None:
            observed.append((topic, seconds))

        def series(self, topic: str) -> list[float]:
            raise AssertionError("only partition lanes add to a series themselves")

    async def handler(msg: Any) -> None:
        if isinstance(msg, Message) and msg.offset == 1:
            raise ValueError("boom")
        await asyncio.sleep(0.01)

    p = Processor(
        handler,
        make_decoder(None, None),
        retry=Retry(attempts=2, backoff=Backoff.constant(0)),
        timing=Timing(),
    )
    assert await p.process(record(0)) is None
    assert await p.process(record(1), 1) == 0  # a failed attempt is timed too
    batch = [record(2), record(3)]
    assert await p.process_batch(batch, await p.decode_batch(batch)) is None
    assert [topic for topic, _ in observed] == ["t", "t", "t"]
    assert observed[0][1] >= 0.009  # the handler's 10 ms
    assert observed[2][1] >= 0.009


# -- a CancelledError that no cancellation of ours raised ------------------------------


async def _await_a_cancelled_future() -> None:
    """What a handler does when it awaits a task someone else cancelled."""
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.cancel()
    await future


async def test_a_stray_cancelled_error_is_a_failure_of_the_record() -> None:
    from asyncconsumer import HandlerCancelledError

    calls: list[int] = []

    async def handler(msg: Message[Any]) -> None:
        calls.append(msg.offset)
        await _await_a_cancelled_future()

    retrying = Processor(
        handler, make_decoder(None, None), retry=Retry(attempts=2, backoff=Backoff.constant(0.25))
    )
    assert await retrying.process(record(), 1) == 0.25  # retried like any failure
    assert retrying.counters["t"].retried == 1
    with pytest.raises(HandlerCancelledError) as info:  # then on_failure="stop"
        await retrying.process(record(), 2)
    assert isinstance(info.value.__cause__, asyncio.CancelledError)
    assert "nothing cancelled it" in str(info.value)

    kafka = MemoryKafka()
    dead_letters = Processor(
        handler, make_decoder(None, None), on_failure="dead_letter", producer=await producer(kafka)
    )
    assert await dead_letters.process(record(), 1) is None
    assert dict(sent(kafka, "t.DLQ")[0].headers)["dlq.exception.type"] == (
        b"asyncconsumer._errors.HandlerCancelledError"
    )


async def test_a_stray_cancelled_error_in_a_batch_is_a_failure_of_the_batch() -> None:
    from asyncconsumer import HandlerCancelledError

    async def handler(msgs: list[Message[Any]]) -> None:
        await _await_a_cancelled_future()

    p = Processor(handler, make_decoder(None, None))
    batch = [record(0), record(1)]
    with pytest.raises(HandlerCancelledError):
        await p.process_batch(batch, await p.decode_batch(batch), 1)


async def test_a_real_cancellation_still_cancels() -> None:
    import anyio

    async def handler(msg: Message[Any]) -> None:
        scope.cancel()
        await anyio.sleep(5)

    p = Processor(
        handler, make_decoder(None, None), retry=Retry(attempts=3, backoff=Backoff.constant(0))
    )
    with anyio.CancelScope() as scope:
        await p.process(record(), 1)
    assert scope.cancelled_caught
    assert p.counters["t"].retried == 0


async def test_a_producer_record_without_a_key_keeps_the_consumed_key() -> None:
    results: list[Any] = [
        ProducerRecord("a"),
        ProducerRecord("b", headers={"h": "1"}),
        ProducerRecord("c", key=None),
        ProducerRecord("d", key=b"own"),
    ]

    async def handler(msg: Message[Any]) -> Any:
        return results.pop(0)

    kafka = MemoryKafka()
    p = Processor(
        handler, make_decoder(None, None), publish_to="out", producer=await producer(kafka)
    )
    for i in range(4):
        assert await p.process(record(i, key=b"consumed"), 1) is None
    assert [(m.value, m.key) for m in sent(kafka, "out")] == [
        (b"a", b"consumed"),
        (b"b", b"consumed"),
        (b"c", None),
        (b"d", b"own"),
    ]
    assert "the consumed key" in repr(ProducerRecord("a"))
