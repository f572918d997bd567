"""Scenario 5: latency at a steady rate.

A producer in its own process (:mod:`benchmarks._steady_producer`, confluent-kafka,
``linger.ms=1``) writes 5,000 records/s for 30 s to 4 partitions; each value is its
send time (``time.time_ns()``, the same clock on the same machine). Every
contender gets a fresh topic, starts, and must have seen the warm-up record of
every partition (so it is assigned and fetching) before the steady production
begins. Its handler's first statement takes the time: the latency of a record is
handler start minus send time. All records must arrive (no loss); contenders run
interleaved, ``repeat`` times.

That latency includes the producer's and the broker's share, which on a loaded
machine dwarfs the consumer's. So, for the contenders built on aiokafka that see
each record's partition and offset (the raw loop and asyncconsumer), the time
from aiokafka's parsing of the fetch response that brought the record to the
handler's start is measured too (:class:`FetchStamps`).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
from anyio.streams.buffered import BufferedByteReceiveStream

from asyncconsumer import ConsumerApp, Message
from asyncconsumer.testing import create_topic

from ._common import PARTITIONS, raw_client, run_faststream, unique
from ._steady_producer import VALUE_SIZE

ROOT = Path(__file__).resolve().parent.parent
RATE = 5000
SECONDS = 30.0
WARM_UP_SECONDS = 10.0
READY_TIMEOUT = 120.0  # a new group's first join takes 3-5 s on the embedded broker
DRAIN_TIMEOUT = 30.0  # after the last record was acknowledged


class FetchStamps:
    """When the fetch response that brought each record arrived: aiokafka's fetcher
    makes one ``FetchResult`` per partition of a response as it parses it (0.12-0.14),
    and hands its records out through ``getall``; both are wrapped while installed.
    Keyed by (partition, offset): each run has a topic of its own."""

    def __init__(self) -> None:
        self.arrived: dict[tuple[int, int], int] = {}

    @contextmanager
    def installed(self) -> Iterator[None]:
        from aiokafka.consumer.fetcher import FetchResult

        init, getall = FetchResult.__init__, FetchResult.getall
        arrived = self.arrived

        def stamped_init(result: Any, *args: Any, **kwargs: Any) -> None:
            init(result, *args, **kwargs)
            result.bench_arrived = time.time_ns()

        def stamped_getall(result: Any, max_records: int | None = None) -> list[Any]:
            records: list[Any] = getall(result, max_records)
            when = getattr(result, "bench_arrived", 0)
            for record in records:
                arrived[record.partition, record.offset] = when
            return records

        FetchResult.__init__, FetchResult.getall = stamped_init, stamped_getall
        try:
            yield
        finally:
            FetchResult.__init__, FetchResult.getall = init, getall
            arrived.clear()


class Sink:
    """What every contender's handler calls first: it takes the time, and counts."""

    __slots__ = (
        "arrived",
        "done",
        "duplicates",
        "fetched",
        "latencies",
        "ready",
        "seen",
        "total",
        "warm",
    )

    def __init__(self, total: int, arrived: dict[tuple[int, int], int]) -> None:
        self.total = total
        self.arrived = arrived
        self.latencies: list[int] = []  # ns from send to handler start, in arrival order
        self.fetched: list[int] = []  # ns from the fetch response to handler start
        self.seen = bytearray(total)  # by record number
        self.duplicates = 0  # records the producer sent twice (a produce retry)
        self.warm = 0
        self.ready = anyio.Event()  # every partition's warm-up record arrived
        self.done = anyio.Event()  # every steady record arrived

    def take(self, value: bytes, partition: int = -1, offset: int = -1) -> None:
        now = time.time_ns()
        if len(value) == VALUE_SIZE:
            number = int.from_bytes(value[8:], "big")
            if self.seen[number]:
                self.duplicates += 1
                return
            self.seen[number] = 1
            self.latencies.append(now - int.from_bytes(value[:8], "big"))
            arrived = self.arrived.pop((partition, offset), 0)
            if arrived:
                self.fetched.append(now - arrived)
            if len(self.latencies) >= self.total:
                self.done.set()
        else:
            self.warm += 1
            if self.warm >= PARTITIONS:
                self.ready.set()


Contender = Callable[[str, str, Sink], Awaitable[None]]


async def raw_getmany(bootstrap: str, topic: str, sink: Sink) -> None:
    take, done = sink.take, sink.done
    async with raw_client(bootstrap, topic) as client:
        while not done.is_set():
            for records in (await client.getmany(timeout_ms=1000)).values():
                for record in records:
                    take(record.value, record.partition, record.offset)


def _app(bootstrap: str) -> ConsumerApp:
    return ConsumerApp(
        bootstrap_servers=bootstrap, group_id=unique("bench-lat"), auto_offset_reset="earliest"
    )


