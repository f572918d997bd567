"""Scenario 5: latency at a steady rate.

A producer in its own process (:mod:`benchmarks._steady_producer`, confluent-kafka,
``linger.ms=1``) writes 5,000 records/s for 30 s to 4 partitions; each value is its
send time (``time.time_ns()``, the same clock on the same machine) and its number.
Each contender runs in a process of its own (:mod:`benchmarks._latency_member`)
*beside the baseline* in another, both in groups of their own on the same fresh
topic: they read the same records at the same time, through the same broker
backlog. Both must have seen the warm-up record of every partition (so they are
assigned and fetching) before the steady production begins. A handler's first
statement takes the time: the latency of a record is handler start minus send
time. All records must arrive at both (no loss); each contender runs ``repeat``
times, each time with a baseline of its own.

That latency includes the producer's and the broker's share, which on a loaded
machine dwarfs the consumer's and varies from one 30 s window to the next (the
embedded broker's acknowledgements took 1-9 s at p99): so each p99 ratio is
taken against the baseline that ran beside it, and the latency a contender adds
is measured record by record, as its latency minus the baseline's for the same
record. For the contenders built on aiokafka that see each record's partition and
offset (the raw loop and asyncconsumer), the time from aiokafka's parsing of the
fetch response that brought the record to the handler's start is measured too
(:class:`FetchStamps`).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from array import array
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
        "by_number",
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
        self.by_number = array("q", [-1]) * total  # latency (ns) by record number
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
            latency = now - int.from_bytes(value[:8], "big")
            self.latencies.append(latency)
            self.by_number[number] = latency
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
    bootstrap: str, name: str, rate: int, seconds: float
) -> tuple[dict[str, Any], dict[str, Any], dict[str, float]]:
    """The contender ``name`` and the baseline side by side on a fresh topic: each
    one's latencies (ms) with its CPU seconds, the load average and what the producer
    says about itself; and the latency the contender adds, record by record (its
    latency minus the baseline's for the same record, ms: p50, p99)."""
    topic = unique("bench-lat")
    await create_topic(bootstrap, topic, PARTITIONS)
    total = int(rate * seconds)
    command = [sys.executable, "-m", "benchmarks._steady_producer", bootstrap, topic]

    def member(contender: str, out: str) -> list[str]:
        module = "benchmarks._latency_member"
        return [sys.executable, "-m", module, bootstrap, topic, contender, str(total), out]

    with tempfile.TemporaryDirectory(prefix="bench-lat-") as tmp:
        outs = [os.path.join(tmp, f"{i}.json") for i in range(2)]
        async with (
            await anyio.open_process(
                [*command, str(rate), str(seconds)], cwd=ROOT, stderr=None
            ) as producer,
            await anyio.open_process(member(BASELINE, outs[0]), cwd=ROOT, stderr=None) as baseline,
            await anyio.open_process(member(name, outs[1]), cwd=ROOT, stderr=None) as contender,
        ):
            members = (baseline, contender)
            lines = [BufferedByteReceiveStream(p.stdout) for p in (producer, *members)]  # type: ignore[arg-type]
            with anyio.fail_after(60):
                warm = await lines[0].receive_until(b"\n", 4096)
            assert warm == b"warm", warm
            with anyio.fail_after(READY_TIMEOUT):
                for stream in lines[1:]:
                    ready = await stream.receive_until(b"\n", 4096)
                    assert ready == b"ready", ready
            load = os.getloadavg()[0]
            assert producer.stdin is not None
            await producer.stdin.send(b"go\n")
            try:
                produced = json.loads(await lines[0].receive_until(b"\n", 65536))
            except anyio.IncompleteRead:
                raise RuntimeError(f"the producer exited ({await producer.wait()})") from None
            finished = [False] * len(members)

            async def finish(index: int) -> None:
                await lines[1 + index].receive_until(b"\n", 4096)
                finished[index] = True

            with anyio.move_on_after(DRAIN_TIMEOUT):
                async with anyio.create_task_group() as tg:
                    for index in range(len(members)):
                        tg.start_soon(finish, index)
            load_end = os.getloadavg()[0]
            for index, process in enumerate(members):
                assert process.stdin is not None
                if not finished[index]:  # records were lost: it writes what it has
                    await process.stdin.send(b"stop\n")
                    with anyio.fail_after(30):
                        await finish(index)
                await process.stdin.aclose()
        results = [json.loads(await anyio.Path(out).read_text()) for out in outs]
    if produced["sent"] != total or produced["failed"] or produced["unacknowledged"]:
        raise RuntimeError(f"the producer did not deliver {total:,} records: {produced}")
    rows: list[dict[str, Any]] = []
    for who, result in zip((BASELINE, name), results, strict=True):
        latencies = [x for x in result["latencies"] if x >= 0]
        if len(latencies) != total:
            raise AssertionError(f"{who} lost records: received {len(latencies):,} of {total:,}")
        row: dict[str, Any] = summary(latencies)
        if len(result["fetched"]) == total:
            row |= summary(result["fetched"], "fetched_")
        rows.append(
            row
            | {
                "count": len(latencies),
                "duplicates": result["duplicates"],
                "load": load,
                "load_end": load_end,
                "cpu_seconds": result["cpu_seconds"],
                "producer": produced,
            }
        )
    added = sorted(
        c - b for b, c in zip(results[0]["latencies"], results[1]["latencies"], strict=True)
    )
    paired = {
        "added_p1": added[int(len(added) * 0.01)] / 1e6,
        "added_p50": added[len(added) // 2] / 1e6,
        "added_p99": added[min(len(added) - 1, int(len(added) * 0.99))] / 1e6,
    }
    return rows[0], rows[1], paired


FIGURES = ("p50", "p99", "max", "fetched_p50", "fetched_p99", "fetched_max")


def _line(attempt: int, repeat: int, name: str, row: dict[str, Any], tail: str = "") -> str:
    fetched = (
        f"; from the fetch response p99 {row['fetched_p99']:.2f} ms" if "fetched_p99" in row else ""
    )
    return (
        f"  [{attempt + 1}/{repeat}] {name:<40} p50 {row['p50']:7.2f} ms  "
        f"p99 {row['p99']:7.2f} ms  max {row['max']:7.1f} ms{fetched}{tail} "
        f"({row['count']:,} records"
        + (f" + {row['duplicates']} sent twice" if row["duplicates"] else "")
        + f", load {row['load']:.1f}-{row['load_end']:.1f}, "
        f"CPU {row['cpu_seconds']:.1f}s, producer late by up to "
        f"{row['producer']['max_late_ms']:.1f} ms, its acks p99 "
        f"{row['producer']['ack_p99_ms']:.1f} ms)"
    )


async def run(
    bootstrap: str, *, rate: int = RATE, seconds: float = SECONDS, repeat: int = 3
) -> dict[str, Any]:
    contenders = [name for name in CONTENDERS if name != BASELINE]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in CONTENDERS}
    beside: dict[str, list[dict[str, Any]]] = {name: [] for name in contenders}
    added: dict[str, list[dict[str, float]]] = {name: [] for name in contenders}
    # A discarded round first: a fresh Apache Kafka's JVM is cold, and its
    # acknowledgements then took 11.6 s at p99 (1.8 s a round later), which the
    # first contender's figures carried.
    _, warm, _ = await measure(bootstrap, contenders[0], rate, min(seconds, WARM_UP_SECONDS))
    print(f"  (warm-up: the producer's acks p99 {warm['producer']['ack_p99_ms']:.1f} ms)")
    for attempt in range(repeat):
        for name in contenders:
            base, row, paired = await measure(bootstrap, name, rate, seconds)
            runs[BASELINE].append(base)
            runs[name].append(row)
            beside[name].append(base)
            added[name].append(paired)
            print(_line(attempt, repeat, f"{BASELINE} (beside)", base), flush=True)
            print(
                _line(
                    attempt,
                    repeat,
                    name,
                    row,
                    f"; adds {paired['added_p50']:+.2f} ms to the median record "
                    f"(p1 {paired['added_p1']:+.2f}, p99 {paired['added_p99']:+.2f})",
                ),
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
    # Per run, a contender's p99 over that of the baseline beside it.
    ratios = {
        name: {
            k: [r[k] / b[k] for r, b in zip(runs[name], beside[name], strict=True)]
            for k in ("p99", "fetched_p99")
            if k in median[name]
        }
        for name in contenders
    }
    ratios[BASELINE] = {k: [1.0] for k in ("p99", "fetched_p99")}
    return {
        "rate": rate,
        "seconds": seconds,
        "repeat": repeat,
        "runs": runs,
        "median": median,
        "spread": spread,
        # the median of the per-run ratios
        "p99_ratio": {
            name: {k: statistics.median(v) for k, v in by_figure.items()}
            for name, by_figure in ratios.items()
        },
        "p99_ratios": ratios,
        "added": {
            name: {
                k: (
                    statistics.median(p[k] for p in pairs),
                    min(p[k] for p in pairs),
                    max(p[k] for p in pairs),
                )
                for k in ("added_p1", "added_p50", "added_p99")
            }
            for name, pairs in added.items()
        },
        "load": [r[k] for rows in runs.values() for r in rows for k in ("load", "load_end")],
    }


def report(result: dict[str, Any]) -> None:
    print(
        f"\n5. latency at {result['rate']:,} records/s for {result['seconds']:.0f} s: "
        f"median of {result['repeat']} (min-max), ms"
    )
    print(
        f"   {'send to handler start':<40} {'p50':<20} {'p99':<20} {'max':<20} "
        "p99 vs the getmany loop beside it (per run)"
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
    print(
        f"   {'added to the same record, vs the baseline beside it (ms)':<60} "
        "median (min-max) of the runs' p50; p1 and p99 of the differences"
    )
    for name, added in result.get("added", {}).items():
        m, lo, hi = added["added_p50"]
        print(
            f"   {name:<60} {m:+.2f} ({lo:+.2f} to {hi:+.2f});  "
            f"p1 {added['added_p1'][0]:+.2f}  p99 {added['added_p99'][0]:+.2f}"
        )
    loads = result["load"]
    print(f"   load average (1 min) at the runs' start and end: {min(loads):.1f}-{max(loads):.1f}")
