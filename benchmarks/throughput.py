"""Scenario 1: no-op handling of ``--records`` records, on several data shapes.

Every contender reads the same topic of a shape, in turn, round after round, each
between two runs of the baseline (``B C1 B C2 ... B``, the order reversed every other
round); rates are first-to-last record, with the process's CPU seconds per million
records, and a contender's ratio is to the baseline runs around it.

Shapes (what users' topics look like differs from what suits a benchmark):

- ``aiokafka 100 B``: 100-byte values produced by aiokafka in 512 KiB batches,
  1,000 keys, 4 partitions (large batches, no headers);
- ``librdkafka JSON``: confluent-kafka's ``Producer`` with its defaults and
  ``linger.ms=5``, JSON values of about 35 bytes, one header, 1,000 keys,
  4 partitions (small batches, as services produce them);
- ``librdkafka JSON, 32 partitions``: the same over 32 partitions (many small
  partitions: per-partition costs show).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
from confluent_kafka import Consumer as ConfluentConsumer
from confluent_kafka import TopicPartition as ConfluentTopicPartition

from asyncconsumer import Consumer, ConsumerApp, Message

from ._common import (
    Clock,
    make_librdkafka_topic,
    make_topic,
    partitions,
    print_round,
    raw_client,
    run_faststream,
    unique,
)


@dataclass(frozen=True)
class Topic:
    name: str
    partitions: int


@dataclass(frozen=True)
class Shape:
    name: str
    partitions: int
    make: Callable[[str, int], Awaitable[str]]  # (bootstrap, records) -> topic


# id (for --shapes) -> shape
SHAPES = {
    "100b": Shape("aiokafka 100 B", 4, lambda bootstrap, n: make_topic(bootstrap, "bench-tp", n)),
    "json": Shape(
        "librdkafka JSON", 4, lambda bootstrap, n: make_librdkafka_topic(bootstrap, "bench-rd", n)
    ),
    "json32": Shape(
        "librdkafka JSON, 32 partitions",
        32,
        lambda bootstrap, n: make_librdkafka_topic(bootstrap, "bench-rd32", n, partitions=32),
    ),
}

Contender = Callable[[str, Topic, int], Awaitable[Clock]]


async def raw_getmany(bootstrap: str, topic: Topic, total: int) -> Clock:
    """The baseline: ``getmany(max_records=1000)`` in a loop, touching each record.

    One tick per call: the records of the first call were decoded before the clock
    started, so they are all left out of the rate (the Clock's head). Without
    ``max_records`` the first call returned 47,000-83,000 of 200,000 records on the
    JSON shape, most of them counted as if decoded in no time (the baseline of
    earlier tables was inflated by that); with 1,000 per call the loop also keeps
    fetches in flight and reads the topic faster."""
    clock = Clock(total)
    async with raw_client(bootstrap, topic.name, topic.partitions) as client:
        while True:
            count = 0
            for records in (await client.getmany(timeout_ms=1000, max_records=1000)).values():
                for _record in records:
                    pass
                count += len(records)
            if count and clock.tick(count):
                return clock


async def raw_async_for(bootstrap: str, topic: Topic, total: int) -> Clock:
    clock = Clock(total)
    async with raw_client(bootstrap, topic.name, topic.partitions) as client:
        async for _record in client:
            if clock.tick():
                break
    return clock


def _confluent_config() -> dict[str, Any]:
    return {
        "group.id": unique("bench-ck"),
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    }


def _confluent_loop(bootstrap: str, topic: Topic, total: int) -> Clock:
    consumer = ConfluentConsumer({"bootstrap.servers": bootstrap, **_confluent_config()})
    consumer.assign([ConfluentTopicPartition(topic.name, p, 0) for p in range(topic.partitions)])
    clock = Clock(total)
    try:
        while True:
            batch = consumer.consume(num_messages=1000, timeout=1.0)
            if batch and clock.tick(len(batch)):
                return clock
    finally:
        consumer.close()


async def confluent_consume(bootstrap: str, topic: Topic, total: int) -> Clock:
    return await anyio.to_thread.run_sync(_confluent_loop, bootstrap, topic, total)


async def confluent_aio(bootstrap: str, topic: Topic, total: int) -> Clock:
    """confluent-kafka's asyncio consumer (``confluent_kafka.aio``): librdkafka's
    ``consume()`` in a thread pool, awaited."""
    from confluent_kafka.aio import AIOConsumer

    consumer = AIOConsumer({"bootstrap.servers": bootstrap, **_confluent_config()})
    await consumer.assign(
        [ConfluentTopicPartition(topic.name, p, 0) for p in range(topic.partitions)]
    )
    clock = Clock(total)
    try:
        while True:
            batch = await consumer.consume(num_messages=1000, timeout=1.0)
            if batch and clock.tick(len(batch)):
                return clock
    finally:
        await consumer.close()


async def _run_app(app: ConsumerApp, done: anyio.Event) -> None:
    async with app:
        await done.wait()


def _app(bootstrap: str) -> ConsumerApp:
    return ConsumerApp(
        bootstrap_servers=bootstrap, group_id=unique("bench"), auto_offset_reset="earliest"
    )


async def app_partition(bootstrap: str, topic: Topic, total: int) -> Clock:
    app, clock, done = _app(bootstrap), Clock(total), anyio.Event()

    @app.handler(topic.name)
    async def handle(msg: Message[bytes]) -> None:
        if clock.tick():
            done.set()

    await _run_app(app, done)
    return clock


async def app_partition_metrics(bootstrap: str, topic: Topic, total: int) -> Clock:
    """Per-record with Prometheus metrics on: the handler-latency middleware runs per
    record (the other metrics are read at scrape time)."""
    from asyncconsumer.metrics import instrument

    app, clock, done = _app(bootstrap), Clock(total), anyio.Event()

    @app.handler(topic.name)
    async def handle(msg: Message[bytes]) -> None:
        if clock.tick():
            done.set()

    instrument(app)
    await _run_app(app, done)
    return clock


async def app_key_100(bootstrap: str, topic: Topic, total: int) -> Clock:
    app, clock, done = _app(bootstrap), Clock(total), anyio.Event()

    @app.handler(topic.name, ordering="key", concurrency=100)
    async def handle(msg: Message[bytes]) -> None:
        if clock.tick():
            done.set()

    await _run_app(app, done)
    return clock


async def app_batch(bootstrap: str, topic: Topic, total: int) -> Clock:
    app, clock, done = _app(bootstrap), Clock(total), anyio.Event()

    @app.batch_handler(topic.name, max_records=500, max_wait=0)
    async def handle(msgs: list[Message[bytes]]) -> None:
        if clock.tick(len(msgs)):
            done.set()

    await _run_app(app, done)
    return clock


async def consumer_async_for(bootstrap: str, topic: Topic, total: int) -> Clock:
    clock = Clock(total)
    async with Consumer(
        partitions=partitions(topic.name, topic.partitions),
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
    ) as consumer:
        async for _msg in consumer:
            if clock.tick():
                break
    return clock


async def faststream_per_message(bootstrap: str, topic: Topic, total: int) -> Clock:
    clock, done = Clock(total), anyio.Event()

    async def handle(msg: bytes) -> None:
        if clock.tick():
            done.set()

    await run_faststream(bootstrap, topic.name, handle, done)
    return clock


async def faststream_batch(bootstrap: str, topic: Topic, total: int) -> Clock:
    clock, done = Clock(total), anyio.Event()

    async def handle(msgs: list[bytes]) -> None:
        if clock.tick(len(msgs)):
            done.set()

    await run_faststream(bootstrap, topic.name, handle, done, batch=True, max_records=500)
    return clock


BASELINE = "aiokafka getmany loop"
CONTENDERS: dict[str, Contender] = {
    BASELINE: raw_getmany,
    "aiokafka async for": raw_async_for,
    "confluent-kafka consume() loop": confluent_consume,
    "confluent-kafka AIOConsumer": confluent_aio,
    "FastStream per-message (logger off)": faststream_per_message,
    "FastStream batch subscriber": faststream_batch,
    "asyncconsumer per-record (partition)": app_partition,
    "asyncconsumer per-record + metrics": app_partition_metrics,
    "asyncconsumer key (concurrency 100)": app_key_100,
    "asyncconsumer batch handler": app_batch,
    "asyncconsumer Consumer async for": consumer_async_for,
}


METRICS_PAIR = ("asyncconsumer per-record + metrics", "asyncconsumer per-record (partition)")


def round_order(names: list[str], attempt: int) -> list[str]:
    """Contenders in listed order in even rounds, reversed in odd ones: a contender
    that suffers from what runs before it (a broker still busy with the last
    group, a collection the last contender's garbage triggers) is not always the
    same one."""
    return names if attempt % 2 == 0 else names[::-1]


async def run(
    bootstrap: str, shape: Shape, total: int, repeat: int, only: set[str] | None = None
) -> dict[str, Any]:
    """Every contender on a new topic of ``shape``, ``repeat`` rounds, each contender
    between two runs of the baseline: a round runs ``B C1 B C2 ... B Cn B``, and a
    contender's ratio is its rate over the geometric mean of the baseline runs just
    before and just after it, seconds away, not one baseline run at the round's start
    that may have met another speed phase of the machine (see ``machine_steadiness``).

    Returns the rates and CPU figures per contender, and per contender its ratio to
    the baseline around it (median and range over the rounds), so that a phase of
    the machine's speed counts against both. ``metrics`` is the per-record
    contender with metrics on over the same with metrics off, per round (each
    through its own baseline ratio)."""
    topic = Topic(await shape.make(bootstrap, total), shape.partitions)
    contenders = {
        name: contender
        for name, contender in CONTENDERS.items()
        if name != BASELINE and (only is None or any(part in name for part in only))
    }
    names = list(contenders)
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    ratios: dict[str, list[float]] = {name: [] for name in contenders}
    cpu: dict[str, list[float]] = {name: [] for name in [BASELINE, *contenders]}
    baselines: list[list[float]] = []

    async def measure(name: str, attempt: int) -> float:
        started = time.perf_counter()
        clock = await CONTENDERS[name](bootstrap, topic, total)
        cpu[name].append(clock.cpu_per_million)
        print_round(attempt, repeat, name, clock, started)
        return clock.rate

    for attempt in range(repeat):
        runs = [await measure(BASELINE, attempt)]
        for name in round_order(names, attempt):
            rate = await measure(name, attempt)
            runs.append(await measure(BASELINE, attempt))
            rates[name].append(rate)
            ratios[name].append(rate / (runs[-2] * runs[-1]) ** 0.5)
        baselines.append(runs)
    rates = {BASELINE: [rate for runs in baselines for rate in runs], **rates}
    ratios = {BASELINE: [1.0] * repeat, **ratios}
    figures: dict[str, Any] = {
        "partitions": shape.partitions,
        "rates": rates,
        "baseline_runs": baselines,
        "cpu_per_million": cpu,
        "median": {name: statistics.median(values) for name, values in rates.items()},
        "ratios": ratios,
        "ratio": {name: statistics.median(values) for name, values in ratios.items()},
        "ratio_range": {name: (min(values), max(values)) for name, values in ratios.items()},
        "cpu_median": {name: statistics.median(values) for name, values in cpu.items()},
    }
    on, off = METRICS_PAIR
    if on in ratios and off in ratios:
        pairs = [a / b for a, b in zip(ratios[on], ratios[off], strict=True)]
        figures["metrics"] = {
            "ratios": pairs,
            "median": statistics.median(pairs),
            "range": (min(pairs), max(pairs)),
        }
    return figures
