"""An :class:`~asyncconsumer.OffsetStore` on SQLAlchemy's asyncio API (extra ``sqlalchemy``).

One table, ``(group_id, topic, partition) -> next_offset``, in the database that
holds the results. A handler writes its results and the record's offset in one
transaction::

    store = SqlOffsetStore(engine, group_id="ledger")
    app = ConsumerApp(bootstrap_servers=..., group_id="ledger", offset_store=store)

    @app.handler("payments")
    async def book(msg: Message[bytes]) -> None:
        async with store.transaction(msg) as conn:
            await conn.execute(ledger.insert().values(...))

Tested on SQLite (``aiosqlite``) and PostgreSQL (``asyncpg``); upserts use
``INSERT ... ON CONFLICT`` there, and an update-then-insert elsewhere.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from aiokafka.structs import TopicPartition
from sqlalchemy import BigInteger, Column, Integer, MetaData, String, Table, and_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .._message import Message

__all__ = ["SqlOffsetStore"]


class SqlOffsetStore:
    """Offsets of one consumer group in a table of the results' database.

    ``engine`` is an ``AsyncEngine`` (``create_async_engine(url)``); ``table`` the
    table's name (created by :meth:`create_table`, or by your migrations: columns
    ``group_id``, ``topic``, ``partition``, ``next_offset``, primary key the first three).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        group_id: str,
        *,
        table: str = "asyncconsumer_offsets",
        schema: str | None = None,
    ) -> None:
        if not group_id:
            raise ValueError("SqlOffsetStore needs the consumer group's id")
        self.engine = engine
        self.group_id = group_id
        self.table = Table(
            table,
            MetaData(schema=schema),
            Column("group_id", String(255), primary_key=True),
            Column("topic", String(255), primary_key=True),
            Column("partition", Integer, primary_key=True),
            Column("next_offset", BigInteger, nullable=False),
        )

    async def create_table(self) -> None:
        """Create the offsets table if it does not exist."""
        async with self.engine.begin() as conn:
            await conn.run_sync(self.table.metadata.create_all)

    async def load(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        if not partitions:
            return {}
        t = self.table
        wanted = set(partitions)
        query = select(t.c.topic, t.c.partition, t.c.next_offset).where(
            and_(t.c.group_id == self.group_id, t.c.topic.in_({tp.topic for tp in wanted}))
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        found = {TopicPartition(topic, partition): offset for topic, partition, offset in rows}
        return {tp: offset for tp, offset in found.items() if tp in wanted}

    async def store(
        self, transaction: AsyncConnection, offsets: Mapping[TopicPartition, int]
    ) -> None:
        t = self.table
        for tp, offset in offsets.items():
            key = {"group_id": self.group_id, "topic": tp.topic, "partition": tp.partition}
            dialect = transaction.dialect.name
            if dialect in ("postgresql", "sqlite"):
                insert: Any
                if dialect == "postgresql":
                    from sqlalchemy.dialects.postgresql import insert
                else:
                    from sqlalchemy.dialects.sqlite import insert
                statement = insert(t).values(**key, next_offset=offset)
                await transaction.execute(
                    statement.on_conflict_do_update(
                        index_elements=[t.c.group_id, t.c.topic, t.c.partition],
                        set_={"next_offset": statement.excluded.next_offset},
                    )
                )
                continue
            match = and_(*(t.c[name] == value for name, value in key.items()))
            result = await transaction.execute(update(t).where(match).values(next_offset=offset))
            if result.rowcount == 0:
                await transaction.execute(t.insert().values(**key, next_offset=offset))

    @asynccontextmanager
    async def transaction(
        self, msg: Message[Any] | Sequence[Message[Any]]
    ) -> AsyncIterator[AsyncConnection]:
        """A database transaction for the results of ``msg`` (or a batch's messages):
        it stores the offset after them and commits when the block ends, or rolls
        everything back if the block raises (the record then fails as usual)."""
        msgs = [msg] if isinstance(msg, Message) else list(msg)
        if not msgs:
            raise ValueError("a transaction needs the message(s) whose results it writes")
        offsets: dict[TopicPartition, int] = {}
        for m in msgs:
            offsets[m.tp] = max(offsets.get(m.tp, 0), m.offset + 1)
        async with self.engine.begin() as conn:
            yield conn
            await self.store(conn, offsets)
