"""Scenario 8: share groups (KIP-932), Apache Kafka 4.2+ only.

One member of a fresh share group reads a topic of the ``librdkafka JSON`` shape
(confluent-kafka's ``Producer``, ``linger.ms=5``, JSON values of about 35 bytes, one
header, 1,000 keys, 4 partitions) from the start; contenders run interleaved, round
after round, each with a share group of its own on the same topic (a share group
starts at ``share.auto.offset.reset=earliest``). Rates are first to last record
(the group join is not timed), with the process's CPU seconds per million records
(all threads: librdkafka's too; the broker is another process).

Two handlers:

- ``noop``: the handler does nothing;
- ``io``: the handler awaits 5 ms (``asyncio.sleep(0.005)``), 100 at a time. The
  ideal is 100 / 5 ms = 20,000 records/s.

Contenders (the ``io`` case has no ``async for``: that loop runs one record at a time,
so 5 ms caps it at 200 records/s):

- ``confluent-kafka ShareConsumer`` (the baseline): librdkafka's share consumer
  (confluent-kafka 2.16, synchronous, not thread-safe) polled in one thread,
  acknowledgements implicit (the next ``poll`` accepts the batch). For ``io`` the
  polling thread hands each batch to the event loop, which runs the batch's records
  with at most 100 at once (``asyncio`` tasks under a semaphore) before the next
  ``poll``: what an asyncio service does with a synchronous batch consumer;
- ``asyncconsumer ShareConsumer async for`` (``noop`` only);
- ``asyncconsumer share_handler``: ``@app.share_handler(concurrency=100)``;
- ``asyncconsumer classic group, ordering="none"``: a consumer group
  (``@app.handler(ordering="none", concurrency=100)``) on the same topic: what one
  process does without share groups.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from asyncconsumer import ConsumerApp, Message, ShareConsumer, ShareMessage

from ._common import PARTITIONS, Clock, make_librdkafka_topic, print_round, unique

DELAY = 0.005
CONCURRENCY = 100
BASELINE = "confluent-kafka ShareConsumer"
RECORDS = 100_000  # the noop case
IO_RECORDS = 30_000  # the io case: 1.5 s at the ideal 20,000 records/s

Contender = Callable[[str, str, int, float], Awaitable[Clock]]  # (bootstrap, topic, n, delay)


def _set_earliest(bootstrap: str, group: str) -> None:
    """``share.auto.offset.reset=earliest`` for a new share group (a group config)."""
    from confluent_kafka.admin import (  # type: ignore[attr-defined]  # not in its __all__
        AdminClient,
        AlterConfigOpType,
        ConfigEntry,
        ConfigResource,
        ResourceType,
    )

    entry = ConfigEntry(
        "share.auto.offset.reset", "earliest", incremental_operation=AlterConfigOpType.SET
    )
    resource = ConfigResource(ResourceType.GROUP, group, incremental_configs=[entry])
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=30)


def _confluent_share(
    bootstrap: str, topic: str, clock: Clock, batches: Callable[[list[Any]], None] | None
) -> None:
    """Poll a confluent-kafka ``ShareConsumer`` until ``clock`` is full; ``batches``
    runs each batch (``None``: no-op). Blocking: run it in a thread."""
    from confluent_kafka import ShareConsumer as ConfluentShareConsumer

    group = unique("bench-share-ck")
    _set_earliest(bootstrap, group)
    consumer = ConfluentShareConsumer({"bootstrap.servers": bootstrap, "group.id": group})
    consumer.subscribe([topic])
    try:
        while True:
            batch = [m for m in consumer.poll(1.0) if m.error() is None]
            if not batch:
                continue
            if batches is not None:
                batches(batch)
            if clock.tick(len(batch)):
                return
    finally:
        consumer.close()


async def confluent_share(bootstrap: str, topic: str, total: int, delay: float) -> Clock:
    clock = Clock(total)
    if not delay:
        await anyio.to_thread.run_sync(_confluent_share, bootstrap, topic, clock, None)
        return clock
    loop = asyncio.get_running_loop()
    slots = asyncio.Semaphore(CONCURRENCY)

    async def handle(msg: Any) -> None:
        async with slots:
            await asyncio.sleep(delay)

    async def run_batch(batch: list[Any]) -> None:
        await asyncio.gather(*(handle(m) for m in batch))

    def on_batch(batch: list[Any]) -> None:  # in the polling thread: wait for the loop
        asyncio.run_coroutine_threadsafe(run_batch(batch), loop).result()

    await anyio.to_thread.run_sync(_confluent_share, bootstrap, topic, clock, on_batch)
    return clock


async def share_async_for(bootstrap: str, topic: str, total: int, delay: float) -> Clock:
    clock = Clock(total)
    async with ShareConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=unique("bench-share"),
        auto_offset_reset="earliest",
    ) as consumer:
        async for _msg in consumer:
            if delay:
                await asyncio.sleep(delay)
            if clock.tick():
                break
    return clock


async def share_handler(bootstrap: str, topic: str, total: int, delay: float) -> Clock:
    app = ConsumerApp(bootstrap_servers=bootstrap, group_id=unique("bench-share-app"))
    clock, done = Clock(total), anyio.Event()

    @app.share_handler(topic, concurrency=CONCURRENCY, auto_offset_reset="earliest")
    async def handle(msg: ShareMessage) -> None:
        if delay:
            await asyncio.sleep(delay)
        if clock.tick():
            done.set()

    async with app:
        await done.wait()
    return clock


async def classic_none(bootstrap: str, topic: str, total: int, delay: float) -> Clock:
    app = ConsumerApp(
        bootstrap_servers=bootstrap, group_id=unique("bench-share-cg"), auto_offset_reset="earliest"
    )
    clock, done = Clock(total), anyio.Event()

    @app.handler(topic, ordering="none", concurrency=CONCURRENCY)
    async def handle(msg: Message[bytes]) -> None:
        if delay:
            await asyncio.sleep(delay)
        if clock.tick():
            done.set()

    async with app:
        await done.wait()
    return clock


CLASSIC = 'asyncconsumer classic group, ordering="none"'
CONTENDERS: dict[str, Contender] = {
    BASELINE: confluent_share,
    "asyncconsumer ShareConsumer async for": share_async_for,
    "asyncconsumer share_handler (concurrency 100)": share_handler,
    CLASSIC + " (concurrency 100)": classic_none,
}
CASES = {"noop": 0.0, "io": DELAY}


async def run(
    bootstrap: str, total: int, repeat: int, cases: tuple[str, ...] = ("noop", "io")
) -> dict[str, Any]:
    """Every contender of each case, interleaved, ``repeat`` rounds, one topic per case;
    ratios to confluent-kafka's ShareConsumer and to the classic group of the same round
    (median and range)."""
    results: dict[str, Any] = {}
    for case in cases:
        delay = CASES[case]
        count = total if not delay else min(total, IO_RECORDS)
        print(f"\n8. share groups, {case}: producing {count:,} ...", flush=True)
        topic = await make_librdkafka_topic(bootstrap, f"bench-share-{case}", count)
        contenders = {
            name: contender
            for name, contender in CONTENDERS.items()
            if not (delay and "async for" in name)
        }
        rates: dict[str, list[float]] = {name: [] for name in contenders}
        cpu: dict[str, list[float]] = {name: [] for name in contenders}
        for attempt in range(repeat):
            for name, contender in contenders.items():
                started = time.perf_counter()
                clock = await contender(bootstrap, topic, count, delay)
                rates[name].append(clock.rate)
                cpu[name].append(clock.cpu_per_million)
                print_round(attempt, repeat, name, clock, started, width=50)
        classic = next(name for name in contenders if name.startswith(CLASSIC))
        figures: dict[str, Any] = {
            "records": count,
            "repeat": repeat,
            "partitions": PARTITIONS,
            "handler": "noop" if not delay else f"await asyncio.sleep({delay})",
            "rates": rates,
            "cpu_per_million": cpu,
            "median": {name: statistics.median(values) for name, values in rates.items()},
            "cpu_median": {name: statistics.median(values) for name, values in cpu.items()},
        }
        for key, base in (("vs_confluent", BASELINE), ("vs_classic", classic)):
            ratios = {
                name: [r / b for r, b in zip(values, rates[base], strict=True)]
                for name, values in rates.items()
            }
            figures[key] = {name: statistics.median(values) for name, values in ratios.items()}
            figures[key + "_range"] = {
                name: (min(values), max(values)) for name, values in ratios.items()
            }
        results[case] = figures
    return results


def report(results: dict[str, Any]) -> None:
    for case, figures in results.items():
        print(
            f"\n8. share groups, {case} ({figures['handler']}), {figures['records']:,} records, "
            f"{figures['partitions']} partitions: median rec/s; vs confluent-kafka's "
            f"ShareConsumer and vs the classic group (median [range] over {figures['repeat']} "
            "rounds); CPU s per million records"
        )
        for name, rate in figures["median"].items():
            lo_c, hi_c = figures["vs_confluent_range"][name]
            lo_g, hi_g = figures["vs_classic_range"][name]
            print(
                f"   {name:<50} {rate:>9,.0f} {figures['vs_confluent'][name]:>5.2f}x "
                f"[{lo_c:.2f}-{hi_c:.2f}] {figures['vs_classic'][name]:>5.2f}x "
                f"[{lo_g:.2f}-{hi_g:.2f}] {figures['cpu_median'][name]:>7.2f}"
            )


async def main() -> None:  # pragma: no cover - a development shortcut
    import sys

    from ._common import broker

    total = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    repeat = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    cases = tuple(sys.argv[3].split(",")) if len(sys.argv) > 3 else ("noop", "io")
    async with broker("apache-kafka") as bootstrap:
        report(await run(bootstrap, total, repeat, cases))


if __name__ == "__main__":
    anyio.run(main)
