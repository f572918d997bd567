"""The examples of docs/delivery.md (the README's "Delivery guarantees") run against
the servers they need: exactly-once and seeking by time on Apache Kafka, the offset
store on SQLite and PostgreSQL. Each example runs as written, with its placeholders
(broker address, topic and group names, database URL) replaced by the test's; a
placeholder the page no longer has fails the test rather than being skipped."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiokafka import AIOKafkaProducer
from sqlalchemy import func, select

from asyncconsumer import ConsumerApp, TopicPartition
from asyncconsumer.testing.pytest_plugin import KafkaTestBroker

from ..doc_examples import example
from .conftest import Topics, aproduce, unique
from .test_exactly_once import read_all

pytestmark = pytest.mark.apache_kafka  # transactions and ListOffsets by time

PAGE = "docs/delivery.md"


def run_example(defines: str, placeholders: Mapping[str, str]) -> dict[str, Any]:
    """Execute the block of ``PAGE`` that defines ``defines``, with ``placeholders``
    replaced; return its namespace."""
    block = example(PAGE, defines)
    for old, new in placeholders.items():
        assert old in block, f"{PAGE}: the example of {defines} no longer has {old!r}"
        block = block.replace(old, new)
    namespace: dict[str, Any] = {"__name__": f"delivery_example_{defines}"}
    exec(compile(block, f"<{PAGE}>", "exec"), namespace)
    return namespace


async def wait_handled(app: ConsumerApp, topic: str, count: int) -> None:
    with anyio.fail_after(60):
        while app.statistics().topics.get(topic) is None or (
            app.statistics().topics[topic].handled < count
        ):
            await anyio.sleep(0.05)


async def test_the_exactly_once_example_commits_each_output_once(
    kafka_broker: KafkaTestBroker, topics: Topics
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    orders = await topics.create("orders", partitions=2)
    enriched = await topics.create("orders.enriched", partitions=2)
    audit = await topics.create("audit")
    namespace = run_example(
        "enrich",
        {
            "127.0.0.1:9092": bootstrap,
            'group_id="enricher"': f'group_id="{unique("enricher")}", auto_offset_reset="earliest"',
            '"orders"': f'"{orders}"',
            '"orders.enriched"': f'"{enriched}"',
            '"audit"': f'"{audit}"',
        },
    )
    app: ConsumerApp = namespace["app"]
    produced = await aproduce(
        bootstrap, orders, [(b"c%d" % i, json.dumps({"id": i}).encode()) for i in range(40)]
    )
    ends = {tp: max(offsets) + 1 for tp, offsets in produced.items()}
    async with app:
        with anyio.fail_after(60):
            while app.statistics().committed != ends:  # committed by its transactions
                await anyio.sleep(0.05)
        stats = app.statistics().topics[orders]

    outputs = sorted(json.loads(v)["id"] for v in await read_all(bootstrap, enriched))
    assert outputs == list(range(40))
    assert {json.loads(v)["score"] for v in await read_all(bootstrap, enriched)} == {0.9}
    assert sorted(json.loads(v)["id"] for v in await read_all(bootstrap, audit)) == outputs
    assert stats.transactions >= 2  # one per partition at least
    assert stats.aborted_transactions == 0


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
async def test_the_offset_store_example_writes_each_result_once_with_its_offset(
    kafka_broker: KafkaTestBroker,
    topics: Topics,
    database: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    payments = await topics.create("payments", partitions=2)
    if database == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.sqlite'}"
    else:
        url = request.getfixturevalue("postgres_url")
    name = unique("ledger").replace("-", "_")  # the group, and the table
    namespace = run_example(
        "book",
        {
            "127.0.0.1:9092": bootstrap,
            '"postgresql+asyncpg://app@db/ledger"': repr(url),
            '"ledger"': f'"{name}"',
            "offset_store=store)": 'offset_store=store, auto_offset_reset="earliest")',
            '"payments"': f'"{payments}"',
        },
    )
    app: ConsumerApp = namespace["app"]
    engine, store, ledger = namespace["engine"], namespace["store"], namespace["ledger"]
    try:
        await store.create_table()
        async with engine.begin() as conn:
            await conn.run_sync(ledger.metadata.create_all)
        records = [
            (b"p%d" % i, json.dumps({"account": f"a{i % 3}", "cents": i}).encode())
            for i in range(30)
        ]
        produced = await aproduce(bootstrap, payments, records)
        ends = {tp: max(offsets) + 1 for tp, offsets in produced.items()}

        async def ledger_rows() -> tuple[int, int]:
            async with engine.connect() as conn:
                query = select(func.count(), func.sum(ledger.c.cents))
                rows, cents = (await conn.execute(query)).one()
                return rows, cents

        async with app:
            with anyio.fail_after(60):
                while (await ledger_rows())[0] < 30:
                    await anyio.sleep(0.05)
        # (load() claims the partitions: not while the app runs.)
        assert await store.load(list(ends)) == ends
        async with app:  # resumes from the stored offsets: nothing runs again
            with anyio.fail_after(60):
                while len(app.assignment()) < 2:
                    await anyio.sleep(0.05)
            await anyio.sleep(1.0)
        assert app._counters[payments].handled == 30
        assert await ledger_rows() == (30, sum(range(30)))
    finally:
        await engine.dispose()


async def test_the_seek_by_time_example_replays_from_the_first_record_at_or_after(
    kafka_broker: KafkaTestBroker, topics: Topics, capsys: pytest.CaptureFixture[str]
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    orders = await topics.create("orders")
    day = 24 * 3600 * 1000
    nov20 = int(datetime(2026, 11, 20, tzinfo=UTC).timestamp() * 1000)
    stamps = [nov20 - day + i * 1000 for i in range(4)] + [nov20 + i * 1000 for i in range(6)]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for i, stamp in enumerate(stamps):
            await producer.send_and_wait(orders, b'{"n": %d}' % i, partition=0, timestamp_ms=stamp)
    finally:
        await producer.stop()
    namespace = run_example(
        "rebuild",
        {
            "127.0.0.1:9092": bootstrap,
            'group_id="rebuild"': f'group_id="{unique("rebuild")}"',
            '"orders"': f'"{orders}"',
        },
    )
    app: ConsumerApp = namespace["app"]
    async with app:
        await wait_handled(app, orders, 6)  # start_at: from the first record of Nov 20
        await anyio.sleep(0.3)
        await namespace["replay_since"](datetime(2026, 11, 19, 0, 0, 2, tzinfo=UTC))
        await wait_handled(app, orders, 6 + 8)  # from the third record of Nov 19
        await anyio.sleep(0.3)
        assert app.statistics().completed == {TopicPartition(orders, 0): 10}
    printed = [int(line.split()[0]) for line in capsys.readouterr().out.splitlines()]
    assert printed == [4, 5, 6, 7, 8, 9, 2, 3, 4, 5, 6, 7, 8, 9]
