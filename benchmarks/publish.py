"""Scenario 6: consume, transform, produce (``publish_to``).

Every contender reads the same topic of the ``librdkafka JSON`` shape (200,000
records, 4 partitions), decodes each JSON value, adds a field, and produces the
result with the consumed key to an output topic of its own, with ``acks="all"``
(the app's producer default) for every contender. Each keeps the same guarantee:
a consumed record's offset is committed only after what it produced was
acknowledged, and per partition the outputs are sent in the order of the inputs.
The clock runs from the first record handled to the last acknowledgement (for
asyncconsumer: until the completed offsets reach the end of every partition).

- ``aiokafka loop``: the hand-written way: ``getmany``, send every record of the
  batch, wait for all their acknowledgements, commit, fetch again;
- ``asyncconsumer publish_to (partition)``: a ``publish_to`` handler under
  ``ordering="partition"``; the lane runs the next record while the broker
  acknowledges the previous ones (pipelined, see docs/design.md);
- ``asyncconsumer handler awaits each send``: the same handler awaiting each
  acknowledgement itself, which is what ``publish_to`` did before it was pipelined;
- ``asyncconsumer publish_to batch handler``: a batch handler returning its outputs.

With ``transactions`` (Apache Kafka; the embedded broker has none), exactly-once:

- ``aiokafka transactional loop``: per ``getmany`` batch, a transaction holding the
  batch's outputs and the consumed offsets (one transactional producer, partitions
  assigned by hand: what a hand-written loop does);
- ``asyncconsumer publish_to exactly_once``: the ``publish_to`` handler with
  ``delivery="exactly_once"`` (a transaction per partition, committed at 10,000
  records, after ``commit_interval``, or once the partition has nothing to run).
- ``asyncconsumer publish_to (key)`` and ``asyncconsumer publish_to exactly_once
  (key)``: the same handler under ``ordering="key"`` (100 records at once),
  at-least-once (each record awaits its output's acknowledgement) and exactly-once
  (the transaction checks the acknowledgements before it commits).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from asyncconsumer import ConsumerApp, Message, TopicPartition
from asyncconsumer.testing import create_topic

from ._common import PARTITIONS, Clock, make_librdkafka_topic, unique

BASELINE = "aiokafka loop (send a batch, await acks, commit)"


def transform(value: bytes) -> dict[str, Any]:
    order = json.loads(value)
    order["total"] = order["qty"] * 3
    return order  # type: ignore[no-any-return]


def _finished(clock: Clock) -> Clock:
    clock.last = time.perf_counter()
    clock.cpu_last = time.process_time()
    return clock


async def aiokafka_loop(bootstrap: str, source: str, out: str, total: int) -> Clock:
    clock = Clock(total)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=unique("bench-pub"),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    await consumer.start()
    try:
        consumer.subscribe([source])
        seen = 0
        while seen < total:
            batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            pending = []
            for records in batches.values():
                for record in records:
                    if not clock.count:
                        clock.tick()
                    pending.append(
                        await producer.send(
                            out, json.dumps(transform(record.value)).encode(), key=record.key
                        )
                    )
            if pending:
                await asyncio.gather(*pending)
                await consumer.commit(
                    {tp: records[-1].offset + 1 for tp, records in batches.items()}
                )
                seen += len(pending)
        return _finished(clock)
    finally:
        await consumer.stop()
        await producer.stop()


async def aiokafka_transactional(bootstrap: str, source: str, out: str, total: int) -> Clock:
    clock = Clock(total)
    group = unique("bench-pub-txn")
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=unique("bench-txn"))
    await producer.start()
    await consumer.start()
    try:
        consumer.assign([TopicPartition(source, p) for p in range(PARTITIONS)])
        seen = 0
        while seen < total:
            batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            if not batches:
                continue
            async with producer.transaction():
                for records in batches.values():
                    for record in records:
                        if not clock.count:
                            clock.tick()
                        await producer.send(
                            out, json.dumps(transform(record.value)).encode(), key=record.key
                        )
                        seen += 1
                await producer.send_offsets_to_transaction(
                    {tp: records[-1].offset + 1 for tp, records in batches.items()}, group
                )
        return _finished(clock)
    finally:
        await consumer.stop()
        await producer.stop()


async def _run_app(app: ConsumerApp, source: str, clock: Clock, total: int) -> Clock:
    """Run ``app`` until every partition of ``source`` is completed to its end."""
    async with app:
        with anyio.fail_after(600):
            while True:
                await anyio.sleep(0.02)
                completed = app.statistics().completed
                done = sum(
                    max(completed.get(TopicPartition(source, p), 0), 0) for p in range(PARTITIONS)
                )
                if done >= total:
                    return _finished(clock)


def _app(bootstrap: str) -> ConsumerApp:
    return ConsumerApp(
        bootstrap_servers=bootstrap, group_id=unique("bench-pub"), auto_offset_reset="earliest"
    )


async def app_publish_to(bootstrap: str, source: str, out: str, total: int) -> Clock:
    app, clock = _app(bootstrap), Clock(total)

    @app.handler(source, publish_to=out)
    async def handle(msg: Message[bytes]) -> dict[str, Any]:
        if not clock.count:
            clock.tick()
        return transform(msg.value)

    return await _run_app(app, source, clock, total)


async def app_awaited(bootstrap: str, source: str, out: str, total: int) -> Clock:
    app, clock = _app(bootstrap), Clock(total)

    @app.handler(source)
    async def handle(msg: Message[bytes]) -> None:
        if not clock.count:
            clock.tick()
        await app.producer.send_and_wait(out, transform(msg.value), key=msg.key)

    return await _run_app(app, source, clock, total)


async def app_batch(bootstrap: str, source: str, out: str, total: int) -> Clock:
    app, clock = _app(bootstrap), Clock(total)

    @app.batch_handler(source, publish_to=out, max_records=500, max_wait=0)
    async def handle(msgs: list[Message[bytes]]) -> list[dict[str, Any]]:
        if not clock.count:
            clock.tick()
        return [transform(m.value) for m in msgs]

    return await _run_app(app, source, clock, total)


async def app_exactly_once(bootstrap: str, source: str, out: str, total: int) -> Clock:
    app, clock = _app(bootstrap), Clock(total)

    @app.handler(source, publish_to=out, delivery="exactly_once")
    async def handle(msg: Message[bytes]) -> dict[str, Any]:
        if not clock.count:
            clock.tick()
        return transform(msg.value)

    return await _run_app(app, source, clock, total)


async def app_key_ordering(bootstrap: str, source: str, out: str, total: int) -> Clock:
    app, clock = _app(bootstrap), Clock(total)

    @app.handler(source, publish_to=out, ordering="key")
    async def handle(msg: Message[bytes]) -> dict[str, Any]:
        if not clock.count:
            clock.tick()
        return transform(msg.value)

    return await _run_app(app, source, clock, total)


async def app_exactly_once_key(bootstrap: str, source: str, out: str, total: int) -> Clock:
    app, clock = _app(bootstrap), Clock(total)

    @app.handler(source, publish_to=out, ordering="key", delivery="exactly_once")
    async def handle(msg: Message[bytes]) -> dict[str, Any]:
        if not clock.count:
            clock.tick()
        return transform(msg.value)

    return await _run_app(app, source, clock, total)


Contender = Callable[[str, str, str, int], Awaitable[Clock]]

EXACTLY_ONCE = "asyncconsumer publish_to exactly_once"

CONTENDERS: dict[str, Contender] = {
    BASELINE: aiokafka_loop,
    "asyncconsumer publish_to (partition)": app_publish_to,
    "asyncconsumer handler awaits each send": app_awaited,
    "asyncconsumer publish_to batch handler": app_batch,
}
TRANSACTIONAL: dict[str, Contender] = {
    "aiokafka transactional loop": aiokafka_transactional,
    EXACTLY_ONCE: app_exactly_once,
    # key ordering (100 records at once): at-least-once vs exactly-once
    "asyncconsumer publish_to (key)": app_key_ordering,
    "asyncconsumer publish_to exactly_once (key)": app_exactly_once_key,
}
# What exactly-once costs: (name, contender, the same without transactions), per round.
PAIRS = (
    (
        "exactly_once / at-least-once, partition",
        EXACTLY_ONCE,
        "asyncconsumer publish_to (partition)",
    ),
    (
        "exactly_once / at-least-once, key",
        "asyncconsumer publish_to exactly_once (key)",
        "asyncconsumer publish_to (key)",
    ),
    ("aiokafka: transactional / plain loop", "aiokafka transactional loop", BASELINE),
    ("exactly_once / aiokafka transactional loop", EXACTLY_ONCE, "aiokafka transactional loop"),
)


async def run(
    bootstrap: str, total: int, repeat: int, *, transactions: bool = False
) -> dict[str, Any]:
    """Every contender, interleaved, ``repeat`` rounds; ratios to the baseline of the
    same round (median and range)."""
    source = await make_librdkafka_topic(bootstrap, "bench-pub-in", total)
    contenders = {**CONTENDERS, **(TRANSACTIONAL if transactions else {})}
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    cpu: dict[str, list[float]] = {name: [] for name in contenders}
    for attempt in range(repeat):
        for name, contender in contenders.items():
            out = unique("bench-pub-out")
            await create_topic(bootstrap, out, PARTITIONS)
            started = time.perf_counter()
            clock = await contender(bootstrap, source, out, total)
            rate = (total - 1) / (clock.last - clock.first)
            rates[name].append(rate)
            cpu[name].append((clock.cpu_last - clock.cpu_first) / total * 1e6)
            print(
                f"  [{attempt + 1}/{repeat}] {name:<45} {rate:>9,.0f} rec/s "
                f"{cpu[name][-1]:>6.2f} CPU s/M ({time.perf_counter() - started:.1f}s wall)",
                flush=True,
            )
    base = rates[BASELINE]
    ratios = {
        name: [r / b for r, b in zip(values, base, strict=True)] for name, values in rates.items()
    }
    pairs = {
        label: [a / b for a, b in zip(rates[top], rates[bottom], strict=True)]
        for label, top, bottom in PAIRS
        if top in rates and bottom in rates
    }
    return {
        "records": total,
        "repeat": repeat,
        "pairs": {label: (statistics.median(v), min(v), max(v)) for label, v in pairs.items()},
        "median": {name: statistics.median(values) for name, values in rates.items()},
        "ratio": {name: statistics.median(values) for name, values in ratios.items()},
        "ratio_range": {name: (min(values), max(values)) for name, values in ratios.items()},
        "cpu_median": {name: statistics.median(values) for name, values in cpu.items()},
    }


def report(results: dict[str, Any]) -> None:
    print(
        f"\n6. consume, transform, produce {results['records']:,} records: median rec/s, "
        f"vs the aiokafka loop (median, range over {results['repeat']} rounds), CPU s/M"
    )
    for name, rate in results["median"].items():
        low, high = results["ratio_range"][name]
        print(
            f"   {name:<45} {rate:>9,.0f} {results['ratio'][name]:>6.2f}x "
            f"[{low:.2f}-{high:.2f}] {results['cpu_median'][name]:>7.2f}"
        )
    for label, (median, low, high) in results.get("pairs", {}).items():
        print(f"   {label:<45} {median:>6.2f}x [{low:.2f}-{high:.2f}] (per round)")
