"""Per-record throughput: asyncconsumer against raw aiokafka, same broker, same run.

    python benchmarks/throughput.py [--records 200000] [--repeat 3]

Produces N records of 100 bytes to a 4-partition topic on the embedded broker
(or $KAFKA_BOOTSTRAP_SERVERS), then consumes all of them with each contender,
no-op handling. Each time is measured from the first record received to the
last, so group joins are not counted. Prints one table (median of the runs,
ratio to the raw aiokafka getmany loop) and writes benchmarks/results/throughput.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from asyncconsumer import Consumer, ConsumerApp, Message, TopicPartition
from asyncconsumer.testing import EmbeddedBroker, create_topic

PARTITIONS = 4
Contender = Callable[[str, str, int], Awaitable[float]]


def c_extension_loaded() -> bool:
    try:
        from aiokafka.record import _crecords  # noqa: F401
    except ImportError:
        return False
    return not os.environ.get("AIOKAFKA_NO_EXTENSIONS")


async def produce(bootstrap: str, topic: str, count: int) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=256 * 1024
    )
    await producer.start()
    try:
        value = b"x" * 100
        pending = []
        for i in range(count):
            pending.append(await producer.send(topic, value, key=str(i % 1000).encode()))
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


def tps(topic: str) -> list[TopicPartition]:
    return [TopicPartition(topic, p) for p in range(PARTITIONS)]


@asynccontextmanager
async def raw_client(bootstrap: str, topic: str) -> AsyncIterator[AIOKafkaConsumer]:
    """A plain aiokafka consumer, assigned every partition by hand, no commits."""
    client = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await client.start()
    client.assign(tps(topic))
    try:
        yield client
    finally:
        await client.stop()


async def raw_getmany(bootstrap: str, topic: str, total: int) -> float:
    async with raw_client(bootstrap, topic) as client:
        count, first = 0, 0.0
        while count < total:
            batches = await client.getmany(timeout_ms=1000)
            for records in batches.values():
                if not first and records:
                    first = time.perf_counter()
                for _record in records:
                    count += 1
        return time.perf_counter() - first


async def raw_async_for(bootstrap: str, topic: str, total: int) -> float:
    async with raw_client(bootstrap, topic) as client:
        count, first = 0, 0.0
        async for _record in client:
            if not count:
                first = time.perf_counter()
            count += 1
            if count == total:
                break
        return time.perf_counter() - first


async def app_per_record(bootstrap: str, topic: str, total: int) -> float:
    app = ConsumerApp(
        bootstrap_servers=bootstrap,
        group_id=f"bench-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
    )
    count, first, last = 0, 0.0, 0.0
    done = anyio.Event()

    @app.handler(topic)
    async def handle(msg: Message[bytes]) -> None:
        nonlocal count, first, last
        if not count:
            first = time.perf_counter()
        count += 1
        if count == total:
            last = time.perf_counter()
            done.set()

    async with app:
        await done.wait()
    return last - first


async def consumer_async_for(bootstrap: str, topic: str, total: int) -> float:
    async with Consumer(
        partitions=tps(topic), bootstrap_servers=bootstrap, auto_offset_reset="earliest"
    ) as consumer:
        count, first = 0, 0.0
        async for _msg in consumer:
            if not count:
                first = time.perf_counter()
            count += 1
            if count == total:
                break
        return time.perf_counter() - first


CONTENDERS: dict[str, Contender] = {
    "aiokafka getmany loop (baseline)": raw_getmany,
    "aiokafka async for": raw_async_for,
    "asyncconsumer ConsumerApp, per record": app_per_record,
    "asyncconsumer Consumer, async for": consumer_async_for,
}


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    async with EmbeddedBroker() as broker:
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or broker.bootstrap_servers
        topic = f"bench-{uuid.uuid4().hex[:8]}"
        await create_topic(bootstrap, topic, PARTITIONS)
        print(f"producing {args.records:,} x 100 B to {PARTITIONS} partitions at {bootstrap} ...")
        await produce(bootstrap, topic, args.records)
        rates: dict[str, list[float]] = {name: [] for name in CONTENDERS}
        for run in range(args.repeat):
            for name, contender in CONTENDERS.items():
                seconds = await contender(bootstrap, topic, args.records)
                rates[name].append(args.records / seconds)
                print(f"  run {run + 1}: {name:<40} {args.records / seconds:>10,.0f} rec/s")

    baseline = statistics.median(rates["aiokafka getmany loop (baseline)"])
    print()
    print(
        f"aiokafka C extension loaded: {c_extension_loaded()}; Python {platform.python_version()}"
    )
    print(f"{'contender':<42}{'median rec/s':>14}{'vs getmany':>12}")
    results: dict[str, Any] = {
        "records": args.records,
        "repeat": args.repeat,
        "c_extension": c_extension_loaded(),
        "contenders": {},
    }
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"{name:<42}{median:>14,.0f}{median / baseline:>11.2f}x")
        results["contenders"][name] = {
            "rates": values,
            "median": median,
            "ratio_to_getmany": median / baseline,
        }
    out = anyio.Path(__file__).parent / "results"
    await out.mkdir(exist_ok=True)
    await (out / "throughput.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(anyio.run(main))
