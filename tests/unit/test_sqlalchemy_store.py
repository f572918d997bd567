"""SqlOffsetStore on SQLite (a real database file): load, store, roll back."""

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, func, select
from sqlalchemy.ext.asyncio import create_async_engine

from asyncconsumer import ConfigurationError, ConsumerApp, Message, OffsetStore, TopicPartition
from asyncconsumer.integrations.sqlalchemy import SqlOffsetStore

T0, T1 = TopicPartition("orders", 0), TopicPartition("orders", 1)
results = Table("results", MetaData(), Column("offset", Integer))


def msg(tp: TopicPartition, offset: int) -> Message[bytes]:
    return Message(tp.topic, tp.partition, offset, None, b"", (), 0)


async def test_results_and_offsets_commit_together_or_not_at_all(tmp_path: Path) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    try:
        store = SqlOffsetStore(engine, group_id="g")
        assert isinstance(store, OffsetStore)
        await store.create_table()
        async with engine.begin() as conn:
            await conn.run_sync(results.metadata.create_all)
        assert await store.load([T0, T1]) == {}

        for offset in (0, 1):
            async with store.transaction(msg(T0, offset)) as conn:
                await conn.execute(results.insert().values(offset=offset))

        async def fails() -> None:
            async with store.transaction(msg(T0, 2)) as conn:
                await conn.execute(results.insert().values(offset=2))
                raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            await fails()
        async with store.transaction([msg(T1, 5), msg(T1, 6)]) as conn:
            await conn.execute(results.insert().values(offset=56))

        assert await store.load([T0, T1]) == {T0: 2, T1: 7}
        assert await store.load([T1]) == {T1: 7}
        other = SqlOffsetStore(engine, group_id="other")
        assert await other.load([T0, T1]) == {}  # per group
        async with engine.connect() as conn:
            rows = (await conn.execute(select(func.count()).select_from(results))).scalar()
        assert rows == 3  # the failed transaction's row was rolled back with its offset
    finally:
        await engine.dispose()


def test_an_offset_store_needs_handlers_that_complete_in_order() -> None:
    engine = create_async_engine("sqlite+aiosqlite://")
    app = ConsumerApp(
        bootstrap_servers="127.0.0.1:9", group_id="g", offset_store=SqlOffsetStore(engine, "g")
    )

    @app.handler("orders", ordering="key")
    async def handle(msg: Message[Any]) -> None: ...

    with pytest.raises(ConfigurationError, match="offset order"):
        app._registry.check_in_order("an offset_store")
    with pytest.raises(ConfigurationError, match="OffsetStore"):
        ConsumerApp(bootstrap_servers="x:1", group_id="g", offset_store=object())  # type: ignore[arg-type]
