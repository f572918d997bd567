"""`make demo`: produce sample records, consume them with examples/orders_app.py, check, summarise.

Uses the broker at $ASYNCCONSUMER_BOOTSTRAP_SERVERS (or $KAFKA_BOOTSTRAP_SERVERS) if set,
else starts the embedded one.
Exits 0 when every record was handled exactly once and the committed offsets
equal the end offsets.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import sys
import time
import uuid
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from asyncconsumer import TopicPartition
from asyncconsumer.testing import EmbeddedBroker, create_topic

ORDERS, PAYMENTS = 5_000, 2_000


def say(text: str) -> None:
    print(text, flush=True)


async def produce(bootstrap: str, topic: str, count: int) -> dict[TopicPartition, int]:
    """Produce ``count`` JSON records; return each partition's end offset."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    ends: dict[TopicPartition, int] = {}
    try:
        futures = []
        for i in range(count):
            value = {"id": i, "amount": round(random.uniform(1, 100), 2)}
            futures.append(
                await producer.send(
                    topic, json.dumps(value).encode(), key=f"customer-{i % 50}".encode()
                )
            )
        for meta in await asyncio.gather(*futures):
            tp = TopicPartition(meta.topic, meta.partition)
            ends[tp] = max(ends.get(tp, 0), meta.offset + 1)
    finally:
        await producer.stop()
    return ends


async def committed(
    bootstrap: str, group: str, tps: list[TopicPartition]
) -> dict[TopicPartition, int | None]:
    client = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await client.start()
    try:
        return {tp: await client.committed(tp) for tp in tps}
    finally:
        await client.stop()


async def main() -> int:
    logging.basicConfig(level=logging.INFO, format="   %(name)s: %(message)s", stream=sys.stdout)
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    async with AsyncExitStack() as stack:
        # What `asyncconsumer broker` prints, or the name other Kafka tools use.
        bootstrap = os.environ.get("ASYNCCONSUMER_BOOTSTRAP_SERVERS") or os.environ.get(
            "KAFKA_BOOTSTRAP_SERVERS"
        )
        if bootstrap:
            say(f"-> using the broker at {bootstrap}")
        else:
            broker = await stack.enter_async_context(EmbeddedBroker())
            bootstrap = broker.bootstrap_servers
            say(f"-> started the embedded broker at {bootstrap}")
        # Fresh names, so the demo can run again against the same broker.
        run_id = uuid.uuid4().hex[:6]
        orders_topic, payments_topic = f"orders-{run_id}", f"payments-{run_id}"
        group = f"orders-example-{run_id}"
        os.environ.update(
            ASYNCCONSUMER_BOOTSTRAP_SERVERS=bootstrap,
            KAFKA_BOOTSTRAP_SERVERS=bootstrap,
            ASYNCCONSUMER_GROUP_ID=group,
            EXAMPLE_ORDERS_TOPIC=orders_topic,
            EXAMPLE_PAYMENTS_TOPIC=payments_topic,
        )
        await create_topic(bootstrap, orders_topic, 4)
        await create_topic(bootstrap, payments_topic, 2)
        say(f"-> producing {ORDERS} orders and {PAYMENTS} payments")
        ends = await produce(bootstrap, orders_topic, ORDERS)
        ends |= await produce(bootstrap, payments_topic, PAYMENTS)

        from examples.orders_app import app, totals  # reads the environment set above

        say("-> consuming (joining the group takes a few seconds)")
        started = time.monotonic()
        expected = ORDERS + PAYMENTS
        async with app:
            with anyio.fail_after(120):
                while sum(totals.handled.values()) < expected:
                    await anyio.sleep(1)
                    done = sum(totals.handled.values())
                    say(f"   handled {done:>6}/{expected}  ({time.monotonic() - started:5.1f}s)")
        elapsed = time.monotonic() - started
        offsets = await committed(bootstrap, group, sorted(ends))

    ok = totals.handled == {orders_topic: ORDERS, payments_topic: PAYMENTS} and offsets == ends
    say("")
    say("summary")
    say(f"  orders handled    {totals.handled[orders_topic]:>6}  revenue {totals.revenue:,.2f}")
    say(f"  payments handled  {totals.handled[payments_topic]:>6}")
    say(f"  committed = end offsets on all {len(ends)} partitions: {offsets == ends}")
    say(f"  time from start to last record: {elapsed:.1f}s (includes the group join)")
    say("  result: OK" if ok else "  result: MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(anyio.run(main))