async def app_partition(bootstrap: str, topic: str, sink: Sink) -> None:
    app, take = _app(bootstrap), sink.take

    @app.handler(topic)
    async def handle(msg: Message[bytes]) -> None:
        take(msg.value, msg.partition, msg.offset)

    async with app:
        await sink.done.wait()


async def app_key_100(bootstrap: str, topic: str, sink: Sink) -> None:
    app, take = _app(bootstrap), sink.take

    @app.handler(topic, ordering="key", concurrency=100)
    async def handle(msg: Message[bytes]) -> None:
        take(msg.value, msg.partition, msg.offset)

    async with app:
        await sink.done.wait()


async def faststream_per_message(bootstrap: str, topic: str, sink: Sink) -> None:
    take = sink.take

    async def handle(msg: bytes) -> None:
        take(msg)

    await run_faststream(bootstrap, topic, handle, sink.done)


async def confluent_aio(bootstrap: str, topic: str, sink: Sink) -> None:
    """confluent-kafka's asyncio consumer, ``consume()`` as its docs advise (``poll()``
    costs a thread hand-off per record). librdkafka's consume returns once it has a
    full batch or the timeout passed, so the timeout (1 ms) bounds the wait it adds."""
    from confluent_kafka import TopicPartition as ConfluentTopicPartition
    from confluent_kafka.aio import AIOConsumer

    take, done = sink.take, sink.done
    consumer = AIOConsumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": unique("bench-lat-ck"),
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        await consumer.assign([ConfluentTopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        while not done.is_set():
            for msg in await consumer.consume(num_messages=CONFLUENT_BATCH, timeout=CONFLUENT_WAIT):
                if msg.error() is not None:
                    raise RuntimeError(f"confluent-kafka consume: {msg.error()}")
                take(msg.value())
    finally:
        await consumer.close()


CONFLUENT_BATCH = 100
CONFLUENT_WAIT = 0.001

BASELINE = "aiokafka getmany loop"
CONTENDERS: dict[str, Contender] = {
    BASELINE: raw_getmany,
    "asyncconsumer per-record (partition)": app_partition,
    "asyncconsumer key, concurrency 100": app_key_100,
    "FastStream per-message (logger off)": faststream_per_message,
    "confluent-kafka AIOConsumer consume()": confluent_aio,
}


def summary(latencies: list[int], prefix: str = "") -> dict[str, float]:
    """p50, p99 and max in milliseconds."""
    ordered = sorted(latencies)
    n = len(ordered)
    return {
        f"{prefix}p50": ordered[n // 2] / 1e6,
        f"{prefix}p99": ordered[min(n - 1, int(n * 0.99))] / 1e6,
        f"{prefix}max": ordered[-1] / 1e6,
    }


async def measure(
    bootstrap: str,
    contender: Contender,
    rate: int,
    seconds: float,
    arrived: dict[tuple[int, int], int] | None = None,
) -> dict[str, Any]:
    """One contender on a fresh topic: latencies (ms), the load average and what
    the producer says about itself. ``arrived``: :attr:`FetchStamps.arrived`."""
    topic = unique("bench-lat")
    await create_topic(bootstrap, topic, PARTITIONS)
    total = int(rate * seconds)
    if arrived is None:
        arrived = {}
    arrived.clear()
    sink = Sink(total, arrived)
    command = [sys.executable, "-m", "benchmarks._steady_producer", bootstrap, topic]
    async with (
        await anyio.open_process(
            [*command, str(rate), str(seconds)], cwd=ROOT, stderr=None
        ) as producer,
        anyio.create_task_group() as tg,
    ):
        assert producer.stdout is not None
        assert producer.stdin is not None
        lines = BufferedByteReceiveStream(producer.stdout)
        with anyio.fail_after(60):
            warm = await lines.receive_until(b"\n", 4096)
        assert warm == b"warm", warm

        async def consume() -> None:
            await contender(bootstrap, topic, sink)

        tg.start_soon(consume)
        with anyio.fail_after(READY_TIMEOUT):
            await sink.ready.wait()
        load = os.getloadavg()[0]
        cpu = time.process_time()
        await producer.stdin.send(b"go\n")
        try:
            produced = json.loads(await lines.receive_until(b"\n", 65536))
        except anyio.IncompleteRead:
            raise RuntimeError(f"the producer exited ({await producer.wait()})") from None
        with anyio.move_on_after(DRAIN_TIMEOUT):
            await sink.done.wait()
        cpu = time.process_time() - cpu
        load_end = os.getloadavg()[0]
        if not sink.done.is_set():
            tg.cancel_scope.cancel()  # records were lost: the contender would wait forever
    received = len(sink.latencies)
    if produced["sent"] != total or produced["failed"] or produced["unacknowledged"]:
        raise RuntimeError(f"the producer did not deliver {total:,} records: {produced}")
    if received != total:
        raise AssertionError(f"lost records: received {received:,} of {total:,}")
    row: dict[str, Any] = summary(sink.latencies)
    if len(sink.fetched) == total:
        row |= summary(sink.fetched, "fetched_")
    return row | {
        "count": received,
        "duplicates": sink.duplicates,
        "load": load,
        "load_end": load_end,
        "cpu_seconds": cpu,
        "producer": produced,
    }


FIGURES = ("p50", "p99", "max", "fetched_p50", "fetched_p99", "fetched_max")


async def run(
    bootstrap: str, *, rate: int = RATE, seconds: float = SECONDS, repeat: int = 3
) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in CONTENDERS}
    stamps = FetchStamps()
    with stamps.installed():
        # A discarded round of the baseline first: a fresh Apache Kafka's JVM is cold,
        # and its acknowledgements then took 11.6 s at p99 (1.8 s a round later), which
        # the first contender's figures carried.
        warm = await measure(
            bootstrap, CONTENDERS[BASELINE], rate, min(seconds, WARM_UP_SECONDS), stamps.arrived
        )
        print(f"  (warm-up: the producer's acks p99 {warm['producer']['ack_p99_ms']:.1f} ms)")
        for attempt in range(repeat):
            for name, contender in CONTENDERS.items():
                row = await measure(bootstrap, contender, rate, seconds, stamps.arrived)
                runs[name].append(row)
                fetched = (
                    f"; from the fetch response p99 {row['fetched_p99']:.2f} ms"
                    if "fetched_p99" in row
                    else ""
                )
                print(
                    f"  [{attempt + 1}/{repeat}] {name:<40} p50 {row['p50']:7.2f} ms  "
                    f"p99 {row['p99']:7.2f} ms  max {row['max']:7.1f} ms{fetched} "
                    f"({row['count']:,} records"
                    + (f" + {row['duplicates']} sent twice" if row["duplicates"] else "")
                    + f", load {row['load']:.1f}-{row['load_end']:.1f}, "
                    f"CPU {row['cpu_seconds']:.1f}s, producer late by up to "
                    f"{row['producer']['max_late_ms']:.1f} ms, its acks p99 "
                    f"{row['producer']['ack_p99_ms']:.1f} ms)",
                    flush=True,
                )
    median = {
        name: {k: statistics.median(r[k] for r in rows) for k in FIGURES if k in rows[0]}
        for name, rows in runs.items()
    }
    spread = {
        name: {k: (min(r[k] for r in rows), max(r[k] for r in rows)) for k in median[name]}
        for name, rows in runs.items()
    }
    # Per repeat, each contender's p99 over the baseline's in the same repeat.
    ratios = {
        name: {
            k: [r[k] / b[k] for r, b in zip(rows, runs[BASELINE], strict=True)]
            for k in ("p99", "fetched_p99")
            if k in median[name]
        }
        for name, rows in runs.items()
    }
    return {
        "rate": rate,
        "seconds": seconds,
        "repeat": repeat,
        "runs": runs,
        "median": median,
        "spread": spread,
        "p99_ratio": {
            name: {k: m[k] / median[BASELINE][k] for k in ratios[name]}
            for name, m in median.items()
        },
        "p99_ratios": ratios,
        "load": [r[k] for rows in runs.values() for r in rows for k in ("load", "load_end")],
    }


def report(result: dict[str, Any]) -> None:
    print(
        f"\n5. latency at {result['rate']:,} records/s for {result['seconds']:.0f} s: "
        f"median of {result['repeat']} (min-max), ms"
    )
    print(
        f"   {'send to handler start':<40} {'p50':<20} {'p99':<20} {'max':<20} "
        "p99 vs getmany (per repeat)"
    )
    for prefix in ("", "fetched_"):
        if prefix:
            print(f"   {'fetch response to handler start':<40}")
        for name, median in result["median"].items():
            if f"{prefix}p99" not in median:
                continue
            spread = result["spread"][name]
            cells = "".join(
                f"{median[k]:.1f} ({spread[k][0]:.1f}-{spread[k][1]:.1f}) ".ljust(21)
                for k in (f"{prefix}p50", f"{prefix}p99", f"{prefix}max")
            )
            ratios = result["p99_ratios"][name][f"{prefix}p99"]
            print(
                f"   {name:<40} {cells}{result['p99_ratio'][name][f'{prefix}p99']:.2f}x "
                f"({min(ratios):.2f}-{max(ratios):.2f})"
            )
    loads = result["load"]
    print(f"   load average (1 min) at the runs' start and end: {min(loads):.1f}-{max(loads):.1f}")
