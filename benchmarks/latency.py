"""Scenario 5: latency at a steady rate.

A producer in its own process (:mod:`benchmarks._steady_producer`, confluent-kafka,
``linger.ms=1``) writes 5,000 records/s for 30 s to 4 partitions; each value is its
send time (``time.time_ns()``, the same clock on the same machine). Every
contender gets a fresh topic, starts, and must have seen the warm-up record of
every partition (so it is assigned and fetching) before the steady production
begins. Its handler's first statement takes the time: the latency of a record is
handler start minus send time. All records must arrive (no loss); contenders run
interleaved, ``repeat`` times.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
from anyio.streams.buffered import BufferedByteReceiveStream

from asyncconsumer import ConsumerApp, Message
from asyncconsumer.testing import create_topic

from ._common import PARTITIONS, raw_client, run_faststream, unique

ROOT = Path(__file__).resolve().parent.parent
RATE = 5000
SECONDS = 30.0
READY_TIMEOUT = 120.0  # a new group's first join takes 3-5 s on the embedded broker
DRAIN_TIMEOUT = 30.0  # after the last record was acknowledged


class Sink:
    """What every contender's handler calls first: it takes the time, and counts."""

    __slots__ = ("done", "latencies", "ready", "total", "warm")

    def __init__(self, total: int) -> None:
        self.total = total
        self.latencies: list[int] = []  # ns, in arrival order
        self.warm = 0
        self.ready = anyio.Event()  # every partition's warm-up record arrived
        self.done = anyio.Event()  # every steady record arrived

    def take(self, value: bytes) -> None:
        now = time.time_ns()
        if len(value) == 8:
            self.latencies.append(now - int.from_bytes(value, "big"))
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
                    take(record.value)


def _app(bootstrap: str) -> ConsumerApp:
    return ConsumerApp(
        bootstrap_servers=bootstrap, group_id=unique("bench-lat"), auto_offset_reset="earliest"
    )


async def app_partition(bootstrap: str, topic: str, sink: Sink) -> None:
    app, take = _app(bootstrap), sink.take

    @app.handler(topic)
    async def handle(msg: Message[bytes]) -> None:
        take(msg.value)

    async with app:
        await sink.done.wait()


async def app_key_100(bootstrap: str, topic: str, sink: Sink) -> None:
    app, take = _app(bootstrap), sink.take

    @app.handler(topic, ordering="key", concurrency=100)
    async def handle(msg: Message[bytes]) -> None:
        take(msg.value)

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


def summary(latencies: list[int]) -> dict[str, float]:
    """p50, p99 and max in milliseconds."""
    ordered = sorted(latencies)
    n = len(ordered)
    return {
        "p50": ordered[n // 2] / 1e6,
        "p99": ordered[min(n - 1, int(n * 0.99))] / 1e6,
        "max": ordered[-1] / 1e6,
    }


async def measure(
    bootstrap: str, contender: Contender, rate: int, seconds: float
) -> dict[str, Any]:
    """One contender on a fresh topic: latencies (ms), the load average and what
    the producer says about itself."""
    topic = unique("bench-lat")
    await create_topic(bootstrap, topic, PARTITIONS)
    total = int(rate * seconds)
    sink = Sink(total)
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
        raise AssertionError(f"received {received:,} of {total:,} records")
    return {
        **summary(sink.latencies),
        "count": received,
        "load": load,
        "load_end": load_end,
        "cpu_seconds": cpu,
        "producer": produced,
    }


async def run(
    bootstrap: str, *, rate: int = RATE, seconds: float = SECONDS, repeat: int = 3
) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in CONTENDERS}
    for attempt in range(repeat):
        for name, contender in CONTENDERS.items():
            row = await measure(bootstrap, contender, rate, seconds)
            runs[name].append(row)
            print(
                f"  [{attempt + 1}/{repeat}] {name:<40} p50 {row['p50']:7.2f} ms  "
                f"p99 {row['p99']:7.2f} ms  max {row['max']:7.1f} ms  "
                f"({row['count']:,} records, load {row['load']:.1f}-{row['load_end']:.1f}, "
                f"CPU {row['cpu_seconds']:.1f}s, producer late by up to "
                f"{row['producer']['max_late_ms']:.1f} ms, acks p99 "
                f"{row['producer']['ack_p99_ms']:.1f} ms)",
                flush=True,
            )
    median = {
        name: {key: statistics.median(r[key] for r in rows) for key in ("p50", "p99", "max")}
        for name, rows in runs.items()
    }
    spread = {
        name: {
            key: (min(r[key] for r in rows), max(r[key] for r in rows))
            for key in ("p50", "p99", "max")
        }
        for name, rows in runs.items()
    }
    base = median[BASELINE]["p99"]
    # Per repeat, each contender's p99 over the baseline's in the same repeat.
    ratios = {
        name: [r["p99"] / b["p99"] for r, b in zip(rows, runs[BASELINE], strict=True)]
        for name, rows in runs.items()
    }
    return {
        "rate": rate,
        "seconds": seconds,
        "repeat": repeat,
        "runs": runs,
        "median": median,
        "spread": spread,
        "p99_ratio": {name: m["p99"] / base for name, m in median.items()},
        "p99_ratios": ratios,
        "load": [r[k] for rows in runs.values() for r in rows for k in ("load", "load_end")],
    }


def report(result: dict[str, Any]) -> None:
    print(
        f"\n5. latency at {result['rate']:,} records/s for {result['seconds']:.0f} s, send to "
        f"handler start: median of {result['repeat']} (min-max)"
    )
    print(f"   {'':<40} {'p50 ms':<20} {'p99 ms':<20} {'max ms':<20} p99 vs getmany")
    for name, median in result["median"].items():
        spread = result["spread"][name]
        cells = "".join(
            f"{median[k]:.1f} ({spread[k][0]:.1f}-{spread[k][1]:.1f}) ".ljust(21)
            for k in ("p50", "p99", "max")
        )
        ratios = result["p99_ratios"][name]
        print(
            f"   {name:<40} {cells}{result['p99_ratio'][name]:.2f}x "
            f"({min(ratios):.2f}-{max(ratios):.2f})"
        )
    loads = result["load"]
    print(f"   load average (1 min) at the runs' start and end: {min(loads):.1f}-{max(loads):.1f}")
