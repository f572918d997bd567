"""Offsets stored with the results (SqlOffsetStore) on a real broker and real
databases (SQLite, PostgreSQL): SIGKILLs neither lose nor duplicate a result."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, select
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from asyncconsumer.integrations.sqlalchemy import SqlOffsetStore
from asyncconsumer.testing.pytest_plugin import KafkaTestBroker

from .conftest import Topics, aproduce, committed_offsets, unique

ROOT = Path(__file__).resolve().parents[2]
RECORDS = 600


@pytest.fixture(params=["sqlite", "postgresql"])
async def database(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[str, AsyncEngine]]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'results.sqlite'}"
    else:
        url = request.getfixturevalue("postgres_url")
    engine = create_async_engine(url)
    try:
        yield url, engine
    finally:
        await engine.dispose()


async def test_sigkills_neither_lose_nor_duplicate_a_result(
    kafka_broker: KafkaTestBroker, topics: Topics, database: tuple[str, AsyncEngine]
) -> None:
    url, engine = database
    bootstrap = kafka_broker.bootstrap_servers
    topic = await topics.create("store", partitions=2)
    produced = await aproduce(bootstrap, topic, [(b"k%d" % i, b"v") for i in range(RECORDS)])
    ends = {tp: max(offsets) + 1 for tp, offsets in produced.items()}
    group, name = unique("g-store"), unique("results").replace("-", "_")
    results = Table(
        name, MetaData(), Column("topic", String(255)), Column("partition", Integer),
        Column("offset", Integer),
    )  # fmt: skip
    store = SqlOffsetStore(engine, group_id=group)
    await store.create_table()
    async with engine.begin() as conn:
        await conn.run_sync(results.metadata.create_all)

    async def rows() -> list[tuple[int, int]]:
        async with engine.connect() as conn:
            found = await conn.execute(select(results.c.partition, results.c.offset))
            return [(p, o) for p, o in found.all()]

    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "STORE_URL": url,
        "STORE_GROUP": group,
        "STORE_TOPIC": topic,
        "STORE_RESULTS": name,
    }
    cmd = [sys.executable, "-m", "asyncconsumer", "run", "tests.integration.store_app:app"]
    count = 0

    async def handled() -> int:
        nonlocal count
        count = len(await rows())
        return count

    for kill_at in (150, 350):
        async with await anyio.open_process(
            cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        ) as proc:
            with anyio.fail_after(60):
                while await handled() < kill_at:
                    await anyio.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        # Kafka has no committed offset (the app commits hourly): a restart that
        # trusted Kafka would start again from the earliest records.
        assert set((await committed_offsets(bootstrap, group, ends)).values()) == {None}
        # Each result and its offset were written together: the stored positions
        # account for exactly the rows written, no more, no less.
        assert sum((await store.load(list(ends))).values()) == len(await rows()) >= kill_at
    async with await anyio.open_process(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    ) as proc:
        with anyio.fail_after(60):
            while await handled() < RECORDS:
                await anyio.sleep(0.05)
        await anyio.sleep(0.5)  # anything more would be a duplicate
        proc.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            assert await proc.wait() == 0

    written = Counter(await rows())
    assert len(written) == RECORDS  # none lost
    assert set(written.values()) == {1}  # none twice
    assert await store.load(list(ends)) == ends
    assert await committed_offsets(bootstrap, group, ends) == ends  # Kafka caught up at stop


async def test_a_member_that_lost_the_partition_cannot_store_one_more_result(
    database: tuple[str, AsyncEngine],
) -> None:
    """A zombie (a member frozen past its session timeout whose partition went to
    another member, then resumed) finishes the record it was handling: its result
    must not be applied, since the partition's new owner handles that record too."""
    from asyncconsumer import Message, TopicPartition
    from asyncconsumer.integrations.sqlalchemy import FencedError

    _, engine = database
    tp = TopicPartition("orders", 0)
    group, name = unique("g-fence"), unique("fenced").replace("-", "_")
    results = Table(name, MetaData(), Column("offset", Integer))
    async with engine.begin() as conn:
        await conn.run_sync(results.metadata.create_all)
    zombie, heir = SqlOffsetStore(engine, group_id=group), SqlOffsetStore(engine, group_id=group)
    await zombie.create_table()

    def msg(offset: int) -> Message[bytes]:
        return Message(tp.topic, tp.partition, offset, None, b"", (), 0)

    async def handle(store: SqlOffsetStore, offset: int) -> None:
        async with store.transaction(msg(offset)) as conn:
            await conn.execute(results.insert().values(offset=offset))

    assert await zombie.load([tp]) == {}
    await handle(zombie, 0)
    assert await heir.load([tp]) == {tp: 1}  # the rebalance: the heir claims the partition
    with pytest.raises(FencedError, match="claimed by another member"):
        await handle(zombie, 1)  # the zombie wakes up and finishes record 1
    await handle(heir, 1)
    await handle(heir, 2)
    async with engine.connect() as conn:
        written = [o for (o,) in (await conn.execute(select(results.c.offset))).all()]
    assert sorted(written) == [0, 1, 2]  # record 1 once: the zombie's write rolled back
    assert await heir.load([tp]) == {tp: 3}
