"""Scenario 1: no-op handling, 200,000 x 100 B records, 4 partitions, 1,000 keys.

Every contender reads the same topic; rates are first-to-last record.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio
from confluent_kafka import Consumer as ConfluentConsumer
from confluent_kafka import TopicPartition as ConfluentTopicPartition

from asyncconsumer import Consumer, ConsumerApp, Message

from ._common import Clock, partitions, raw_client, run_faststream, unique

Contender = Callable[[str, str, int], Awaitable[float]]


async def raw_getmany(bootstrap: str, topic: str, total: int) -> float:
    clock = Clock(total)
    async with raw_client(bootstrap, topic) as client:
        while True:
            for records in (await client.getmany(timeout_ms=1000)).values():
                for _record in records:
                    pass
                if records and clock.tick(len(records)):
                    return clock.rate


async def raw_async_for(bootstrap: str, topic: str, total: int) -> float:
    clock = Clock(total)
    async with raw_client(bootstrap, topic) as client:
        async for _record in client:
            if clock.tick():
                break
    return clock.rate


def _confluent_loop(bootstrap: str, topic: str, total: int) -> float:
    consumer = ConfluentConsumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": unique("bench-ck"),
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.assign([ConfluentTopicPartition(topic, tp.partition, 0) for tp in partitions(topic)])
    clock = Clock(total)
    try:
        while True:
            batch = consumer.consume(num_messages=1000, timeout=1.0)
            if batch and clock.tick(len(batch)):
                return clock.rate
    finally:
        consumer.close()


async def confluent_consume(bootstrap: str, topic: str, total: int) -> float:
    return await anyio.to_thread.run_sync(_confluent_loop, bootstrap, topic, total)


async def _run_app(app: ConsumerApp, done: anyio.Event) -> None:
    async with app:
        await done.wait()


def _app(bootstrap: str) -> ConsumerApp:
    return ConsumerApp(
        bootstrap_servers=bootstrap, group_id=unique("bench"), auto_offset_reset="earliest"
    )


async def app_partition(bootstrap: str, topic: str, total: int) -> float:
    app, clock, done = _app(bootstrap), Clock(total), anyio.Event()

    @app.handler(topic)
    async def handle(msg: Message[bytes]) -> None:
        if clock.tick():
            done.set()

    await _run_app(app, done)
    return clock.rate


async def app_partition_metrics(bootstrap: str, topic: str, total: int) -> float:
    """Per-record with Prometheus metrics on: the handler-latency middleware runs per
    record (the other metrics are read at scrape time)."""
    from asyncconsumer.metrics import instrument

    app, clock, done = _app(bootstrap), Clock(total), anyio.Event()

    @app.handler(topic)
    async def handle(msg: Message[bytes]) -> None:
        if clock.tick():
            done.set()

    instrument(app)
    await _run_app(app, done)
    return clock.rate


async def app_key_100(bootstrap: str, topic: str, total: int) -> float:
    app, clock, done = _app(bootstrap), Clock(total), anyio.Event()

    @app.handler(topic, ordering="key", concurrency=100)
    async def handle(msg: Message[bytes]) -> None:
        if clock.tick():
            done.set()

    await _run_app(app, done)
    return clock.rate


async def app_batch(bootstrap: str, topic: str, total: int) -> float:
    app, clock, done = _app(bootstrap), Clock(total), anyio.Event()

    @app.batch_handler(topic, max_records=500, max_wait=0)
    async def handle(msgs: list[Message[bytes]]) -> None:
        if clock.tick(len(msgs)):
            done.set()

    await _run_app(app, done)
    return clock.rate


async def consumer_async_for(bootstrap: str, topic: str, total: int) -> float:
    clock = Clock(total)
    async with Consumer(
        partitions=partitions(topic), bootstrap_servers=bootstrap, auto_offset_reset="earliest"
    ) as consumer:
        async for _msg in consumer:
            if clock.tick():
                break
    return clock.rate


async def faststream_per_message(bootstrap: str, topic: str, total: int) -> float:
    clock, done = Clock(total), anyio.Event()

    async def handle(msg: bytes) -> None:
        if clock.tick():
            done.set()

    await run_faststream(bootstrap, topic, handle, done)
    return clock.rate


async def faststream_batch(bootstrap: str, topic: str, total: int) -> float:
    clock, done = Clock(total), anyio.Event()

    async def handle(msgs: list[bytes]) -> None:
        if clock.tick(len(msgs)):
            done.set()

    await run_faststream(bootstrap, topic, handle, done, batch=True, max_records=500)
    return clock.rate


BASELINE = "aiokafka getmany loop"
CONTENDERS: dict[str, Contender] = {
    BASELINE: raw_getmany,
    "aiokafka async for": raw_async_for,
    "confluent-kafka consume() loop": confluent_consume,
    "FastStream per-message (logger off)": faststream_per_message,
    "FastStream batch subscriber": faststream_batch,
    "asyncconsumer per-record (partition)": app_partition,
    "asyncconsumer per-record + metrics": app_partition_metrics,
    "asyncconsumer key, concurrency 100": app_key_100,
    "asyncconsumer batch handler": app_batch,
    "asyncconsumer Consumer async for": consumer_async_for,
}


async def run(bootstrap: str, topic: str, total: int, repeat: int) -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    for attempt in range(repeat):
        for name, contender in CONTENDERS.items():
            started = time.perf_counter()
            rate = await contender(bootstrap, topic, total)
            rates[name].append(rate)
            print(
                f"  [{attempt + 1}/{repeat}] {name:<40} {rate:>10,.0f} rec/s "
                f"({time.perf_counter() - started:.1f}s wall)",
                flush=True,
            )
    return rates
